"""What the benchmark starts and measures: Orthanc, bridges, the delaying proxy; CPU and RSS."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    FINDSCU_AET,
    GETSCU_AET,
    HOST,
    MB,
    REPO_ROOT,
    SCU_AET,
    STORESCU_AET,
    BenchError,
    log,
)
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary
from tests.integration.tools import dcmtk_path, free_port

AUTH_USER, AUTH_PASSWORD = "bench", "bench-s3cret"


class AuthOrthanc(OrthancServer):
    """Orthanc requiring HTTP Basic. The harness's own REST calls (readiness, uploads) carry
    the credentials as the URL's userinfo, which httpx turns into Basic auth; the bridge
    gets `plain_dicomweb_url` and ``[dicomweb.auth]``."""

    @property
    def http_url(self) -> str:
        return f"http://{AUTH_USER}:{AUTH_PASSWORD}@{HOST}:{self.http_port}"

    @property
    def plain_dicomweb_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/dicom-web"


# The proxy child is started as `python bench/run.py --proxy-child UPSTREAM DELAY_S`.
RUN_PY = REPO_ROOT / "bench" / "run.py"


def check_prerequisites() -> list[str]:
    missing = []
    if orthanc_binary() is None:
        missing.append("Orthanc (apt-get install orthanc)")
    if dicomweb_plugin() is None:
        missing.append("the Orthanc DICOMweb plugin (apt-get install orthanc-dicomweb)")
    for name in ("getscu", "storescu"):
        if dcmtk_path(name) is None:
            where = os.environ.get("DCMTK_BINDIR") or "/usr/bin"
            missing.append(f"dcmtk's {name} as a native binary in {where} (apt-get install dcmtk)")
    if not Path("/proc/self/status").exists():
        missing.append("/proc (Linux) for the bridge's peak RSS")
    return missing


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu_seconds() -> float:
    """CPU of this process (the pynetdicom SCUs) plus its finished children (dcmtk tools)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def reset_vm_hwm(pid: int) -> None:
    """Reset a process's VmHWM to its current RSS (Linux >= 4.0: "5" to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a process (VmHWM), in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


class ProxyProcess:
    """tests/faults/proxy.py's FaultProxy in a child process (its own GIL), fixed delay."""

    def __init__(self, upstream: str, delay_s: float, log_path: Path) -> None:
        self.delay_s = delay_s
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(RUN_PY),
                "--proxy-child",
                upstream,
                str(delay_s),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO_ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.isdigit():
            self.stop()
            raise BenchError(f"the delaying proxy did not start (see {log_path})")
        self.port = int(line)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def proxy_child(upstream: str, delay_s: float) -> int:
    """Entry point of the proxy process: print the port, relay until stdin closes."""
    from tests.faults.proxy import FaultProxy

    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    proxy = FaultProxy(upstream)
    proxy.delay_s = delay_s
    proxy.start()
    try:
        print(proxy.port, flush=True)
        with contextlib.suppress(Exception):
            while sys.stdin.buffer.read(4096):
                pass
    finally:
        proxy.stop()
    return 0


class Lab:
    """Everything started by the benchmark; `close()` stops it all (reverse order)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._stack = contextlib.ExitStack()
        self.orthanc: OrthancServer | None = None

    def start_orthanc(self) -> OrthancServer:
        orthanc = OrthancServer(
            self.workdir / "orthanc",
            scu_ae_titles=(SCU_AET, GETSCU_AET, STORESCU_AET, FINDSCU_AET),
        )
        self._stack.callback(orthanc.stop)
        orthanc.start()  # TCP_NODELAY=1 in its environment
        self.orthanc = orthanc
        return orthanc

    def start_auth_orthanc(self) -> AuthOrthanc:
        """A second Orthanc that requires HTTP Basic (the authenticated-backend row)."""
        orthanc = AuthOrthanc(
            self.workdir / "orthanc-auth",
            scu_ae_titles=(SCU_AET, GETSCU_AET),
            extra_config={
                "AuthenticationEnabled": True,
                "RegisteredUsers": {AUTH_USER: AUTH_PASSWORD},
            },
        )
        self._stack.callback(orthanc.stop)
        orthanc.start()
        return orthanc

    def start_bridge(
        self, name: str, dicomweb_url: str, fetches: int, basic_auth: bool = False, **extra: Any
    ) -> BridgeProcess:
        """A bridge on `dicomweb_url` (with HTTP Basic to the auth Orthanc when
        `basic_auth`); `extra` are bridge_config() overrides (store={...})."""
        dicomweb: dict[str, object] = {}
        if basic_auth:
            secret = self.workdir / "orthanc-password"
            secret.write_text(AUTH_PASSWORD, encoding="utf-8")
            secret.chmod(0o600)
            dicomweb["auth"] = {
                "type": "basic",
                "username": AUTH_USER,
                "password_file": str(secret),
            }
        text = bridge_config(
            dicomweb_url,
            free_port(),
            timeout=60,
            network_timeout=300,
            shutdown_timeout=5,
            logging={"level": "WARNING"},
            retrieve={"max_concurrent_fetches": fetches},
            dicomweb=dicomweb,
            **extra,
        )
        bridge = start_bridge(text, self.workdir / "bridges", name=name)
        self._stack.callback(bridge.stop, timeout=10.0)
        return bridge

    def stop_bridge(self, bridge: BridgeProcess) -> None:
        code = bridge.stop()
        if code not in (0, -signal.SIGTERM):
            log(f"warning: bridge {bridge.config_path.stem} exited with status {code}")
        problems = [
            line
            for line in bridge.log_text().splitlines()
            if " ERROR " in line or "Traceback" in line
        ]
        if problems:
            log(f"warning: bridge {bridge.config_path.stem} logged errors, e.g. {problems[0]}")

    def start_proxy(self, delay_s: float) -> ProxyProcess:
        assert self.orthanc is not None
        proxy = ProxyProcess(
            self.orthanc.http_url, delay_s, self.workdir / f"proxy-{delay_s * 1000:.0f}ms.log"
        )
        self._stack.callback(proxy.stop)
        return proxy

    def print_log_tails(self, lines: int = 15) -> None:
        """The end of every log (Orthanc, bridges, proxies), to diagnose a failure."""
        for path in sorted(self.workdir.rglob("*.log")):
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            print(f"--- {path.relative_to(self.workdir)} (last {lines} lines) ---", file=sys.stderr)
            print("\n".join(text), file=sys.stderr)

    def close(self) -> None:
        self._stack.close()
