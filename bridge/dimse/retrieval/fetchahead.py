"""Ordered fetch-ahead: fetch items concurrently, hand them out in order, within a byte budget.

The fetching runs on the bridge's event loop; the consumer is a DIMSE thread that sends
each item as a C-STORE sub-operation while later items are still downloading. Memory is
bounded by ``max_bytes`` of finished-but-unsent items plus what the ``max_concurrent``
in-flight requests hold; one item is always allowed so an item larger than the budget
still goes through. ``cancel()`` cancels every in-flight fetch (closing its connection)
and starts no new one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from bridge.loop_thread import Cancelled, LoopThread, wait

T = TypeVar("T")
R = TypeVar("R")


class Prefetcher(Generic[T, R]):
    """The loop-side half: schedules fetches. All methods run on the event loop."""

    def __init__(
        self,
        items: Sequence[T],
        fetch: Callable[[T], Awaitable[R]],
        size: Callable[[R], int],
        *,
        max_concurrent: int,
        max_bytes: int,
    ) -> None:
        self.items = items
        self._fetch = fetch
        self._size = size
        self._max_concurrent = max(1, max_concurrent)
        self._max_bytes = max_bytes
        # index → future; a released item's future is dropped at once, or every fetched
        # instance would stay in memory until the whole retrieve ends.
        self._futures: dict[int, asyncio.Future[R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduler: asyncio.Task[None] | None = None
        self._buffered = 0  # bytes of finished items not yet released by the consumer
        self._sizes: dict[int, int] = {}
        self._changed: asyncio.Event | None = None
        self._in_flight = 0
        self.started = 0  # fetches begun, for tests and logs
        self.cancelled = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._futures = {index: loop.create_future() for index in range(len(self.items))}
        self._changed = asyncio.Event()
        self._scheduler = loop.create_task(self._schedule())

    async def _schedule(self) -> None:
        assert self._changed is not None
        for index, item in enumerate(self.items):
            while self._in_flight >= self._max_concurrent or (
                self._buffered >= self._max_bytes and self._sizes
            ):
                self._changed.clear()
                await self._changed.wait()
            self._in_flight += 1
            self.started += 1
            task = asyncio.get_running_loop().create_task(self._run_one(index, item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_one(self, index: int, item: T) -> None:
        future = self._futures[index]
        try:
            result = await self._fetch(item)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:  # handed to the consumer, which decides
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                size = self._size(result)
                self._sizes[index] = size
                self._buffered += size
                future.set_result(result)
        finally:
            self._in_flight -= 1
            self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def result(self, index: int) -> R:
        return await asyncio.shield(self._futures[index])

    def release(self, index: int) -> None:
        """The consumer is done with item `index`: its bytes leave the budget and memory."""
        self._buffered -= self._sizes.pop(index, 0)
        self._futures.pop(index, None)
        self._notify()

    def cancel(self) -> None:
        self.cancelled = True
        if self._scheduler is not None:
            self._scheduler.cancel()
        for task in list(self._tasks):
            task.cancel()
        for future in self._futures.values():
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # mark retrieved: nobody will ask now


class Fetched(Generic[R]):
    """Outcome of one item: its result or the exception its fetch raised."""

    __slots__ = ("value", "error")

    def __init__(self, value: R | None, error: BaseException | None) -> None:
        self.value = value
        self.error = error


class PrefetchHandle(Generic[T, R]):
    """The thread-side half: a DIMSE thread takes items in order, or cancels everything."""

    def __init__(self, loop: LoopThread, prefetcher: Prefetcher[T, R]) -> None:
        self._loop = loop
        self._prefetcher = prefetcher
        self._closed = False

    def __enter__(self) -> PrefetchHandle[T, R]:
        self._loop.loop.call_soon_threadsafe(self._prefetcher.start)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def take(self, index: int, is_cancelled: Callable[[], bool]) -> Fetched[R]:
        """Wait for item `index`; raises Cancelled (after cancelling all) when asked to."""
        future = asyncio.run_coroutine_threadsafe(self._prefetcher.result(index), self._loop.loop)
        try:
            return Fetched(wait(future, is_cancelled), None)
        except Cancelled:
            self.cancel()
            raise
        except concurrent.futures.CancelledError:
            return Fetched(None, asyncio.CancelledError())
        except Exception as exc:
            return Fetched(None, exc)

    def release(self, index: int) -> None:
        self._loop.loop.call_soon_threadsafe(self._prefetcher.release, index)

    def cancel(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.loop.call_soon_threadsafe(self._prefetcher.cancel)

    @property
    def started(self) -> int:
        return self._prefetcher.started
