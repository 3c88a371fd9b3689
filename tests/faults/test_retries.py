"""Retries of DICOMweb requests, end to end, with a fault proxy in front of a private Orthanc.

    pynetdicom SCU --DIMSE--> bridge --HTTP--> FaultProxy --HTTP--> private Orthanc

What bridge/dicomweb/retry.py promises, seen from the wire: idempotent reads (QIDO-RS,
WADO-RS) are retried on 429/502/503/504 and on resets, honouring ``Retry-After``, until
``dicomweb.retry_deadline``; a 500 is not retried; STOW-RS is retried only when the
request never reached the server (connection refused), so a 503 answered to a STOW-RS
is final; a C-CANCEL interrupts a retry backoff at once.

The private Orthanc and the bridge that most tests share are module-scoped: Orthanc takes
~3 s to stop, and function-scoped ones (``orthanc_factory``) would cost that per test.
Each test starts from an empty fault plan and an empty request log.
"""

from __future__ import annotations

import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.conftest import require_orthanc
from tests.faults.paths import is_qido_studies, is_wado, wado_path_of
from tests.faults.proxy import FaultProxy, RequestRecord
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.dataset import make_ct_series, to_bytes
from tests.integration.orthanc import OrthancServer
from tests.integration.tools import free_port as free_tcp_port
from tests.scu import RetrieveOutcome, c_get, scu

pytestmark = pytest.mark.integration

FIND_MODEL = StudyRootQueryRetrieveInformationModelFind
GET_MODEL = StudyRootQueryRetrieveInformationModelGet
MSG_ID = 11
SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
OUT_OF_RESOURCES = 0xA700
SUBOPS_FAILED = 0xB000


def is_stow(path: str) -> bool:
    return path == "/dicom-web/studies"


def after_meta(part10: bytes) -> bytes:
    """The encoded data set of a Part 10 file (everything after preamble and File Meta)."""
    assert part10[128:132] == b"DICM", "not a Part 10 file"
    group, element, vr, length, value = struct.unpack("<HH2sHI", part10[132:144])
    assert (group, element, vr, length) == (2, 0, b"UL", 4), "no File Meta group length"
    return part10[144 + value :]


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Study:
    study_uid: str
    uids: tuple[str, ...]  # in sending order (instance number)
    originals: dict[str, bytes]  # SOPInstanceUID -> Part 10 file

    def __len__(self) -> int:
        return len(self.uids)


@dataclass(frozen=True)
class Data:
    server: OrthancServer
    big: Study  # 4 CT instances of 64x64 (~8 kB each): the one retrieved
    small: Study  # 2 CT instances: a second study for C-FIND


def _study(datasets: list[Dataset]) -> Study:
    return Study(
        study_uid=str(datasets[0].StudyInstanceUID),
        uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
        originals={str(ds.SOPInstanceUID): to_bytes(ds) for ds in datasets},
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Data]:
    """A private Orthanc with two small generated CT studies (patients RETRY001, RETRY002)."""
    require_orthanc()
    big = make_ct_series(
        4,
        rows=64,
        columns=64,
        key="retries-big",
        patient_id="RETRY001",
        patient_name="RETRY^BIG",
        accession="ACCRTY01",
    )
    small = make_ct_series(
        2,
        key="retries-small",
        patient_id="RETRY002",
        patient_name="RETRY^SMALL",
        accession="ACCRTY02",
    )
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-retries")).start()
    try:
        server.upload_many(to_bytes(ds) for ds in big + small)
        assert server.statistics()["CountInstances"] == 6
        yield Data(server=server, big=_study(big), small=_study(small))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_proxy(data: Data) -> Iterator[FaultProxy]:
    with FaultProxy(data.server.http_url) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def proxy(shared_proxy: FaultProxy) -> FaultProxy:
    """The module's proxy with no fault rule and no recorded request."""
    shared_proxy.clear_faults()
    shared_proxy.clear()
    return shared_proxy


@pytest.fixture(scope="module")
def bridge(
    shared_proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BridgeProcess]:
    """The bridge fronting the proxy with the default retry policy (deadline 30 s, 4
    retries, 0.2 s base backoff, Retry-After honoured up to 10 s)."""
    process = start_bridge(
        bridge_config(shared_proxy.url + "/dicom-web", free_tcp_port(), timeout=10),
        tmp_path_factory.mktemp("bridge-retries"),
        name="bridge-retries",
    )
    try:
        yield process
    finally:
        process.stop()


# --------------------------------------------------------------------------- SCUs


def _associate(ae: AE, bridge: BridgeProcess, **kwargs: Any) -> Any:
    ae.acse_timeout = 10
    ae.dimse_timeout = 40
    ae.network_timeout = 40
    assoc = ae.associate(bridge.host, bridge.port, ae_title=bridge.ae_title, **kwargs)
    assert assoc.is_established, f"association refused; bridge log:\n{bridge.log_tail()}"
    return assoc


def c_find_studies(bridge: BridgeProcess, **keys: str) -> tuple[list[Dataset], Dataset]:
    """A STUDY-level Study Root C-FIND; (matches, final status)."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(FIND_MODEL)
    assoc = _associate(ae, bridge)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientID = ""
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    matches: list[Dataset] = []
    final = Dataset()
    try:
        for status, identifier in assoc.send_c_find(query, FIND_MODEL):
            if "Status" not in status:
                break
            if int(status.Status) in (PENDING, 0xFF01):
                matches.append(identifier)
            else:
                final = status
    finally:
        if assoc.is_established:
            assoc.release()
    return matches, final


def c_get_study(
    bridge: BridgeProcess,
    study_uid: str,
    on_established: Callable[[Any], object] | None = None,
) -> RetrieveOutcome:
    """C-GET a study (Study Root, STUDY level); CT Image Storage in Explicit VR LE only,
    so that what arrives is the data set exactly as Orthanc stored it."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return c_get(
        scu("GETSCU", timeouts=(10, 40, 40)),
        (bridge.host, bridge.port, bridge.ae_title),
        query,
        GET_MODEL,
        [(CTImageStorage, [ExplicitVRLittleEndian])],
        msg_id=MSG_ID,
        on_established=on_established,
    )


def c_store(bridge: BridgeProcess, ds: Dataset) -> tuple[Dataset, float]:
    """C-STORE one instance; (status, seconds the C-STORE took)."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = _associate(ae, bridge)
    try:
        started = time.monotonic()
        status = assoc.send_c_store(ds)
        return status, time.monotonic() - started
    finally:
        if assoc.is_established:
            assoc.release()


def records_for(proxy: FaultProxy, match: Callable[[str], bool]) -> list[RequestRecord]:
    return [r for r in proxy.records() if match(r.path)]


def assert_all_received(outcome: RetrieveOutcome, study: Study) -> None:
    """Success, every instance once, each byte-identical to the uploaded data set."""
    assert outcome.status == SUCCESS, outcome.describe()
    assert outcome.count("NumberOfCompletedSuboperations") == len(study), outcome.describe()
    assert outcome.count("NumberOfFailedSuboperations") == 0, outcome.describe()
    assert sorted(outcome.received_uids) == sorted(study.uids)
    received = outcome.by_uid()
    for uid in study.uids:
        assert received[uid].raw == after_meta(study.originals[uid]), uid


# --------------------------------------------------------------------------- QIDO-RS


def test_qido_503_with_retry_after_is_retried(
    data: Data, proxy: FaultProxy, bridge: BridgeProcess
) -> None:
    """(a) QIDO-RS answers 503 + ``Retry-After: 1`` twice, then passes: the C-FIND
    succeeds with every match, after 3 QIDO-RS requests about 1 s apart."""
    proxy.fail(503, path_filter=is_qido_studies, count=2, headers={"Retry-After": "1"})
    matches, final = c_find_studies(bridge, PatientID="RETRY*")
    assert int(final.Status) == SUCCESS, final
    assert sorted(str(m.StudyInstanceUID) for m in matches) == sorted(
        [data.big.study_uid, data.small.study_uid]
    )
    assert sorted(str(m.PatientID) for m in matches) == ["RETRY001", "RETRY002"]
    qido = records_for(proxy, is_qido_studies)
    assert [r.status for r in qido] == [503, 503, 200], qido
    assert [r.fault for r in qido] == ["status:503", "status:503", None]
    gaps = [b.started_at - a.started_at for a, b in zip(qido, qido[1:], strict=False)]
    assert all(0.95 <= gap < 2.0 for gap in gaps), f"gaps between attempts: {gaps}"


# --------------------------------------------------------------------------- WADO-RS


def test_wado_429_storm_is_ridden_out(data: Data, proxy: FaultProxy, bridge: BridgeProcess) -> None:
    """(b) Three 429s in a row on one instance's WADO-RS (no Retry-After: jittered
    backoff): the 4th attempt passes and the C-GET succeeds."""
    target = data.big.uids[1]
    proxy.fail(429, path_filter=wado_path_of(target), count=3)
    outcome = c_get_study(bridge, data.big.study_uid)
    assert_all_received(outcome, data.big)
    attempts = records_for(proxy, wado_path_of(target))
    assert [r.status for r in attempts] == [429, 429, 429, 200], attempts
    # Every other instance was fetched exactly once.
    others = [r for r in records_for(proxy, is_wado) if not wado_path_of(target)(r.path)]
    assert len(others) == len(data.big) - 1, others


def test_wado_reset_mid_body_is_retried(
    data: Data, proxy: FaultProxy, bridge: BridgeProcess
) -> None:
    """(c) The connection is reset after 1000 body bytes of one instance's WADO-RS
    answer, once: the bridge retries, and every instance arrives byte-identical."""
    target = data.big.uids[2]
    proxy.reset(1000, path_filter=wado_path_of(target), count=1)
    outcome = c_get_study(bridge, data.big.study_uid)
    assert_all_received(outcome, data.big)
    attempts = records_for(proxy, wado_path_of(target))
    assert [(r.fault, r.status) for r in attempts] == [("reset", 200), (None, 200)], attempts
    assert attempts[0].bytes_relayed == 1000 and attempts[0].completed_at is None
    assert attempts[1].completed_at is not None


def test_wado_503_past_the_retry_deadline_fails_that_instance(
    data: Data,
    proxy: FaultProxy,
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    """(d) One instance's WADO-RS answers 503 for ever; retry_deadline = 2 (and retries
    not capped by count): that sub-operation fails, named in the Failed SOP Instance UID
    List (0xB000), the others arrive, and the C-GET ends in well under 5 s."""
    bridge = bridge_process(
        bridge_config(
            proxy.url + "/dicom-web",
            free_tcp_port(),
            timeout=10,
            dicomweb={"retry_deadline": 2, "max_retries": 50},
        )
    )
    target = data.big.uids[0]
    proxy.fail(503, path_filter=wado_path_of(target))
    outcome = c_get_study(bridge, data.big.study_uid)
    assert outcome.status == SUBOPS_FAILED, outcome.describe()
    assert outcome.failed_uids == [target], outcome.describe()
    assert outcome.count("NumberOfFailedSuboperations") == 1
    assert outcome.count("NumberOfCompletedSuboperations") == len(data.big) - 1
    assert sorted(outcome.received_uids) == sorted(u for u in data.big.uids if u != target)
    assert outcome.seconds < 5.0, outcome.describe()
    attempts = records_for(proxy, wado_path_of(target))
    assert len(attempts) >= 3, attempts  # it was retried...
    assert all(r.status == 503 for r in attempts), attempts
    span = attempts[-1].started_at - attempts[0].started_at
    assert span <= 2.25, f"last attempt {span:.2f} s after the first: past the deadline"


def test_wado_500_is_not_retried(data: Data, proxy: FaultProxy, bridge: BridgeProcess) -> None:
    """(e) HTTP 500 on one instance's WADO-RS: asked exactly once, that instance fails."""
    target = data.big.uids[3]
    proxy.fail(500, path_filter=wado_path_of(target))
    outcome = c_get_study(bridge, data.big.study_uid)
    assert outcome.status == SUBOPS_FAILED, outcome.describe()
    assert outcome.failed_uids == [target], outcome.describe()
    assert outcome.count("NumberOfCompletedSuboperations") == len(data.big) - 1
    assert outcome.count("NumberOfFailedSuboperations") == 1
    time.sleep(0.3)  # a (wrong) retry would come within the first backoff (<= 0.2 s)
    attempts = records_for(proxy, wado_path_of(target))
    assert [r.status for r in attempts] == [500], attempts


def test_cancel_during_retry_backoff(data: Data, proxy: FaultProxy, bridge: BridgeProcess) -> None:
    """(g) The first instance's WADO-RS answers 503 + ``Retry-After: 10``: the bridge
    waits 10 s before retrying, and a C-CANCEL 0.5 s into that wait is answered with
    0xFE00 within 1 s; the retry never happens."""
    target = data.big.uids[0]  # sent first: the bridge waits on it before sending anything
    proxy.fail(503, path_filter=wado_path_of(target), headers={"Retry-After": "10"})
    cancel_at: list[float] = []
    errors: list[BaseException] = []

    def cancel_later(assoc: Any) -> None:
        try:
            proxy.wait_for(lambda rs: any(wado_path_of(target)(r.path) for r in rs), timeout=10)
            time.sleep(0.5)
            cancel_at.append(time.monotonic())
            assoc.send_c_cancel(MSG_ID, query_model=GET_MODEL)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    outcome = c_get_study(
        bridge,
        data.big.study_uid,
        on_established=lambda assoc: threading.Thread(
            target=cancel_later, args=(assoc,), daemon=True
        ).start(),
    )
    assert not errors, errors
    assert cancel_at, outcome.describe()
    assert outcome.status == CANCEL, outcome.describe()
    assert outcome.final_at is not None
    latency = outcome.final_at - cancel_at[0]
    assert latency < 1.0, f"C-CANCEL answered {latency:.3f} s later"
    assert outcome.received_uids == []
    assert outcome.count("NumberOfRemainingSuboperations") == len(data.big)
    time.sleep(0.5)
    attempts = records_for(proxy, wado_path_of(target))
    assert [r.status for r in attempts] == [503], attempts
    assert bridge.running


# --------------------------------------------------------------------------- STOW-RS


def test_stow_503_is_not_retried(data: Data, proxy: FaultProxy, bridge: BridgeProcess) -> None:
    """(f) STOW-RS answered 503 once: the request reached the server, so it is not retried
    (exactly 1 POST) and the C-STORE fails with 0xA700; sent again, it is stored."""
    (ds,) = make_ct_series(1, key="retries-stow", patient_id="STOW001", accession="ACCSTOW1")
    proxy.fail(503, path_filter=is_stow, method="POST", count=1)
    status, _ = c_store(bridge, ds)
    assert int(status.Status) == OUT_OF_RESOURCES, status
    assert "503" in str(status.get("ErrorComment", "")), status
    time.sleep(0.3)
    posts = [r for r in proxy.records() if r.method == "POST"]
    assert [(r.path, r.status) for r in posts] == [("/dicom-web/studies", 503)], posts
    assert data.server.client.post("/tools/lookup", content=str(ds.SOPInstanceUID)).json() == []

    status, _ = c_store(bridge, ds)
    assert int(status.Status) == SUCCESS, status
    posts = [r for r in proxy.records() if r.method == "POST"]
    assert [r.status for r in posts] == [503, 200], posts
    assert data.server.orthanc_id(str(ds.SOPInstanceUID))


def test_stow_to_a_closed_port_fails_within_the_deadline(
    bridge_process: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """(f) STOW-RS to a port nothing listens on: connect errors are retried (the request
    never left), until retry_deadline = 2; the C-STORE then fails with 0xA700."""
    closed = free_tcp_port()
    bridge = bridge_process(
        bridge_config(
            f"http://127.0.0.1:{closed}/dicom-web",
            free_tcp_port(),
            timeout=10,
            dicomweb={"retry_deadline": 2},
        )
    )
    (ds,) = make_ct_series(1, key="retries-stow-closed", patient_id="STOW002")
    status, seconds = c_store(bridge, ds)
    assert int(status.Status) == OUT_OF_RESOURCES, status
    assert "unreachable" in str(status.get("ErrorComment", "")).lower(), status
    assert seconds < 2.0 + 2.0, f"the C-STORE took {seconds:.2f} s"
    # Each retry is logged ("STOW-RS failed (cannot connect ...); retry N in S s").
    retries = re.findall(
        r"STOW-RS failed \(cannot connect[^)]*\); retry (\d+) in", bridge.log_text()
    )
    assert len(retries) >= 2 and retries[:2] == ["1", "2"], bridge.log_tail()
