"""The WADO-RS request rate of one backend: a token bucket shared by every association.

``Capabilities.wado_rate`` tokens per second refill a bucket holding ``wado_burst`` (at
least one); each WADO-RS request takes one before it is sent, waiting its turn when the
bucket is empty. AWS HealthImaging documents 50 requests per second with bursts to 100
for its WADO-RS actions (docs.aws.amazon.com/healthimaging/latest/devguide/
throttling-limits.html); a server past its rate answers 429, which the retry policy
(``retry.py``) still honours with its Retry-After, and which here also pauses the whole
bucket for that long, so that the other associations wait too instead of earning 429s of
their own.

It plugs into httpx at the client's request path (``event_hooks``): a request hook
waits for the token, a response hook reads 429s. That composes with any transport under
the client (the default one, a faster HTTP/1.1 one, ``MockTransport`` in tests), auth
flows and retries: each request actually sent is counted once.

The bucket lives on the one event loop every DICOMweb client runs on, so it needs no
lock. Its clock is injectable, and ``reserve`` is pure arithmetic on it, so tests count
the requests admitted per refill without waiting.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

import httpx

from bridge.dicomweb.retry import parse_retry_after
from bridge.profiles import Capabilities

# The last path segment of a QIDO-RS search: /studies, /studies/{uid}/series, .../instances
# (and /series, /instances at the root). Every other GET under /studies is WADO-RS: an
# instance, series or study, its metadata, frames, bulk data or rendering.
_SEARCH_SEGMENTS = frozenset({"studies", "series", "instances"})
_STUDIES = re.compile(r"/studies/[^/?]+")


def is_wado_request(method: str, path: str) -> bool:
    """Whether a request is WADO-RS (what the rate limits), from its method and URL path."""
    if method != "GET" or not _STUDIES.search(path):
        return False
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return last not in _SEARCH_SEGMENTS


class TokenBucket:
    """`rate` tokens per second into a bucket of `burst` (at least 1), taken one per
    request in arrival order. Tokens may go negative: each one below zero is a request
    already promised a later slot, so concurrent waiters are served at the rate, in order.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = float(max(1, burst))
        self.clock = clock
        self.sleep = sleep
        self.tokens = self.capacity
        self.updated = clock()
        # A 429 with Retry-After: nothing is sent before then.
        self.paused_until = self.updated

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def reserve(self) -> float:
        """Take a token; the seconds to wait before sending (0 = at once)."""
        now = self.clock()
        self._refill(now)
        self.tokens -= 1.0
        wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        return max(wait, self.paused_until - now)

    def refund(self) -> None:
        """Give back a reserved token whose request was not sent (cancelled while waiting)."""
        self.tokens = min(self.capacity, self.tokens + 1.0)

    def pause(self, seconds: float) -> None:
        """Send nothing for `seconds` (the server asked for it with 429 + Retry-After)."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)

    async def acquire(self) -> None:
        """Wait for a token (cancellable: a cancelled wait gives its token back)."""
        wait = self.reserve()
        if wait <= 0:
            return
        try:
            await self.sleep(wait)
        except asyncio.CancelledError:
            self.refund()
            raise


class WadoRateLimit:
    """The httpx event hooks that keep one client's WADO-RS requests under a bucket."""

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket

    async def before_request(self, request: httpx.Request) -> None:
        if is_wado_request(request.method, request.url.path):
            await self.bucket.acquire()

    async def after_response(self, response: httpx.Response) -> None:
        request = response.request
        if response.status_code != 429 or not is_wado_request(request.method, request.url.path):
            return
        delay = parse_retry_after(response.headers.get("retry-after"))
        if delay:
            self.bucket.pause(delay)

    def event_hooks(self) -> dict[str, list[Callable[..., object]]]:
        return {"request": [self.before_request], "response": [self.after_response]}


def install_wado_rate_limit(
    http: httpx.AsyncClient, capabilities: Capabilities
) -> WadoRateLimit | None:
    """Put the rate limit the capabilities ask for (``wado_rate``, ``wado_burst``) on the
    request path of a backend's one HTTP client; None when there is none."""
    if capabilities.wado_rate <= 0:
        return None
    limit = WadoRateLimit(TokenBucket(capabilities.wado_rate, capabilities.wado_burst))
    hooks = http.event_hooks
    for kind, added in limit.event_hooks().items():
        hooks[kind] = [*hooks.get(kind, []), *added]
    http.event_hooks = hooks
    return limit
