"""A DICOMweb server outage in the middle of a C-GET: the circuit breaker stops fetching.

    pynetdicom C-GET SCU --DIMSE--> bridge --HTTP--> [FaultProxy -->] private Orthanc

Orthanc is killed (SIGKILL) from the SCU's C-STORE handler once KILL_AFTER instances have
arrived. Behind the fault proxy the bridge then gets HTTP 502 for every request, as from
nginx in front of a dead server; without it, connection refused. Either way the C-GET
ends at once with 0xB000, the Failed SOP Instance UID List names exactly the instances
not received and the ErrorComment the outage; only a handful of WADO-RS requests are
made after the kill (not five per remaining instance); the log has one outage line, not
one per instance; the progress lines count the failed sub-operations. A C-FIND during
the outage answers 0xA700 at once without asking the server (a C-GET 0xA701), /readyz
says why, C-ECHO still answers, and once Orthanc is back (after the cool-down) the
/readyz probe closes the breaker and C-FIND and C-GET work again. A C-MOVE hit by the
same outage fails its remaining sub-operations at once too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.faults.paths import is_wado
from tests.faults.proxy import FaultProxy
from tests.faults.study import Study
from tests.integration.bridge_runner import BridgeProcess, bridge_config
from tests.integration.tools import free_port as free_tcp_port
from tests.scu import RetrieveOutcome, scu, set_nodelay
from tests.scu import c_get as scu_c_get
from tests.scu import c_move as scu_c_move

pytestmark = pytest.mark.integration

STUDY_SIZE = 300
KILL_AFTER = 30  # instances received before Orthanc is killed
CONCURRENCY = 4  # retrieve.max_concurrent_fetches
THRESHOLD = 3  # dicomweb.breaker_threshold (the default)
COOLDOWN = 5.0  # dicomweb.breaker_cooldown: long enough to C-FIND and C-GET inside it
# WADO-RS requests the bridge may still make once the server is gone: the ones in flight
# and their retries until THRESHOLD different requests have failed (direct: the failed
# ones, from the bridge's metrics; behind the proxy: in flight at the kill or after it).
# Without the breaker every remaining instance is tried 5 times (about 900 here).
MAX_REQUESTS_AFTER = 2 * (THRESHOLD + CONCURRENCY)
GET_MODEL = StudyRootQueryRetrieveInformationModelGet
FIND_MODEL = StudyRootQueryRetrieveInformationModelFind
OUTAGE = "DICOMweb server unreachable (circuit open)"


@dataclass
class Setup:
    bridge: BridgeProcess
    ops_url: str
    proxy: FaultProxy | None

    def wado_requests_since(self, since: float) -> int:
        """WADO-RS requests in flight at `since` (monotonic time) or made after it."""
        assert self.proxy is not None
        return sum(
            1
            for r in self.proxy.records()
            if is_wado(r.path) and (r.finished_at is None or r.finished_at >= since)
        )

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.ops_url + "/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def failed_wado_requests(self) -> float:
        """WADO-RS exchanges that did not end in 200, from the bridge's own metrics."""
        total = self.metric("dimse_bridge_http_requests_total", backend="default", kind="wado")
        ok = self.metric(
            "dimse_bridge_http_requests_total", backend="default", kind="wado", outcome="200"
        )
        return total - ok


@pytest.fixture(params=["proxy-502", "connection-refused"])
def setup(
    request: pytest.FixtureRequest,
    study: Study,
    bridge_process: Callable[..., BridgeProcess],
) -> Iterator[Setup]:
    proxy = FaultProxy(study.server.http_url).start() if request.param == "proxy-502" else None
    base = proxy.url if proxy is not None else study.server.http_url
    ops_port = free_tcp_port()
    try:
        bridge = bridge_process(
            bridge_config(
                base + "/dicom-web",
                free_tcp_port(),
                timeout=5,
                dicomweb={"breaker_cooldown": COOLDOWN},
                retrieve={"max_concurrent_fetches": CONCURRENCY, "max_buffer_bytes": 1 << 20},
                ops={"listen": f"127.0.0.1:{ops_port}", "progress_interval": 0.001},
            )
        )
        yield Setup(bridge, f"http://127.0.0.1:{ops_port}", proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        if not study.server.running:
            study.server.start()  # the next test gets its Orthanc back


# --------------------------------------------------------------------------- the SCU


def _associate(bridge: BridgeProcess, handlers: list[Any]) -> Any:
    ae = AE(ae_title="GETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(GET_MODEL)
    ae.add_requested_context(FIND_MODEL)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        bridge.host,
        bridge.port,
        ae_title=bridge.ae_title,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay), *handlers],
    )
    assert assoc.is_established, "the bridge refused the association"
    return assoc


def c_get(
    bridge: BridgeProcess, study_uid: str, on_store: Callable[[int], None] | None = None
) -> RetrieveOutcome:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return scu_c_get(
        scu("GETSCU", timeouts=(60, 60, 60)),
        (bridge.host, bridge.port, bridge.ae_title),
        query,
        GET_MODEL,
        [(CTImageStorage, None)],
        on_store=None if on_store is None else lambda _item, n: on_store(n),
        nodelay=True,
    )


def c_find(bridge: BridgeProcess, study_uid: str) -> tuple[Dataset, int, float]:
    """(final status, number of matches, seconds) of a STUDY-level C-FIND."""
    assoc = _associate(bridge, [])
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    matches = 0
    final = Dataset()
    started = time.monotonic()
    try:
        for status, _identifier in assoc.send_c_find(query, FIND_MODEL):
            if int(status.Status) in (0xFF00, 0xFF01):
                matches += 1
            else:
                final = status
    finally:
        if assoc.is_established:
            assoc.release()
    return final, matches, time.monotonic() - started


def _log_lines(bridge: BridgeProcess, pattern: str) -> list[str]:
    return [line for line in bridge.log_text().splitlines() if re.search(pattern, line)]


# --------------------------------------------------------------------------- the test


@pytest.mark.timeout(150)
def test_outage_during_c_get_fails_fast_and_recovers(study: Study, setup: Setup) -> None:
    bridge = setup.bridge
    killed: list[float] = []

    def kill_orthanc(received: int) -> None:
        if received == KILL_AFTER:
            process = study.server.process
            assert process is not None
            killed.append(time.monotonic())  # the outage begins
            process.kill()
            process.wait(10)

    got = c_get(bridge, study.study_uid, on_store=kill_orthanc)
    killed_at = killed[0] if killed else None
    assert killed_at is not None and got.final_at is not None, got.describe()
    seconds = got.final_at - killed_at

    # The C-GET ended with 0xB000: what arrived, arrived; every other instance is listed.
    assert got.status == 0xB000, got.describe()
    received = set(got.received_uids)
    assert KILL_AFTER <= len(received) < STUDY_SIZE, got.describe()
    failed = got.failed_uids
    assert failed == [uid for uid in study.uids if uid not in received], got.describe()
    assert got.count("NumberOfCompletedSuboperations") == len(received)
    assert got.count("NumberOfFailedSuboperations") == len(failed)
    assert len(received) + len(failed) == STUDY_SIZE
    assert re.match(rf"^\d+ failed: {re.escape(OUTAGE)}", got.comment), got.describe()

    # It stopped fetching: a few WADO-RS requests after the kill, not 5 per instance.
    if setup.proxy is not None:
        after = setup.wado_requests_since(killed_at)
    else:
        after = int(setup.failed_wado_requests())
    assert after <= MAX_REQUESTS_AFTER, f"{after} WADO-RS requests after the kill"
    assert setup.metric("dimse_bridge_dicomweb_circuit_openings_total", backend="default") == 1

    # One line for the outage, one for the remaining sub-operations, not one per instance.
    opened = _log_lines(bridge, r"WARNING .*unreachable: .*\(circuit open\)")
    assert len(opened) == 1, bridge.log_tail()
    assert "requests in a row failed" in opened[0]
    expected = "HTTP 502" if setup.proxy is not None else "connection refused"
    assert expected in opened[0], opened
    remaining = _log_lines(bridge, r"WARNING .*remaining sub-operation\(s\) failed")
    assert len(remaining) == 1, bridge.log_tail()
    per_instance = _log_lines(bridge, r"sub-operation \S+ failed")
    assert len(per_instance) <= THRESHOLD + CONCURRENCY, per_instance
    warnings = _log_lines(bridge, r" WARNING ")
    assert len(warnings) <= THRESHOLD + CONCURRENCY + 2, warnings

    # Progress lines count the failed sub-operations; the last one adds up to the total.
    progress = [
        tuple(int(n) for n in m.groups())
        for line in _log_lines(bridge, r"C-GET to GETSCU: ")
        if (m := re.search(r": (\d+)/(\d+) instances, (\d+) failed", line))
    ]
    assert progress, bridge.log_tail()
    assert progress[-1] == (STUDY_SIZE, STUDY_SIZE, len(failed)), progress[-3:]

    # During the outage: C-FIND answers 0xA700 at once, without asking the server.
    qido_before = setup.metric("dimse_bridge_http_requests_total", kind="qido")
    status, matches, find_s = c_find(bridge, study.study_uid)
    assert int(status.Status) == 0xA700, status
    assert str(status.get("ErrorComment", "")) == OUTAGE, status
    assert matches == 0
    assert setup.metric("dimse_bridge_http_requests_total", kind="qido") == qido_before
    # A new C-GET: 0xA701 at once (its QIDO-RS search is not even sent).
    refused = c_get(bridge, study.study_uid)
    assert refused.status == 0xA701 and refused.comment == OUTAGE, refused.describe()
    assert refused.received_uids == []
    assert setup.metric("dimse_bridge_http_requests_total", kind="qido") == qido_before
    ready = httpx.get(setup.ops_url + "/readyz", timeout=10)
    assert ready.status_code == 503 and "circuit open" in ready.text, ready.text
    # C-ECHO still answers: the bridge is up.
    assoc = _associate(bridge, [])
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()

    # Orthanc comes back; after the cool-down the /readyz probe half-opens the breaker
    # and, reaching the server, closes it.
    study.server.start()
    deadline = time.monotonic() + COOLDOWN + 15
    while True:
        ready = httpx.get(setup.ops_url + "/readyz", timeout=10)
        if ready.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert ready.status_code == 200, ready.text
    assert ready.text.startswith("default: QIDO-RS answered HTTP 200"), ready.text
    assert setup.metric("dimse_bridge_dicomweb_circuit_open", backend="default") == 0
    status, matches, _ = c_find(bridge, study.study_uid)
    assert int(status.Status) == 0x0000 and matches == 1, status
    again = c_get(bridge, study.study_uid)
    assert again.status == 0x0000, again.describe()
    assert again.received_uids == list(study.uids)
    closed = _log_lines(bridge, r"WARNING .*reachable again after .*\(circuit closed\)")
    assert len(closed) == 1, bridge.log_tail()
    print(
        f"\n[outage/{'proxy' if setup.proxy else 'direct'}] C-GET ended {seconds:.2f} s after "
        f"the kill; {len(received)} received, {len(failed)} failed; {after} WADO-RS requests "
        f"after the kill; C-FIND during the outage {find_s:.3f} s; comment {got.comment!r}"
    )


@pytest.mark.timeout(150)
def test_outage_during_c_move_fails_the_rest_at_once(
    study: Study, bridge_process: Callable[..., BridgeProcess]
) -> None:
    """The same outage during a C-MOVE (connection refused): the sub-association's
    remaining sub-operations fail at once, listed, with the outage ErrorComment."""
    received: list[str] = []
    killed_at: list[float] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == KILL_AFTER:
            process = study.server.process
            assert process is not None
            killed_at.append(time.monotonic())
            process.kill()
            process.wait(10)
        return 0x0000

    dest_port = free_tcp_port()
    dest = AE(ae_title="MOVEDEST")
    dest.add_supported_context(CTImageStorage)
    server = dest.start_server(
        ("127.0.0.1", dest_port),
        block=False,
        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay), (evt.EVT_C_STORE, on_store)],
    )
    assert server is not None  # block=False returns the server
    try:
        bridge = bridge_process(
            bridge_config(
                study.server.dicomweb_url,
                free_tcp_port(),
                timeout=5,
                dicomweb={"breaker_cooldown": COOLDOWN},
                retrieve={"max_concurrent_fetches": CONCURRENCY, "max_buffer_bytes": 1 << 20},
                peers=[("MOVEDEST", "127.0.0.1", dest_port)],
            )
        )
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study.study_uid
        moved = scu_c_move(
            scu("MOVESCU", timeouts=(60, 60, 60)),
            (bridge.host, bridge.port, bridge.ae_title),
            query,
            "MOVEDEST",
            StudyRootQueryRetrieveInformationModelMove,
        )
    finally:
        server.shutdown()
        if not study.server.running:
            study.server.start()
    assert moved.status is not None and moved.final_at is not None and killed_at
    final = moved.final
    ended_at = moved.final_at
    assert int(final.Status) == 0xB000, final
    failed = moved.failed_uids
    assert failed == [uid for uid in study.uids if uid not in set(received)], final
    assert int(final.NumberOfCompletedSuboperations) == len(received)
    assert int(final.NumberOfFailedSuboperations) == len(failed) == STUDY_SIZE - len(received)
    assert re.match(rf"^\d+ failed: {re.escape(OUTAGE)}", str(final.ErrorComment)), final
    assert len(_log_lines(bridge, r"WARNING .*unreachable: .*\(circuit open\)")) == 1
    assert len(_log_lines(bridge, r"WARNING .*remaining sub-operation\(s\) failed")) == 1
    print(
        f"\n[outage/c-move] ended {ended_at - killed_at[0]:.2f} s after the kill; "
        f"{len(received)} stored, {len(failed)} failed; comment {final.ErrorComment!r}"
    )
