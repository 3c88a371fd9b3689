"""What the bridge is doing now, for ``/status`` and the operator page: one registry.

``StatusBoard`` holds the associations open now, the operation each is running, and the
last finished operations. It is fed by the same pynetdicom events that feed the log and
the metrics (bridge/dimse/trace.py), plus the progress of long transfers
(``bridge.ops.logs.Progress``); the backends' readiness comes from the /readyz probe.
Everything is keyed by the association's short id (``bridge.ops.logs.ASSOCIATION``):
pynetdicom serves one request at a time per association, so an id names an operation too.

It holds AE titles, peer addresses, counts, statuses and ErrorComments: never a patient's
name, ID or birth date (identifiers are not looked at).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

from bridge.translate.status import category as status_category

T = TypeVar("T")

FINISHED_KEPT = 50
ABORTED = "aborted"  # the category of an operation whose association ended under it


@dataclass(frozen=True)
class BackendStatus:
    """One DICOMweb backend and the answer of its readiness probe."""

    name: str
    url: str
    ready: bool
    reason: str | None  # why not ready (None when ready)


@dataclass
class AssociationRecord:
    id: str
    calling_ae: str
    called_ae: str
    peer: str  # "host:port"
    started: float
    served: Counter[str] = field(default_factory=Counter)  # finished operations by service


@dataclass
class Operation:
    """A DIMSE request being served."""

    association: str
    service: str
    calling_ae: str
    peer: str
    started: float
    done: int = 0
    failed: int = 0
    total: int | None = None  # None until known (a C-FIND's is never known in advance)
    bytes: int = 0


@dataclass(frozen=True)
class FinishedOperation:
    """A request answered with a final status, or cut short by the end of its association
    (``status`` None, ``category`` "aborted")."""

    association: str
    service: str
    calling_ae: str
    peer: str
    status: int | None
    category: str
    done: int
    failed: int
    total: int
    bytes: int
    seconds: float
    error_comment: str | None

    @property
    def mb_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def status_text(self) -> str | None:
        return None if self.status is None else f"0x{self.status & 0xFFFF:04X}"


def public_url(url: str) -> str:
    """`url` without user information (a password in a URL must not reach a page)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class Cached(Generic[T]):
    """`compute()` at most once per `ttl` seconds; callers arriving meanwhile share the
    answer (the lock is held across the call, as ``bridge.ops.http.CachedProbe``)."""

    def __init__(
        self, compute: Callable[[], T], ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._compute = compute
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._value: tuple[float, T] | None = None

    def __call__(self) -> T:
        with self._lock:
            if self._value is not None and self._clock() - self._value[0] < self._ttl:
                return self._value[1]
            value = self._compute()
            self._value = (self._clock(), value)
            return value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None


class StatusBoard:
    """Open associations, running operations, the last `keep` finished ones; thread-safe
    (DIMSE threads write, the ops listener's threads read ``snapshot()``)."""

    def __init__(self, *, keep: int = FINISHED_KEPT, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._associations: dict[str, AssociationRecord] = {}
        self._operations: dict[str, Operation] = {}
        self._finished: deque[FinishedOperation] = deque(maxlen=keep)
        self.backends: Callable[[], list[BackendStatus]] = list
        # Filled once the spool exists (issue 12): a JSON-able summary of its backlog.
        self.spool: Callable[[], Any] = lambda: None

    # --- associations -------------------------------------------------------------------

    def is_open(self, association: str) -> bool:
        with self._lock:
            return association in self._associations

    def opened(self, association: str, calling_ae: str, called_ae: str, peer: str) -> None:
        with self._lock:
            self._associations[association] = AssociationRecord(
                association, calling_ae, called_ae, peer, self._clock()
            )

    def closed(self, association: str) -> tuple[AssociationRecord, float] | None:
        """Forget the association; its record and age in seconds (None if not open)."""
        with self._lock:
            record = self._associations.pop(association, None)
            self._operations.pop(association, None)
        if record is None:
            return None
        return record, self._clock() - record.started

    # --- operations ---------------------------------------------------------------------

    def started(self, association: str, service: str) -> None:
        """A request of `service` arrived on `association`."""
        with self._lock:
            record = self._associations.get(association)
            calling, peer = (record.calling_ae, record.peer) if record else ("", "")
            self._operations[association] = Operation(
                association, service, calling, peer, self._clock()
            )

    def progress(
        self, association: str | None, done: int, failed: int, total: int, nbytes: int
    ) -> None:
        """Counts so far of the transfer running on `association` (cumulative)."""
        with self._lock:
            op = self._operations.get(association or "")
            if op is not None:
                op.done, op.failed, op.total, op.bytes = done, failed, total, nbytes

    def add(self, association: str | None, *, done: int = 0, nbytes: int = 0) -> None:
        """`done` more results (C-FIND matches) or `nbytes` more bytes (C-STORE)."""
        with self._lock:
            op = self._operations.get(association or "")
            if op is not None:
                op.done += done
                op.bytes += nbytes

    def finished(
        self,
        association: str,
        status: int | None,
        error_comment: str | None = None,
        counts: tuple[int, int, int] | None = None,
    ) -> FinishedOperation | None:
        """The running operation got its final `status` (None: its association ended
        first). `counts` (done, failed, total) when the response says them (C-GET,
        C-MOVE); otherwise the counts recorded so far. None if nothing was running."""
        with self._lock:
            op = self._operations.pop(association, None)
            if op is None:
                return None
            if counts is not None:
                done, failed, total = counts
            else:
                done, failed = op.done, op.failed
                total = op.total if op.total is not None else done
            finished = FinishedOperation(
                association=association,
                service=op.service,
                calling_ae=op.calling_ae,
                peer=op.peer,
                status=status,
                category=ABORTED if status is None else status_category(status),
                done=done,
                failed=failed,
                total=total,
                bytes=op.bytes,
                seconds=max(0.0, self._clock() - op.started),
                error_comment=error_comment or None,
            )
            self._finished.append(finished)
            record = self._associations.get(association)
            if record is not None:
                record.served[op.service] += 1
            return finished

    # --- /status ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The ``/status`` document (README, "Operator page and /status")."""
        backends = [
            {"name": b.name, "url": public_url(b.url), "ready": b.ready, "reason": b.reason}
            for b in self.backends()
        ]
        now = self._clock()
        with self._lock:
            associations = [
                {
                    "id": a.id,
                    "calling_ae": a.calling_ae,
                    "called_ae": a.called_ae,
                    "peer": a.peer,
                    "age_s": round(now - a.started, 1),
                }
                for a in self._associations.values()
            ]
            operations = [_running(op, now) for op in self._operations.values()]
            finished = [
                {
                    "association": f.association,
                    "service": f.service,
                    "calling_ae": f.calling_ae,
                    "status": f.status_text,
                    "category": f.category,
                    "done": f.done,
                    "failed": f.failed,
                    "total": f.total,
                    "seconds": round(f.seconds, 3),
                    "error_comment": f.error_comment,
                }
                for f in reversed(self._finished)  # the latest first
            ]
        return {
            "backends": backends,
            "associations": associations,
            "operations": operations,
            "finished": finished,
            "spool": self.spool(),
        }


def _running(op: Operation, now: float) -> dict[str, Any]:
    elapsed = max(now - op.started, 1e-6)
    rate = op.done / elapsed  # results per second, averaged since the request came
    eta = None
    if op.total is not None and rate > 0:
        eta = round(max(0, op.total - op.done) / rate, 1)
    return {
        "association": op.association,
        "service": op.service,
        "calling_ae": op.calling_ae,
        "done": op.done,
        "failed": op.failed,
        "total": op.total,
        "bytes": op.bytes,
        "mb_s": round(op.bytes / 1e6 / elapsed, 2),
        "eta_s": eta,
    }
