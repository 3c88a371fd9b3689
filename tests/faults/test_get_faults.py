"""C-GET against a misbehaving DICOMweb server: a fault proxy in front of a private Orthanc.

    pynetdicom C-GET SCU --DIMSE--> bridge --HTTP--> FaultProxy --HTTP--> private Orthanc

One WADO-RS instance request fails (truncated body, HTTP 500, connection reset, stalled
body): that sub-operation fails, every other one succeeds, the final status is 0xB000 and
the Failed SOP Instance UID List names exactly that instance. The QIDO-RS search fails
(HTTP 503, a body that is not JSON, a stalled answer): 0xA701 with an ErrorComment
(README, C-GET statuses).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydicom import Dataset
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

from tests.faults.paths import is_qido, is_wado, wado_path_of
from tests.faults.proxy import FaultProxy, RequestRecord
from tests.faults.study import Study
from tests.integration.bridge_runner import BridgeProcess, bridge_config
from tests.scu import RetrieveOutcome, c_get, scu

pytestmark = pytest.mark.integration

STUDY_SIZE = 300
FAULTED_INDEX = 10  # the 11th instance in sending order
GET_MODEL = StudyRootQueryRetrieveInformationModelGet


# --------------------------------------------------------------------------- fixtures


def faulted(study: Study) -> str:
    """The instance the fault rules target."""
    return study.uids[FAULTED_INDEX]


@pytest.fixture
def start_bridge(
    proxy: FaultProxy,
    bridge_process: Callable[..., BridgeProcess],
    free_port: Callable[[], int],
) -> Callable[[float], BridgeProcess]:
    """``start_bridge(timeout)``: the bridge fronting the proxy, dicomweb.timeout as given."""

    def start(timeout: float) -> BridgeProcess:
        return bridge_process(bridge_config(proxy.url + "/dicom-web", free_port(), timeout=timeout))

    return start


# --------------------------------------------------------------------------- the SCU


def run_get(bridge: BridgeProcess, study_uid: str) -> RetrieveOutcome:
    """C-GET one study at STUDY level (Study Root), CT Image Storage in the SCP role."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return c_get(
        scu("GETSCU", timeouts=(10, 30, 30)),
        (bridge.host, bridge.port, bridge.ae_title),
        query,
        GET_MODEL,
        [(CTImageStorage, None)],
        nodelay=True,
    )


def _counts(ds: Dataset) -> tuple[int, ...]:
    """(remaining, completed, failed, warning) sub-operations of a C-GET response."""
    return tuple(
        int(ds.get(f"NumberOf{name}Suboperations") or 0)
        for name in ("Remaining", "Completed", "Failed", "Warning")
    )


def assert_one_failed(outcome: RetrieveOutcome, study: Study) -> None:
    """0xB000; exactly the faulted instance failed and is listed; every other one arrived."""
    assert outcome.status == 0xB000, outcome.describe()
    assert outcome.failed_uids == [faulted(study)], outcome.describe()
    # The list says which sub-operation failed; the ErrorComment says why.
    assert outcome.comment.startswith("1 failed: "), outcome.describe()
    expected = [uid for uid in study.uids if uid != faulted(study)]
    assert outcome.received_uids == expected, (
        f"{len(outcome.received)} received; missing "
        f"{sorted(set(expected) - set(outcome.received_uids))[:3]}, "
        f"unexpected {sorted(set(outcome.received_uids) - set(expected))[:3]}"
    )
    assert outcome.count("NumberOfCompletedSuboperations") == STUDY_SIZE - 1
    assert outcome.count("NumberOfFailedSuboperations") == 1
    assert outcome.count("NumberOfWarningSuboperations") == 0
    # One pending response per sub-operation, each adding up to the total (a failed
    # sub-operation must not count as failed *and* remaining).
    assert len(outcome.pending) == STUDY_SIZE
    wrong = [
        (i, _counts(ds)) for i, ds in enumerate(outcome.pending) if sum(_counts(ds)) != STUDY_SIZE
    ]
    assert not wrong, (
        f"{len(wrong)} pending responses do not add up; first (index, (remaining, "
        f"completed, failed, warning)): {wrong[0]}"
    )
    assert _counts(outcome.pending[FAULTED_INDEX]) == (
        STUDY_SIZE - FAULTED_INDEX - 1,
        FAULTED_INDEX,
        1,
        0,
    )


def faulted_records(proxy: FaultProxy, study: Study) -> list[RequestRecord]:
    return [r for r in proxy.records() if wado_path_of(faulted(study))(r.path)]


def report(name: str, **figures: object) -> None:
    text = ", ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\n[{name}] {text}")


# --------------------------------------------------------------------------- WADO-RS faults


@pytest.mark.parametrize(
    ("kind", "inject"),
    [
        ("truncate", lambda proxy, flt: proxy.truncate(4000, path_filter=flt)),
        ("status:500", lambda proxy, flt: proxy.fail(500, path_filter=flt)),
        ("reset", lambda proxy, flt: proxy.reset(0, path_filter=flt)),
    ],
    ids=["truncated-multipart", "http-500", "connection-reset"],
)
def test_one_wado_instance_fails(
    study: Study,
    proxy: FaultProxy,
    start_bridge: Callable[[float], BridgeProcess],
    kind: str,
    inject: Callable[[FaultProxy, Callable[[str], bool]], object],
) -> None:
    """(a) truncated multipart body, (b) HTTP 500, (c) connection reset before any byte, on
    every attempt at one instance's WADO-RS request (retries included): that sub-operation
    alone fails."""
    bridge = start_bridge(10)
    inject(proxy, wado_path_of(faulted(study)))
    outcome = run_get(bridge, study.study_uid)
    attempts = faulted_records(proxy, study)
    assert attempts and all(r.fault == kind for r in attempts), attempts
    assert_one_failed(outcome, study)
    expected_reason = {
        "truncate": "DICOMweb answer not understood",
        "status:500": "DICOMweb server answered HTTP 500",
        "reset": "DICOMweb server unreachable",
    }[kind]
    assert outcome.comment.startswith(f"1 failed: {expected_reason}"), outcome.describe()
    report(f"wado/{kind}", attempts=len(attempts), seconds=outcome.seconds)
    assert bridge.running


@pytest.mark.parametrize(
    ("kind", "inject"),
    [
        ("reset", lambda proxy, flt: proxy.reset(0, path_filter=flt, count=1)),
        ("status:503", lambda proxy, flt: proxy.fail(503, path_filter=flt, count=1)),
    ],
    ids=["connection-reset", "http-503"],
)
def test_one_transient_wado_failure_is_retried(
    study: Study,
    proxy: FaultProxy,
    start_bridge: Callable[[float], BridgeProcess],
    kind: str,
    inject: Callable[[FaultProxy, Callable[[str], bool]], object],
) -> None:
    """A reset or 503 on the first attempt only: WADO-RS reads are retried (bridge/dicomweb/
    retry.py), so the instance arrives and the C-GET succeeds."""
    bridge = start_bridge(10)
    inject(proxy, wado_path_of(faulted(study)))
    outcome = run_get(bridge, study.study_uid)
    attempts = faulted_records(proxy, study)
    assert [r.fault for r in attempts] == [kind, None], attempts
    assert outcome.status == 0x0000, outcome.describe()
    assert outcome.received_uids == list(study.uids)
    report(f"wado/{kind} once", attempts=len(attempts), seconds=outcome.seconds)


def test_stalled_wado_body_times_out(
    study: Study, proxy: FaultProxy, start_bridge: Callable[[float], BridgeProcess]
) -> None:
    """(g) one instance's WADO-RS body stalls after 2000 bytes, dicomweb.timeout = 2: that
    instance fails after ~2 s (the bridge closes the request), the others succeed."""
    bridge = start_bridge(2)
    proxy.stall(2000, path_filter=wado_path_of(faulted(study)))
    outcome = run_get(bridge, study.study_uid)
    assert_one_failed(outcome, study)
    attempts = faulted_records(proxy, study)
    assert attempts and all(r.fault == "stall" for r in attempts), attempts
    first = attempts[0]
    assert first.bytes_relayed == 2000 and first.completed_at is None
    assert first.client_closed_at is not None, "the bridge never gave up the stalled request"
    held = first.client_closed_at - first.started_at
    assert 1.5 <= held < 5.0, f"the stalled request was closed after {held:.2f} s"
    assert outcome.seconds < 15.0
    report("wado/stall", attempts=len(attempts), closed_after_s=held, seconds=outcome.seconds)


# --------------------------------------------------------------------------- QIDO-RS faults


@pytest.mark.parametrize(
    ("inject", "why"),
    [
        (lambda proxy: proxy.fail(503, path_filter=is_qido), "503"),
        (
            lambda proxy: proxy.fail(
                200,
                path_filter=is_qido,
                body=b"<html><body>Please log in</body></html>",
                headers={"Content-Type": "text/html"},
            ),
            "json",
        ),
    ],
    ids=["http-503", "not-json-200"],
)
def test_qido_failure_is_a701(
    study: Study,
    proxy: FaultProxy,
    start_bridge: Callable[[float], BridgeProcess],
    inject: Callable[[FaultProxy], object],
    why: str,
) -> None:
    """(d) QIDO-RS answers 503, (e) QIDO-RS answers 200 with HTML: 0xA701, ErrorComment
    says why, nothing is fetched or sent."""
    bridge = start_bridge(10)
    inject(proxy)
    outcome = run_get(bridge, study.study_uid)
    assert outcome.status == 0xA701, outcome.describe()
    assert why in outcome.comment.lower(), outcome.describe()
    assert outcome.received_uids == []
    records = proxy.records()
    assert any(is_qido(r.path) for r in records), [r.path for r in records]
    assert not any(is_wado(r.path) for r in records)
    report(f"qido/{why}", comment=outcome.comment, seconds=outcome.seconds)
    assert bridge.running


def test_stalled_qido_times_out(
    study: Study, proxy: FaultProxy, start_bridge: Callable[[float], BridgeProcess]
) -> None:
    """(f) QIDO-RS sends its headers, then nothing; dicomweb.timeout = 2: 0xA701 with an
    ErrorComment within ~5 s, and the bridge closes the stalled request."""
    bridge = start_bridge(2)
    proxy.stall(0, path_filter=is_qido)
    outcome = run_get(bridge, study.study_uid)
    assert outcome.status == 0xA701, outcome.describe()
    assert outcome.comment, outcome.describe()
    assert "time" in outcome.comment.lower(), outcome.describe()
    assert 1.5 <= outcome.seconds < 5.0, f"answered after {outcome.seconds:.2f} s"
    assert outcome.received_uids == []
    qido = [r for r in proxy.records() if is_qido(r.path)]
    assert qido and all(r.client_closed_at is not None for r in qido), qido
    report("qido/stall", comment=outcome.comment, seconds=outcome.seconds)
