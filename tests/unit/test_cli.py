"""Unit tests for the command line: exit codes and messages of ``check`` and ``run``.

Runs ``python -m bridge`` in a subprocess; the only network is loopback (a tiny
``http.server`` standing in for a DICOMweb server, and sockets bound by the test).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bridge.cli import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, EXIT_UNREACHABLE, main

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
    assert (EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG, EXIT_UNREACHABLE) == (0, 1, 2, 3)


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


def test_check_ok(tmp_path: Path, fake_dicomweb: FakeServer) -> None:
    path = write_config(tmp_path, f'[dicomweb]\nurl = "{fake_dicomweb.url}"\n')
    result = bridge("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"ok: config {path}; AE DIMSE_BRIDGE on 0.0.0.0:11112; {fake_dicomweb.url}: "
        "QIDO-RS answered HTTP 200 (0 result, "
    )
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
