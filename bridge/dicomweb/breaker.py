"""Per-backend circuit breaker: stop calling a DICOMweb server that is clearly unreachable.

Without it, an outage during a 1000-instance C-GET made every remaining instance go
through its own retries (minutes, thousands of log lines). With it, once `threshold`
different requests in a row found the server unreachable, the breaker *opens*: every
request fails at once with ``DicomwebCircuitOpen`` (no connection, no retry, no backoff),
and retry loops waiting for their next attempt give up (``wait_opened``). After
`cooldown` seconds the next request is let through as a probe (*half-open*; the others
still fail fast until it ends): if it reaches the server the breaker *closes*, if not it
opens for another cool-down. The bridge's /readyz probe is a request like any other, so
an idle bridge's readiness checks are what half-open and close it.

::

    closed ──threshold requests in a row unreachable──▶ open
    open ──cooldown passed, next request──▶ half-open (that request is the probe)
    half-open ──probe reached the server──▶ closed
    half-open ──probe unreachable──▶ open (another cool-down)

What an outcome proves (``classify``, read from the one table in
``bridge/dicomweb/outcomes.py``):

- *unreachable*: the connection could not be made (refused, DNS failure, connect
  timeout); no answer within ``dicomweb.timeout``; HTTP 502 or 504 (a gateway in front
  of the server could not reach it, or got no answer from it); HTTP 503 without
  ``Retry-After`` (a load balancer with no healthy server behind it).
- *reachable*: every other HTTP answer, 4xx and 500 included (the server is up, and
  that request would fail the same way anywhere), and a 503 with ``Retry-After`` (the
  server is alive and says when to come back: the retry policy waits as asked).
- *neither*: a connection reset or closed after it was made, an answer cut short or
  unreadable, a TLS failure, a cancel. Orthanc resets idle keep-alive connections
  now and then, and a killed server resets the requests in flight; the refused
  connections that follow are what count.

"In a row" counts *different* requests (a request's retries count once): one instance
the server keeps failing is that instance's problem, not an outage, and must not stop a
C-GET of a thousand others. A reachable outcome of any request resets the count.

Defaults: 3 requests, 5 s. Three different requests meeting a refused connection, a
timeout or a 502/504 with no answer in between hardly happen while the server serves, and
three is below the fetch-ahead's 8 concurrent requests, so a C-GET's own in-flight
requests open it within moments of an outage instead of each first using up its retries
(with fewer concurrent requests than the threshold, it opens only after they did).
Five seconds is short next to a C-GET and long enough not to hammer a restarting server;
a failed probe costs one request per cool-down.

A breaker belongs to one backend's client and is used on the bridge's event loop only
(no locks). ``threshold = 0`` turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from enum import Enum

from bridge.dicomweb.outcomes import Outcome
from bridge.dicomweb.outcomes import classify as outcome_row
from bridge.errors import (
    DicomwebCircuitOpen,
    DicomwebError,
    DicomwebHTTPError,
    DicomwebTimeout,
)

LOGGER = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 3
DEFAULT_COOLDOWN = 5.0


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def classify(error: DicomwebError | None) -> Outcome:
    """What one exchange's outcome (None: a 2xx answer) proves about the server."""
    return outcome_row(error).breaker


def why(error: DicomwebError) -> str:
    """The few words the open-breaker message gives for the outcome that opened it."""
    if isinstance(error, DicomwebHTTPError):
        return f"HTTP {error.status_code}"
    if isinstance(error, DicomwebTimeout):
        return "timeout"
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "name not resolved"
        cause = cause.__cause__ or cause.__context__
    return "cannot connect"


# Called with (backend, new state) on every transition, e.g. for metrics.
Listener = Callable[[str, State], None]


class CircuitBreaker:
    """The breaker of one backend (see the module docstring)."""

    def __init__(
        self,
        threshold: int = DEFAULT_THRESHOLD,
        cooldown: float = DEFAULT_COOLDOWN,
        *,
        backend: str = "default",
        clock: Callable[[], float] = time.monotonic,
        listener: Listener | None = None,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.backend = backend
        self._clock = clock
        self._listener = listener
        self.state = State.CLOSED
        # Requests (retry loops) whose latest outcome was "unreachable" since the last
        # reachable outcome: the count of different requests in a row.
        self._failing: set[object] = set()
        self._opened_at = 0.0
        self._reason = ""
        self._probe: object | None = None
        self.openings = 0
        # Set while open: retry loops sleeping in backoff wake up and give up.
        self._opened: asyncio.Event | None = None

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    @property
    def is_open(self) -> bool:
        """Open or half-open: requests other than the probe fail at once."""
        return self.state is not State.CLOSED

    def error(self) -> DicomwebCircuitOpen:
        """The error a request gets while the breaker is open."""
        left = self._opened_at + self.cooldown - self._clock()
        later = f"next probe in {left:.1f} s" if left > 0 else "a probe is under way"
        return DicomwebCircuitOpen(
            f"DICOMweb server unreachable: {self._reason}; {later} (circuit open)"
        )

    def before(self, request: object) -> None:
        """Called before each attempt of `request`; raises DicomwebCircuitOpen when the
        attempt must not be made. After the cool-down, the first caller is the probe."""
        if not self.enabled or self.state is State.CLOSED:
            return
        if self.state is State.OPEN:
            if self._clock() - self._opened_at < self.cooldown:
                raise self.error()
            self._set(State.HALF_OPEN)
            self._probe = request
            LOGGER.debug("DICOMweb backend %s: cool-down over, probing", self.backend)
            return
        if self._probe is None:  # the previous probe was cancelled: this one probes
            self._probe = request
        elif self._probe is not request:
            raise self.error()

    def record(self, request: object, error: DicomwebError | None) -> None:
        """The outcome of one attempt of `request` (None: it got a 2xx answer)."""
        if not self.enabled:
            return
        outcome = classify(error)
        probing = self.state is State.HALF_OPEN and self._probe is request
        if outcome is Outcome.REACHABLE:
            self._failing.clear()
            if self.state is not State.CLOSED:
                self._close()  # the probe, or a request begun before the opening, got through
            return
        if outcome is Outcome.NEITHER:
            if probing:
                self._probe = None  # proved nothing: the next request probes again
            return
        assert error is not None
        if probing:
            self._open(f"the probe failed too ({why(error)})")
            return
        if self.state is not State.CLOSED:
            return  # an attempt begun before the breaker opened
        self._failing.add(request)
        if len(self._failing) >= self.threshold:
            self._open(f"{len(self._failing)} requests in a row failed ({why(error)})")

    def abandon(self, request: object) -> None:
        """`request` ended without an outcome (cancelled): if it was the probe, the next
        request probes instead."""
        if self._probe is request:
            self._probe = None

    async def wait_opened(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as the breaker is (or becomes) open."""
        if not self.enabled:
            await asyncio.sleep(seconds)
            return False
        if self.state is State.OPEN:
            return True
        if self._opened is None:
            self._opened = asyncio.Event()
        try:
            await asyncio.wait_for(self._opened.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _open(self, reason: str) -> None:
        self._reason = reason
        self._opened_at = self._clock()
        self._failing.clear()
        self._probe = None
        first = self.state is State.CLOSED
        self._set(State.OPEN)
        if self._opened is not None:
            self._opened.set()
        if first:
            self.openings += 1
            LOGGER.warning(
                "DICOMweb backend %s unreachable: %s; failing its requests at once, "
                "probing again every %.0f s (circuit open)",
                self.backend,
                reason,
                self.cooldown,
            )
        else:
            # Every cool-down in a long outage: the opening line said it all.
            LOGGER.debug("DICOMweb backend %s still unreachable: %s", self.backend, reason)

    def _close(self) -> None:
        down = self._clock() - self._opened_at
        self._probe = None
        self._set(State.CLOSED)
        if self._opened is not None:
            self._opened.clear()
        # WARNING like the opening line, so that a log kept at WARNING shows the outage end.
        LOGGER.warning(
            "DICOMweb backend %s reachable again after %.1f s (circuit closed)",
            self.backend,
            down,
        )

    def _set(self, state: State) -> None:
        self.state = state
        if self._listener is not None:
            self._listener(self.backend, state)
