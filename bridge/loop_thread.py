"""One asyncio event loop in a background thread, for the HTTP side, called from DIMSE threads.

pynetdicom runs each association's handlers synchronously in its own thread; the HTTP
side is asynchronous so that waiting can be interrupted. ``LoopThread.call`` waits for a
coroutine while polling a cancel predicate, and cancels the coroutine's task (closing its
HTTP connections) as soon as the predicate says so.

A coroutine runs in a copy of the submitting thread's context (``contextvars``), so that
its log lines carry the id of the association it works for (``bridge.ops.logs.ASSOCIATION``).
``asyncio.run_coroutine_threadsafe`` promises no such thing (CPython 3.11 happens to
carry it through ``call_soon_threadsafe``); the task is created with ``context=``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
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
        """Run `coro` on the loop, in a copy of the caller's context; its future."""
        context = contextvars.copy_context()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            if future.cancelled():
                coro.close()  # cancelled before it started: never awaited, no warning
                return
            task = self.loop.create_task(coro, context=context)
            task.add_done_callback(lambda done: _copy_outcome(done, future))
            future.add_done_callback(lambda f: _cancel_task(self.loop, task, f))

        self.loop.call_soon_threadsafe(start)
        return future

    def call(
        self,
        coro: Coroutine[Any, Any, T],
        is_cancelled: Callable[[], bool] | None = None,
        timeout: float | None = None,
    ) -> T:
        """Run `coro` on the loop and wait for it; raise Cancelled if the predicate fires."""
        future = self.submit(coro)
        return wait(future, is_cancelled, timeout)


def _copy_outcome(task: asyncio.Task[T], future: concurrent.futures.Future[T]) -> None:
    # Pending until now, as asyncio's own chaining keeps it, so that cancel() works.
    if not future.set_running_or_notify_cancel():  # cancelled by the caller meanwhile
        return
    if task.cancelled():
        future.set_exception(concurrent.futures.CancelledError())
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


def _cancel_task(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], future: concurrent.futures.Future[Any]
) -> None:
    if future.cancelled() and not loop.is_closed():
        loop.call_soon_threadsafe(task.cancel)


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
