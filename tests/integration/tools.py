"""Locating and running dcmtk's command-line tools (never pynetdicom's same-named scripts)."""

# pynetdicom installs console scripts called findscu, getscu, echoscu, storescu... and they
# can come first on PATH (pyenv shims, a venv's bin/). The tests always call dcmtk's real
# binaries by absolute path: /usr/bin/<name> (override the folder with $DCMTK_BINDIR).

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

DCMTK_BINDIR_ENV = "DCMTK_BINDIR"
DEFAULT_DCMTK_BINDIR = "/usr/bin"
# Set to 1 to turn "tool missing" skips into failures; CI=true does the same.
REQUIRE_ENV = "DIMSE_BRIDGE_REQUIRE_INTEGRATION"


def integration_required() -> bool:
    """True when missing Orthanc/dcmtk must fail the run instead of skipping (CI)."""
    truthy = ("1", "true", "yes", "on")
    return (
        os.environ.get("CI", "").strip().lower() in truthy
        or os.environ.get(REQUIRE_ENV, "").strip().lower() in truthy
    )


def missing_prerequisite(message: str) -> NoReturn:
    """Skip the test (locally) or fail it (under CI) because a tool is not installed."""
    if integration_required():
        pytest.fail(f"{message} (required: CI or ${REQUIRE_ENV} is set)", pytrace=False)
    pytest.skip(message)


def _is_native_executable(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def dcmtk_path(name: str) -> Path | None:
    """Absolute path of dcmtk's `name` if it is installed (a native binary), else None."""
    path = Path(os.environ.get(DCMTK_BINDIR_ENV) or DEFAULT_DCMTK_BINDIR) / name
    if path.is_file() and os.access(path, os.X_OK) and _is_native_executable(path):
        return path
    return None


def dcmtk(name: str) -> str:
    """Absolute path of dcmtk's `name` (e.g. "findscu"); skips/fails the test if absent."""
    path = dcmtk_path(name)
    if path is None:
        where = os.environ.get(DCMTK_BINDIR_ENV) or DEFAULT_DCMTK_BINDIR
        missing_prerequisite(
            f"dcmtk's {name} is not installed as a binary in {where} (apt-get install dcmtk)"
        )
    return str(path)


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for dcmtk/Orthanc children: TCP_NODELAY=1 (dcmtk reads it) plus `extra`."""
    env = dict(os.environ, TCP_NODELAY="1")
    env.update(extra or {})
    return env


def run_dcmtk(
    name: str,
    *args: str | os.PathLike[str],
    timeout: float = 120.0,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run dcmtk's `name` with `args` (TCP_NODELAY=1), capturing text output.

    With `check`, a non-zero exit raises AssertionError showing the command and its output.
    """
    command = [dcmtk(name), *(os.fspath(a) for a in args)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        cwd=cwd,
        env=tool_env(),
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(describe(command, result))
    return result


def describe(command: Sequence[str], result: subprocess.CompletedProcess[str]) -> str:
    """A readable account of a finished command, for assertion messages."""
    return (
        f"$ {' '.join(command)}\nexit status {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )


@dataclass(frozen=True)
class ToolResponse:
    """The final C-GET/C-MOVE response as a dcmtk tool's -d dump shows it."""

    status: int
    comment: str
    has_data_set: bool
    counts: dict[str, int]


def final_response_dump(log: str, marker: str) -> ToolResponse:
    """Read the last response block after `marker` in a dcmtk tool's ``-d`` output
    (getscu: "Received C-GET Response", movescu: "Received Final Move Response")."""
    start = log.rfind(marker)
    assert start >= 0, f"no {marker!r} in the tool's output:\n{log[-3000:]}"
    block = log[start:]
    status = re.search(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", block)
    data_set = re.search(r"Data Set\s*:\s*(\w+)", block)
    comment = re.search(r"\(0000,0902\) LO \[(.*?)\]", block)
    assert status is not None and data_set is not None, block[:3000]
    counts = {
        name: int(match.group(1))
        for name in ("Completed", "Failed", "Warning")
        if (match := re.search(rf"{name} Suboperations\s*:\s*(\d+)", block))
    }
    return ToolResponse(
        status=int(status.group(1), 16),
        comment=comment.group(1) if comment else "",
        has_data_set=data_set.group(1) != "none",
        counts=counts,
    )


# movescu (dcmtk 3.6.7) exits with this after a final C-MOVE failure status, 67 when the
# release fails; getscu exits 0 whatever the status.
MOVESCU_EXIT_CMOVE_ERROR = 69


def assert_released_cleanly(result: subprocess.CompletedProcess[str], exit_code: int = 0) -> None:
    """The dcmtk tool ended with an A-RELEASE the bridge answered, exiting `exit_code`."""
    log = result.stdout + result.stderr
    assert result.returncode == exit_code, log[-3000:]
    assert "Releasing Association" in log, log[-3000:]
    assert "Release Failed" not in log and "Aborting Association" not in log, log[-3000:]


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports free on `host` right now (bound together, then released).

    The one free-port helper of the tests. Host "" checks all interfaces (what Orthanc binds).
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One TCP port free on `host` right now: ``free_ports(1, host)[0]``."""
    return free_ports(1, host)[0]


def port_listening(port: int) -> bool | None:
    """Whether some socket LISTENs on TCP `port` (any address), read from /proc/net/tcp{,6}.

    Connects to nothing, so it leaves no trace in the server (see port_accepts). None when
    /proc is not readable (not Linux).
    """
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            fields = line.split()  # sl local_address rem_address st ...
            if len(fields) < 4 or fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False if found_table else None


def port_accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection to host:port succeeds now (it is closed at once).

    Beware: a pynetdicom server keeps such a connection, which never sends A-ASSOCIATE-RQ,
    as a running association until its ACSE timeout (30 s by default), which can hold up
    its shutdown. Prefer port_listening() to wait for a DICOM server.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def storescp(
    port: int, out_dir: Path, log_path: Path, *options: str, timeout: float = 10.0
) -> Iterator[subprocess.Popen[bytes]]:
    """dcmtk's storescp on `port`, writing to `out_dir` and logging to `log_path`, listening
    when this yields (its log in the failure if it exits first); ended afterwards."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [dcmtk("storescp"), *options, "-od", str(out_dir), str(port)],
            env=tool_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while not port_listening(port):
            assert process.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, f"storescp did not listen within {timeout:.0f} s"
            time.sleep(0.02)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def without_profiles(lines: list[str]) -> list[str]:
    """`check` output without its per-backend profile blocks (tested on their own)."""
    return [
        line
        for line in lines
        if not (line.startswith("  ") or (line.startswith("backend ") and " profile " in line))
    ]
