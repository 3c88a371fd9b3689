"""Widens the C-MOVE sub-association's response race, for the stress test's variant.

Put on the bridge's PYTHONPATH (never imported by the test process itself). It acts as
if every association reactor, right after it *passed* its checkpoint (the gate was
open), were preempted until a DIMSE message had arrived (at most 20 ms) before it reads
the DIMSE queue: exactly the scheduling under which a sender that judged the reactor
paused by its ``_is_paused`` flag loses its C-STORE response to the reactor. A reactor
that is really blocked at its checkpoint is not affected.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from pynetdicom.association import Association

_LINGER_S = 0.02


class _Lingering:
    def __init__(self, assoc: Any, inner: Any) -> None:
        self._assoc = assoc
        self._inner = inner

    def wait(self, timeout: float | None = None) -> bool:
        passing = self._inner.is_set()
        result = bool(self._inner.wait(timeout))
        if passing:
            deadline = time.monotonic() + _LINGER_S
            queue = self._assoc.dimse.msg_queue
            while queue.empty() and time.monotonic() < deadline:
                time.sleep(0.0005)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _get(self: Any) -> Any:
    inner = self.__dict__["_widened_checkpoint"]
    if sys._getframe(1).f_code.co_name == "_run_reactor":  # the reactor loop itself
        return _Lingering(self, inner)
    return inner


def _set(self: Any, value: Any) -> None:
    self.__dict__["_widened_checkpoint"] = value


Association._reactor_checkpoint = property(_get, _set)  # type: ignore[assignment]
