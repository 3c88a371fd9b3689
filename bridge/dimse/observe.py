"""pynetdicom's association and DIMSE-message events, read into plain Metrics calls.

``dimse_event_handlers`` observes associations and DIMSE messages on the wire, so that
association counts, DIMSE statuses and durations, sub-operation counts, C-CANCELs and
aborts (by cause: bridge/dimse/aborts.py) are recorded without touching
the service handlers. Services are named from the service table
(bridge/dimse/services.py); bridge/ops/metrics.py stays free of pynetdicom.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.status import STATUS_PENDING, code_to_category

from bridge.dimse import adapter
from bridge.dimse.aborts import AbortCounter
from bridge.dimse.services import CANCELLABLE_REQUESTS, RESPONSE_NAMES
from bridge.ops.metrics import Metrics

_C_CANCEL_RQ = 0x0FFF
_SUBOP_SERVICES = frozenset({"C-GET", "C-MOVE"})


class DimseObserver:
    """pynetdicom notification handlers that record association and DIMSE metrics.

    Bound with the server (``start_server(evt_handlers=...)``), they see the associations
    peers open with the bridge, not the bridge's own outgoing ones (C-MOVE and storage
    commitment sub-associations get only the handlers passed to ``associate``).
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        # Associations counted as open. An association ends with EVT_RELEASED or
        # EVT_ABORTED, and its connection with EVT_CONN_CLOSE; a dropped thread may fire
        # only some of them, so the first one closes and the others find nothing.
        self._open: weakref.WeakSet[Association] = weakref.WeakSet()
        # The last C-FIND/C-GET/C-MOVE request per association: pynetdicom serves one
        # request at a time per association, so that is what a C-CANCEL refers to.
        self._last_request: weakref.WeakKeyDictionary[Association, str] = (
            weakref.WeakKeyDictionary()
        )
        # When the request being served on each association arrived (one at a time), for
        # the duration histogram; taken by its final response.
        self._started: weakref.WeakKeyDictionary[Association, float] = (
            weakref.WeakKeyDictionary()
        )
        # Connections that sent an A-ASSOCIATE-RQ (a silent one ends by ARTIM).
        self._requested: weakref.WeakSet[Association] = weakref.WeakSet()
        self._aborts = AbortCounter(metrics)
        self.clock = time.monotonic
        # Every C-CANCEL and rejection series at 0 from the start (rate() needs a zero).
        cancellable = sorted(set(CANCELLABLE_REQUESTS.values()))
        metrics.expect(cancels=cancellable, rejections=REJECTION_REASONS)

    def handlers(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_ended),
            (evt.EVT_ABORTED, self.on_ended),
            (evt.EVT_CONN_CLOSE, self.on_ended),
            (evt.EVT_DIMSE_SENT, self.on_dimse_sent),
            (evt.EVT_DIMSE_RECV, self.on_dimse_recv),
            (evt.EVT_REQUESTED, self.on_requested),
            *self._aborts.handlers(),
            (evt.EVT_CONN_CLOSE, self.on_conn_closed),
        ]

    def on_established(self, event: Event) -> None:
        with self._lock:
            if event.assoc in self._open:
                return
            self._open.add(event.assoc)
        self.metrics.association_opened()

    def on_ended(self, event: Event) -> None:
        with self._lock:
            if event.assoc not in self._open:
                return
            self._open.discard(event.assoc)
        self.metrics.association_closed()

    def on_rejected(self, event: Event) -> None:
        self.metrics.association_rejected(rejection_reason(event.assoc))

    def on_dimse_sent(self, event: Event) -> None:
        command = event.message.command_set
        service = RESPONSE_NAMES.get(int(command.get("CommandField", 0) or 0))
        if service is None:
            return  # a request we send (C-STORE sub-operation, N-EVENT-REPORT)
        status = command.get("Status")
        if status is None or code_to_category(int(status)) == STATUS_PENDING:
            return
        if adapter.lost(event.assoc):
            # Nobody receives it: bridge/dimse/trace.py counts the request as aborted.
            return
        self.metrics.dimse_request(service, int(status))
        with self._lock:
            started = self._started.pop(event.assoc, None)
        if started is not None:
            self.metrics.dimse_duration(service, int(status), self.clock() - started)
        if service in _SUBOP_SERVICES:
            self.metrics.suboperations(
                service,
                _count(command, "NumberOfCompletedSuboperations"),
                _count(command, "NumberOfWarningSuboperations"),
                _count(command, "NumberOfFailedSuboperations"),
            )

    def on_dimse_recv(self, event: Event) -> None:
        command = event.message.command_set
        field = int(command.get("CommandField", 0) or 0)
        if (field | 0x8000) in RESPONSE_NAMES and not field & 0x8000:  # a request we serve
            with self._lock:
                self._started[event.assoc] = self.clock()
        if field in CANCELLABLE_REQUESTS:
            with self._lock:
                self._last_request[event.assoc] = CANCELLABLE_REQUESTS[field]
        elif field == _C_CANCEL_RQ:
            with self._lock:
                service = self._last_request.get(event.assoc, "unknown")
            self.metrics.cancelled(service)

    def on_requested(self, event: Event) -> None:
        with self._lock:
            self._requested.add(event.assoc)

    def on_conn_closed(self, event: Event) -> None:
        """A connection that never sent an A-ASSOCIATE-RQ ends here, with no EVT_ABORTED:
        counted when pynetdicom's ARTIM timer closed it (not a probe that hung up)."""
        with self._lock:
            if event.assoc in self._requested:
                return
        if adapter.artim_expired(event.assoc):
            self._aborts.count(event.assoc, adapter.ARTIM_TIMEOUT)


def _count(command: Any, keyword: str) -> int:
    value = command.get(keyword)
    return int(value) if value is not None else 0


REJECTION_REASONS = (
    "too_many_associations",
    "called_ae_not_recognized",
    "calling_ae_not_recognized",
    "other",
)
"""Every value ``rejection_reason`` returns."""


def rejection_reason(assoc: Any) -> str:
    """Why pynetdicom rejected `assoc`: it does not say, so its checks are redone.

    The order follows pynetdicom's ``_negotiate_as_acceptor``, where a later check
    overrides an earlier one: the association limit wins, then the called and the
    calling AE title. Best effort: a label, never an exception.
    """
    try:
        ae = assoc.ae
        acceptors = [a for a in ae.active_associations if a.is_acceptor]
        if len(acceptors) > ae.maximum_associations:
            return "too_many_associations"
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        if ae.require_called_aet and called != str(assoc.acceptor.ae_title).strip():
            return "called_ae_not_recognized"
        allowed = [str(t).strip() for t in ae.require_calling_aet]
        if allowed and str(assoc.requestor.ae_title).strip() not in allowed:
            return "calling_ae_not_recognized"
    except Exception:
        return "other"
    return "other"


def dimse_event_handlers(metrics: Metrics) -> list[evt.EventHandlerType]:
    """The pynetdicom ``evt_handlers`` entries that feed `metrics` from the wire: append
    them to the list given to ``AE.start_server``."""
    return DimseObserver(metrics).handlers()
