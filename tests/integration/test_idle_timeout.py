"""``dimse.network_timeout`` measures peer silence only while the bridge has nothing
outstanding: a C-MOVE, C-GET or storage commitment that keeps the requester waiting for
longer than it ends with a clean release; an idle peer is still dropped.

One bridge with ``network_timeout = 2`` in front of a FaultProxy in front of a private
Orthanc holding a 3-instance study. The Move Destination is dcmtk ``storescp
--sleep-during 1``: every C-STORE takes ~3 s, so the move keeps movescu silent for ~9 s
and the bridge's sub-association waits longer than the timeout for every response.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from tests.faults.paths import wado_path_of
from tests.faults.proxy import FaultProxy
from tests.faults.study import Study, uploaded_study
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.test_commitment import (
    SCU_AE,
    request_commitment,
)
from tests.integration.test_move import movescu_final
from tests.integration.tools import describe, free_port, run_dcmtk, storescp
from tests.scu import failed_uid_list

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
NETWORK_TIMEOUT = 2  # the bridge's dimse.network_timeout (seconds)
# storescp --sleep-during sleeps at each of its progress callbacks, about 3 per C-STORE
# of these small instances: each C-STORE takes ~3 s, longer than the timeout.
STORE_SLEEP = 1
STUDY_SIZE = 3
SILENCE_S = 2.5 * NETWORK_TIMEOUT  # a WADO-RS or QIDO-RS delay well past the timeout
SUCCESS = 0x0000
WARNING_SUBOPS = 0xB000
ALL_COMMITTED = 1
IDLE_LIMIT_S = 30.0  # generous bound for "an idle peer is dropped at all"


@dataclass(frozen=True)
class Side:
    study: Study
    proxy: FaultProxy
    bridge: BridgeProcess
    received: Path  # storescp's output directory


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    workdir = tmp_path_factory.mktemp("idle")
    received = workdir / "received"
    received.mkdir()
    port = free_port()
    with storescp(
        port,
        received,
        workdir / "storescp.log",
        "-v",
        "--sleep-during",
        str(STORE_SLEEP),
        "-aet",
        "SLOWSCP",
    ):
        with (
            uploaded_study(workdir / "orthanc", STUDY_SIZE, key="idle-timeout") as study,
            FaultProxy(study.server.http_url) as proxy,
        ):
            bridge = start_bridge(
                bridge_config(
                    proxy.url + "/dicom-web",
                    free_port(),
                    network_timeout=NETWORK_TIMEOUT,
                    peers=[("SLOWSCP", HOST, port)],
                ),
                workdir,
                name="idle-bridge",
            )
            try:
                yield Side(study, proxy, bridge, received)
            finally:
                bridge.stop()


def _uids_in(directory: Path) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in directory.iterdir()}


def test_movescu_longer_than_network_timeout_releases_cleanly(side: Side) -> None:
    for path in side.received.iterdir():
        path.unlink()
    log_start = len(side.bridge.log_text())
    args = ["-d", "-S", "-aet", "MOVESCU", "-aec", side.bridge.ae_title, "-aem", "SLOWSCP"]
    args += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={side.study.study_uid}"]
    result = run_dcmtk("movescu", *args, side.bridge.host, str(side.bridge.port), timeout=90)
    log = result.stdout + result.stderr
    final, counts = movescu_final(log)
    assert final == SUCCESS, log[-3000:]
    assert counts.get("Completed") == STUDY_SIZE, counts
    assert counts.get("Failed", 0) == 0 and counts.get("Warning", 0) == 0, counts
    # Before the fix: "Association Release Failed ... Peer aborted Association", exit 67.
    assert "Release Failed" not in log and "Peer aborted" not in log, log[-3000:]
    assert result.returncode == 0, describe(["movescu", *args], result)
    assert _uids_in(side.received) == set(side.study.uids)
    assert "Network timeout reached" not in side.bridge.log_text()[log_start:]


def test_c_get_silent_longer_than_network_timeout_releases_cleanly(side: Side) -> None:
    # The requester answers every C-STORE, and each answer restarts pynetdicom's idle
    # timer: the silence that matters is after the last one. So the last instance (the
    # bridge sends in instance-number order) comes SILENCE_S late and then fails (HTTP
    # 404, not retried): the requester waits in silence for the final response.
    last = side.study.uids[-1]
    fault = side.proxy.add_fault(
        path_filter=wado_path_of(last), delay_s=SILENCE_S, status_override=404
    )
    log_start = len(side.bridge.log_text())
    stored: list[str] = []

    def on_store(event: Any) -> int:
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return SUCCESS

    ae = AE(ae_title="GETTER")
    ae.network_timeout = None  # only the bridge's timeout is under test
    ae.dimse_timeout = 60
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        side.bridge.host,
        side.bridge.port,
        ae_title=side.bridge.ae_title,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = side.study.study_uid
        responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
        assert responses, "no C-GET response"
        final, ident = responses[-1]
        assert "Status" in final, side.bridge.log_tail()
        assoc.release()
        # Before the fix: the bridge aborted right after the final response.
        assert assoc.is_released and not assoc.is_aborted
    finally:
        side.proxy.plan.remove(fault)
        if assoc.is_established:
            assoc.abort()
    assert fault.hits == 1
    assert int(final.Status) == WARNING_SUBOPS, final
    assert int(final.NumberOfCompletedSuboperations) == STUDY_SIZE - 1
    assert int(final.NumberOfFailedSuboperations) == 1
    assert failed_uid_list(ident) == [last]
    assert stored == list(side.study.uids[:-1])
    assert "Network timeout reached" not in side.bridge.log_text()[log_start:]


def test_commitment_report_after_silence_longer_than_network_timeout(side: Side) -> None:
    # The bridge's QIDO-RS check answers SILENCE_S late: the requester waits in silence
    # for the N-EVENT-REPORT, which must still come on its own association (SCU_AE is
    # not in this bridge's [[peers]], so there is no other way to deliver it).
    fault = side.proxy.add_fault(path_filter="/instances?", method="GET", delay_s=SILENCE_S)
    try:
        refs = [("1.2.840.10008.5.1.4.1.1.2", uid) for uid in side.study.uids]
        committed = request_commitment(side.bridge, refs, calling=SCU_AE)
    finally:
        side.proxy.plan.remove(fault)
    assert fault.hits >= 1
    assert committed.action_status == SUCCESS
    assert [(r.channel, r.event_type) for r in committed.reports] == [("same", ALL_COMMITTED)]
    info = committed.reports[0].info
    assert str(info.TransactionUID) == committed.transaction_uid
    assert sorted(str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence) == sorted(
        side.study.uids
    )
    # Not asserted: committed.released. request_commitment releases as soon as its
    # handler has the report, which may be before that handler's N-EVENT-REPORT-RSP is
    # out: that crossing is a known pynetdicom limit (README, Limits), not the timeout.


def test_idle_peer_is_still_dropped_after_network_timeout(side: Side) -> None:
    log_start = len(side.bridge.log_text())
    ae = AE(ae_title="IDLER")
    ae.network_timeout = None  # this side never gives up: only the bridge may end it
    ae.add_requested_context(Verification)
    assoc = ae.associate(side.bridge.host, side.bridge.port, ae_title=side.bridge.ae_title)
    assert assoc.is_established
    try:
        # An operation first: the timeout counts from its end.
        assert int(assoc.send_c_echo().Status) == SUCCESS
        deadline = time.monotonic() + IDLE_LIMIT_S
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        assert assoc.is_aborted, "the bridge kept an idle association open"
    finally:
        if assoc.is_established:
            assoc.abort()
    assert "Network timeout reached" in side.bridge.log_text()[log_start:]
    # The association-end line names the cause: the bridge aborted it for idling.
    deadline = time.monotonic() + 5
    while not _end_line(side.bridge.log_text()[log_start:], "IDLER"):
        assert time.monotonic() < deadline, side.bridge.log_tail()
        time.sleep(0.05)
    end = _end_line(side.bridge.log_text()[log_start:], "IDLER")
    assert re.search(
        r" WARNING \[[0-9a-f]{4}\] .* aborted by the timeout after [\d.]+ s, "
        r"1 operation \(C-ECHO 1\)$",
        end,
    ), end


def _end_line(log: str, calling_ae: str) -> str:
    """The association-end line of `calling_ae`'s association in `log` ("" if none yet)."""
    pattern = re.compile(rf"association [0-9a-f]{{4}} from {calling_ae} .* by the ")
    return next((line for line in log.splitlines() if pattern.search(line)), "")
