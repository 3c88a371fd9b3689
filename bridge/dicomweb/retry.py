"""When and how long to wait before retrying a DICOMweb request.

Idempotent reads (QIDO-RS, WADO-RS) are retried on connection failures and resets,
answers cut short (broken framing, truncated multipart), and HTTP 429, 502, 503 and
504, with full-jitter exponential backoff, honouring ``Retry-After``, until the
per-request deadline. STOW-RS is retried only when
the request provably never reached the server (the connection could not be opened).
A 401/403, a 4xx, a 500 or a timeout is not retried: retrying would not change it, or
the timeout already used the time a retry would need. What is retried is a column of
the outcome table (``bridge/dicomweb/outcomes.py``: ``is_retryable``).

Each attempt first asks the backend's circuit breaker (``bridge.dicomweb.breaker``):
while it is open no attempt is made, and a loop waiting for its next attempt gives up
as soon as it opens, with ``DicomwebCircuitOpen``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from bridge.dicomweb.breaker import CircuitBreaker
from bridge.dicomweb.outcomes import is_retryable
from bridge.errors import DicomwebError, DicomwebHTTPError

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    deadline: float = 30.0  # seconds from the first attempt
    max_retries: int = 4
    base_delay: float = 0.2
    max_delay: float = 10.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff(
    attempt: int, policy: RetryPolicy, retry_after: float | None, rng: random.Random
) -> float:
    """Delay before retry number `attempt` (1-based): full jitter, or what the server asked."""
    if retry_after is not None:
        return min(retry_after, policy.max_delay)
    ceiling = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
    return rng.uniform(ceiling / 2, ceiling)


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    idempotent: bool,
    what: str,
    rng: random.Random | None = None,
    breaker: CircuitBreaker | None = None,
) -> T:
    """Run `attempt` until it succeeds, fails for good, the deadline/attempts run out,
    or `breaker` opens (then DicomwebCircuitOpen, chained to the last failure)."""
    rng = rng or random.Random()
    started = time.monotonic()
    tries = 0
    request = object()  # this request, for the breaker: its retries count once
    try:
        while True:
            if breaker is not None:
                breaker.before(request)
            try:
                result = await attempt()
            except DicomwebError as exc:
                if breaker is not None:
                    breaker.record(request, exc)
                tries += 1
                if tries > policy.max_retries or not is_retryable(exc, idempotent=idempotent):
                    raise
                retry_after = exc.retry_after if isinstance(exc, DicomwebHTTPError) else None
                delay = backoff(tries, policy, retry_after, rng)
                if time.monotonic() - started + delay > policy.deadline:
                    raise
                if breaker is not None and breaker.is_open:
                    raise breaker.error() from exc
                LOGGER.info("%s failed (%s); retry %d in %.2f s", what, exc, tries, delay)
                if breaker is None:
                    await asyncio.sleep(delay)
                elif await breaker.wait_opened(delay):
                    raise breaker.error() from exc
            else:
                if breaker is not None:
                    breaker.record(request, None)
                return result
    except BaseException:
        # Cancelled, or an error that is not the server's: if this was the breaker's
        # probe, the next request probes instead.
        if breaker is not None:
            breaker.abandon(request)
        raise
