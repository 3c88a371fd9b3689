"""The ``dimse-bridge`` command: ``run`` and ``check``; arguments → Config → server; exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from bridge import __version__
from bridge.config import ENV_CONFIG, Config, DicomwebConfig, load_config
from bridge.errors import BridgeError, ConfigError, ListenError

LOGGER = logging.getLogger("bridge")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
EXIT_RUNTIME = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dimse-bridge",
        description="A DIMSE (C-ECHO, C-FIND, ...) front for a DICOMweb server.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = (
        f"TOML config file (default: ${ENV_CONFIG}, else the embedded default that fronts "
        "http://localhost:8042/dicom-web)"
    )
    run = sub.add_parser("run", help="run the bridge in the foreground")
    run.add_argument("--config", metavar="PATH", help=config_help)
    check = sub.add_parser("check", help="validate the config and probe the DICOMweb server")
    check.add_argument("--config", metavar="PATH", help=config_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"dimse-bridge: invalid config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        return _check(config)
    return _run(config)


def _check(config: Config) -> int:
    from bridge.dicomweb.auth import build_auth
    from bridge.dicomweb.client import make_client

    backends = [("default", config.dicomweb)] + [(b.name, b.dicomweb) for b in config.backends]
    try:
        auths = [build_auth(dicomweb.auth) for _, dicomweb in backends]
    except ConfigError as exc:
        print(f"dimse-bridge: invalid config: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def probe(dicomweb: DicomwebConfig, auth: Any) -> str:
        client = make_client(dicomweb, auth=auth)
        async with client.http:
            return await client.probe()

    summaries = []
    for (name, dicomweb), auth in zip(backends, auths, strict=True):
        try:
            summaries.append(f"{dicomweb.url}: {asyncio.run(probe(dicomweb, auth))}")
        except BridgeError as exc:
            label = "" if name == "default" else f"backend {name}: "
            print(f"dimse-bridge: {label}{dicomweb.url}: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
    print(
        f"ok: config {config.source}; AE {config.dimse.ae_title} on "
        f"{config.dimse.host}:{config.dimse.port}; {'; '.join(summaries)}"
    )
    return EXIT_OK


def _run(config: Config) -> int:
    from bridge.dimse.server import Bridge, serve_until
    from bridge.ops.logs import setup_logging

    setup_logging(config.logging.level, config.logging.format)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        LOGGER.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    LOGGER.info("dimse-bridge %s, config %s", __version__, config.source)
    try:
        bridge = Bridge(config)
    except ConfigError as exc:
        print(f"dimse-bridge: invalid config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        serve_until(bridge, stop)
    except ListenError as exc:
        print(f"dimse-bridge: cannot listen on {exc.address}: {exc.reason}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK
