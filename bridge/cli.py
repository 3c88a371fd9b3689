"""The ``dimse-bridge`` command: ``run``, ``check``, ``config``, ``spool``; arguments → Config.

The commands, ``--config`` and the exit statuses are a contract (scripts and unit files
rely on them): they may be extended, never renamed or given another meaning.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import platform
import ssl
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bridge import __version__
from bridge.config import ENV_CONFIG, Config, DicomwebConfig, load_config
from bridge.configdump import dump_config, mask_url, toml_key
from bridge.errors import BridgeError, ConfigError, ListenError

if TYPE_CHECKING:
    from bridge.app import Bridge

LOGGER = logging.getLogger("bridge")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
EXIT_RUNTIME = 1
# check --peers: config and DICOMweb server(s) fine, a [[peers]] entry did not answer.
EXIT_PEER = 4

# Seconds the start-up probe of `run` waits for the backends (probed together, before
# the listeners open).
STARTUP_PROBE_TIMEOUT_S = 5.0

_EXIT_RUN = """\
exit status:
  0  stopped by SIGINT or SIGTERM (running associations finish first)
  1  cannot listen on the DIMSE, DICOM TLS or ops address
  2  invalid config (or command line)"""
_EXIT_CHECK = """\
exit status:
  0  config valid, every DICOMweb server answered (and, with --peers, every peer)
  2  invalid config (or command line), credentials or TLS files
  3  a DICOMweb server is unreachable, refuses (HTTP 401/403/404...) or is not DICOMweb
  4  --peers: a [[peers]] entry did not answer C-ECHO (everything else is fine)"""
_EXIT_CONFIG = """\
exit status:
  0  config printed
  2  invalid config (or command line)"""
_EXIT_ALL = """\
exit status (each command's --help has its own list):
  0  ok
  1  run: cannot listen on the DIMSE, DICOM TLS or ops address
  2  invalid config (or command line)
  3  check: a DICOMweb server is unreachable, refuses or is not DICOMweb
     spool: the spool index cannot be opened
  4  check --peers: a [[peers]] entry did not answer C-ECHO"""
_EXIT_SPOOL = """\
exit status:
  0  done (also when there was nothing to do)
  1  a SOP Instance UID named is not in the spool
  2  invalid config (or command line), or no store.spool_dir
  3  the spool index cannot be opened"""


def _version(distribution: str, fallback: str = "not installed") -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return fallback


def version_text() -> str:
    """``dimse-bridge X`` and, on the next line, the versions of the libraries that matter."""
    libraries = ", ".join(f"{name} {_version(name)}" for name in ("pynetdicom", "pydicom", "httpx"))
    return (
        f"dimse-bridge {_version('dimse-bridge', __version__)}\n"
        f"{libraries}, Python {platform.python_version()}"
    )


def _parser() -> argparse.ArgumentParser:
    # Raw: keeps the line breaks of the exit-status tables and of --version.
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="dimse-bridge",
        description="A DIMSE (C-ECHO, C-FIND, ...) front for a DICOMweb server.",
        epilog=_EXIT_ALL,
        formatter_class=raw,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=version_text(),
        help="show the version, and those of pynetdicom, pydicom and httpx, and exit",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{run,check,config,spool}"
    )
    config_help = (
        f"TOML config file (default: ${ENV_CONFIG}, else the embedded default that fronts "
        "http://localhost:8042/dicom-web)"
    )
    run = sub.add_parser(
        "run",
        help="run the bridge in the foreground",
        description="Run the bridge in the foreground, logging to stderr. A DICOMweb server\n"
        "that does not answer at start-up is logged as a WARNING; the bridge serves anyway.",
        epilog=_EXIT_RUN,
        formatter_class=raw,
    )
    run.add_argument("--config", metavar="PATH", help=config_help)
    check = sub.add_parser(
        "check",
        help="validate the config and probe the DICOMweb server",
        description="Validate the config (credentials and TLS files included), probe each\n"
        "DICOMweb server with GET {url}/studies?limit=1, and report the TLS settings\n"
        "when TLS is on.",
        epilog=_EXIT_CHECK,
        formatter_class=raw,
    )
    check.add_argument("--config", metavar="PATH", help=config_help)
    mode = check.add_mutually_exclusive_group()
    mode.add_argument(
        "--offline",
        action="store_true",
        help="validate only: contact no DICOMweb server and no peer",
    )
    mode.add_argument(
        "--peers",
        action="store_true",
        help="also C-ECHO each [[peers]] entry, calling as the bridge's C-MOVE AE title",
    )
    dump = sub.add_parser(
        "config",
        help="print the effective config as TOML, secrets masked",
        description="Print the effective config as TOML: every key, defaults filled in.\n"
        'Inline secrets read "***"; _env and _file references are shown, not the values\n'
        "they point to. The output is itself a valid config.",
        epilog=_EXIT_CONFIG,
        formatter_class=raw,
    )
    dump.add_argument("--config", metavar="PATH", help=config_help)
    _spool_parser(sub, config_help)
    return parser


def _spool_parser(sub: Any, config_help: str) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    spool = sub.add_parser(
        "spool",
        help="inspect and act on the store-and-forward spool ([store] mode = \"spool\")",
        description="Inspect and act on the C-STORE spool. Works while `run` is running\n"
        "(the index is shared safely) and while it is not.",
        epilog=_EXIT_SPOOL,
        formatter_class=raw,
    )
    actions = spool.add_subparsers(
        dest="spool_command", required=True, metavar="{status,list,retry,purge}"
    )

    def action(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, help=text, description=text, epilog=_EXIT_SPOOL, formatter_class=raw
        )
        parser.add_argument("--config", metavar="PATH", help=config_help)
        return parser

    status = action("status", "counts per state, bytes held, age of the oldest waiting")
    status.add_argument("--json", action="store_true", help="one JSON object")
    listing = action("list", "the instances not yet done (or those in --state)")
    listing.add_argument(
        "--state", choices=("queued", "uploading", "failed", "dead", "done"), default=None
    )
    listing.add_argument("--limit", type=int, default=None, metavar="N")
    listing.add_argument("--json", action="store_true", help="a JSON array")
    retry = action("retry", "queue dead (or waiting failed) instances for upload again")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every dead instance")
    which.add_argument("uids", nargs="*", default=[], metavar="SOP_INSTANCE_UID")
    purge = action("purge", "delete dead instances and their files")
    purge.add_argument("--dead", action="store_true", required=True, help="the dead ones")
    purge.add_argument(
        "--older-than", type=float, default=None, metavar="DAYS", help="received before"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _invalid(exc)
    if args.command == "config":
        return _print_config(config)
    if args.command == "check":
        return _check(config, offline=args.offline, peers=args.peers)
    if args.command == "spool":
        return _spool(config, args)
    return _run(config)


def _spool(config: Config, args: argparse.Namespace) -> int:
    from bridge.spool import admin

    try:
        if args.spool_command == "status":
            return admin.status(config, as_json=args.json, out=sys.stdout)
        if args.spool_command == "list":
            return admin.listing(
                config, state=args.state, limit=args.limit, as_json=args.json, out=sys.stdout
            )
        if args.spool_command == "retry":
            uids = None if args.all else list(args.uids)
            return admin.retry(config, uids=uids, out=sys.stdout, err=sys.stderr)
        return admin.purge(config, older_than_days=args.older_than, out=sys.stdout)
    except admin.AdminError as exc:
        print(f"dimse-bridge: {exc}", file=sys.stderr)
        return exc.code


def _invalid(exc: ConfigError) -> int:
    print(f"dimse-bridge: invalid config: {exc}", file=sys.stderr)
    return EXIT_CONFIG


# --------------------------------------------------------------------------- config


def _print_config(config: Config) -> int:
    header = (
        f"dimse-bridge {_version('dimse-bridge', __version__)}: the effective config of "
        f"{config.source}\n"
        'every key with its value, defaults filled in; inline secrets read "***"'
    )
    sys.stdout.write(dump_config(config, header))
    return EXIT_OK


# --------------------------------------------------------------------------- check


def _check(config: Config, *, offline: bool = False, peers: bool = False) -> int:
    from bridge.dicomweb.auth import build_auth
    from bridge.dicomweb.client import make_client
    from bridge.profiles import describe

    backends = [(b.name, b.dicomweb) for b in config.all_backends]
    try:
        auths = [build_auth(dicomweb.auth) for _, dicomweb in backends]
        tls_lines = tls_summary(config)
    except ConfigError as exc:
        return _invalid(exc)

    async def probe(dicomweb: DicomwebConfig, auth: Any) -> str:
        # On the transport the bridge would use (retrieve.fast_http).
        client = make_client(dicomweb, auth=auth, fast_http=config.retrieve.fast_http)
        async with client.http:
            return await client.probe()

    code = EXIT_OK
    summaries = []
    for (name, dicomweb), auth in zip(backends, auths, strict=True):
        url = mask_url(dicomweb.url)
        if offline:
            summaries.append(f"{url}: not contacted (--offline)")
            continue
        try:
            summaries.append(f"{url}: {asyncio.run(probe(dicomweb, auth))}")
        except BridgeError as exc:
            label = "" if name == "default" else f"backend {name}: "
            print(f"dimse-bridge: {label}{url}: {exc}", file=sys.stderr)
            code = EXIT_UNREACHABLE
    if code == EXIT_OK:
        print(
            f"ok: config {config.source}; AE {config.dimse.ae_title} on "
            f"{config.dimse.host}:{config.dimse.port}; {'; '.join(summaries)}"
        )
        for line in tls_lines:
            print(line)
        for name, dicomweb in backends:
            print(f"backend {name}: profile {dicomweb.profile}; capabilities assumed:")
            for line in describe(dicomweb.capabilities):
                print(f"  {line}")
    if peers and not _check_peers(config) and code == EXIT_OK:
        code = EXIT_PEER
    return code


def tls_summary(config: Config) -> list[str]:
    """One line per TLS endpoint; loading each context checks the files (ConfigError)."""
    from bridge.dicomweb.client import tls_context

    lines = []
    tls = config.dimse.tls
    if tls.enabled:
        from bridge.dimse.server import server_tls_context

        if tls.ca_certificates:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca_certificates)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    config.source, "dimse.tls.ca_certificates", f"cannot load it: {exc}"
                ) from None
        try:
            server_tls_context(tls)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                config.source, "dimse.tls.certificate", f"cannot load it with private_key: {exc}"
            ) from None
        clients = (
            f"client certificates required, signed by {tls.ca_certificates}"
            if tls.require_client_certificate
            else "client certificates not required"
        )
        lines.append(
            f"tls: DICOM TLS listener on {tls.host}:{tls.port}, certificate {tls.certificate}; "
            f"{clients}"
        )
    for backend in config.all_backends:
        name, dicomweb = backend.name, backend.dicomweb
        prefix = "dicomweb" if name == "default" else f"backends.{toml_key(name)}"
        url = mask_url(dicomweb.url)
        https = dicomweb.url.startswith("https:")
        if not (https or dicomweb.client_cert):
            continue
        try:
            tls_context(replace(dicomweb, client_cert="", client_key=""))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                config.source, f"{prefix}.ca_bundle", f"cannot load it: {exc}"
            ) from None
        try:
            tls_context(dicomweb)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                config.source, f"{prefix}.client_cert", f"cannot load it with client_key: {exc}"
            ) from None
        if not https:
            lines.append(f"tls: {prefix} {url}: plain http, client_cert unused")
            continue
        if dicomweb.verify:
            verified = f"server certificate verified against {dicomweb.ca_bundle or 'system CAs'}"
        else:
            verified = f"server certificate NOT verified ({prefix}.verify = false)"
        client = f"; client certificate {dicomweb.client_cert}" if dicomweb.client_cert else ""
        lines.append(f"tls: {prefix} {url}: https, {verified}{client}")
    return lines


def _check_peers(config: Config) -> bool:
    """C-ECHO every peer, one line each (stdout if it answered, stderr if not)."""
    from bridge.dimse.peercheck import echo_peers

    calling = config.move.calling_ae_title or config.dimse.ae_title
    if not config.peers:
        print("peers: none configured")
        return True
    all_ok = True
    for result in echo_peers(config.peers, calling):
        peer = result.peer
        where = f"peer {peer.ae_title} at {peer.host}:{peer.port}"
        if result.ok:
            print(f"ok: {where}: {result.detail} (calling AE {calling}, {result.ms:.0f} ms)")
        else:
            all_ok = False
            print(f"dimse-bridge: {where}: {result.detail} (calling AE {calling})", file=sys.stderr)
    return all_ok


# --------------------------------------------------------------------------- run


def _run(config: Config) -> int:
    from bridge.app import Bridge, Signals, serve
    from bridge.ops.logs import setup_logging

    setup_logging(config.logging.level, config.logging.format)
    signals = Signals()
    with signals.capture():
        LOGGER.info("dimse-bridge %s, config %s", __version__, config.source)
        try:
            tls_summary(config)  # unusable TLS files: exit 2 like any invalid config
            bridge = Bridge(config)
        except ConfigError as exc:
            return _invalid(exc)
        # Before listening: the port accepting associations then means the probe is over,
        # so its request never mixes with the first ones served (a silent backend delays
        # the start by STARTUP_PROBE_TIMEOUT_S at most). On the bridge's own loop, which
        # start() keeps: the auth objects (a cached token, their locks) stay on one loop.
        bridge.loop.start()
        probe_backends(bridge)
        try:
            serve(bridge, signals)
        except ListenError as exc:
            print(f"dimse-bridge: cannot listen on {exc.address}: {exc.reason}", file=sys.stderr)
            return EXIT_RUNTIME
    return EXIT_OK


def probe_backends(bridge: Bridge, timeout: float = STARTUP_PROBE_TIMEOUT_S) -> None:
    """Probe every backend once, together, on the bridge's loop (started): INFO for each
    that answers, a WARNING with the reason for each that does not. The bridge serves
    either way (C-ECHO needs no backend, and the backend may come up later; /readyz tells
    the difference)."""
    from bridge.dicomweb.client import make_client

    backends = {backend.name: backend.dicomweb for backend in bridge.backends}

    async def probe(name: str) -> str:
        # A client of its own, closed after: the probe leaves the bridge's connection pools
        # and request metrics as they were (the auth object, and its token, are shared).
        client = make_client(
            backends[name],
            backend=name,
            auth=bridge.auths.get(name),
            fast_http=bridge.config.retrieve.fast_http,
        )
        try:
            return await asyncio.wait_for(client.probe(), timeout)
        finally:
            await client.aclose()

    async def probe_all() -> list[str | BaseException]:
        return await asyncio.gather(*(probe(name) for name in backends), return_exceptions=True)

    try:
        results = bridge.loop.call(probe_all(), timeout=timeout + 1)
    except TimeoutError:
        results = [TimeoutError()] * len(backends)
    for (name, dicomweb), result in zip(backends.items(), results, strict=True):
        url = mask_url(dicomweb.url)
        if isinstance(result, str):
            LOGGER.info("backend %s (%s) answers: %s", name, url, result)
            continue
        if isinstance(result, TimeoutError):
            reason = f"no answer within {timeout:g} s"
        elif isinstance(result, BridgeError):
            reason = str(result)
        else:
            reason = f"{type(result).__name__}: {result}"
        LOGGER.warning(
            "backend %s (%s) failed its start-up probe: %s; serving anyway, its requests "
            "fail until it answers",
            name,
            url,
            reason,
        )
