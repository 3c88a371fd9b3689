"""Unit tests for the command line: exit codes and messages of ``check``, ``run`` and
``config``; ``--version`` and ``--help``; the printed config and its masked secrets.

Runs ``python -m bridge`` in a subprocess where the process is the point (its exit status,
no traceback), ``main()`` in-process otherwise; the only network is loopback (a tiny
``http.server`` standing in for a DICOMweb server, and sockets bound by the test).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pynetdicom
import pytest

import bridge as bridge_package
from bridge.cli import EXIT_CONFIG, EXIT_OK, EXIT_PEER, EXIT_RUNTIME, EXIT_UNREACHABLE, main
from bridge.config import ENV_CONFIG, AuthConfig, Config, Secret, load_config, parse_config
from bridge.profiles import Capabilities, describe
from tests.integration.tools import missing_prerequisite, without_profiles

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    """The environment without a config override or an HTTP proxy (loopback must be direct)."""
    drop = {"DIMSE_BRIDGE_CONFIG", "http_proxy", "https_proxy", "all_proxy"}
    return {k: v for k, v in os.environ.items() if k.lower() not in drop}


def bridge(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_exit_code_values() -> None:
    assert (EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG, EXIT_UNREACHABLE, EXIT_PEER) == (0, 1, 2, 3, 4)


# --- invalid config -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "run"])
def test_invalid_config_exits_2_naming_file_and_key(tmp_path: Path, command: str) -> None:
    path = write_config(tmp_path, "[dimse]\nport = 'eleven'\n")
    result = bridge(command, "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"dimse-bridge: invalid config: {path}: dimse.port: expected an integer, got a string\n"
    )
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    result = bridge("check", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: (file): file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_config_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, "[dicomweb]\nurl = 'ftp://pacs/dicom-web'\n")
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dimse-bridge: invalid config: {path}: dicomweb.url: ")
    assert "expected an http:// or https:// URL with a host" in err


# --- check ----------------------------------------------------------------------------


def test_check_unreachable_exits_3(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/dicom-web"
    path = write_config(tmp_path, f'[dicomweb]\nurl = "{url}"\ntimeout = 5\n')
    result = bridge("check", "--config", str(path))
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.startswith(f"dimse-bridge: {url}: cannot connect to {url}/studies")
    assert "Traceback" not in result.stderr


@dataclass
class FakeServer:
    """What the stand-in DICOMweb server answers, and the requests it saw."""

    status: int = 200
    content_type: str = "application/dicom+json"
    body: bytes = b"[]"
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def fake_dicomweb() -> Iterator[FakeServer]:
    state = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            state.requests.append((self.path, self.headers.get("Accept", "")))
            if not self.path.startswith("/dicom-web/studies"):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(state.status)
            self.send_header("Content-Type", state.content_type)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_check_prints_the_profile_and_its_capabilities(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[dicomweb]\nprofile = "aws"\n[dicomweb.capabilities]\nwado_rate = 20\n',
    )
    result = bridge("check", "--offline", "--config", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "backend default: profile aws; capabilities assumed:"
    assert "  hierarchical_only = yes" in lines
    assert "  study_retrieve = no" in lines
    assert "  wado_rate = 20.0" in lines
    assert "  max_records = 10000" in lines


def test_check_ok(tmp_path: Path, fake_dicomweb: FakeServer) -> None:
    path = write_config(tmp_path, f'[dicomweb]\nurl = "{fake_dicomweb.url}"\n')
    result = bridge("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        f"ok: config {path}; AE DIMSE_BRIDGE on 0.0.0.0:11112; {fake_dicomweb.url}: "
        "QIDO-RS answered HTTP 200 (0 result, "
    )
    # The profile in effect and every capability it assumes, one per line.
    assert lines[1] == "backend default: profile generic; capabilities assumed:"
    assert lines[2:] == [f"  {line}" for line in describe(Capabilities())]
    assert "  max_limit = no limit" in lines
    assert fake_dicomweb.requests == [("/dicom-web/studies?limit=1", "application/dicom+json")]


def test_check_ok_in_process(
    tmp_path: Path, fake_dicomweb: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path,
        f'[dimse]\nae_title = "BRIDGE1"\nport = 4242\n[dicomweb]\nurl = "{fake_dicomweb.url}/"\n',
    )
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: config {path}; AE BRIDGE1 on 0.0.0.0:4242; {fake_dicomweb.url}: ")


def test_check_probes_on_the_configured_transport(
    tmp_path: Path, fake_dicomweb: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bridge.dicomweb.client as client_module

    chosen: list[bool] = []
    original = client_module.http_transport

    def recording(config: Any, *, fast_http: bool = True) -> Any:
        chosen.append(fast_http)
        return original(config, fast_http=fast_http)

    monkeypatch.setattr(client_module, "http_transport", recording)
    path = write_config(
        tmp_path,
        f'[dicomweb]\nurl = "{fake_dicomweb.url}/"\n[retrieve]\nfast_http = false\n',
    )
    assert main(["check", "--config", str(path)]) == 0
    assert chosen == [False]


def test_check_html_is_not_dicomweb(tmp_path: Path, fake_dicomweb: FakeServer) -> None:
    fake_dicomweb.content_type = "text/html; charset=utf-8"
    fake_dicomweb.body = b"<html><body>Welcome to nginx</body></html>"
    path = write_config(tmp_path, f'[dicomweb]\nurl = "{fake_dicomweb.url}"\n')
    result = bridge("check", "--config", str(path))
    assert result.returncode == 3
    assert result.stdout == ""
    assert "not a DICOMweb endpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_401_mentions_authentication(tmp_path: Path, fake_dicomweb: FakeServer) -> None:
    fake_dicomweb.status = 401
    fake_dicomweb.content_type = "text/plain"
    fake_dicomweb.body = b"unauthorized"
    path = write_config(tmp_path, f'[dicomweb]\nurl = "{fake_dicomweb.url}"\n')
    result = bridge("check", "--config", str(path))
    assert result.returncode == 3
    assert result.stdout == ""
    assert "HTTP 401 authentication refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_wrong_root_mentions_dicomweb_root(tmp_path: Path, fake_dicomweb: FakeServer) -> None:
    url = fake_dicomweb.url.removesuffix("/dicom-web") + "/wrong"
    path = write_config(tmp_path, f'[dicomweb]\nurl = "{url}"\n')
    result = bridge("check", "--config", str(path))
    assert result.returncode == 3
    assert "is the URL the DICOMweb root?" in result.stderr
    assert "Traceback" not in result.stderr


# --- run ------------------------------------------------------------------------------


def test_run_on_a_busy_port_fails_cleanly(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(
            tmp_path,
            f'[dimse]\nhost = "127.0.0.1"\nport = {port}\n'
            f'[dicomweb]\nurl = "http://127.0.0.1:{closed_port()}/dicom-web"\n',
        )
        result = bridge("run", "--config", str(path), timeout=20)
    assert result.returncode == 1
    assert f"dimse-bridge: cannot listen on 127.0.0.1:{port}: " in result.stderr
    assert "Traceback" not in result.stderr


# --- --version and --help -------------------------------------------------------------


def _exit_code(argv: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code


def test_version_names_the_package_and_its_libraries(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["--version"]) == 0
    try:
        expected = importlib.metadata.version("dimse-bridge")
    except importlib.metadata.PackageNotFoundError:  # a checkout that is not installed
        expected = bridge_package.__version__
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"dimse-bridge {expected}"
    assert len(lines) == 2, lines
    for name, module in (("pynetdicom", pynetdicom), ("pydicom", pydicom), ("httpx", httpx)):
        assert f"{name} {module.__version__}" in lines[1]


EXIT_LINES = {
    "run": ("0  stopped by SIGINT or SIGTERM", "1  cannot listen", "2  invalid config"),
    "check": (
        "0  config valid",
        "2  invalid config",
        "3  a DICOMweb server is unreachable",
        "4  --peers: a [[peers]] entry did not answer C-ECHO",
    ),
    "config": ("0  config printed", "2  invalid config"),
}


@pytest.mark.parametrize("command", sorted(EXIT_LINES))
def test_help_of_each_command_lists_its_exit_statuses(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _exit_code([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dimse-bridge {command} [-h] [--config PATH]")
    assert "\nexit status:\n" in out
    for line in EXIT_LINES[command]:
        assert f"\n  {line}" in out, (line, out)


def test_top_level_help_lists_commands_and_every_exit_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    assert "{run,check,config,spool}" in out
    for code in range(5):
        assert f"\n  {code}  " in out, (code, out)


def test_offline_and_peers_do_not_go_together(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["check", "--offline", "--peers"]) == EXIT_CONFIG
    assert "argument --peers: not allowed with argument --offline" in capsys.readouterr().err


# --- check --offline, TLS report --------------------------------------------------------


def test_check_offline_contacts_no_server(
    tmp_path: Path, fake_dicomweb: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, f'[dicomweb]\nurl = "{fake_dicomweb.url}"\n')
    assert main(["check", "--offline", "--config", str(path)]) == EXIT_OK
    assert without_profiles(capsys.readouterr().out.splitlines()) == [
        f"ok: config {path}; AE DIMSE_BRIDGE on 0.0.0.0:11112; "
        f"{fake_dicomweb.url}: not contacted (--offline)"
    ]
    assert fake_dicomweb.requests == []


def test_check_offline_on_an_unreachable_server_is_ok_and_invalid_config_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/dicom-web"
    path = write_config(tmp_path, f'[dicomweb]\nurl = "{url}"\n')
    assert main(["check", "--offline", "--config", str(path)]) == EXIT_OK
    path.write_text(f'[dicomweb]\nurl = "{url}"\npage_size = 0\n', encoding="utf-8")
    assert main(["check", "--offline", "--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"dimse-bridge: invalid config: {path}: dicomweb.page_size: ")


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A throw-away self-signed certificate and its key (PEM files)."""
    if importlib.util.find_spec("cryptography") is None:
        missing_prerequisite("the cryptography package is not installed (pip install cryptography)")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_check_reports_tls_when_it_is_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = self_signed(tmp_path, "bridge")
    client_cert, client_key = self_signed(tmp_path, "client")
    path = write_config(
        tmp_path,
        f"""
[dimse.tls]
enabled = true
port = 2762
certificate = "{cert}"
private_key = "{key}"
ca_certificates = "{cert}"
require_client_certificate = true
[dicomweb]
url = "https://bridge:not-shown@pacs.invalid/dicom-web"
ca_bundle = "{cert}"
client_cert = "{client_cert}"
client_key = "{client_key}"
[backends.cloud]
ae_title = "CLOUD"
url = "https://cloud.invalid/v1"
verify = false
client_cert = ""
[backends.lan]
ae_title = "LAN"
url = "http://lan.invalid/dicom-web"
""",
    )
    assert main(["check", "--offline", "--config", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "not-shown" not in out
    lines = without_profiles(out.splitlines())
    assert lines[0].startswith("ok: ")
    assert lines[1:] == [
        f"tls: DICOM TLS listener on 0.0.0.0:2762, certificate {cert}; "
        f"client certificates required, signed by {cert}",
        "tls: dicomweb https://bridge:***@pacs.invalid/dicom-web: https, server certificate "
        f"verified against {cert}; client certificate {client_cert}",
        # A backend takes the default's TLS files unless it names its own.
        "tls: backends.cloud https://cloud.invalid/v1: https, server certificate NOT verified "
        f"(backends.cloud.verify = false); client certificate {client_cert}",
        "tls: backends.lan http://lan.invalid/dicom-web: plain http, client_cert unused",
    ]


@pytest.mark.parametrize("broken", ["listener-key", "listener-cas", "ca-bundle"])
def test_check_unusable_tls_files_exit_2(
    broken: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key_file = self_signed(tmp_path, "bridge")
    _other_cert, other_key = self_signed(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n", encoding="utf-8")
    if broken == "listener-key":
        text = f'[dimse.tls]\nenabled = true\ncertificate = "{cert}"\nprivate_key = "{other_key}"\n'
        key = "dimse.tls.certificate"
    elif broken == "listener-cas":
        text = (
            f'[dimse.tls]\nenabled = true\ncertificate = "{cert}"\nprivate_key = "{key_file}"\n'
            f'ca_certificates = "{garbage}"\n'
        )
        key = "dimse.tls.ca_certificates"
    else:
        text = f'[dicomweb]\nurl = "https://pacs.invalid/dicom-web"\nca_bundle = "{garbage}"\n'
        key = "dicomweb.ca_bundle"
    path = write_config(tmp_path, text)
    assert main(["check", "--offline", "--config", str(path)]) == EXIT_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"dimse-bridge: invalid config: {path}: {key}: cannot load")


def test_run_with_unusable_tls_files_exits_2(tmp_path: Path) -> None:
    cert, _key = self_signed(tmp_path, "bridge")
    _other_cert, other_key = self_signed(tmp_path, "other")
    path = write_config(
        tmp_path,
        f'[dimse]\nhost = "127.0.0.1"\nport = {closed_port()}\n'
        f'[dimse.tls]\nenabled = true\nhost = "127.0.0.1"\nport = {closed_port()}\n'
        f'certificate = "{cert}"\nprivate_key = "{other_key}"\n'
        f'[dicomweb]\nurl = "http://127.0.0.1:{closed_port()}/dicom-web"\n',
    )
    result = bridge("run", "--config", str(path))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"dimse-bridge: invalid config: {path}: dimse.tls.certificate: cannot load it with "
        "private_key: [X509: KEY_VALUES_MISMATCH]"
    )


def test_check_peers_without_peers(
    tmp_path: Path, fake_dicomweb: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, f'[dicomweb]\nurl = "{fake_dicomweb.url}"\n')
    assert main(["check", "--peers", "--config", str(path)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    lines = without_profiles(lines)
    assert lines[0].startswith("ok: ") and lines[1:] == ["peers: none configured"]


# --- google credentials -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            '{"type": "service_account", "client_email": "bridge@p.iam.gserviceaccount.com"}',
            "expected usable Google credentials in {path} (MalformedError: ",
            id="incomplete-service-account",
        ),
        pytest.param('["not", "an", "object"]', "expected a JSON object", id="json-array"),
    ],
)
def test_unusable_google_credentials_file_is_named(
    content: str, expected: str, tmp_path: Path
) -> None:
    if importlib.util.find_spec("google.auth") is None:
        missing_prerequisite("google-auth is not installed (pip install 'dimse-bridge[google]')")
    credentials = tmp_path / "sa.json"
    credentials.write_text(content, encoding="utf-8")
    path = write_config(
        tmp_path,
        f'[dicomweb]\nurl = "http://127.0.0.1:{closed_port()}/dicom-web"\n'
        f'[dicomweb.auth]\ntype = "google"\ncredentials_file = "{credentials}"\n',
    )
    result = bridge("check", "--config", str(path))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stdout == ""
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("dimse-bridge: invalid config: [dicomweb.auth]: credentials_file: ")
    assert expected.format(path=credentials) in message
    assert str(credentials) in message


# --- config -------------------------------------------------------------------------------


def test_config_of_the_defaults_names_every_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    assert main(["config"]) == EXIT_OK
    out = capsys.readouterr().out
    printed = tomllib.loads(out)
    assert parse_config(printed) == Config()
    # config.example.toml lists every key (a test holds it to the defaults).
    example = tomllib.loads((REPO / "config.example.toml").read_text(encoding="utf-8"))
    assert _dotted_keys(example) <= _dotted_keys(printed)
    # The example leaves [dicomweb.auth]'s keys but `type` in comments: all are printed,
    # a secret in its three forms.
    expected: set[str] = set()
    for f in dataclasses.fields(AuthConfig):
        is_secret = isinstance(getattr(AuthConfig(), f.name), Secret)
        expected |= {f.name, f"{f.name}_env", f"{f.name}_file"} if is_secret else {f.name}
    assert set(printed["dicomweb"]["auth"]) == expected


def _dotted_keys(table: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in table.items():
        if isinstance(value, dict):
            keys |= _dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def _secret_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name, content in (("token", "token-from-file"), ("ca", "ca"), ("client", "cs-file")):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text(content + "\n", encoding="utf-8")
    return files


def test_config_round_trips_to_the_same_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_TEST_PASSWORD", "password-from-env")
    files = _secret_files(tmp_path)
    path = write_config(
        tmp_path,
        f"""
[dimse]
ae_title = "MY_BRIDGE"
host = "h\\"o\\\\st\\tname"
port = 4242
accept_unknown_peers = false
check_peer_host = true
max_associations = 4
shutdown_timeout = 2.5
network_timeout = 10
max_pdu = 16384
[dimse.tls]
enabled = true
host = "127.0.0.1"
port = 2763
certificate = "{files["ca"]}"
private_key = "{files["ca"]}"
ca_certificates = "{files["ca"]}"
require_client_certificate = true
[dicomweb]
url = "https://pacs.example.org:8443/dicom-web/"
timeout = 7.5
query_encoding = "strict"
page_size = 100
max_results = 0
max_connections = 3
retry_deadline = 0
max_retries = 9
verify = false
ca_bundle = "{files["ca"]}"
[dicomweb.auth]
type = "basic"
username = "orthanc"
password_env = "BRIDGE_TEST_PASSWORD"
[backends."cloud gw"]
ae_title = "CLOUD"
url = "https://cloud.example/v1"
page_size = 200
[backends."cloud gw".auth]
type = "oauth2"
token_url = "https://idp.example/token"
client_id = "bridge"
client_secret_file = "{files["client"]}"
scope = "dicom"
[backends.lan]
ae_title = "LAN"
url = "http://lan.example/dicom-web"
[backends.lan.auth]
type = "bearer"
token_file = "{files["token"]}"
[retrieve]
max_concurrent_fetches = 2
max_buffer_bytes = 2097152
fast_send = false
fast_http = false
[move]
calling_ae_title = "MOVER"
connect_timeout = 1.5
acse_timeout = 2
dimse_timeout = 3
[logging]
level = "debug"
format = "json"
[ops]
listen = "127.0.0.1:9100"
progress_interval = 0.5
[[peers]]
ae_title = "STORESCP"
host = "10.0.0.5"
port = 11113
[[peers]]
ae_title = "VIEWER"
host = "viewer.local"
""",
    )
    original = load_config(path)
    assert main(["config", "--config", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith(f"# dimse-bridge {bridge_package.__version__}: the effective config of ")
    printed = tmp_path / "printed.toml"
    printed.write_text(out, encoding="utf-8")
    again = load_config(printed)
    assert dataclasses.replace(again, source=original.source) == original
    # References are shown as references, never resolved.
    assert 'password_env = "BRIDGE_TEST_PASSWORD"' in out
    assert f'token_file = "{files["token"]}"' in out
    for secret in ("password-from-env", "token-from-file", "cs-file"):
        assert secret not in out
    # And printing the printed config gives the same TOML.
    assert main(["config", "--config", str(printed)]) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[1:] == out.splitlines()[1:]


def test_config_masks_inline_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(
        tmp_path,
        """
[dicomweb]
url = "https://bridge:url-password@pacs.example/dicom-web"
[dicomweb.auth]
type = "basic"
username = "orthanc"
password = "inline-password"
[backends.idp]
ae_title = "IDP"
url = "https://cloud.example/v1"
[backends.idp.auth]
type = "oauth2"
token_url = "https://svc:token-url-password@idp.example/token"
client_id = "bridge"
client_secret = "inline-client-secret"
[backends.static]
ae_title = "STATIC"
url = "https://other.example/v1"
[backends.static.auth]
type = "bearer"
token = "inline-token"
""",
    )
    original = load_config(path)
    assert main(["config", "--config", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    for secret in ("url-password", "inline-password", "token-url-password", "inline-client"):
        assert secret not in out
    assert "inline-token" not in out
    printed = tomllib.loads(out)
    assert printed["dicomweb"]["url"] == "https://bridge:***@pacs.example/dicom-web"
    assert printed["dicomweb"]["auth"]["password"] == "***"
    assert printed["backends"]["idp"]["auth"]["client_secret"] == "***"
    assert printed["backends"]["idp"]["auth"]["token_url"] == "https://svc:***@idp.example/token"
    assert printed["backends"]["static"]["auth"]["token"] == "***"
    # Parsed back, it is the same config with the secrets masked.
    masked_auth = Secret(value="***")
    idp, static = original.backends
    expected = dataclasses.replace(
        original,
        dicomweb=dataclasses.replace(
            original.dicomweb,
            url="https://bridge:***@pacs.example/dicom-web",
            auth=dataclasses.replace(original.dicomweb.auth, password=masked_auth),
        ),
        backends=(
            dataclasses.replace(
                idp,
                dicomweb=dataclasses.replace(
                    idp.dicomweb,
                    auth=dataclasses.replace(
                        idp.dicomweb.auth,
                        token_url="https://svc:***@idp.example/token",
                        client_secret=masked_auth,
                    ),
                ),
            ),
            dataclasses.replace(
                static,
                dicomweb=dataclasses.replace(
                    static.dicomweb,
                    auth=dataclasses.replace(static.dicomweb.auth, token=masked_auth),
                ),
            ),
        ),
    )
    assert parse_config(printed, original.source) == expected


def test_config_of_an_invalid_file_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[dimse]\nport = 70000\n")
    result = bridge("config", "--config", str(path))
    assert result.returncode == EXIT_CONFIG
    assert result.stdout == ""
    assert result.stderr == (
        f"dimse-bridge: invalid config: {path}: dimse.port: "
        "expected an integer between 1 and 65535, got 70000\n"
    )
