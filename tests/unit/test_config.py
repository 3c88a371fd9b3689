"""Unit tests for bridge.config: defaults, the example file, validation messages, loading."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from bridge.config import (
    EMBEDDED_SOURCE,
    ENV_CONFIG,
    Config,
    DicomwebConfig,
    DimseConfig,
    LoggingConfig,
    Peer,
    RetrieveConfig,
    load_config,
    parse_config,
)
from bridge.configdump import dump_config
from bridge.errors import ConfigError
from bridge.profiles import PROFILE_NAMES, PROFILES

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.toml"


def _write(tmp_path: Path, text: str, name: str = "bridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _load_error(tmp_path: Path, text: str) -> tuple[ConfigError, Path]:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value, path


# --- defaults -------------------------------------------------------------------------


def test_embedded_default_values() -> None:
    config = Config()
    assert config.dimse.ae_title == "DIMSE_BRIDGE"
    assert config.dimse.port == 11112
    assert config.dimse.host == "0.0.0.0"
    assert config.dimse.accept_unknown_peers is True
    assert config.dicomweb.url == "http://localhost:8042/dicom-web"
    assert config.dicomweb.timeout == 30.0
    assert config.dicomweb.query_encoding == "dicom"
    assert config.logging.level == "INFO"
    assert config.peers == ()
    assert config.source == EMBEDDED_SOURCE


def test_parse_empty_document_equals_embedded_default() -> None:
    assert parse_config({}) == Config()


def test_load_config_without_path_or_env_is_embedded_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    config = load_config()
    assert config == Config()
    assert config.source == EMBEDDED_SOURCE


def test_empty_env_var_means_embedded_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CONFIG, "")
    assert load_config() == Config()


def test_example_file_parses_to_exactly_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.source == str(EXAMPLE)
    assert dataclasses.replace(config, source=EMBEDDED_SOURCE) == Config()
    # Also field by field, so a failure says which section drifted.
    assert config.dimse == DimseConfig()
    assert config.dicomweb == DicomwebConfig()
    assert config.retrieve == RetrieveConfig()
    assert config.logging == LoggingConfig()
    assert config.peers == ()


# --- a full valid config --------------------------------------------------------------

FULL = """
[dimse]
ae_title = "  MY_BRIDGE  "
host = "127.0.0.1"
port = 4242
accept_unknown_peers = false
max_associations = 4
shutdown_timeout = 2.5
network_timeout = 10
max_pdu = 16384

[dicomweb]
url = "https://pacs.example.org:8443/dicom-web/"
timeout = 7.5
query_encoding = "strict"
page_size = 100
max_results = 0

[retrieve]
max_concurrent_fetches = 2
max_buffer_bytes = 2097152

[logging]
level = "debug"

[[peers]]
ae_title = "STORESCP"
host = "10.0.0.5"
port = 11113

[[peers]]
ae_title = "VIEWER"
host = "viewer.local"
"""


def test_full_valid_config(tmp_path: Path) -> None:
    path = _write(tmp_path, FULL)
    config = load_config(path)
    assert config == Config(
        dimse=DimseConfig(
            ae_title="MY_BRIDGE",
            host="127.0.0.1",
            port=4242,
            accept_unknown_peers=False,
            max_associations=4,
            shutdown_timeout=2.5,
            network_timeout=10.0,
            max_pdu=16384,
        ),
        dicomweb=DicomwebConfig(
            url="https://pacs.example.org:8443/dicom-web",
            timeout=7.5,
            query_encoding="strict",
            page_size=100,
            max_results=0,
        ),
        retrieve=RetrieveConfig(max_concurrent_fetches=2, max_buffer_bytes=2097152),
        logging=LoggingConfig(level="DEBUG"),
        peers=(
            Peer(ae_title="STORESCP", host="10.0.0.5", port=11113),
            Peer(ae_title="VIEWER", host="viewer.local", port=104),
        ),
        source=str(path),
    )
    assert isinstance(config.dicomweb.timeout, float)
    assert isinstance(config.dimse.network_timeout, float)


def test_peer_lookup_ignores_padding() -> None:
    config = parse_config(
        {
            "peers": [
                {"ae_title": "STORESCP", "host": "10.0.0.5", "port": 11113},
                {"ae_title": "OTHER", "host": "h"},
            ]
        }
    )
    expected = Peer(ae_title="STORESCP", host="10.0.0.5", port=11113)
    assert config.peer("STORESCP") == expected
    assert config.peer("STORESCP        ") == expected  # 16-character padded form
    assert config.peer(" STORESCP ") == expected
    assert config.peer("OTHER") == Peer(ae_title="OTHER", host="h", port=104)
    assert config.peer("UNKNOWN") is None
    assert config.peer("storescp") is None  # AE titles are case sensitive
    assert Config().peer("STORESCP") is None


def test_breaker_keys_and_backends_inherit_them() -> None:
    config = parse_config(
        {
            "dicomweb": {"breaker_threshold": 10, "breaker_cooldown": 2},
            "backends": {
                "cloud": {"ae_title": "CLOUD", "url": "http://cloud/dicom-web"},
                "off": {"ae_title": "OFF", "url": "http://off/dicom-web", "breaker_threshold": 0},
            },
        }
    )
    assert (config.dicomweb.breaker_threshold, config.dicomweb.breaker_cooldown) == (10, 2.0)
    cloud, off = config.backends
    assert (cloud.dicomweb.breaker_threshold, cloud.dicomweb.breaker_cooldown) == (10, 2.0)
    assert (off.dicomweb.breaker_threshold, off.dicomweb.breaker_cooldown) == (0, 2.0)
    assert DicomwebConfig().breaker_threshold == 3 and DicomwebConfig().breaker_cooldown == 5.0


# --- invalid configs ------------------------------------------------------------------

INVALID = [
    pytest.param("surprise = 1\n", "surprise", "unknown key", id="unknown-top-level"),
    pytest.param("[dimse]\nprot = 11112\n", "dimse.prot", "unknown key", id="unknown-in-dimse"),
    pytest.param("[dicomweb]\nuri = 'http://h'\n", "dicomweb.uri", "unknown key", id="unknown-dw"),
    pytest.param(
        "[dimse]\nport = '11112'\n",
        "dimse.port",
        "expected an integer, got a string",
        id="port-string",
    ),
    pytest.param(
        "[dimse]\naccept_unknown_peers = 1\n",
        "dimse.accept_unknown_peers",
        "expected true or false, got an integer",
        id="bool-as-int",
    ),
    pytest.param(
        "[dicomweb]\ntimeout = '30'\n",
        "dicomweb.timeout",
        "expected a number of seconds, got a string",
        id="timeout-string",
    ),
    pytest.param(
        "[dimse]\nport = true\n",
        "dimse.port",
        "expected an integer, got a boolean",
        id="bool-for-int",
    ),
    pytest.param(
        "[dicomweb]\ntimeout = true\n",
        "dicomweb.timeout",
        "expected a number of seconds, got a boolean",
        id="bool-for-float",
    ),
    pytest.param(
        "[dicomweb]\ntimeout = 0\n",
        "dicomweb.timeout",
        "expected a number greater than 0.0, got 0",
        id="timeout-zero",
    ),
    pytest.param(
        "[dimse]\nae_title = 'ABCDEFGHIJKLMNOPQ'\n",
        "dimse.ae_title",
        "at most 16 characters, got 17",
        id="ae-too-long",
    ),
    pytest.param(
        "[dimse]\nae_title = ''\n",
        "dimse.ae_title",
        "got an empty one",
        id="ae-empty",
    ),
    pytest.param(
        "[dimse]\nae_title = '    '\n",
        "dimse.ae_title",
        "got an empty one",
        id="ae-blank",
    ),
    pytest.param(
        "[dimse]\nae_title = 'A\\B'\n",
        "dimse.ae_title",
        "printable ASCII characters without backslash",
        id="ae-backslash",
    ),
    pytest.param(
        "[dimse]\nae_title = 'BRÜCKE'\n",
        "dimse.ae_title",
        "printable ASCII characters without backslash",
        id="ae-non-ascii",
    ),
    pytest.param(
        "[dimse]\nport = 0\n",
        "dimse.port",
        "expected an integer between 1 and 65535, got 0",
        id="port-0",
    ),
    pytest.param(
        "[dimse]\nport = 70000\n",
        "dimse.port",
        "expected an integer between 1 and 65535, got 70000",
        id="port-70000",
    ),
    pytest.param(
        "[dimse]\nhost = ''\n",
        "dimse.host",
        "expected a host name or IP address",
        id="host-empty",
    ),
    pytest.param(
        "[dicomweb]\nurl = 'localhost:8042/dicom-web'\n",
        "dicomweb.url",
        "expected an http:// or https:// URL with a host",
        id="url-no-scheme",
    ),
    pytest.param(
        "[dicomweb]\nurl = 'ftp://pacs/dicom-web'\n",
        "dicomweb.url",
        "expected an http:// or https:// URL with a host",
        id="url-ftp",
    ),
    pytest.param(
        "[dicomweb]\nurl = 'http://'\n",
        "dicomweb.url",
        "expected an http:// or https:// URL with a host",
        id="url-no-host",
    ),
    pytest.param(
        "[dicomweb]\nurl = 'http://pacs/dicom-web?token=1'\n",
        "dicomweb.url",
        "expected a base URL without query or fragment",
        id="url-query",
    ),
    pytest.param(
        "[dicomweb]\nurl = 'http://pacs/dicom-web#x'\n",
        "dicomweb.url",
        "expected a base URL without query or fragment",
        id="url-fragment",
    ),
    pytest.param(
        "[dicomweb]\nurl = 'http://h:99999/dicom-web'\n",
        "dicomweb.url",
        "expected an http(s) URL, got 'http://h:99999/dicom-web'",
        id="url-bad-port",
    ),
    pytest.param(
        "[dicomweb]\nquery_encoding = 'loose'\n",
        "dicomweb.query_encoding",
        'expected "dicom" or "strict", got \'loose\'',
        id="query-encoding",
    ),
    pytest.param(
        "[logging]\nlevel = 'verbose'\n",
        "logging.level",
        "expected one of DEBUG, INFO, WARNING, ERROR, got 'VERBOSE'",
        id="log-level",
    ),
    pytest.param(
        "dimse = 5\n",
        "dimse",
        "expected a table",
        id="section-not-table",
    ),
    pytest.param(
        "peers = 'STORESCP'\n",
        "peers",
        "expected an array of tables ([[peers]])",
        id="peers-string",
    ),
    pytest.param(
        "[peers]\nae_title = 'STORESCP'\nhost = 'h'\n",
        "peers",
        "expected an array of tables ([[peers]])",
        id="peers-single-table",
    ),
    pytest.param(
        "[[peers]]\nae_title = 'A'\nhost = 'h1'\n[[peers]]\nae_title = 'A '\nhost = 'h2'\n",
        "peers[1].ae_title",
        "expected a unique AE title, 'A' repeats",
        id="peer-duplicate",
    ),
    pytest.param(
        "[dicomweb]\nbreaker_threshold = -1\n",
        "dicomweb.breaker_threshold",
        "expected an integer between 0 and 1000, got -1",
        id="breaker-threshold-negative",
    ),
    pytest.param(
        "[dicomweb]\nbreaker_cooldown = 0\n",
        "dicomweb.breaker_cooldown",
        "expected a number greater than 0.0",
        id="breaker-cooldown-zero",
    ),
    pytest.param(
        "[[peers]]\nae_title = 'STORESCP'\nport = 104\n",
        "peers[0].host",
        "expected the peer's host name or IP address",
        id="peer-missing-host",
    ),
    pytest.param(
        "[[peers]]\nhost = 'h'\n",
        "peers[0].ae_title",
        "got an empty one",
        id="peer-missing-ae",
    ),
    pytest.param(
        "[[peers]]\nae_title = 'A'\nhost = 'h'\naddress = 'x'\n",
        "peers[0].address",
        "unknown key",
        id="peer-unknown-key",
    ),
]


@pytest.mark.parametrize(("text", "key", "expected"), INVALID)
def test_invalid_config_names_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    error, path = _load_error(tmp_path, text)
    assert error.source == str(path)
    assert error.key == key
    assert expected in error.expected
    assert str(error).startswith(f"{path}: {key}: ")
    assert expected in str(error)


def test_unknown_key_message_lists_known_keys(tmp_path: Path) -> None:
    error, _ = _load_error(tmp_path, "[dimse]\nprot = 11112\n")
    assert "port" in error.expected
    assert "ae_title" in error.expected


def test_parse_config_uses_given_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"dimse": {"port": 0}}, "some.toml")
    assert str(info.value) == (
        "some.toml: dimse.port: expected an integer between 1 and 65535, got 0"
    )


# --- load_config ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.key == "(file)"
    assert info.value.expected == "file not found"


def test_invalid_toml(tmp_path: Path) -> None:
    error, path = _load_error(tmp_path, "[dimse\nport = 1\n")
    assert error.source == str(path)
    assert error.key == "(syntax)"
    assert error.expected.startswith("invalid TOML: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("[dimse]\nae_title = 'BR\xdcCKE'\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "(file)"
    assert info.value.expected == "expected UTF-8 text"


def test_env_var_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "[dimse]\nport = 4000\n", "env.toml")
    monkeypatch.setenv(ENV_CONFIG, str(path))
    config = load_config()
    assert config.dimse.port == 4000
    assert config.source == str(path)


def test_explicit_path_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_path = _write(tmp_path, "[dimse]\nport = 4000\n", "env.toml")
    explicit = _write(tmp_path, "[dimse]\nport = 5000\n", "explicit.toml")
    monkeypatch.setenv(ENV_CONFIG, str(env_path))
    config = load_config(explicit)
    assert config.dimse.port == 5000
    assert config.source == str(explicit)


def test_env_var_pointing_at_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "gone.toml"
    monkeypatch.setenv(ENV_CONFIG, str(missing))
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value) == f"{missing}: (file): file not found"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[dicomweb]\ntimeout = nan\n", "dicomweb.timeout"),
        ("[dimse]\nshutdown_timeout = nan\n", "dimse.shutdown_timeout"),
    ],
    ids=["timeout", "shutdown_timeout"],
)
def test_nan_seconds_are_rejected(tmp_path: Path, text: str, key: str) -> None:
    error, _ = _load_error(tmp_path, text)
    assert error.key == key


@pytest.mark.parametrize(
    ("listen", "address"),
    [("", None), ("0.0.0.0:9090", ("0.0.0.0", 9090)), ("[::1]:9090", ("::1", 9090))],
)
def test_ops_listen_is_parsed_once_into_an_address(
    listen: str, address: tuple[str, int] | None
) -> None:
    ops = parse_config({"ops": {"listen": listen}}).ops
    assert (ops.listen, ops.address) == (listen, address)


@pytest.mark.parametrize("listen", ["9090", ":9090", "host:", "host:70000", "host:0"])
def test_ops_listen_rejects_what_the_ops_listener_could_not_bind(listen: str) -> None:
    with pytest.raises(ConfigError, match="ops.listen"):
        parse_config({"ops": {"listen": listen}})


# --- server profiles and capabilities (issue 11) --------------------------------------


def test_profile_sets_capability_defaults_and_keys_override_them() -> None:
    config = parse_config(
        tomllib.loads(
            """
[dicomweb]
profile = "azure"
[dicomweb.capabilities]
max_limit = 100
study_search_keys = ["PatientID", "StudyDate"]
wado_rate = 10
"""
        )
    )
    caps = config.dicomweb.capabilities
    assert config.dicomweb.profile == "azure"
    assert caps.max_limit == 100
    assert caps.study_search_keys == frozenset({"PatientID", "StudyDate"})
    assert caps.wado_rate == 10.0
    # Untouched keys keep the profile's values.
    assert caps.stow_implicit_vr is False
    assert caps.retrieve_syntaxes == PROFILES["azure"].retrieve_syntaxes


def test_a_backend_inherits_the_default_profile_unless_it_names_its_own() -> None:
    config = parse_config(
        tomllib.loads(
            """
[dicomweb]
profile = "google"
[dicomweb.capabilities]
max_limit = 10
[backends.same]
ae_title = "SAME"
[backends.aws]
ae_title = "AWS"
profile = "aws"
[backends.aws.capabilities]
retrieve_syntaxes = ["*"]
"""
        )
    )
    by_name = {b.name: b.dicomweb for b in config.backends}
    assert by_name["same"].profile == "google"
    assert by_name["same"].capabilities.max_limit == 10
    assert by_name["aws"].capabilities == dataclasses.replace(
        PROFILES["aws"], retrieve_syntaxes=None
    )


@pytest.mark.parametrize(
    ("toml", "key", "expected"),
    [
        ('[dicomweb]\nprofile = "gcp"', "dicomweb.profile", "expected one of generic"),
        (
            "[dicomweb.capabilities]\nmax_limit = -1",
            "dicomweb.capabilities.max_limit",
            "at least 0",
        ),
        (
            "[dicomweb.capabilities]\nwado_rate = -2",
            "dicomweb.capabilities.wado_rate",
            "at least 0",
        ),
        (
            '[dicomweb.capabilities]\nwildcards = "no"',
            "dicomweb.capabilities.wildcards",
            "true or false",
        ),
        (
            "[dicomweb.capabilities]\nstudy_search_keys = 3",
            "dicomweb.capabilities.study_search_keys",
            "array of strings",
        ),
        (
            "[dicomweb.capabilities]\nmax_rows = 3",
            "dicomweb.capabilities.max_rows",
            "unknown key",
        ),
    ],
)
def test_invalid_profile_and_capabilities_name_the_key(toml: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(toml))
    assert err.value.key == key
    assert expected in str(err.value)


def test_every_profile_dumps_and_reloads_to_the_same_capabilities() -> None:
    for name in PROFILE_NAMES:
        config = parse_config({"dicomweb": {"profile": name}})
        dumped = tomllib.loads(dump_config(config, ""))
        assert parse_config(dumped).dicomweb == config.dicomweb, name
