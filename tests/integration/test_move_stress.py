"""Stress: thousands of C-MOVE sub-operations on one sub-association, with the CPU loaded.

    movescu --C-MOVE--> bridge --WADO-RS--> Orthanc (private, STRESS_SIZE tiny instances)
                           \\--C-STORE x STRESS_SIZE--> dcmtk storescp

The sub-association the bridge opens to the Move Destination has a live pynetdicom
reactor that also reads the DIMSE queue; a sender that only judged it paused lost a
C-STORE response to it about once in 2,000 sub-operations on a loaded machine, and the
move then failed every remaining instance. Here busy processes spin on every core while
the move runs, and every instance must arrive (count and UIDs) with exact counters, on
the encoded fast path and on pynetdicom's stock ``send_c_store`` path.

The ``widened`` case runs the bridge with ``race_widener/sitecustomize.py``, which makes
every reactor that passes its checkpoint linger until a DIMSE message arrives before it
reads the queue: on the code before the fix the first sub-operation already lost its
response there ("Received unexpected C-STORE service message").
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.study import Study, uploaded_study
from tests.integration.bridge_runner import REPO_ROOT, bridge_config, start_bridge
from tests.integration.dataset import make_ct_series, to_bytes
from tests.integration.test_move import movescu_final
from tests.integration.tools import describe, free_port, run_dcmtk, storescp

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = "127.0.0.1"
STRESS_SIZE = 1500
WIDENED_SIZE = 200  # the widened race needs no volume to show
DESTINATION = "STRESSSCP"
SUCCESS = 0x0000
DIMSE_TIMEOUT = 10  # [move] dimse_timeout: a lost response fails within this
WIDENER = Path(__file__).parent / "race_widener"
_SPIN = "while True: pass"


@dataclass(frozen=True)
class Destination:
    port: int
    directory: Path

    def uids(self) -> list[str]:
        # storescp's default file names are "<modality>.<SOP Instance UID>".
        return [path.name.split(".", 1)[1] for path in self.directory.iterdir()]

    def clear(self) -> None:
        for path in self.directory.iterdir():
            path.unlink()


@dataclass(frozen=True)
class Studies:
    big: Study  # STRESS_SIZE instances
    small_uid: str  # a second study, WIDENED_SIZE instances, in the same Orthanc
    small_uids: tuple[str, ...]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studies]:
    with uploaded_study(tmp_path_factory.mktemp("stress"), STRESS_SIZE, key="move-stress") as s:
        small = make_ct_series(
            WIDENED_SIZE, rows=64, columns=64, key="move-stress-small", patient_id="STRESS2"
        )
        s.server.upload_many(to_bytes(ds) for ds in small)
        yield Studies(
            s, str(small[0].StudyInstanceUID), tuple(str(ds.SOPInstanceUID) for ds in small)
        )


@pytest.fixture(scope="module")
def destination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Destination]:
    workdir = tmp_path_factory.mktemp("stress-scp")
    directory = workdir / "received"
    directory.mkdir()
    port = free_port()
    with storescp(port, directory, workdir / "storescp.log", "-aet", DESTINATION):
        yield Destination(port, directory)


@pytest.fixture
def busy_cpu() -> Iterator[None]:
    """A process spinning on every core for the duration of the test."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", _SPIN], stdin=subprocess.DEVNULL)
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait(10)


CASES = {
    # case: (fast_send, widened)
    "encoded": (True, False),
    "stock": (False, False),
    "widened": (True, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_thousands_of_move_suboperations_under_cpu_load(
    studies: Studies,
    destination: Destination,
    tmp_path: Path,
    busy_cpu: None,
    case: str,
) -> None:
    fast_send, widened = CASES[case]
    if widened:
        study_uid, uids = studies.small_uid, studies.small_uids
    else:
        study_uid, uids = studies.big.study_uid, studies.big.uids
    destination.clear()
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(WIDENER)])} if widened else None
    bridge = start_bridge(
        bridge_config(
            studies.big.server.dicomweb_url,
            free_port(),
            peers=[(DESTINATION, HOST, destination.port)],
            move={"dimse_timeout": DIMSE_TIMEOUT},
            retrieve__fast_send=fast_send,
        ),
        tmp_path,
        name=f"stress-{case}",
        env=env,
    )
    try:
        args = ["-d", "-S", "-aet", "MOVESCU", "-aec", bridge.ae_title, "-aem", DESTINATION]
        args += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
        result = run_dcmtk("movescu", *args, bridge.host, str(bridge.port), timeout=120)
    finally:
        bridge.stop()
    log = result.stdout + result.stderr
    bridge_log = bridge.log_text()
    final, counts = movescu_final(log)
    assert "Received unexpected" not in bridge_log, bridge.log_tail()
    assert "no attribute 'Status'" not in bridge_log, bridge.log_tail()
    assert final == SUCCESS, (counts, bridge.log_tail())
    assert counts.get("Completed") == len(uids), counts
    assert counts.get("Remaining", 0) == counts.get("Failed", 0) == counts.get("Warning", 0) == 0
    assert result.returncode == 0, describe(["movescu", *args], result)
    received = destination.uids()
    assert len(received) == len(uids)
    assert sorted(received) == sorted(uids)
