"""``dimse-bridge run`` and ``check`` as processes: signals, graceful shutdown, config sources,
``check --peers`` against real C-ECHO SCPs (dcmtk storescp, Orthanc), the start-up probe.

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
from tests.integration.tools import free_port, port_listening, without_profiles
from tests.integration.tools import storescp as run_storescp
from tests.scu import c_echo as scu_c_echo

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
            assert ident is not None  # a pending response carries its match
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


def test_second_sigint_aborts_the_running_association_and_exits(
    bridge_process: Callable[..., BridgeProcess], orthanc: OrthancFixture
) -> None:
    # A drain that would last a minute: only the second SIGINT can end it early.
    bridge = bridge_process(
        bridge_config(
            orthanc.dicomweb_url, free_port(), shutdown_timeout=60, network_timeout=120
        )
    )
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", bridge.port, ae_title=bridge.ae_title)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        bridge.send_signal(signal.SIGINT)
        wait_for_log(bridge, "shutting down: 1 association(s) running")
        assert bridge.running, "the first SIGINT must wait for the association"
        bridge.send_signal(signal.SIGINT)
        assert bridge.wait(timeout=10) == 0, bridge.log_tail()
    finally:
        if assoc.is_established:
            assoc.release()
    log = bridge.log_text()
    assert "received SIGINT again: aborting running associations" in log
    assert "aborting association with PYNETDICOM at shutdown" in log
    assert log.rstrip().endswith("stopped"), log
    assert "Traceback" not in log
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted


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
    lines = without_profiles(result.stdout.strip().splitlines())
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("ok: "), lines[0]
    assert str(config) in lines[0] and orthanc.dicomweb_url in lines[0]
    assert result.stderr == ""


# --------------------------------------------------------------------------- check --peers


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp as a C-ECHO SCP on loopback (debug log: it names the calling AE)."""
    port = free_port()
    log_path = tmp_path / "storescp.log"
    with run_storescp(port, tmp_path, log_path, "-d", "-aet", "STORESCP"):
        yield port, log_path


def test_check_peers_echoes_each_peer(
    orthanc: OrthancFixture, storescp: tuple[int, Path], tmp_path: Path
) -> None:
    scp_port, scp_log = storescp
    down_port = free_port()
    up_peers = [("STORESCP", "127.0.0.1", scp_port), (orthanc.aet, "127.0.0.1", orthanc.dicom_port)]
    config = tmp_path / "peers.toml"
    config.write_text(
        bridge_config(
            orthanc.dicomweb_url,
            free_port(),
            ae_title="CHECK_BRIDGE",
            peers=[*up_peers, ("DOWN", "127.0.0.1", down_port)],
        ),
        encoding="utf-8",
    )
    result = run_cli("check", "--peers", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 4, result
    lines = without_profiles(result.stdout.splitlines())
    assert lines[0].startswith("ok: config "), lines
    assert len(lines) == 3, lines
    for line, (ae_title, host, port) in zip(lines[1:], up_peers, strict=True):
        assert line.startswith(
            f"ok: peer {ae_title} at {host}:{port}: C-ECHO answered 0x0000 (success) "
            "(calling AE CHECK_BRIDGE, "
        ), line
    assert result.stderr == (
        f"dimse-bridge: peer DOWN at 127.0.0.1:{down_port}: cannot connect: Connection refused "
        "(calling AE CHECK_BRIDGE)\n"
    )
    # The SCP saw the bridge's AE title as the calling AE.
    assert "Calling Application Name:    CHECK_BRIDGE" in scp_log.read_text(errors="replace")

    # Every peer up: exit 0; the calling AE is the one C-MOVE uses. Without --peers, peers
    # are not contacted.
    config.write_text(
        bridge_config(
            orthanc.dicomweb_url,
            free_port(),
            move={"calling_ae_title": "MOVER"},
            peers=[("STORESCP", "127.0.0.1", scp_port)],
        ),
        encoding="utf-8",
    )
    result = run_cli("check", "--peers", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result
    assert without_profiles(result.stdout.splitlines())[1].startswith(
        f"ok: peer STORESCP at 127.0.0.1:{scp_port}: C-ECHO answered 0x0000 (success) "
        "(calling AE MOVER, "
    )
    assert result.stderr == ""
    assert "Calling Application Name:    MOVER" in scp_log.read_text(errors="replace")
    associations = scp_log.read_text(errors="replace").count("I: Association Received")
    assert associations == 2
    assert run_cli("check", "--config", str(config), cwd=tmp_path).returncode == 0
    assert scp_log.read_text(errors="replace").count("I: Association Received") == associations


def test_check_peers_with_the_server_down_exits_3_and_still_reports_peers(
    storescp: tuple[int, Path], tmp_path: Path
) -> None:
    scp_port, _log = storescp
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    config = tmp_path / "down.toml"
    config.write_text(
        bridge_config(url, free_port(), peers=[("STORESCP", "127.0.0.1", scp_port)]),
        encoding="utf-8",
    )
    result = run_cli("check", "--peers", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 3, result
    assert result.stderr.startswith(f"dimse-bridge: {url}: cannot connect to {url}/studies")
    assert result.stdout.startswith(f"ok: peer STORESCP at 127.0.0.1:{scp_port}: C-ECHO answered")


# --------------------------------------------------------------------------- start-up probe


def echo(bridge: BridgeProcess) -> int:
    return scu_c_echo(("127.0.0.1", bridge.port, bridge.ae_title), "PYNETDICOM")


def test_run_warns_when_the_backend_does_not_answer_and_serves(
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    bridge = bridge_process(bridge_config(url, free_port()))
    wait_for_log(bridge, "start-up probe")
    warning = next(line for line in bridge.log_text().splitlines() if "start-up probe" in line)
    assert " WARNING " in warning, warning
    assert f"backend default ({url}) failed its start-up probe: cannot connect to {url}" in warning
    assert "serving anyway" in warning
    assert echo(bridge) == 0x0000
    assert bridge.running
    assert bridge.stop(timeout=10) == 0, bridge.log_tail()


def test_run_logs_that_the_backend_answers(
    bridge_process: Callable[..., BridgeProcess], orthanc: OrthancFixture
) -> None:
    bridge = bridge_process(bridge_config(orthanc.dicomweb_url, free_port()))
    wait_for_log(
        bridge, f"backend default ({orthanc.dicomweb_url}) answers: QIDO-RS answered HTTP 200"
    )
    assert "WARNING" not in bridge.log_text()
    assert echo(bridge) == 0x0000
