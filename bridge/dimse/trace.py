"""Association ids, the association and operation summary lines, and the status board.

``AssociationTracker`` is a set of pynetdicom notification handlers, bound with the server
next to the metrics observer (bridge/dimse/observe.py), reading the same events:

- EVT_CONN_OPEN: a new short id (``a1b2``), set as ``bridge.ops.logs.ASSOCIATION`` in the
  connection's threads (``adapter.wrap_reactor``/``wrap_dul``) so that every log line the
  association causes carries it, event-loop tasks included (bridge/loop_thread.py);
- EVT_ESTABLISHED: "association from ..." and the association on the status board;
- EVT_DIMSE_RECV of a request: an operation starts; EVT_DIMSE_SENT of its final response:
  it ends, with one summary line (service, peer, counts, bytes, seconds, MB/s, status,
  ErrorComment; the same as JSON fields);
- the reactor thread's end: the association-end line (released or aborted, by the peer,
  the bridge or a timeout; duration; operations served). An operation still running then
  was cut short: logged as aborted, and counted in ``dimse_requests_total`` as such.
"""

from __future__ import annotations

import logging
import secrets
import threading
import weakref
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.status import STATUS_FAILURE, STATUS_PENDING, code_to_category

from bridge.dimse import adapter
from bridge.dimse.services import REQUEST_NAMES, RESPONSE_NAMES
from bridge.ops.logs import ASSOCIATION
from bridge.ops.metrics import Metrics
from bridge.ops.status import FinishedOperation, StatusBoard

LOGGER = logging.getLogger(__name__)

_SUBOP_SERVICES = frozenset({"C-GET", "C-MOVE"})
_TRANSFERS = _SUBOP_SERVICES | {"C-STORE"}  # services whose summary counts instances and bytes
_ID_BYTES = 2  # four hex digits: short to read, and re-drawn while one is open


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class AssociationTracker:
    """pynetdicom handlers that name associations and log what they did; see the module
    docstring. `metrics` receives the operations cut short by their association's end."""

    def __init__(self, board: StatusBoard, metrics: Metrics) -> None:
        self.board = board
        self.metrics = metrics
        self._lock = threading.Lock()
        self._ids: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()

    def handlers(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_DIMSE_RECV, self.on_dimse_recv),
            (evt.EVT_DIMSE_SENT, self.on_dimse_sent),
        ]

    def id_of(self, assoc: Any) -> str | None:
        with self._lock:
            return self._ids.get(assoc)

    def _new_id(self) -> str:
        while True:
            candidate = secrets.token_hex(_ID_BYTES)
            if candidate not in self._ids.values() and not self.board.is_open(candidate):
                return candidate

    # --- the association ----------------------------------------------------------------

    def on_conn_open(self, event: Event) -> None:
        """EVT_CONN_OPEN (in the connection's request thread, before the association's
        threads start): the id, and the threads that carry it."""
        assoc = event.assoc
        with self._lock:
            association = self._new_id()
            self._ids[assoc] = association
        ASSOCIATION.set(association)

        def reactor(run: Callable[[], None]) -> None:
            ASSOCIATION.set(association)
            try:
                run()
            finally:
                self._ended(assoc, association)

        def dul(run: Callable[[], None]) -> None:
            ASSOCIATION.set(association)
            run()

        adapter.wrap_reactor(assoc, reactor)
        adapter.wrap_dul(assoc, dul)
        adapter.name_threads(assoc, f"association-{association}")

    def on_established(self, event: Event) -> None:
        assoc = event.assoc
        association = self.id_of(assoc)
        if association is None:
            return
        requestor = assoc.requestor
        primitive = requestor.primitive
        called = str(primitive.called_ae_title).strip() if primitive is not None else ""
        calling = str(requestor.ae_title).strip()
        peer = f"{requestor.address}:{requestor.port}"
        self.board.opened(association, calling, called, peer)
        LOGGER.info(
            "association from %s (%s) to %s",
            calling,
            peer,
            called,
            extra={
                "fields": {
                    "event": "association_start",
                    "peer": calling,
                    "address": peer,
                    "calling_ae": calling,
                    "called_ae": called,
                }
            },
        )

    def _ended(self, assoc: Any, association: str) -> None:
        """The reactor thread returned: the association is over (or never was)."""
        try:
            cut_short = self.board.finished(association, None)
            ended = self.board.closed(association)
            if cut_short is not None:
                how, by = adapter.end_cause(assoc)
                self.metrics.dimse_aborted(cut_short.service)
                _log_operation(cut_short, f"association {how} by the {by}")
            if ended is None:
                return  # never established: refused (logged by the gate), or no DICOM
            record, seconds = ended
            how, by = adapter.end_cause(assoc)
            served = sum(record.served.values())
            detail = ", ".join(f"{name} {n}" for name, n in sorted(record.served.items()))
            level = logging.INFO if how == "released" or by == "peer" else logging.WARNING
            LOGGER.log(
                level,
                "association %s from %s (%s) to %s %s by the %s after %.1f s, %s%s",
                association,
                record.calling_ae,
                record.peer,
                record.called_ae,
                how,
                by,
                seconds,
                _plural(served, "operation", "operations"),
                f" ({detail})" if detail else "",
                extra={
                    "fields": {
                        "event": "association_end",
                        "peer": record.calling_ae,
                        "address": record.peer,
                        "calling_ae": record.calling_ae,
                        "called_ae": record.called_ae,
                        "outcome": how,
                        "by": by,
                        "seconds": round(seconds, 3),
                        "operations": served,
                        "services": dict(record.served),
                    }
                },
            )
        except Exception:  # a log line must never take a DIMSE thread down
            LOGGER.debug("association end bookkeeping failed", exc_info=True)

    # --- operations ---------------------------------------------------------------------

    def on_dimse_recv(self, event: Event) -> None:
        command = event.message.command_set
        service = REQUEST_NAMES.get(int(command.get("CommandField", 0) or 0))
        association = self.id_of(event.assoc)
        if service is None or association is None:
            return  # a C-STORE-RSP of a C-GET, a C-CANCEL, an N-EVENT-REPORT-RSP
        self.board.started(association, service)

    def on_dimse_sent(self, event: Event) -> None:
        command = event.message.command_set
        service = RESPONSE_NAMES.get(int(command.get("CommandField", 0) or 0))
        association = self.id_of(event.assoc)
        status = command.get("Status")
        if service is None or association is None or status is None:
            return  # a request the bridge sends (C-STORE sub-operation, N-EVENT-REPORT)
        status = int(status)
        if code_to_category(status) == STATUS_PENDING:
            if service == "C-FIND":
                self.board.add(association, done=1)
            return
        if adapter.lost(event.assoc):
            return  # nobody receives it: the association's end reports the operation
        counts = None
        if service in _SUBOP_SERVICES:
            failed = _count(command, "NumberOfFailedSuboperations")
            done = (
                _count(command, "NumberOfCompletedSuboperations")
                + _count(command, "NumberOfWarningSuboperations")
                + failed
            )
            counts = (done, failed, done + _count(command, "NumberOfRemainingSuboperations"))
        elif service in ("C-STORE", "C-ECHO", "N-ACTION"):
            failed = int(code_to_category(status) == STATUS_FAILURE)
            counts = (1, failed, 1)
        comment = command.get("ErrorComment")
        finished = self.board.finished(
            association, status, str(comment) if comment else None, counts
        )
        if finished is not None:
            _log_operation(finished)


def _count(command: Any, keyword: str) -> int:
    value = command.get(keyword)
    return int(value) if value is not None else 0


def _log_operation(op: FinishedOperation, cut_short: str | None = None) -> None:
    """The one summary line of an operation, its values as JSON fields too."""
    if cut_short is None:
        outcome = f"status {op.status_text}"
        if op.error_comment:
            outcome += f" ({op.error_comment})"
    else:
        outcome = f"not answered: {cut_short}"
    if op.service in _TRANSFERS:
        noun = "instance" if op.total == 1 else "instances"
        verb = "stored" if op.service == "C-STORE" else "sent"
        what = (
            f"{op.done}/{op.total} {noun} {verb}, {op.failed} failed, {op.bytes / 1e6:.1f} MB, "
            f"{op.seconds:.2f} s, {op.mb_s:.1f} MB/s"
        )
    elif op.service == "C-FIND":
        what = f"{_plural(op.done, 'match', 'matches')}, {op.seconds:.2f} s"
    else:
        what = f"{op.seconds:.2f} s"
    LOGGER.log(
        logging.WARNING if cut_short is not None else logging.INFO,
        "%s %s: peer %s, %s, %s",
        op.service,
        "done" if cut_short is None else "aborted",
        op.calling_ae,
        what,
        outcome,
        extra={
            "fields": {
                "event": "operation_end",
                "service": op.service,
                "peer": op.calling_ae,
                "address": op.peer,
                "done": op.done,
                "failed": op.failed,
                "total": op.total,
                "bytes": op.bytes,
                "seconds": round(op.seconds, 3),
                "mb_s": round(op.mb_s, 3),
                "status": op.status_text,
                "category": op.category,
                "error_comment": op.error_comment,
            }
        },
    )


def association_event_handlers(board: StatusBoard, metrics: Metrics) -> list[EventHandlerType]:
    """The ``evt_handlers`` entries that name associations and log and record what they
    do: append them to the list given to ``AE.start_server``, after any EVT_CONN_OPEN
    handler that wraps the association's threads itself (the TLS handshake)."""
    return AssociationTracker(board, metrics).handlers()
