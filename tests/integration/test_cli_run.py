"""``dimse-bridge run`` and ``check`` as processes: signals, graceful shutdown, config sources.

Run as ``python -m bridge`` with the checkout first on PYTHONPATH, like the bridge_process
fixture does; the cases that need a command line other than ``run --config FILE``
(``$DIMSE_BRIDGE_CONFIG``, ``check``, a config the fixture cannot parse) spawn it here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from tests.conftest import OrthancFixture
from tests.integration.bridge_runner import REPO_ROOT, BridgeProcess, bridge_config
from tests.integration.tools import free_port, port_listening

pytestmark = pytest.mark.integration

FIND = StudyRootQueryRetrieveInformationModelFind


def bridge_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment start_bridge gives the bridge: checkout first on PYTHONPATH, no
    inherited $DIMSE_BRIDGE_CONFIG, unbuffered output; plus `extra`."""
    env = dict(os.environ)
    env.pop("DIMSE_BRIDGE_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m bridge ARGS`` to completion, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        env=bridge_env(env),
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def spawned() -> Iterator[list[BridgeProcess]]:
    """Bridges started by hand in a test; stopped at the end (SIGTERM, then SIGKILL)."""
    processes: list[BridgeProcess] = []
    yield processes
    for process in processes:
        process.stop(timeout=10)


def find_study(assoc: Association, msg_id: int) -> tuple[int, list[Dataset]]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    found: list[Dataset] = []
    final = -1
    for status, ident in assoc.send_c_find(identifier, FIND, msg_id=msg_id):
        assert status is not None and "Status" in status
        if status.Status == 0xFF00:
            found.append(ident)
        else:
            final = int(status.Status)
    return final, found


def wait_for_log(bridge: BridgeProcess, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in bridge.log_text():
        assert time.monotonic() < deadline, f"{text!r} not logged; log:\n{bridge.log_tail()}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_exits_0_on_signal_and_logs_shutdown(
    signum: signal.Signals,
    bridge_process: Callable[..., BridgeProcess],
    orthanc: OrthancFixture,
) -> None:
    bridge = bridge_process(bridge_config(orthanc.dicomweb_url, free_port()))
    wait_for_log(bridge, "listening as DIMSE_BRIDGE")
    bridge.send_signal(signum)
    assert bridge.wait(timeout=10) == 0, bridge.log_tail()
    log = bridge.log_text()
    assert f"received {signum.name}" in log
    assert "shutting down: 0 association(s) running" in log
    assert log.rstrip().endswith("stopped"), log
    assert "Traceback" not in log


def test_sigterm_lets_the_running_association_finish(
    bridge_process: Callable[..., BridgeProcess], orthanc: OrthancFixture
) -> None:
    bridge = bridge_process(bridge_config(orthanc.dicomweb_url, free_port(), shutdown_timeout=20))
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", bridge.port, ae_title=bridge.ae_title)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        bridge.send_signal(signal.SIGTERM)
        wait_for_log(bridge, "shutting down: 1 association(s) running")

        # No new associations: the listening socket goes (pynetdicom's server loop notices
        # the shutdown within its 0.5 s poll interval), connections are refused.
        deadline = time.monotonic() + 5
        while port_listening(bridge.port):
            assert time.monotonic() < deadline, "still listening 5 s after SIGTERM"
            time.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", bridge.port), timeout=2).close()
        late = AE(ae_title="ECHOSCU")
        late.add_requested_context(Verification)
        refused = late.associate("127.0.0.1", bridge.port, ae_title=bridge.ae_title)
        assert not refused.is_established

        # The running association still gets full service.
        status, studies = find_study(assoc, msg_id=2)
        assert status == 0x0000, bridge.log_tail()
        assert {ds.StudyInstanceUID for ds in studies} == orthanc.manifest.study_uids
        assert assoc.send_c_echo(msg_id=3).Status == 0x0000
        assert bridge.running, "the bridge exited with an association still open"
    finally:
        assoc.release()
    assert bridge.wait(timeout=10) == 0, bridge.log_tail()
    log = bridge.log_text()
    assert "aborting association" not in log
    assert log.rstrip().endswith("stopped"), log


# --------------------------------------------------------------------------- config sources


def test_run_reads_config_from_environment(
    spawned: list[BridgeProcess], orthanc: OrthancFixture, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "from-env.toml"
    config.write_text(
        bridge_config(orthanc.dicomweb_url, port, ae_title="ENV_BRIDGE"), encoding="utf-8"
    )
    log_path = tmp_path / "env-bridge.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run"],
            env=bridge_env({"DIMSE_BRIDGE_CONFIG": str(config)}),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    bridge = BridgeProcess(process, config, log_path, "127.0.0.1", port, "ENV_BRIDGE")
    spawned.append(bridge)
    bridge.wait_ready()
    assert f"config {config}" in bridge.log_text()

    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="ENV_BRIDGE")
    assert assoc.is_established
    try:
        status, studies = find_study(assoc, msg_id=1)
    finally:
        assoc.release()
    assert status == 0x0000
    assert len(studies) == len(orthanc.manifest.studies)
    # The AE title comes from the env config too.
    assert {ds.RetrieveAETitle for ds in studies} == {"ENV_BRIDGE"}
    assert bridge.stop(timeout=10) == 0


BROKEN = """\
[dimse]
ae_title = "DIMSE_BRIDGE"
port = "x"

[dicomweb]
url = "http://127.0.0.1:9/dicom-web"
"""


@pytest.mark.parametrize("via", ["--config", "env"])
@pytest.mark.parametrize("command", ["run", "check"])
def test_broken_config_exits_2_naming_file_and_key(command: str, via: str, tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(BROKEN, encoding="utf-8")
    if via == "env":
        result = run_cli(command, env={"DIMSE_BRIDGE_CONFIG": str(config)}, cwd=tmp_path)
    else:
        result = run_cli(command, "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stdout == ""
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("dimse-bridge: invalid config:"), message
    assert "broken.toml" in message and "dimse.port" in message, message
    assert "Traceback" not in result.stderr


def test_check_against_orthanc_is_ok(orthanc: OrthancFixture, tmp_path: Path) -> None:
    config = tmp_path / "check.toml"
    port = free_port()
    config.write_text(bridge_config(orthanc.dicomweb_url, port), encoding="utf-8")
    result = run_cli("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("ok: "), lines[0]
    assert str(config) in lines[0] and orthanc.dicomweb_url in lines[0]
    assert result.stderr == ""
