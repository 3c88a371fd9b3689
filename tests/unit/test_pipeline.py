"""The ordered fetch-ahead: order, concurrency bound, byte budget, errors and cancel."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from bridge.dimse.retrieval.fetchahead import Prefetcher, PrefetchHandle
from bridge.loop_thread import Cancelled, LoopThread


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread("test-loop")
    thread.start()
    yield thread
    thread.stop()
    # LoopThread.stop leaves the loop open (the bridge's lives until the process exits):
    # close it here, or its selector's sockets are reported as unclosed.
    thread.loop.close()


class Recorder:
    """A fetch function whose calls can be observed and held back."""

    def __init__(self, sizes: dict[int, int] | None = None, fail: set[int] | None = None):
        self.sizes = sizes or {}
        self.fail = fail or set()
        self.active = 0
        self.max_active = 0
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.delay = 0.01
        self.hold: asyncio.Event | None = None

    async def __call__(self, item: int) -> bytes:
        self.started.append(item)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.hold is not None:
                await self.hold.wait()
            await asyncio.sleep(self.delay * ((item * 7) % 3))  # finish out of order
            if item in self.fail:
                raise ValueError(f"item {item} failed")
            return bytes([item % 256]) * self.sizes.get(item, 10)
        except asyncio.CancelledError:
            self.cancelled.append(item)
            raise
        finally:
            self.active -= 1


def test_items_come_out_in_order_with_bounded_concurrency(loop: LoopThread) -> None:
    fetch = Recorder()
    items = list(range(40))
    prefetcher = Prefetcher(items, fetch, len, max_concurrent=4, max_bytes=10**9)
    with PrefetchHandle(loop, prefetcher) as handle:
        out = []
        for index in items:
            got = handle.take(index, lambda: False)
            assert got.error is None
            out.append(got.value)
            handle.release(index)
    assert out == [bytes([i]) * 10 for i in items]
    assert fetch.max_active == 4
    assert sorted(fetch.started) == items


def test_errors_are_handed_to_the_consumer_in_place(loop: LoopThread) -> None:
    fetch = Recorder(fail={3, 5})
    prefetcher = Prefetcher(list(range(8)), fetch, len, max_concurrent=3, max_bytes=10**9)
    with PrefetchHandle(loop, prefetcher) as handle:
        results = [handle.take(i, lambda: False) for i in range(8)]
    assert [i for i, r in enumerate(results) if r.error is not None] == [3, 5]
    assert str(results[3].error) == "item 3 failed"
    assert results[4].value == bytes([4]) * 10


def test_byte_budget_limits_fetching_ahead(loop: LoopThread) -> None:
    # Each item is 100 bytes, budget 250: at most 3 finished items wait unreleased.
    fetch = Recorder(sizes=dict.fromkeys(range(20), 100))
    prefetcher = Prefetcher(list(range(20)), fetch, len, max_concurrent=8, max_bytes=250)
    with PrefetchHandle(loop, prefetcher) as handle:
        assert handle.take(0, lambda: False).value == bytes([0]) * 100
        time.sleep(0.3)  # let the scheduler run as far ahead as it may
        # Item 0 is held (not released), so fetching stops once >= 250 bytes are buffered;
        # up to 8 may be in flight when the budget fills, never all 20.
        assert len(fetch.started) < 20
        ahead = len(fetch.started)
        for index in range(20):
            assert handle.take(index, lambda: False).error is None
            handle.release(index)
        assert len(fetch.started) == 20
        assert ahead <= 3 + 8


def test_an_item_larger_than_the_budget_still_goes_through(loop: LoopThread) -> None:
    fetch = Recorder(sizes={0: 5000, 1: 5000})
    prefetcher = Prefetcher([0, 1], fetch, len, max_concurrent=1, max_bytes=100)
    with PrefetchHandle(loop, prefetcher) as handle:
        first = handle.take(0, lambda: False)
        handle.release(0)
        second = handle.take(1, lambda: False)
    assert first.value is not None and len(first.value) == 5000
    assert second.value is not None and len(second.value) == 5000


def test_cancel_stops_in_flight_fetches_and_starts_no_new_one(loop: LoopThread) -> None:
    fetch = Recorder()

    async def make_hold() -> asyncio.Event:
        return asyncio.Event()

    fetch.hold = loop.call(make_hold())  # every fetch stalls until cancelled
    prefetcher = Prefetcher(list(range(50)), fetch, len, max_concurrent=4, max_bytes=10**9)
    flag = threading.Event()
    with PrefetchHandle(loop, prefetcher) as handle:
        threading.Timer(0.2, flag.set).start()
        began = time.monotonic()
        with pytest.raises(Cancelled):
            handle.take(0, flag.is_set)
        waited = time.monotonic() - began
    time.sleep(0.1)
    assert 0.15 < waited < 0.5
    assert sorted(fetch.cancelled) == [0, 1, 2, 3]
    assert fetch.started == [0, 1, 2, 3]
    assert prefetcher.cancelled


def test_released_items_are_dropped_from_memory(loop: LoopThread) -> None:
    # The pipeline must not keep what it handed out: memory is bounded by the budget,
    # not by the number of items in the retrieve.
    fetch = Recorder(sizes=dict.fromkeys(range(30), 1000))
    prefetcher = Prefetcher(list(range(30)), fetch, len, max_concurrent=2, max_bytes=10**9)
    with PrefetchHandle(loop, prefetcher) as handle:
        for index in range(30):
            assert handle.take(index, lambda: False).error is None
            handle.release(index)

        async def held() -> int:
            return len(prefetcher._futures)

        assert loop.call(held()) == 0
