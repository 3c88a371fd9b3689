"""The circuit breaker: what counts, closed → open → half-open → closed/open, and how the
retry loop gives up when it opens. An injected clock; nothing sleeps for real."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.dicomweb.breaker import CircuitBreaker, State, classify
from bridge.dicomweb.outcomes import Outcome, is_retryable
from bridge.dicomweb.retry import RetryPolicy, retrying
from bridge.errors import (
    DicomwebCircuitOpen,
    DicomwebError,
    DicomwebHTTPError,
    DicomwebProtocolError,
    DicomwebTimeout,
    DicomwebTLSError,
    DicomwebUnavailable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused() -> DicomwebUnavailable:
    error = DicomwebUnavailable("cannot connect to http://x/dicom-web: [Errno 111] refused")
    error.never_sent = True
    return error


def reset() -> DicomwebUnavailable:
    return DicomwebUnavailable("connection to http://x/dicom-web failed: reset by peer")


def breaker(threshold: int = 3, cooldown: float = 5.0) -> tuple[CircuitBreaker, Clock, list[State]]:
    clock = Clock()
    changes: list[State] = []
    cb = CircuitBreaker(
        threshold, cooldown, backend="pacs", clock=clock, listener=lambda _b, s: changes.append(s)
    )
    return cb, clock, changes


def fail(cb: CircuitBreaker, request: object, error: DicomwebError) -> None:
    cb.before(request)
    cb.record(request, error)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, Outcome.REACHABLE),
        (refused(), Outcome.UNREACHABLE),
        (DicomwebTimeout("slow"), Outcome.UNREACHABLE),
        (DicomwebHTTPError(502, "bad gateway", "u"), Outcome.UNREACHABLE),
        (DicomwebHTTPError(504, "gateway timeout", "u"), Outcome.UNREACHABLE),
        (DicomwebHTTPError(503, "no healthy upstream", "u"), Outcome.UNREACHABLE),
        (DicomwebHTTPError(503, "busy", "u", retry_after=2.0), Outcome.REACHABLE),
        (DicomwebHTTPError(500, "error", "u"), Outcome.REACHABLE),
        (DicomwebHTTPError(404, "not found", "u"), Outcome.REACHABLE),
        (DicomwebHTTPError(429, "slow down", "u"), Outcome.REACHABLE),
        (reset(), Outcome.NEITHER),
        (DicomwebProtocolError("truncated"), Outcome.NEITHER),
        (DicomwebTLSError("untrusted"), Outcome.NEITHER),
    ],
)
def test_what_an_outcome_proves(error: DicomwebError | None, expected: Outcome) -> None:
    assert classify(error) is expected


def test_opens_after_threshold_different_requests_in_a_row(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cb, clock, changes = breaker(threshold=3)
    a, b, c = object(), object(), object()
    fail(cb, a, refused())
    fail(cb, b, refused())
    assert cb.state is State.CLOSED
    with caplog.at_level(logging.WARNING, logger="bridge.dicomweb.breaker"):
        fail(cb, c, refused())
    assert cb.state is State.OPEN and changes == [State.OPEN] and cb.openings == 1
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "pacs unreachable: 3 requests in a row failed (connection refused)" in caplog.text
    # While open, every request fails at once, with a message that says why.
    clock.now += 4.9
    with pytest.raises(DicomwebCircuitOpen) as raised:
        cb.before(object())
    assert str(raised.value).startswith(
        "DICOMweb server unreachable: 3 requests in a row failed (connection refused); "
    )
    assert str(raised.value).endswith("; next probe in 0.1 s (circuit open)")
    assert raised.value.summary == "DICOMweb server unreachable (circuit open)"
    assert raised.value.never_sent  # nothing was sent: safe for STOW-RS too
    assert not is_retryable(raised.value, idempotent=True)


def test_a_requests_retries_count_once() -> None:
    cb, _clock, _changes = breaker(threshold=3)
    stubborn = object()
    for _ in range(10):
        fail(cb, stubborn, DicomwebHTTPError(503, "unavailable", "u"))
    assert cb.state is State.CLOSED
    fail(cb, object(), DicomwebTimeout("slow"))
    fail(cb, object(), DicomwebHTTPError(502, "bad gateway", "u"))
    assert cb.state is State.OPEN


def test_a_reachable_answer_resets_the_count_and_neither_does_nothing() -> None:
    cb, _clock, _changes = breaker(threshold=3)
    fail(cb, object(), refused())
    fail(cb, object(), refused())
    fail(cb, object(), DicomwebHTTPError(404, "not found", "u"))  # the server answered
    fail(cb, object(), refused())
    fail(cb, object(), refused())
    assert cb.state is State.CLOSED
    fail(cb, object(), reset())  # proves nothing either way
    assert cb.state is State.CLOSED
    fail(cb, object(), refused())
    assert cb.state is State.OPEN


def test_half_open_probe_success_closes(caplog: pytest.LogCaptureFixture) -> None:
    cb, clock, changes = breaker(threshold=1, cooldown=5.0)
    fail(cb, object(), refused())
    assert cb.state is State.OPEN
    caplog.clear()
    clock.now += 5.0
    probe = object()
    cb.before(probe)  # the cool-down is over: this request is the probe
    assert cb.state is State.HALF_OPEN
    with pytest.raises(DicomwebCircuitOpen, match="a probe is under way"):
        cb.before(object())  # others still fail fast while the probe runs
    cb.before(probe)  # the probe's own retry may go
    clock.now += 0.5
    with caplog.at_level(logging.WARNING, logger="bridge.dicomweb.breaker"):
        cb.record(probe, None)
    assert cb.state is State.CLOSED
    assert changes == [State.OPEN, State.HALF_OPEN, State.CLOSED]
    assert [r.getMessage() for r in caplog.records] == [
        "DICOMweb backend pacs reachable again after 5.5 s (circuit closed)"
    ]
    cb.before(object())  # closed: anything goes
    # A new outage needs `threshold` new failures, and is a new opening.
    fail(cb, object(), refused())
    assert cb.state is State.OPEN and cb.openings == 2


def test_half_open_probe_failure_reopens_for_another_cooldown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cb, clock, changes = breaker(threshold=2, cooldown=3.0)
    fail(cb, object(), refused())
    fail(cb, object(), refused())
    clock.now += 3.0
    probe = object()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bridge.dicomweb.breaker"):
        fail(cb, probe, DicomwebTimeout("slow"))
    assert cb.state is State.OPEN and cb.openings == 1
    assert caplog.records == []  # the outage goes on: no new WARNING per probe
    clock.now += 2.9
    with pytest.raises(DicomwebCircuitOpen):
        cb.before(object())
    clock.now += 0.1
    second = object()
    cb.before(second)
    assert cb.state is State.HALF_OPEN
    cb.record(second, DicomwebHTTPError(500, "error", "u"))  # reachable, if unhappy
    assert cb.state is State.CLOSED
    assert changes == [State.OPEN, State.HALF_OPEN, State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_a_cancelled_or_inconclusive_probe_lets_the_next_request_probe() -> None:
    cb, clock, _changes = breaker(threshold=1, cooldown=1.0)
    fail(cb, object(), refused())
    clock.now += 1.0
    first = object()
    cb.before(first)
    cb.abandon(first)  # e.g. a C-CANCEL
    second = object()
    cb.before(second)  # no DicomwebCircuitOpen: it is the probe now
    cb.record(second, reset())
    third = object()
    cb.before(third)
    cb.record(third, None)
    assert cb.state is State.CLOSED


def test_a_late_answer_from_before_the_opening_closes_it() -> None:
    cb, _clock, _changes = breaker(threshold=1)
    slow = object()
    cb.before(slow)
    fail(cb, object(), refused())
    assert cb.state is State.OPEN
    cb.record(slow, None)  # the server answered after all
    assert cb.state is State.CLOSED


def test_threshold_zero_is_off() -> None:
    cb, _clock, changes = breaker(threshold=0)
    for _ in range(20):
        fail(cb, object(), refused())
    assert cb.state is State.CLOSED and changes == []


# --------------------------------------------------------------------------- retrying


def test_retrying_fails_at_once_while_open() -> None:
    cb, _clock, _changes = breaker(threshold=1, cooldown=60.0)
    fail(cb, object(), refused())
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        return "never"

    async def main() -> None:
        with pytest.raises(DicomwebCircuitOpen):
            await retrying(attempt, RetryPolicy(), idempotent=True, what="QIDO-RS", breaker=cb)

    asyncio.run(main())
    assert calls == []  # no connection was even tried


def test_retry_loops_give_up_as_soon_as_the_breaker_opens() -> None:
    """Three requests fail once each (refused) and wait for their retry (a 60 s backoff
    that this test never waits out): the third failure opens the breaker and every
    loop ends at once with DicomwebCircuitOpen, chained to its own failure."""
    cb, _clock, _changes = breaker(threshold=3, cooldown=60.0)
    policy = RetryPolicy(deadline=1000.0, max_retries=4, base_delay=120.0, max_delay=120.0)
    attempts: list[int] = []

    async def attempt() -> str:
        attempts.append(1)
        raise refused()

    async def main() -> list[BaseException]:
        tasks = [
            asyncio.create_task(
                retrying(attempt, policy, idempotent=True, what="WADO-RS", breaker=cb)
            )
            for _ in range(3)
        ]
        done, pending = await asyncio.wait(tasks, timeout=5.0)
        assert not pending, "a retry loop kept waiting after the breaker opened"
        return [task.exception() for task in tasks]  # type: ignore[misc]

    errors = asyncio.run(main())
    assert len(attempts) == 3  # one attempt each: no retry happened
    assert all(isinstance(e, DicomwebCircuitOpen) for e in errors), errors
    assert all(isinstance(e.__cause__, DicomwebUnavailable) for e in errors)
    assert cb.state is State.OPEN


def test_a_single_failing_request_retries_as_before() -> None:
    cb, _clock, _changes = breaker(threshold=3)
    policy = RetryPolicy(deadline=10.0, max_retries=2, base_delay=0.001, max_delay=0.001)
    attempts: list[int] = []

    async def attempt() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise DicomwebHTTPError(503, "unavailable", "u")
        return "ok"

    result = asyncio.run(retrying(attempt, policy, idempotent=True, what="x", breaker=cb))
    assert result == "ok" and len(attempts) == 3 and cb.state is State.CLOSED


def test_a_cancelled_probe_frees_the_probe_slot() -> None:
    cb, clock, _changes = breaker(threshold=1, cooldown=1.0)
    fail(cb, object(), refused())
    clock.now += 1.0

    async def hang() -> str:
        await asyncio.sleep(3600)
        return "never"

    async def ok() -> str:
        return "ok"

    async def main() -> str:
        task = asyncio.create_task(
            retrying(hang, RetryPolicy(), idempotent=True, what="probe", breaker=cb)
        )
        await asyncio.sleep(0)
        assert cb.state is State.HALF_OPEN
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await retrying(ok, RetryPolicy(), idempotent=True, what="x", breaker=cb)

    assert asyncio.run(main()) == "ok"
    assert cb.state is State.CLOSED
