"""C-GET cancel and association abort, end to end, with a fault proxy in front of Orthanc.

    pynetdicom C-GET SCU --DIMSE--> bridge --HTTP--> FaultProxy --HTTP--> private Orthanc

The proxy slows down or stalls the WADO-RS instance requests only (the QIDO-RS search
goes through untouched), so that the bridge has WADO-RS requests in flight when the
C-CANCEL or A-ABORT arrives. Its request records (``started_at``, ``completed_at``,
``client_closed_at``, all ``time.monotonic()`` of this process) show whether the bridge
closed those requests within a second and started none afterwards (README, C-GET: "0xFE00
C-CANCEL: in-flight WADO-RS requests are aborted, none started after").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

from tests.faults.paths import is_qido, is_wado, wado_path_of
from tests.faults.proxy import FaultProxy, RequestRecord
from tests.faults.study import Study
from tests.integration.bridge_runner import BridgeProcess, bridge_config
from tests.scu import Received, RetrieveOutcome, c_get, scu

pytestmark = pytest.mark.integration

STUDY_SIZE = 300
GET_MODEL = StudyRootQueryRetrieveInformationModelGet
MSG_ID = 7
# A WADO-RS answer for one 64x64 instance is ~9.7 kB: at 4 kB/s each takes ~2.4 s, so a
# request in flight at the cancel would still be running well past the 1 s limit.
THROTTLE_BYTES_PER_S = 4000
# A request the bridge had already sent when the cancel arrived may reach the proxy a few
# milliseconds later; anything later than this was started after the cancel.
START_GRACE_S = 0.05
CANCEL_LIMIT_S = 1.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def bridge(
    proxy: FaultProxy,
    bridge_process: Callable[..., BridgeProcess],
    free_port: Callable[[], int],
) -> BridgeProcess:
    """The bridge fronting the proxy; 1 MiB of fetch-ahead (~100 instances), 8 at a time."""
    return bridge_process(
        bridge_config(
            proxy.url + "/dicom-web",
            free_port(),
            retrieve__max_concurrent_fetches=8,
            retrieve__max_buffer_bytes=1024 * 1024,
        )
    )


# --------------------------------------------------------------------------- the SCU


def run_get(
    bridge: BridgeProcess,
    study_uid: str,
    on_store: Callable[[Any, int], None] | None = None,
    on_established: Callable[[Any], None] | None = None,
) -> RetrieveOutcome:
    """C-GET one study at STUDY level (Study Root) with CT Image Storage in the SCP role.

    `on_store(assoc, n)` is called from the C-STORE handler after the n-th instance arrived
    (on the thread that iterates ``send_c_get``), before the C-STORE response goes out;
    `on_established(assoc)` just before the C-GET request is sent.
    """
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid

    def store_hook(item: Received, n: int) -> None:
        if on_store is not None:
            on_store(item.event.assoc, n)

    return c_get(
        scu("GETSCU", timeouts=(10, 30, 30)),
        (bridge.host, bridge.port, bridge.ae_title),
        query,
        GET_MODEL,
        [(CTImageStorage, None)],
        msg_id=MSG_ID,
        on_store=store_hook,
        on_established=on_established,
        nodelay=True,
    )


def assert_full_success(bridge: BridgeProcess, study: Study) -> None:
    """A fresh association retrieves the whole study: the bridge is still healthy."""
    again = run_get(bridge, study.study_uid)
    assert again.status == 0x0000, again.describe()
    assert again.received_uids == list(study.uids)
    assert again.count("NumberOfCompletedSuboperations") == STUDY_SIZE


# --------------------------------------------------------------------------- HTTP checks


@dataclass
class HttpStop:
    in_flight: list[RequestRecord]  # WADO-RS requests in flight at the cancel
    closed: list[RequestRecord]  # ...of which the bridge closed (the others completed)
    max_close_s: float
    wado_total: int
    last_start_s: float  # latest WADO-RS start relative to the cancel (negative: before)


def assert_wado_stopped(proxy: FaultProxy, since: float) -> HttpStop:
    """Every WADO-RS request in flight at `since` ended within CANCEL_LIMIT_S (closed by
    the bridge unless it completed), and none started after `since` (+ START_GRACE_S)."""

    def settled(records: list[RequestRecord]) -> bool:
        return not any(r.in_flight for r in records if is_wado(r.path))

    try:
        records = proxy.wait_for(
            settled, timeout=max(0.1, since + CANCEL_LIMIT_S + 0.5 - time.monotonic())
        )
    except TimeoutError:
        records = proxy.records()
    wado = [r for r in records if is_wado(r.path)]
    in_flight = [
        r
        for r in wado
        if r.started_at <= since and (r.completed_at is None or r.completed_at > since)
    ]
    assert in_flight, "no WADO-RS request was in flight at the cancel: the test proves nothing"
    latencies = []
    for rec in in_flight:
        end = rec.completed_at if rec.completed_at is not None else rec.client_closed_at
        assert end is not None, f"the bridge never closed in-flight {rec.path} ({rec})"
        assert end - since < CANCEL_LIMIT_S, (
            f"{rec.path} ended {end - since:.3f} s after the cancel ({rec})"
        )
        latencies.append(end - since)
    closed = [r for r in in_flight if r.completed_at is None]
    assert closed, "every in-flight request completed by itself: nothing was aborted"
    late = [r for r in wado if r.started_at > since + START_GRACE_S]
    assert not late, (
        f"{len(late)} WADO-RS request(s) started after the cancel, first "
        f"{late[0].started_at - since:.3f} s after: {late[0].path}"
    )
    last_start = max(r.started_at for r in wado) - since
    return HttpStop(in_flight, closed, max(latencies), len(wado), last_start)


def report(name: str, **figures: object) -> None:
    text = ", ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\n[{name}] {text}")


# --------------------------------------------------------------------------- tests


def test_c_cancel_while_wado_is_throttled(
    study: Study, proxy: FaultProxy, bridge: BridgeProcess
) -> None:
    """C-CANCEL sent from the C-STORE handler after 3 instances, with slow WADO-RS requests
    in flight (up to 8, each ~2.4 s long): 0xFE00, exact failed list and counts, the
    in-flight requests closed within 1 s, none started after, and the bridge serves on."""
    proxy.add_fault(path_filter=is_wado, throttle_bytes_per_s=THROTTLE_BYTES_PER_S)
    cancel_after = 3
    cancel_at: list[float] = []

    def on_store(assoc: Any, n: int) -> None:
        if n == cancel_after:
            cancel_at.append(time.monotonic())
            assoc.send_c_cancel(MSG_ID, query_model=GET_MODEL)

    outcome = run_get(bridge, study.study_uid, on_store)
    assert cancel_at, outcome.describe()
    cancelled = cancel_at[0]

    assert outcome.status == 0xFE00, outcome.describe()
    assert outcome.received_uids == list(study.uids[:cancel_after])
    assert outcome.count("NumberOfCompletedSuboperations") == len(outcome.received)
    assert outcome.count("NumberOfRemainingSuboperations") == STUDY_SIZE - cancel_after
    failed = outcome.failed_uids
    assert len(failed) == len(set(failed)), "duplicates in the Failed SOP Instance UID List"
    assert set(failed) == set(study.uids) - set(outcome.received_uids)
    assert outcome.final_at is not None and outcome.final_at - cancelled < CANCEL_LIMIT_S

    stop = assert_wado_stopped(proxy, cancelled)
    report(
        "cancel/throttle",
        upload_s=study.upload_s,
        cancel_to_final_s=outcome.final_at - cancelled,
        in_flight=len(stop.in_flight),
        closed=len(stop.closed),
        max_close_s=stop.max_close_s,
        wado_requests=stop.wado_total,
        last_start_s=stop.last_start_s,
    )

    proxy.clear_faults()
    assert_full_success(bridge, study)
    assert bridge.running


def test_c_cancel_while_blocked_on_a_stalled_instance(
    study: Study, proxy: FaultProxy, bridge: BridgeProcess
) -> None:
    """The 6th instance's WADO-RS body stalls half-way: the bridge has sent 5 and waits on
    it when the C-CANCEL arrives; the final response still comes within 1 s."""
    stalled_index = 5
    stall_bytes = 2000
    stalled_uid = study.uids[stalled_index]
    proxy.stall(stall_bytes, path_filter=wado_path_of(stalled_uid))
    cancel_at: list[float] = []
    stores = [0]  # instances received so far, updated by the C-STORE handler
    received_at_cancel: list[int] = []
    errors: list[BaseException] = []

    def cancel_later(assoc: Any) -> None:
        try:
            proxy.wait_for(
                lambda rs: any(
                    wado_path_of(stalled_uid)(r.path) and r.bytes_relayed >= stall_bytes for r in rs
                ),
                timeout=10,
            )
            time.sleep(0.3)  # the bridge has nothing else to send: it waits on the stall
            received_at_cancel.append(stores[0])
            cancel_at.append(time.monotonic())
            assoc.send_c_cancel(MSG_ID, query_model=GET_MODEL)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    def on_store(assoc: Any, n: int) -> None:
        stores[0] = n
        if n == stalled_index:
            threading.Thread(target=cancel_later, args=(assoc,), daemon=True).start()

    outcome = run_get(bridge, study.study_uid, on_store)
    assert not errors, errors
    assert cancel_at, outcome.describe()
    cancelled = cancel_at[0]

    assert received_at_cancel == [stalled_index], "the bridge was not waiting on the stall"
    assert outcome.status == 0xFE00, outcome.describe()
    assert outcome.final_at is not None
    latency = outcome.final_at - cancelled
    assert latency < CANCEL_LIMIT_S, f"C-CANCEL took {latency:.3f} s to answer"
    assert outcome.received_uids == list(study.uids[:stalled_index])
    assert outcome.count("NumberOfCompletedSuboperations") == stalled_index
    assert set(outcome.failed_uids) == set(study.uids) - set(outcome.received_uids)
    assert stalled_uid in outcome.failed_uids

    stop = assert_wado_stopped(proxy, cancelled)
    stalled = [r for r in stop.closed if wado_path_of(stalled_uid)(r.path)]
    assert len(stalled) == 1, "the stalled request was not closed by the bridge"
    # The fetch-ahead byte budget (1 MiB) kept the bridge from asking for everything.
    assert stop.wado_total < STUDY_SIZE, stop.wado_total
    report(
        "cancel/stall",
        cancel_to_final_s=latency,
        stalled_close_s=(stalled[0].client_closed_at or 0.0) - cancelled,
        in_flight=len(stop.in_flight),
        closed=len(stop.closed),
        wado_requests=stop.wado_total,
    )

    proxy.clear_faults()
    assert_full_success(bridge, study)


def test_c_cancel_while_the_qido_search_stalls(
    study: Study, proxy: FaultProxy, bridge: BridgeProcess
) -> None:
    """C-CANCEL while the QIDO-RS instance search (the count) hangs after its headers:
    0xFE00 within 1 s, the search request closed, no WADO-RS request at all."""
    proxy.stall(0, path_filter=is_qido)
    cancel_at: list[float] = []
    errors: list[BaseException] = []
    associations: list[Any] = []

    def cancel_later() -> None:
        try:
            proxy.wait_for(lambda rs: any(is_qido(r.path) for r in rs), timeout=10)
            time.sleep(0.3)
            cancel_at.append(time.monotonic())
            associations[0].send_c_cancel(MSG_ID, query_model=GET_MODEL)
        except BaseException as exc:
            errors.append(exc)

    def on_established(assoc: Any) -> None:
        associations.append(assoc)
        threading.Thread(target=cancel_later, daemon=True).start()

    outcome = run_get(bridge, study.study_uid, on_established=on_established)
    assert not errors, errors
    assert cancel_at, outcome.describe()
    cancelled = cancel_at[0]
    assert outcome.status == 0xFE00, outcome.describe()
    assert outcome.final_at is not None
    latency = outcome.final_at - cancelled
    assert latency < CANCEL_LIMIT_S, f"C-CANCEL took {latency:.3f} s to answer"
    assert outcome.received_uids == []
    assert outcome.failed_uids == []
    records = proxy.wait_for(
        lambda rs: not any(r.in_flight for r in rs if is_qido(r.path)),
        timeout=max(0.1, cancelled + CANCEL_LIMIT_S + 0.5 - time.monotonic()),
    )
    qido = [r for r in records if is_qido(r.path)]
    assert len(qido) == 1 and qido[0].client_closed_at is not None, qido
    assert qido[0].client_closed_at - cancelled < CANCEL_LIMIT_S
    assert not any(is_wado(r.path) for r in records)
    report(
        "cancel/qido-stall",
        cancel_to_final_s=latency,
        qido_close_s=qido[0].client_closed_at - cancelled,
    )


def abort_mid_transfer(study: Study, proxy: FaultProxy, bridge: BridgeProcess) -> float:
    """C-GET the study through slow WADO-RS, A-ABORT 0.3 s after the 3rd instance (the
    bridge has sent the 8 it fetched first and waits on the next 8); the abort time."""
    proxy.add_fault(path_filter=is_wado, throttle_bytes_per_s=THROTTLE_BYTES_PER_S)
    abort_after = 3
    abort_at: list[float] = []
    errors: list[BaseException] = []

    def abort_later(assoc: Any) -> None:
        try:
            time.sleep(0.3)
            abort_at.append(time.monotonic())
            assoc.abort()
            # pynetdicom does not wake the thread blocked in send_c_get (it would wait
            # for dimse_timeout): hand it the "no message" marker it gets on a timeout.
            assoc.dimse.msg_queue.put((None, None))
        except BaseException as exc:
            errors.append(exc)

    def on_store(assoc: Any, n: int) -> None:
        if n == abort_after:
            threading.Thread(target=abort_later, args=(assoc,), daemon=True).start()

    outcome = run_get(bridge, study.study_uid, on_store)
    assert not errors, errors
    assert abort_at, outcome.describe()
    assert outcome.status is None, outcome.describe()
    assert abort_after <= len(outcome.received) < STUDY_SIZE
    return abort_at[0]


def test_scu_abort_closes_in_flight_wado_within_a_second(
    study: Study, proxy: FaultProxy, bridge: BridgeProcess
) -> None:
    """A-ABORT from the SCU while slow WADO-RS requests are in flight: the bridge closes
    them within 1 s and starts no more."""
    aborted = abort_mid_transfer(study, proxy, bridge)
    stop = assert_wado_stopped(proxy, aborted)
    report(
        "abort/throttle",
        in_flight=len(stop.in_flight),
        closed=len(stop.closed),
        max_close_s=stop.max_close_s,
        wado_requests=stop.wado_total,
    )


def test_scu_abort_leaves_the_bridge_serving(
    study: Study, proxy: FaultProxy, bridge: BridgeProcess
) -> None:
    """After an A-ABORT mid-transfer the bridge process stays up, lets go of every WADO-RS
    request (within 1 s, as tested above), and serves a new C-GET."""
    aborted = abort_mid_transfer(study, proxy, bridge)
    records = proxy.wait_for(
        lambda rs: not any(r.in_flight for r in rs if is_wado(r.path)), timeout=10
    )
    ends = [
        (r.completed_at or r.client_closed_at or 0.0) - aborted
        for r in records
        if is_wado(r.path) and r.started_at <= aborted
    ]
    late = [r for r in records if is_wado(r.path) and r.started_at > aborted + START_GRACE_S]
    report(
        "abort/throttle (observed)",
        last_in_flight_end_s=max(ends),
        started_after_abort=len(late),
        closed_by_bridge=sum(1 for r in records if r.client_closed_at is not None),
    )
    assert bridge.running, bridge.log_tail()
    proxy.clear_faults()
    assert_full_success(bridge, study)
    assert bridge.running, bridge.log_tail()
    assert "Traceback" not in bridge.log_text(), bridge.log_tail()
