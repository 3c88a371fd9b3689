"""One asyncio event loop in a background thread, for the HTTP side, called from DIMSE threads.

pynetdicom runs each association's handlers synchronously in its own thread; the HTTP
side is asynchronous so that waiting can be interrupted. ``LoopThread.call`` waits for a
coroutine while polling a cancel predicate, and cancels the coroutine's task (closing its
HTTP connections) as soon as the predicate says so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# How often a waiting DIMSE thread looks at its cancel predicate: well under the one
# second a C-CANCEL must take to take effect, cheap enough not to matter.
CANCEL_POLL_S = 0.02


class Cancelled(Exception):
    """The caller's cancel predicate became true while it waited."""


class LoopThread:
    """An event loop running in a daemon thread until ``stop()``."""

    def __init__(self, name: str = "bridge-http") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        if not self._started:
            self._thread.start()
            self._started = True

    def stop(self, timeout: float = 5.0) -> None:
        if self._started and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive() and not self.loop.is_closed():
            # Frees the loop's selector and self-pipe (a ResourceWarning otherwise).
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(
        self,
        coro: Coroutine[Any, Any, T],
        is_cancelled: Callable[[], bool] | None = None,
        timeout: float | None = None,
    ) -> T:
        """Run `coro` on the loop and wait for it; raise Cancelled if the predicate fires."""
        future = self.submit(coro)
        return wait(future, is_cancelled, timeout)


def wait(
    future: concurrent.futures.Future[T],
    is_cancelled: Callable[[], bool] | None = None,
    timeout: float | None = None,
) -> T:
    """Wait for a loop future from another thread, cancelling it when asked to."""
    waited = 0.0
    while True:
        try:
            return future.result(timeout=CANCEL_POLL_S)
        except concurrent.futures.TimeoutError:
            waited += CANCEL_POLL_S
            if is_cancelled is not None and is_cancelled():
                future.cancel()
                raise Cancelled() from None
            if timeout is not None and waited >= timeout:
                future.cancel()
                raise
