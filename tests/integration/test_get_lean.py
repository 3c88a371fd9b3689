"""C-GET on the lean send path, end to end: a pynetdicom SCU against the bridge, which sends
each sub-operation's PDUs straight to the socket and reads the C-STORE-RSP itself.

The bridge logs at DEBUG which path each retrieve takes, so every test here shows that it
ran on the lean path. What pynetdicom's state machine must still do while the bridge owns
the socket: a C-CANCEL read during an exchange cancels, a failure status is counted, a
peer that never answers hits the DIMSE timeout (the bridge aborts and keeps serving), an
A-ABORT from the peer ends the association. tests/faults/test_get_cancel.py (C-CANCEL and
A-ABORT against a throttled server) and tests/integration/test_idle_timeout.py (the idle
timer around C-GET) run on the same path, the default.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom import Dataset

from tests.conftest import OrthancFixture
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.test_get import (
    GET_MODELS,
    assert_identical_to_originals,
    c_echo,
    c_get,
    identifier,
    storage,
    target,
)
from tests.integration.tools import free_port
from tests.scu import Received, RetrieveOutcome, scu
from tests.scu import c_get as scu_c_get

pytestmark = pytest.mark.integration

SUCCESS = 0x0000
CANCEL = 0xFE00
WARNING_SUBOPS = 0xB000
REFUSED_OUT_OF_RESOURCES = 0xA700
DIMSE_TIMEOUT = 1.0  # the bridge's [move] dimse_timeout, also its C-GET sub-operations'
LEAN = "C-GET to PYNETDICOM: lean send path"


@pytest.fixture(scope="module")
def bridge(orthanc: OrthancFixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    process = start_bridge(
        bridge_config(
            orthanc.dicomweb_url,
            free_port(),
            logging={"level": "DEBUG"},
            move__dimse_timeout=DIMSE_TIMEOUT,
        ),
        tmp_path_factory.mktemp("lean-bridge"),
        name="lean-bridge",
    )
    try:
        yield process
    finally:
        process.stop()


def _lean_retrieves(bridge: BridgeProcess) -> int:
    return bridge.log_text().count(LEAN)


def _patient(orthanc: OrthancFixture) -> tuple[Dataset, list[str]]:
    goal = target(orthanc.manifest, "PATIENT_ROOT", "PATIENT")
    assert len(goal.expected) >= 4
    return identifier("PATIENT", **goal.keys), [e.SOPInstanceUID for e in goal.expected]


def test_lean_c_get_sends_the_stored_bytes(bridge: BridgeProcess, orthanc: OrthancFixture) -> None:
    before = _lean_retrieves(bridge)
    goal = target(orthanc.manifest, "PATIENT_ROOT", "PATIENT")
    outcome = c_get(bridge, identifier("PATIENT", **goal.keys), "PATIENT_ROOT")
    assert outcome.status == SUCCESS, outcome.summary()
    assert outcome.completed == len(goal.expected)
    assert_identical_to_originals(outcome, goal.expected)
    assert _lean_retrieves(bridge) == before + 1, bridge.log_tail()


def test_c_cancel_read_during_a_lean_exchange_cancels(
    bridge: BridgeProcess, orthanc: OrthancFixture
) -> None:
    query, uids = _patient(orthanc)
    before = _lean_retrieves(bridge)

    def cancel_on_second(item: Received, n: int) -> None:
        if n == 2:
            # Before this C-STORE-RSP: the bridge reads the C-CANCEL off the socket while
            # it waits for the response, on the lean path.
            item.event.assoc.send_c_cancel(1, query_model=GET_MODELS["PATIENT_ROOT"])

    outcome = scu_c_get(
        scu("PYNETDICOM", timeouts=(30, 60, 60)),
        (bridge.host, bridge.port, bridge.ae_title),
        query,
        GET_MODELS["PATIENT_ROOT"],
        storage(),
        on_store=cancel_on_second,
    )
    assert outcome.status == CANCEL, outcome.summary()
    assert len(outcome.received) == 2
    assert outcome.completed == 2
    # The instances never sent are listed (PS3.4 C.4.3.3.1), and nothing was sent twice.
    assert sorted(outcome.failed_uids) == sorted(set(uids) - set(outcome.received_uids))
    assert _lean_retrieves(bridge) == before + 1
    assert c_echo(bridge) == SUCCESS


def test_a_failure_status_from_the_scu_is_counted(
    bridge: BridgeProcess, orthanc: OrthancFixture
) -> None:
    query, uids = _patient(orthanc)
    refused = uids[1]
    before = _lean_retrieves(bridge)
    outcome = c_get(
        bridge,
        query,
        "PATIENT_ROOT",
        store_status=lambda uid: REFUSED_OUT_OF_RESOURCES if uid == refused else SUCCESS,
    )
    assert outcome.status == WARNING_SUBOPS, outcome.summary()
    assert (outcome.completed, outcome.failed) == (len(uids) - 1, 1)
    assert outcome.failed_uids == [refused]
    assert _lean_retrieves(bridge) == before + 1


def test_an_scu_that_never_answers_hits_the_dimse_timeout(
    bridge: BridgeProcess, orthanc: OrthancFixture
) -> None:
    query, _ = _patient(orthanc)
    before = _lean_retrieves(bridge)
    done = threading.Event()

    def stall_on_second(item: Received, n: int) -> None:
        if n == 2:
            done.wait(4 * DIMSE_TIMEOUT)  # no C-STORE-RSP within the bridge's timeout

    started = time.monotonic()
    outcome: RetrieveOutcome = scu_c_get(
        scu("PYNETDICOM", timeouts=(30, 60, 60)),
        (bridge.host, bridge.port, bridge.ae_title),
        query,
        GET_MODELS["PATIENT_ROOT"],
        storage(),
        on_store=stall_on_second,
    )
    done.set()
    # The bridge aborted the association after its DIMSE timeout: no final response, no
    # further sub-operation, and the SCU's own 60 s timeouts did not end it.
    assert outcome.status is None, outcome.summary()
    assert len(outcome.received) == 2
    assert time.monotonic() - started < 30
    assert _lean_retrieves(bridge) == before + 1
    assert c_echo(bridge) == SUCCESS  # and it keeps serving
    assert bridge.running


def test_an_abort_by_the_scu_mid_transfer_leaves_the_bridge_serving(
    bridge: BridgeProcess, orthanc: OrthancFixture
) -> None:
    query, _ = _patient(orthanc)
    before = _lean_retrieves(bridge)

    def abort(assoc: Any) -> None:
        assoc.abort()
        # pynetdicom does not wake the thread blocked in send_c_get (it would wait for
        # dimse_timeout): hand it the "no message" marker it gets on a timeout.
        assoc.dimse.msg_queue.put((None, None))

    def abort_on_second(item: Received, n: int) -> None:
        if n == 2:
            # While the bridge waits for this C-STORE-RSP: it reads the A-ABORT instead.
            aborter = threading.Thread(target=abort, args=(item.event.assoc,), daemon=True)
            aborter.start()
            aborter.join(10)

    outcome = scu_c_get(
        scu("PYNETDICOM", timeouts=(30, 60, 60)),
        (bridge.host, bridge.port, bridge.ae_title),
        query,
        GET_MODELS["PATIENT_ROOT"],
        storage(),
        on_store=abort_on_second,
    )
    assert outcome.status is None and len(outcome.received) == 2, outcome.summary()
    assert _lean_retrieves(bridge) == before + 1
    # The bridge notices at once (A-ABORT read off the socket, or seen in the ACSE state
    # by the next cancel check) and stops sending.
    ended = (
        "association to PYNETDICOM lost",
        "C-GET for PYNETDICOM stopped: the association ended",
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(e in bridge.log_text() for e in ended):
        time.sleep(0.1)
    assert any(e in bridge.log_text() for e in ended), bridge.log_tail()
    # The peer aborted: the bridge sent no A-ABORT of its own, and says so.
    assert "to DIMSE_BRIDGE aborted by the peer" in bridge.log_text(), bridge.log_tail()
    assert c_echo(bridge) == SUCCESS
    assert bridge.running
