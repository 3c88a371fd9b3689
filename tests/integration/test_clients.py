"""Clients other than dcmtk and pynetdicom: a second Orthanc as a workstation, and GDCM.

The workstation Orthanc has the bridge in its DicomModalities and is itself in the
bridge's [[peers]] as a Move Destination; it is driven through its REST API
(``/modalities/{id}/move`` at every level, ``/modalities/{id}/query`` then
``/queries/{id}/retrieve``). Orthanc 1.10 proposes no Patient Root context, so it sends
PATIENT-level C-MOVEs on Study Root, and puts MediaStorageSOPInstanceUID (0002,0003) into
IMAGE-level identifiers: both used to be refused with 0xA900.

GDCM's ``gdcmscu`` (Debian libgdcm-tools) does C-ECHO, C-FIND and C-MOVE; its C-GET mode
is not implemented (it exits 1 without connecting). From GDCM 3.0.10 on it aborts with
"ProtocolStream as nullptr is invalid" (SIGABRT) after every release, whatever the SCP
(Orthanc too), before printing C-FIND answers: so the tests check what reached the
bridge and what the bridge answered (its log and /metrics) and the files a C-MOVE
brought, not gdcmscu's exit status. README "Client compatibility" lists these quirks.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from tests.conftest import OrthancFixture
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.dataset import InstanceEntry
from tests.integration.orthanc import WORKSTATION_AET, OrthancServer, workstation
from tests.integration.test_get import after_meta, target
from tests.integration.test_routing_ops import Metrics
from tests.integration.tools import free_port, missing_prerequisite, tool_env

pytestmark = pytest.mark.integration

BRIDGE_AE = "DIMSE_BRIDGE"
GDCM_AE = "GDCMSCU"
BRIDGE_MODALITY = "bridge"  # the bridge's name in the workstation's DicomModalities
GDCM_ABORT = "ProtocolStream as nullptr is invalid"


@dataclass(frozen=True)
class Clients:
    bridge: BridgeProcess
    workstation: OrthancServer
    gdcm_port: int  # where gdcmscu listens for the C-MOVE sub-association
    ops_url: str

    def metrics(self) -> Metrics:
        response = httpx.get(self.ops_url + "/metrics", timeout=10)
        assert response.status_code == 200
        return Metrics(response.text)

    def answered(self, service: str, status: str = "0x0000") -> float:
        return self.metrics().value(
            "dimse_bridge_dimse_requests_total", service=service, status=status
        )


@pytest.fixture(scope="module")
def clients(orthanc: OrthancFixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clients]:
    """The bridge on the session Orthanc, and an empty workstation Orthanc that knows it."""
    workdir = tmp_path_factory.mktemp("clients")
    bridge_port, gdcm_port, ops_port = free_port(), free_port(), free_port()
    server = workstation(
        workdir / "workstation", {BRIDGE_MODALITY: (BRIDGE_AE, "127.0.0.1", bridge_port)}
    ).start()
    try:
        peers = [
            (WORKSTATION_AET, "127.0.0.1", server.dicom_port),
            (GDCM_AE, "127.0.0.1", gdcm_port),
        ]
        config = bridge_config(
            orthanc.dicomweb_url,
            bridge_port,
            peers=peers,
            ops={"listen": f"127.0.0.1:{ops_port}"},
        )
        bridge = start_bridge(config, workdir, name="clients-bridge")
        try:
            yield Clients(bridge, server, gdcm_port, f"http://127.0.0.1:{ops_port}")
        finally:
            bridge.stop()
    finally:
        server.stop()


@pytest.fixture
def ws(clients: Clients) -> OrthancServer:
    """The workstation Orthanc, emptied."""
    clients.workstation.delete_all()
    assert clients.workstation.sop_instance_uids() == []
    return clients.workstation


def assert_arrived_intact(
    ws: OrthancServer, orthanc: OrthancFixture, expected: list[InstanceEntry]
) -> None:
    """Exactly the expected instances are in the workstation, each with the data set
    (everything after the File Meta) byte-identical to the one in the source Orthanc."""
    uids = sorted(e.SOPInstanceUID for e in expected)
    assert ws.sop_instance_uids() == uids
    for uid in uids:
        source = orthanc.server.instance_file(uid)
        received = ws.instance_file(uid)
        assert after_meta(received) == after_meta(source), uid
        assert dcmread(BytesIO(received)).PixelData == dcmread(BytesIO(source)).PixelData, uid


# --------------------------------------------------------------------------- Orthanc


ORTHANC_LEVELS = [
    ("Instance", "IMAGE"),
    ("Series", "SERIES"),
    ("Study", "STUDY"),
    ("Patient", "PATIENT"),
]


@pytest.mark.parametrize(("orthanc_level", "level"), ORTHANC_LEVELS, ids=lambda v: v.lower())
def test_workstation_moves_every_level(
    clients: Clients,
    ws: OrthancServer,
    orthanc: OrthancFixture,
    orthanc_level: str,
    level: str,
) -> None:
    """Orthanc's IMAGE-level identifier carries (0002,0003) and its PATIENT level comes on
    Study Root: both are served, as Orthanc's own SCP serves them."""
    goal = target(orthanc.manifest, "STUDY_ROOT", level)
    response = ws.move(BRIDGE_MODALITY, orthanc_level, [goal.keys])
    assert response.status_code == 200, (response.text, clients.bridge.log_tail())
    assert_arrived_intact(ws, orthanc, goal.expected)


def test_workstation_queries_then_retrieves_studies(
    clients: Clients, ws: OrthancServer, orthanc: OrthancFixture
) -> None:
    studies = orthanc.manifest.studies_of("P004")
    query_id = ws.query(BRIDGE_MODALITY, "Study", {"PatientID": "P004", "StudyDate": ""})
    answers = ws.query_answers(query_id)
    assert sorted(a["StudyInstanceUID"] for a in answers) == sorted(
        s.StudyInstanceUID for s in studies
    )
    response = ws.retrieve_query(query_id)
    assert response.status_code == 200, (response.text, clients.bridge.log_tail())
    expected = [i for i in orthanc.manifest.instances if i.PatientID == "P004"]
    assert_arrived_intact(ws, orthanc, expected)


def test_workstation_queries_then_retrieves_instances(
    clients: Clients, ws: OrthancServer, orthanc: OrthancFixture
) -> None:
    """An Instance-level query: the retrieve is one IMAGE-level C-MOVE per answer."""
    goal = target(orthanc.manifest, "STUDY_ROOT", "SERIES")
    query_id = ws.query(BRIDGE_MODALITY, "Instance", {**goal.keys, "SOPInstanceUID": ""})
    answers = ws.query_answers(query_id)
    assert sorted(a["SOPInstanceUID"] for a in answers) == sorted(
        e.SOPInstanceUID for e in goal.expected
    )
    response = ws.retrieve_query(query_id)
    assert response.status_code == 200, (response.text, clients.bridge.log_tail())
    assert_arrived_intact(ws, orthanc, goal.expected)


# --------------------------------------------------------------------------- GDCM


def gdcmscu(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run gdcmscu; skip (locally) or fail (CI) when libgdcm-tools is not installed.

    Returns once it has ended; its exit status is not a verdict (see the module docstring)
    beyond: 0, 1 on a failure it noticed, or its known abort after the release.
    """
    binary = shutil.which("gdcmscu")
    if binary is None:
        missing_prerequisite("GDCM's gdcmscu is not installed (apt-get install libgdcm-tools)")
    result = subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        cwd=cwd,
        env=tool_env(),
        stdin=subprocess.DEVNULL,
    )
    if result.returncode == -signal.SIGABRT:
        assert GDCM_ABORT in result.stderr, result.stderr[-2000:]
    else:
        assert result.returncode in (0, 1), (result.returncode, result.stderr[-2000:])
    return result


def log_after(bridge: BridgeProcess, offset: int) -> str:
    return bridge.log_text()[offset:]


def gdcm_target(clients: Clients) -> list[str]:
    return [
        "--aetitle",
        GDCM_AE,
        "--call",
        BRIDGE_AE,
        clients.bridge.host,
        str(clients.bridge.port),
    ]


def test_gdcmscu_echo(clients: Clients, tmp_path: Path) -> None:
    before = clients.answered("C-ECHO")
    gdcmscu("--echo", *gdcm_target(clients), cwd=tmp_path)
    assert clients.answered("C-ECHO") == before + 1


def test_gdcmscu_find_studies(clients: Clients, orthanc: OrthancFixture, tmp_path: Path) -> None:
    """gdcmscu's identifier (written with --store-query): what it sends, and the
    bridge's answer (success, one match per study of the patient)."""
    studies = orthanc.manifest.studies_of("P004")
    before = clients.answered("C-FIND")
    offset = len(clients.bridge.log_text())
    query = tmp_path / "query.dcm"
    args = ["--find", "--study", "--studyroot", "--store-query", str(query)]
    args += ["--key", "10,20=P004", "--key", "20,d=", "--key", "8,20="]
    gdcmscu(*args, *gdcm_target(clients), cwd=tmp_path)
    sent = dcmread(query, force=True)
    assert str(sent.QueryRetrieveLevel).strip() == "STUDY"
    assert sent.PatientID == "P004"
    assert clients.answered("C-FIND") == before + 1
    done = f"C-FIND done: peer {GDCM_AE}, {len(studies)} matches, "
    assert done in log_after(clients.bridge, offset), log_after(clients.bridge, offset)


GDCM_MOVES = [
    pytest.param(["--study", "--studyroot", "--key", "8,52=STUDY"], "STUDY", id="study"),
    # gdcmscu builds no Study Root PATIENT query: --patient --studyroot segfaults in
    # gdcmscu itself before it connects.
    pytest.param(["--patient", "--patientroot", "--key", "8,52=PATIENT"], "PATIENT", id="patient"),
]


@pytest.mark.parametrize(("model_args", "level"), GDCM_MOVES)
def test_gdcmscu_move(
    clients: Clients,
    orthanc: OrthancFixture,
    tmp_path: Path,
    model_args: list[str],
    level: str,
) -> None:
    """gdcmscu is its own Move Destination (its AE title, --port-scp) and writes what
    arrives to -o."""
    goal = target(orthanc.manifest, "STUDY_ROOT", level)
    out = tmp_path / "received"
    out.mkdir()
    args = ["--move", *model_args, "--port-scp", str(clients.gdcm_port), "-o", str(out)]
    for keyword, value in goal.keys.items():
        tag = {"PatientID": "10,20", "StudyInstanceUID": "20,d"}[keyword]
        args += ["--key", f"{tag}={value}"]
    before = clients.answered("C-MOVE")
    gdcmscu(*args, *gdcm_target(clients), cwd=tmp_path)
    files = sorted(out.iterdir())
    received = {str(dcmread(p).SOPInstanceUID): p for p in files}
    assert sorted(received) == sorted(e.SOPInstanceUID for e in goal.expected)
    assert len(files) == len(goal.expected)
    for uid, path in received.items():
        stored = orthanc.server.instance_file(uid)
        assert dcmread(path).PixelData == dcmread(BytesIO(stored)).PixelData, uid
    assert clients.answered("C-MOVE") == before + 1


def test_gdcmscu_has_no_get(clients: Clients, tmp_path: Path) -> None:
    """gdcmscu 3.0's --get is a stub: it exits 1 without connecting (a GDCM limit, noted
    in the README; the day it works, this test says so)."""
    offset = len(clients.bridge.log_text())
    result = gdcmscu(
        "--get",
        "--study",
        "--studyroot",
        "--key",
        "20,d=1.2.3",
        *gdcm_target(clients),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert f"association from {GDCM_AE}" not in log_after(clients.bridge, offset)
