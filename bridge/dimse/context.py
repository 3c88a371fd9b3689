"""What every DIMSE handler needs, passed as one typed object through ``evt_handlers``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.aio import LoopThread
from bridge.config import Config
from bridge.dicomweb.client import DicomwebClient


@dataclass(frozen=True)
class BridgeContext:
    config: Config
    loop: LoopThread
    client: DicomwebClient


class CancelWatch:
    """Remembers a C-CANCEL, or the end of the association, once seen.

    ``event.is_cancelled`` consumes the C-CANCEL the first time it returns True, and
    several parts of a handler ask; this object asks pynetdicom and keeps the answer.
    """

    def __init__(self, event: Any) -> None:
        self._event = event
        self.cancelled = False
        self.reason = ""

    def __call__(self) -> bool:
        if self.cancelled:
            return True
        if not self._event.assoc.is_established:
            self.cancelled, self.reason = True, "association ended"
        elif self._event.is_cancelled:
            self.cancelled, self.reason = True, "C-CANCEL received"
        return self.cancelled
