"""Associations ended by an abort or a timeout, counted once each by cause.

The cause is the adapter's decision (``adapter.abort_cause``); this module only binds it
to pynetdicom's events: for the associations peers open with the bridge (through
``bridge.dimse.observe``) and for the ones the bridge opens itself, the C-MOVE and
storage-commitment sub-associations (``abort_handlers`` in their ``evt_handlers``), where a
destination that stops answering ends in a DIMSE timeout.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType

from bridge.dimse import adapter
from bridge.ops.metrics import Metrics


class AbortCounter:
    """Counts each association's abort once (pynetdicom may fire EVT_ABORTED twice)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self._counted: weakref.WeakSet[Association] = weakref.WeakSet()

    def counted(self, assoc: Association) -> bool:
        with self._lock:
            return assoc in self._counted

    def count(self, assoc: Association, cause: str) -> None:
        with self._lock:
            if assoc in self._counted:
                return
            self._counted.add(assoc)
        self.metrics.association_aborted(cause)

    def on_acse_recv(self, event: Any) -> None:  # Event declares no `primitive`
        adapter.note_acse_received(event.assoc, event.primitive)

    def on_aborted(self, event: Event) -> None:
        if not self.counted(event.assoc):
            self.count(event.assoc, adapter.abort_cause(event.assoc))

    def handlers(self) -> list[EventHandlerType]:
        return [(evt.EVT_ACSE_RECV, self.on_acse_recv), (evt.EVT_ABORTED, self.on_aborted)]


def abort_handlers(metrics: Metrics) -> list[EventHandlerType]:
    """``evt_handlers`` entries counting the abort of an association the bridge opens."""
    return AbortCounter(metrics).handlers()
