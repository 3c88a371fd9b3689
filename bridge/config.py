"""The one configuration object: frozen dataclasses, a pure parser and a TOML loader.

The TOML shape (``[dimse]``, ``[dicomweb]``, ``[[peers]]`` and their first keys) is a
contract relied on by tooling outside this repository: keys may be added, never renamed
or given another meaning. ``config.example.toml`` documents every key with its default.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from bridge.errors import ConfigError
from bridge.profiles import (
    GENERIC,
    KEY_SET_FIELDS,
    PROFILE_NAMES,
    PROFILES,
    Capabilities,
    ProfileName,
)

ENV_CONFIG = "DIMSE_BRIDGE_CONFIG"
EMBEDDED_SOURCE = "<embedded default config>"

QueryEncoding = Literal["dicom", "strict"]


@dataclass(frozen=True)
class Peer:
    """A known DIMSE peer: a C-MOVE destination and an entry of the allow-list."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class TlsListenerConfig:
    """``[dimse.tls]``: a DICOM TLS listener beside the plain one."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 2762
    certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    require_client_certificate: bool = False


@dataclass(frozen=True)
class DimseConfig:
    ae_title: str = "DIMSE_BRIDGE"
    host: str = "0.0.0.0"
    port: int = 11112
    accept_unknown_peers: bool = True
    # A calling AE title listed in [[peers]] must come from that peer's host.
    check_peer_host: bool = False
    max_associations: int = 16
    # Seconds a shutdown waits for running associations before aborting them.
    shutdown_timeout: float = 30.0
    # Seconds without a PDU after which pynetdicom drops an association (network timeout).
    network_timeout: float = 60.0
    # Largest P-DATA PDU we accept (0 = unlimited).
    max_pdu: int = 0
    tls: TlsListenerConfig = field(default_factory=TlsListenerConfig)


AuthType = Literal["none", "basic", "bearer", "oauth2", "google", "aws"]
AUTH_TYPES: tuple[AuthType, ...] = ("none", "basic", "bearer", "oauth2", "google", "aws")


@dataclass(frozen=True)
class Secret:
    """Where a secret comes from: inline, an environment variable, or a file (re-read
    when it changes). Only the source is kept here; the value is read when needed."""

    value: str = ""
    env: str = ""
    file: str = ""

    @property
    def is_set(self) -> bool:
        return bool(self.value or self.env or self.file)


@dataclass(frozen=True)
class AuthConfig:
    """``[dicomweb.auth]``: how the bridge authenticates to the DICOMweb server."""

    type: AuthType = "none"
    # basic
    username: str = ""
    password: Secret = field(default_factory=Secret)
    # bearer (static, environment or file; the file is re-read when it changes)
    token: Secret = field(default_factory=Secret)
    # oauth2 client credentials (Keycloak, Azure AD, ...)
    token_url: str = ""
    client_id: str = ""
    client_secret: Secret = field(default_factory=Secret)
    scope: str = ""
    # google: a service-account file, else Application Default Credentials
    credentials_file: str = ""
    scopes: tuple[str, ...] = ("https://www.googleapis.com/auth/cloud-platform",)
    # aws: SigV4 (credentials from botocore's usual chain)
    region: str = ""
    service: str = "medical-imaging"
    profile: str = ""


@dataclass(frozen=True)
class DicomwebConfig:
    url: str = "http://localhost:8042/dicom-web"
    timeout: float = 30.0
    # "dicom": leave the characters DICOM matching needs (^ * ? , - .) unescaped in query
    # strings (Orthanc 1.10 does not percent-decode them); "strict": percent-encode them.
    query_encoding: QueryEncoding = "dicom"
    # QIDO-RS page size (limit=); paging always goes on to the end of the results.
    page_size: int = 500
    # Largest number of C-FIND matches answered; hitting it ends the C-FIND with a
    # failure whose ErrorComment says so (0 = no limit).
    max_results: int = 10000
    # Cap on concurrent HTTP requests to this server, all associations together.
    max_connections: int = 32
    # Idempotent reads (QIDO-RS, WADO-RS) are retried on resets, 429, 502, 503, 504
    # with jittered backoff (honouring Retry-After) until this many seconds have passed.
    retry_deadline: float = 30.0
    max_retries: int = 4
    # Circuit breaker (bridge/dicomweb/breaker.py): after this many different requests
    # in a row found the server unreachable (refused, timeout, 502/504), fail requests at
    # once for breaker_cooldown seconds, then let one through as a probe (0 = off).
    breaker_threshold: int = 3
    breaker_cooldown: float = 5.0
    # TLS: verification is on unless turned off; a CA bundle and a client certificate
    # (mutual TLS) may be given as PEM files.
    verify: bool = True
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""
    auth: AuthConfig = field(default_factory=AuthConfig)
    # What the server can do (bridge/profiles.py): the profile's defaults with any
    # [dicomweb.capabilities] keys applied.
    profile: ProfileName = "generic"
    capabilities: Capabilities = GENERIC


@dataclass(frozen=True)
class Backend:
    """A named DICOMweb backend, selected by the called AE title an SCU uses."""

    name: str
    ae_title: str
    dicomweb: DicomwebConfig


@dataclass(frozen=True)
class RetrieveConfig:
    # Concurrent WADO-RS requests per C-GET/C-MOVE (1 = no fetch-ahead, the old design).
    max_concurrent_fetches: int = 8
    # Bytes of fetched instances held in memory per C-GET/C-MOVE, ahead of sending.
    # A larger instance is written to a temporary file and sent from it in pieces.
    max_buffer_bytes: int = 64 * 1024 * 1024
    # Send instances the peer takes in their stored syntax without decoding and
    # re-encoding them (bridge/dimse/fastsend.py); false = always pynetdicom's encoder.
    fast_send: bool = True
    # Carry DICOMweb requests on the bridge's h11 transport (bridge/dicomweb/transport.py)
    # under httpx, for every backend; false = httpx's default transport.
    fast_http: bool = True
    # Allow converting an instance into a lossy transfer syntax (server transcoding, e.g.
    # to JPEG Baseline) when the peer accepts nothing lossless for its SOP class. Off: such
    # a sub-operation fails; instances stored lossy are still sent as stored.
    allow_lossy: bool = False


@dataclass(frozen=True)
class MoveConfig:
    # Calling AE title of the C-MOVE sub-association ("" = dimse.ae_title).
    calling_ae_title: str = ""
    # Seconds to open the TCP connection to a Move Destination.
    connect_timeout: float = 10.0
    # Seconds to wait for A-ASSOCIATE-AC/RJ and for each DIMSE response (C-STORE-RSP).
    # pynetdicom applies both to every association of the bridge, C-GET's included.
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    # "text" for a terminal, "json" for log collectors (one JSON object per line).
    format: str = "text"


@dataclass(frozen=True)
class OpsConfig:
    # "host:port" of the operators' HTTP listener (/metrics, /healthz, /readyz); "" = off.
    listen: str = ""
    # Seconds between progress lines of a long retrieve.
    progress_interval: float = 10.0

    @property
    def address(self) -> tuple[str, int] | None:
        """`listen` as (host, port), None when off; parse_config already checked it."""
        return parse_listen(self.listen) if self.listen else None


def parse_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:9090"`` for IPv6) → (host, port); ValueError if not one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f'expected "host:port", got {listen!r}')
    host = host.removeprefix("[").removesuffix("]")
    number = int(port)
    if not 0 <= number < 65536:
        raise ValueError(f"port out of range in {listen!r}")
    return host, number


StoreMode = Literal["direct", "spool"]


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``: how C-STORE reaches the server: at once ("direct"), or through the
    durable store-and-forward spool (bridge/spool/)."""

    mode: StoreMode = "direct"
    # Local directory of the spool (instance files and the SQLite index); spool mode needs it.
    spool_dir: str = ""
    # Start even when spool_dir is on tmpfs (lost at reboot: nothing acknowledged is safe).
    allow_tmpfs: bool = False
    upload_workers: int = 4
    batch_max_instances: int = 20
    batch_max_bytes: int = 64 * 1024 * 1024
    max_spool_bytes: int = 10 * 1024**3
    min_free_bytes: int = 1024**3
    # Seconds: first retry delay, longest delay, and how long before dead-lettering.
    retry_initial: float = 5.0
    retry_max: float = 600.0
    retry_for: float = 7 * 86400.0
    # Days done rows are kept (storage commitment, audit).
    keep_done_days: float = 7.0
    # Seconds a storage commitment waits for spooled instances to be uploaded.
    commitment_timeout: float = 3600.0


@dataclass(frozen=True)
class Config:
    dimse: DimseConfig = field(default_factory=DimseConfig)
    dicomweb: DicomwebConfig = field(default_factory=DicomwebConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    move: MoveConfig = field(default_factory=MoveConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    peers: tuple[Peer, ...] = ()
    backends: tuple[Backend, ...] = ()
    source: str = EMBEDDED_SOURCE

    @property
    def all_backends(self) -> tuple[Backend, ...]:
        """Every backend, the default one first: ``[dicomweb]`` as "default", called by
        dimse.ae_title, then each ``[backends.NAME]``. The one list the bridge reads."""
        return (Backend("default", self.dimse.ae_title, self.dicomweb), *self.backends)

    def peer(self, ae_title: str) -> Peer | None:
        """The peer with this AE title (trailing/leading spaces ignored), if configured."""
        wanted = ae_title.strip()
        for peer in self.peers:
            if peer.ae_title == wanted:
                return peer
        return None


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _Table:
    """Reads typed keys out of one TOML table and remembers which ones were used."""

    def __init__(self, source: str, prefix: str, raw: object) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(source, prefix, "expected a table")
        self.source = source
        self.prefix = prefix
        self.raw: Mapping[str, Any] = raw
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, expected: str) -> ConfigError:
        return ConfigError(self.source, self._key(key), expected)

    def _get(self, key: str) -> object:
        self.used.add(key)
        return self.raw.get(key)

    def str_(self, key: str, default: str) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_type_name(value)}")
        return value

    def bool_(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_type_name(value)}")
        return value

    def int_(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_type_name(value)}")
        if value < lo or (hi is not None and value > hi):
            span = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise self.error(key, f"expected an integer {span}, got {value}")
        return value

    def float_(self, key: str, default: float, lo_exclusive: float = 0.0) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number of seconds, got {_type_name(value)}")
        if not math.isfinite(value) or value <= lo_exclusive:
            raise self.error(key, f"expected a number greater than {lo_exclusive}, got {value}")
        return float(value)

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected an array of strings, got {_type_name(value)}")
        return tuple(value)

    def path(self, key: str) -> str:
        """A file path that must exist when given."""
        value = self.str_(key, "")
        if value and not Path(value).is_file():
            raise self.error(key, f"expected an existing file, {value!r} is not one")
        return value

    def sub(self, name: str) -> _Table:
        self.used.add(name)
        return _Table(self.source, self._key(name), self.raw.get(name, {}))

    def finish(self, nested: tuple[str, ...] = ()) -> None:
        unknown = sorted(set(self.raw) - self.used - set(nested))
        if unknown:
            known = ", ".join(sorted(self.used))
            raise self.error(unknown[0], f"unknown key (known keys here: {known})")


def _type_name(value: object) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def validate_ae_title(value: str) -> str | None:
    """Why `value` is not a valid AE title (PS3.5 AE VR), or None when it is."""
    if not value.strip():
        return "expected an AE title of 1 to 16 characters, got an empty one"
    if len(value) > 16:
        return f"expected an AE title of at most 16 characters, got {len(value)}"
    if "\\" in value or any(not (0x20 <= ord(c) < 0x7F) for c in value):
        return "expected an AE title of printable ASCII characters without backslash"
    return None


def _ae_title(table: _Table, key: str, default: str) -> str:
    value = table.str_(key, default)
    problem = validate_ae_title(value)
    if problem:
        raise table.error(key, f"{problem} ({value!r})")
    return value.strip()


def _url(table: _Table, key: str, default: str) -> str:
    value = table.str_(key, default)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise table.error(key, f"expected an http(s) URL, got {value!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise table.error(key, f"expected an http:// or https:// URL with a host, got {value!r}")
    if parts.query or parts.fragment:
        raise table.error(key, f"expected a base URL without query or fragment, got {value!r}")
    return value.rstrip("/")


def _secret(table: _Table, name: str) -> Secret:
    """``name`` (inline), ``name_env`` or ``name_file``: at most one of them."""
    secret = Secret(
        value=table.str_(name, ""),
        env=table.str_(f"{name}_env", ""),
        file=table.str_(f"{name}_file", ""),
    )
    if sum(bool(x) for x in (secret.value, secret.env, secret.file)) > 1:
        raise table.error(name, f"expected one of {name}, {name}_env, {name}_file, not several")
    if secret.env and secret.env not in os.environ:
        raise table.error(
            f"{name}_env", f"expected the environment variable {secret.env} to be set"
        )
    if secret.file and not Path(secret.file).is_file():
        raise table.error(f"{name}_file", f"expected an existing file, {secret.file!r} is not one")
    return secret


def _auth(table: _Table) -> AuthConfig:
    kind = table.str_("type", "none")
    if kind not in AUTH_TYPES:
        raise table.error("type", f"expected one of {', '.join(AUTH_TYPES)}, got {kind!r}")
    auth = AuthConfig(
        type=kind,
        username=table.str_("username", ""),
        password=_secret(table, "password"),
        token=_secret(table, "token"),
        token_url=table.str_("token_url", ""),
        client_id=table.str_("client_id", ""),
        client_secret=_secret(table, "client_secret"),
        scope=table.str_("scope", ""),
        credentials_file=table.path("credentials_file"),
        scopes=table.str_list("scopes", AuthConfig.scopes),
        region=table.str_("region", ""),
        service=table.str_("service", AuthConfig.service),
        profile=table.str_("profile", ""),
    )
    required: dict[str, tuple[str, ...]] = {
        "basic": ("username", "password"),
        "bearer": ("token",),
        "oauth2": ("token_url", "client_id", "client_secret"),
        "aws": ("region",),
    }
    for key in required.get(kind, ()):
        value = getattr(auth, key)
        if not (value.is_set if isinstance(value, Secret) else value):
            raise table.error(key, f"expected a value: auth type {kind!r} needs it")
    if auth.token_url:
        _url(table, "token_url", "")
    table.finish()
    return auth


def _capabilities(c: _Table, start: Capabilities) -> Capabilities:
    """A capabilities table: each key present overrides `start` (the profile's value)."""
    overrides: dict[str, object] = {}
    for f in fields(Capabilities):
        if f.name not in c.raw:
            continue
        current = getattr(start, f.name)
        if f.name in KEY_SET_FIELDS:
            values = c.str_list(f.name, ())
            overrides[f.name] = None if "*" in values else frozenset(values)
        elif isinstance(current, bool):
            overrides[f.name] = c.bool_(f.name, current)
        elif isinstance(current, float):
            rate = c.float_(f.name, 1.0, -math.inf)
            if rate < 0:
                raise c.error(f.name, f"expected a number of at least 0, got {rate}")
            overrides[f.name] = rate
        else:
            overrides[f.name] = c.int_(f.name, current, 0)
    c.finish()
    return replace(start, **overrides)  # type: ignore[arg-type]


def _dicomweb(w: _Table, base: DicomwebConfig) -> DicomwebConfig:
    """A [dicomweb] table, or a [backends.NAME] one (whose defaults are `base`)."""
    profile = w.str_("profile", base.profile)
    if profile not in PROFILE_NAMES:
        raise w.error("profile", f"expected one of {', '.join(PROFILE_NAMES)}, got {profile!r}")
    # A profile named here starts from its own defaults; otherwise inherit `base`'s.
    start = PROFILES[profile] if "profile" in w.raw else base.capabilities
    capabilities = _capabilities(w.sub("capabilities"), start)
    encoding = w.str_("query_encoding", base.query_encoding)
    if encoding not in ("dicom", "strict"):
        raise w.error("query_encoding", f'expected "dicom" or "strict", got {encoding!r}')
    config = DicomwebConfig(
        url=_url(w, "url", base.url),
        timeout=w.float_("timeout", base.timeout),
        query_encoding="dicom" if encoding == "dicom" else "strict",
        page_size=w.int_("page_size", base.page_size, 1, 100000),
        max_results=w.int_("max_results", base.max_results, 0),
        max_connections=w.int_("max_connections", base.max_connections, 1, 1000),
        retry_deadline=w.float_("retry_deadline", base.retry_deadline, -1.0),
        max_retries=w.int_("max_retries", base.max_retries, 0, 100),
        breaker_threshold=w.int_("breaker_threshold", base.breaker_threshold, 0, 1000),
        breaker_cooldown=w.float_("breaker_cooldown", base.breaker_cooldown),
        verify=w.bool_("verify", base.verify),
        ca_bundle=w.path("ca_bundle") or base.ca_bundle,
        client_cert=w.path("client_cert") or base.client_cert,
        client_key=w.path("client_key") or base.client_key,
        auth=_auth(w.sub("auth")) if "auth" in w.raw else base.auth,
        profile=profile,
        capabilities=capabilities,
    )
    if config.client_key and not config.client_cert:
        raise w.error("client_cert", "expected a client certificate to go with client_key")
    if "auth" not in w.raw:
        w.used.add("auth")
    w.finish()
    return config


def _store(s: _Table) -> StoreConfig:
    mode = s.str_("mode", StoreConfig.mode)
    if mode not in ("direct", "spool"):
        raise s.error("mode", f'expected "direct" or "spool", got {mode!r}')
    store = StoreConfig(
        mode="spool" if mode == "spool" else "direct",
        spool_dir=s.str_("spool_dir", StoreConfig.spool_dir),
        allow_tmpfs=s.bool_("allow_tmpfs", StoreConfig.allow_tmpfs),
        upload_workers=s.int_("upload_workers", StoreConfig.upload_workers, 1, 64),
        batch_max_instances=s.int_(
            "batch_max_instances", StoreConfig.batch_max_instances, 1, 1000
        ),
        batch_max_bytes=s.int_("batch_max_bytes", StoreConfig.batch_max_bytes, 1),
        max_spool_bytes=s.int_("max_spool_bytes", StoreConfig.max_spool_bytes, 1),
        min_free_bytes=s.int_("min_free_bytes", StoreConfig.min_free_bytes, 0),
        retry_initial=s.float_("retry_initial", StoreConfig.retry_initial),
        retry_max=s.float_("retry_max", StoreConfig.retry_max),
        retry_for=s.float_("retry_for", StoreConfig.retry_for),
        keep_done_days=s.float_("keep_done_days", StoreConfig.keep_done_days, -1.0),
        commitment_timeout=s.float_("commitment_timeout", StoreConfig.commitment_timeout),
    )
    if store.mode == "spool" and not store.spool_dir:
        raise s.error("spool_dir", 'expected a local directory: mode = "spool" needs one')
    if store.spool_dir and not Path(store.spool_dir).is_absolute():
        raise s.error("spool_dir", f"expected an absolute path, got {store.spool_dir!r}")
    if store.retry_max < store.retry_initial:
        raise s.error("retry_max", "expected a value of at least retry_initial")
    s.finish()
    return store


def parse_config(data: Mapping[str, Any], source: str = EMBEDDED_SOURCE) -> Config:
    """Build a Config from parsed TOML; raises ConfigError naming the key and the expectation."""
    top = _Table(source, "", data)

    def sub(name: str) -> _Table:
        top.used.add(name)
        return _Table(source, name, data.get(name, {}))

    d = sub("dimse")
    t = d.sub("tls")
    tls = TlsListenerConfig(
        enabled=t.bool_("enabled", False),
        host=t.str_("host", TlsListenerConfig.host),
        port=t.int_("port", TlsListenerConfig.port, 1, 65535),
        certificate=t.path("certificate"),
        private_key=t.path("private_key"),
        ca_certificates=t.path("ca_certificates"),
        require_client_certificate=t.bool_("require_client_certificate", False),
    )
    if tls.enabled and not (tls.certificate and tls.private_key):
        raise t.error("certificate", "expected certificate and private_key when enabled")
    if tls.require_client_certificate and not tls.ca_certificates:
        raise t.error("ca_certificates", "expected the CAs that sign client certificates")
    t.finish()
    dimse = DimseConfig(
        ae_title=_ae_title(d, "ae_title", DimseConfig.ae_title),
        host=d.str_("host", DimseConfig.host),
        port=d.int_("port", DimseConfig.port, 1, 65535),
        accept_unknown_peers=d.bool_("accept_unknown_peers", DimseConfig.accept_unknown_peers),
        check_peer_host=d.bool_("check_peer_host", DimseConfig.check_peer_host),
        max_associations=d.int_("max_associations", DimseConfig.max_associations, 1, 1000),
        shutdown_timeout=d.float_("shutdown_timeout", DimseConfig.shutdown_timeout),
        network_timeout=d.float_("network_timeout", DimseConfig.network_timeout),
        max_pdu=d.int_("max_pdu", DimseConfig.max_pdu, 0, 2**32 - 1),
        tls=tls,
    )
    if not dimse.host:
        raise d.error("host", "expected a host name or IP address to listen on")
    if tls.enabled and tls.port == dimse.port and tls.host == dimse.host:
        raise t.error("port", "expected a port other than dimse.port")
    d.finish()

    w = sub("dicomweb")
    dicomweb = _dicomweb(w, DicomwebConfig())

    b = sub("backends")
    backends: list[Backend] = []
    for name in sorted(b.raw):
        table = b.sub(name)
        ae = _ae_title(table, "ae_title", "")
        if ae == dimse.ae_title or any(existing.ae_title == ae for existing in backends):
            raise table.error("ae_title", f"expected a called AE title of its own, {ae!r} is taken")
        # A backend starts from the default backend's settings, auth excepted.
        backends.append(Backend(name, ae, _dicomweb(table, replace(dicomweb, auth=AuthConfig()))))
    b.finish()

    r = sub("retrieve")
    retrieve = RetrieveConfig(
        max_concurrent_fetches=r.int_(
            "max_concurrent_fetches", RetrieveConfig.max_concurrent_fetches, 1, 64
        ),
        max_buffer_bytes=r.int_("max_buffer_bytes", RetrieveConfig.max_buffer_bytes, 1024 * 1024),
        fast_send=r.bool_("fast_send", RetrieveConfig.fast_send),
        fast_http=r.bool_("fast_http", RetrieveConfig.fast_http),
        allow_lossy=r.bool_("allow_lossy", RetrieveConfig.allow_lossy),
    )
    r.finish()

    m = sub("move")
    calling = m.str_("calling_ae_title", MoveConfig.calling_ae_title)
    if calling:
        calling = _ae_title(m, "calling_ae_title", calling)
    move = MoveConfig(
        calling_ae_title=calling,
        connect_timeout=m.float_("connect_timeout", MoveConfig.connect_timeout),
        acse_timeout=m.float_("acse_timeout", MoveConfig.acse_timeout),
        dimse_timeout=m.float_("dimse_timeout", MoveConfig.dimse_timeout),
    )
    m.finish()

    lg = sub("logging")
    level = lg.str_("level", LoggingConfig.level).upper()
    if level not in _LOG_LEVELS:
        raise lg.error("level", f"expected one of {', '.join(_LOG_LEVELS)}, got {level!r}")
    log_format = lg.str_("format", LoggingConfig.format)
    if log_format not in ("text", "json"):
        raise lg.error("format", f'expected "text" or "json", got {log_format!r}')
    lg.finish()

    o = sub("ops")
    listen = o.str_("listen", OpsConfig.listen)
    if listen:
        try:
            _, port = parse_listen(listen)
        except ValueError:
            port = 0
        # Port 0 (any free port) is for tests that start the listener themselves.
        if port == 0:
            raise o.error("listen", f'expected "host:port", got {listen!r}')
    ops = OpsConfig(
        listen=listen,
        progress_interval=o.float_("progress_interval", OpsConfig.progress_interval),
    )
    o.finish()

    store = _store(sub("store"))

    top.used.add("peers")
    raw_peers = data.get("peers", [])
    if not isinstance(raw_peers, list):
        raise ConfigError(source, "peers", "expected an array of tables ([[peers]])")
    peers: list[Peer] = []
    for index, raw in enumerate(raw_peers):
        p = _Table(source, f"peers[{index}]", raw)
        peer = Peer(
            ae_title=_ae_title(p, "ae_title", ""),
            host=p.str_("host", ""),
            port=p.int_("port", 104, 1, 65535),
        )
        if not peer.host:
            raise p.error("host", "expected the peer's host name or IP address")
        p.finish()
        if any(existing.ae_title == peer.ae_title for existing in peers):
            raise p.error("ae_title", f"expected a unique AE title, {peer.ae_title!r} repeats")
        peers.append(peer)

    top.finish()
    return Config(
        dimse=dimse,
        dicomweb=dicomweb,
        retrieve=retrieve,
        move=move,
        logging=LoggingConfig(level=level, format=log_format),
        ops=ops,
        store=store,
        peers=tuple(peers),
        backends=tuple(backends),
        source=source,
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config from `path`, else ``$DIMSE_BRIDGE_CONFIG``, else the embedded default."""
    if path is None:
        path = os.environ.get(ENV_CONFIG) or None
    if path is None:
        return parse_config({}, EMBEDDED_SOURCE)
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(source, "(file)", "file not found") from None
    except OSError as exc:
        raise ConfigError(source, "(file)", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "(file)", "expected UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(syntax)", f"invalid TOML: {exc}") from None
    return parse_config(data, source)
