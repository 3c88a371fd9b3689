"""Rendering bridge TOML configs and running ``python -m bridge run`` as a test subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.orthanc import log_tail
from tests.integration.tools import port_accepts, port_listening

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

# Flat keyword overrides of bridge_config() and the section they belong to. Anything else
# must be given as a section table (dimse={...}, retrieve={...}) or as section__key=value.
_FLAT_KEYS: dict[str, str] = {
    "ae_title": "dimse",
    "host": "dimse",
    "accept_unknown_peers": "dimse",
    "max_associations": "dimse",
    "shutdown_timeout": "dimse",
    "network_timeout": "dimse",
    "max_pdu": "dimse",
    "timeout": "dicomweb",
    "query_encoding": "dicomweb",
    "page_size": "dicomweb",
    "max_results": "dicomweb",
}

PeerSpec = Mapping[str, Any] | tuple[str, str, int]


# --------------------------------------------------------------------------- TOML rendering


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string (\" \\ \n \uXXXX escapes).
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot render {value!r} ({type(value).__name__}) as TOML")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def render_toml(sections: Mapping[str, Mapping[str, Any]], peers: list[dict[str, Any]]) -> str:
    """Render ``[section]`` tables (in order) followed by ``[[peers]]`` entries."""
    lines: list[str] = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines.extend(
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None
        )
        lines.append("")
    for peer in peers:
        lines.append("[[peers]]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in peer.items() if v is not None)
        lines.append("")
    return "\n".join(lines)


def _peer(spec: PeerSpec) -> dict[str, Any]:
    if isinstance(spec, tuple):
        ae_title, host, port = spec
        return {"ae_title": ae_title, "host": host, "port": port}
    return dict(spec)


def bridge_config(dicomweb_url: str, port: int, **overrides: Any) -> str:
    """The bridge's TOML config: ``[dimse]`` on 127.0.0.1:`port`, ``[dicomweb]`` at the URL.

    Overrides, all optional:

    * flat keys of the contract: ``ae_title``, ``host``, ``accept_unknown_peers``,
      ``max_associations``, ``shutdown_timeout``, ``network_timeout``, ``max_pdu``
      (``[dimse]``); ``timeout``, ``query_encoding``, ``page_size``, ``max_results``
      (``[dicomweb]``);
    * ``section__key=value`` for any key of any section (``retrieve__max_concurrent_fetches=2``);
    * ``section={...}`` to merge a whole table (``logging={"level": "DEBUG"}``);
    * ``peers=[("STORESCP", "127.0.0.1", 11113), {"ae_title": ..., ...}]``.

    A value of None removes the key (so the bridge's default applies).
    """
    sections: dict[str, dict[str, Any]] = {
        "dimse": {
            "ae_title": "DIMSE_BRIDGE",
            "host": "127.0.0.1",
            "port": port,
            "accept_unknown_peers": True,
            "max_associations": 16,
        },
        "dicomweb": {"url": dicomweb_url, "timeout": 30},
    }
    peers: list[dict[str, Any]] = []
    for key, value in overrides.items():
        if key == "peers":
            peers = [_peer(p) for p in value or ()]
        elif isinstance(value, Mapping):
            sections.setdefault(key, {}).update(value)
        elif "__" in key:
            section, _, name = key.partition("__")
            sections.setdefault(section, {})[name] = value
        elif key in _FLAT_KEYS:
            sections[_FLAT_KEYS[key]][key] = value
        else:
            raise TypeError(
                f"bridge_config(): unknown override {key!r}; use section__key=value "
                "or section={...}"
            )
    text = render_toml(sections, peers)
    tomllib.loads(text)  # a rendering bug should fail here, not inside the bridge
    return text


# --------------------------------------------------------------------------- the process


class BridgeStartError(RuntimeError):
    """The bridge exited or did not open its DIMSE port in time."""


@dataclass
class BridgeProcess:
    """One running ``python -m bridge run --config FILE`` and where its files are."""

    process: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    host: str
    port: int
    ae_title: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def log_text(self) -> str:
        """Everything the bridge wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> BridgeProcess:
        """Wait until the DIMSE port accepts TCP connections; raises BridgeStartError.

        "Accepts" is read from the kernel's table of listening sockets, without connecting:
        a bare TCP connect-and-close would stay in pynetdicom as an association waiting for
        its A-ASSOCIATE-RQ for 30 s and hold up the bridge's shutdown (measured).
        """
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise BridgeStartError(
                    f"the bridge exited with status {code} before listening on "
                    f"{self.host}:{self.port}; log tail:\n{self.log_tail()}"
                )
            listening = port_listening(self.port)
            if listening is None:  # no /proc: fall back to connecting
                listening = port_accepts(self.host, self.port, timeout=0.5)
            if listening:
                return self
            if time.monotonic() > deadline:
                raise BridgeStartError(
                    f"the bridge did not accept TCP connections on {self.host}:{self.port} "
                    f"within {timeout:.0f} s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def send_signal(self, signum: int) -> None:
        if self.running:
            self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit by itself; returns its exit status."""
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to `timeout` s, then SIGKILL; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=timeout)


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "localhost") else host


def start_bridge(
    config_text: str,
    workdir: Path,
    *,
    name: str = "bridge",
    env: Mapping[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    wait: bool = True,
    timeout: float = START_TIMEOUT,
) -> BridgeProcess:
    """Write `config_text` to ``workdir/<name>.toml`` and start the bridge with it.

    The child runs ``sys.executable -m bridge run --config FILE`` with the repository root
    first on PYTHONPATH (so the checkout is used even when not pip-installed); stdout and
    stderr go to ``workdir/<name>.log``. With `wait`, returns once the DIMSE port accepts
    TCP connections (bounded by `timeout`), else raises BridgeStartError with the log tail.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = tomllib.loads(config_text)
    dimse = config.get("dimse", {})
    host = _connect_host(str(dimse.get("host", "127.0.0.1")))
    port = int(dimse.get("port", 11112))
    ae_title = str(dimse.get("ae_title", "DIMSE_BRIDGE")).strip()

    config_path = workdir / f"{name}.toml"
    log_path = workdir / f"{name}.log"
    config_path.write_text(config_text, encoding="utf-8")

    child_env = dict(os.environ)
    child_env.pop("DIMSE_BRIDGE_CONFIG", None)
    python_path = [str(REPO_ROOT)]
    if child_env.get("PYTHONPATH"):
        python_path.append(child_env["PYTHONPATH"])
    child_env["PYTHONPATH"] = os.pathsep.join(python_path)
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env.update(env or {})

    command = [sys.executable, "-m", "bridge", "run", "--config", str(config_path), *extra_args]
    with log_path.open("ab") as log:
        log.write(f"===== {' '.join(command)} =====\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    bridge = BridgeProcess(
        process=process,
        config_path=config_path,
        log_path=log_path,
        host=host,
        port=port,
        ae_title=ae_title,
        config=config,
    )
    if wait:
        try:
            bridge.wait_ready(timeout)
        except BridgeStartError:
            bridge.stop(timeout=5.0)
            raise
    return bridge
