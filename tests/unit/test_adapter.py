"""bridge.dimse.adapter against real pynetdicom associations over loopback.

Pins the pynetdicom internals the adapter relies on: if an upgrade changes the reactor,
the idle timer or the DIMSE queue, these fail first.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification

from bridge.dimse import adapter
from tests.integration.tools import free_port

HOST = "127.0.0.1"
SUCCESS = 0x0000
SHORT_TIMEOUT = 0.5  # network_timeout of the SCPs here


def _prepare(event: Any) -> None:
    adapter.prepare(event.assoc)


class Scp:
    """A pynetdicom Verification SCP; `on_echo` runs for every C-ECHO."""

    def __init__(self, on_echo: Callable[[Any], int], *, prepared: bool) -> None:
        self.port = free_port()
        ae = AE(ae_title="ADAPTERSCP")
        ae.network_timeout = SHORT_TIMEOUT
        ae.add_supported_context(Verification)
        handlers: list[Any] = [(evt.EVT_C_ECHO, on_echo)]
        if prepared:
            handlers.append((evt.EVT_CONN_OPEN, _prepare))
        server = ae.start_server((HOST, self.port), block=False, evt_handlers=handlers)
        assert server is not None  # block=False returns the server
        self.server = server

    def associate(self, *, prepared: bool = True) -> Any:
        ae = AE(ae_title="ADAPTERSCU")
        ae.network_timeout = None
        ae.add_requested_context(Verification)
        handlers: list[EventHandlerType] = [(evt.EVT_CONN_OPEN, _prepare)] if prepared else []
        assoc = ae.associate(HOST, self.port, ae_title="ADAPTERSCP", evt_handlers=handlers)
        assert assoc.is_established
        return assoc


@pytest.fixture
def scp_factory() -> Iterator[Callable[..., Scp]]:
    servers: list[Scp] = []

    def make(on_echo: Callable[[Any], int] = lambda event: SUCCESS, prepared: bool = True) -> Scp:
        scp = Scp(on_echo, prepared=prepared)
        servers.append(scp)
        return scp

    yield make
    for scp in servers:
        scp.server.shutdown()


def test_idle_timer_does_not_expire_while_work_is_outstanding() -> None:
    timer = adapter._IdleTimer(0.05)
    timer.start()
    timer.begin()
    time.sleep(0.1)
    assert not timer.expired
    timer.end()  # restarts: a full timeout again from here
    assert not timer.expired
    time.sleep(0.1)
    assert timer.expired


@pytest.mark.parametrize("prepared", [True, False])
def test_a_request_served_longer_than_network_timeout_is_not_aborted_after(
    scp_factory: Callable[..., Scp], prepared: bool
) -> None:
    def slow_echo(event: Any) -> int:
        time.sleep(3 * SHORT_TIMEOUT)  # the SCU is silent meanwhile
        return SUCCESS

    scp = scp_factory(slow_echo, prepared=prepared)
    assoc = scp.associate()
    status = assoc.send_c_echo()
    assert int(status.Status) == SUCCESS
    assoc.release()
    if prepared:
        assert assoc.is_released and not assoc.is_aborted
    else:  # stock pynetdicom: aborted just after the response (what the adapter fixes)
        assert assoc.is_aborted


def test_an_idle_peer_is_still_dropped(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory()
    assoc = scp.associate()
    assert int(assoc.send_c_echo().Status) == SUCCESS
    deadline = time.monotonic() + 20 * SHORT_TIMEOUT
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted


def test_a_held_reactor_is_blocked_and_leaves_the_queue_alone(
    scp_factory: Callable[..., Scp],
) -> None:
    scp = scp_factory()
    assoc = scp.associate()
    checkpoint = assoc._reactor_checkpoint
    assert isinstance(checkpoint, adapter._Checkpoint)
    marker = (1, object())
    try:
        with adapter.reactor_paused(assoc) as held:
            assert held
            assert checkpoint.blocked  # proved, not guessed
            assoc.dimse.msg_queue.put(marker)
            time.sleep(0.05)  # ~50 passes of a running reactor
            assert adapter.wait_response(assoc, 1.0) is marker
            # pynetdicom's own send_* inside the hold neither release nor wait for it.
            assert int(assoc.send_c_echo().Status) == SUCCESS
            assert checkpoint.blocked and not checkpoint.is_set()
            with adapter.reactor_paused(assoc) as nested:
                assert nested
        assert checkpoint.is_set()
        assert int(assoc.send_c_echo().Status) == SUCCESS  # the stock pause works after
    finally:
        assoc.release()
    assert assoc.is_released


def test_release_inside_a_hold_lets_the_reactor_end(scp_factory: Callable[..., Scp]) -> None:
    # pynetdicom releases a C-MOVE sub-association while the handler may still hold it.
    scp = scp_factory()
    assoc = scp.associate()
    with adapter.reactor_paused(assoc) as held:
        assert held
        assoc.release()
        assert assoc.is_released
    assoc.join(5)
    assert not assoc.is_alive()


def test_waiting_for_a_response_notices_an_abort(scp_factory: Callable[..., Scp]) -> None:
    def abort_instead(event: Any) -> int:
        event.assoc.abort()
        return SUCCESS

    scp = scp_factory(abort_instead)
    assoc = scp.associate()
    with adapter.reactor_paused(assoc) as held:
        assert held
        status = assoc.send_c_echo()  # answered by an A-ABORT
        assert "Status" not in status
        assert adapter.lost(assoc)
        assert adapter.wait_response(assoc, 30.0) == (None, None)
    # The hold ends only once the reactor has taken the A-ABORT: a release sent on an
    # association that still looked established would wait out the ACSE timeout.
    assert not assoc.is_established and assoc.is_aborted


def test_pausing_an_ended_association_yields_false(scp_factory: Callable[..., Scp]) -> None:
    scp = scp_factory()
    assoc = scp.associate()
    assoc.release()
    with adapter.reactor_paused(assoc, timeout=1.0) as held:
        assert not held


def test_edits_of_sent_messages_nest_and_undo_themselves(
    scp_factory: Callable[..., Scp],
) -> None:
    # The handler leaves both edits active: pynetdicom sends the C-ECHO-RSP after it
    # returns, as it sends the C-GET/C-MOVE responses the bridge edits.
    stack = contextlib.ExitStack()
    acceptors: list[Any] = []

    def comment(rsp: Any) -> bool:
        rsp.ErrorComment = "outer"
        return False  # for as long as it is active

    def refuse_once(rsp: Any) -> bool:
        rsp.Status = 0x0122
        rsp.ErrorComment = "inner"
        return True  # done after this one

    def on_echo(event: Any) -> int:
        if not acceptors:
            acceptors.append(event.assoc)
            stack.enter_context(adapter.editing_sent(event.assoc, comment))
            stack.enter_context(adapter.editing_sent(event.assoc, refuse_once))
        return SUCCESS

    assoc = scp_factory(on_echo).associate()
    try:
        first = assoc.send_c_echo(msg_id=1)
        assert (first.Status, first.ErrorComment) == (0x0122, "outer")  # inner, then outer
        second = assoc.send_c_echo(msg_id=2)
        assert (second.Status, second.ErrorComment) == (SUCCESS, "outer")
        stack.close()
        assert "send_msg" not in vars(acceptors[0].dimse)  # pynetdicom's own method again
        third = assoc.send_c_echo(msg_id=3)
        assert third.Status == SUCCESS and "ErrorComment" not in third
    finally:
        assoc.release()
