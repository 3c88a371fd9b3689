"""Logging set-up (text for a terminal, JSON lines for collectors) and progress lines.

``JsonFormatter`` writes one JSON object per record and per line, so that Loki, Elastic,
Cloud Logging and journald's JSON readers need no multi-line parsing: a traceback goes
into the ``exc`` field instead of following the message. Structured values can be
attached with ``logger.info("...", extra={"fields": {"peer": ae, "instances": n}})``;
the text format ignores them (they should repeat what the message says).

Every line an association causes carries its short id: ``ASSOCIATION`` is a
``ContextVar`` set in each thread that works for the association (its reactor and DUL
threads, bridge/dimse/trace.py; the event-loop tasks it submits, bridge/loop_thread.py),
and ``AssociationFilter``, on the handler, copies it onto every record: ``[a1b2]`` in the
text format, ``"association": "a1b2"`` in JSON.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.ops.status import StatusBoard

TEXT_FORMAT = "%(asctime)s %(levelname)s %(association_tag)s%(name)s: %(message)s"
LOG_FORMATS = ("text", "json")

# Marks the handler setup_logging installed, so that a second call replaces it instead of
# doubling every line, and handlers that others installed (pytest's) are left alone.
_MARK = "_dimse_bridge_handler"

# Keys of every JSON line; `fields` may add others but never replace these.
_CORE_KEYS = frozenset({"ts", "level", "logger", "msg", "thread", "association", "exc", "stack"})

ASSOCIATION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dimse_bridge_association", default=None
)
"""The short id of the association the current thread or task works for (None: none)."""


class AssociationFilter(logging.Filter):
    """Puts the current association's id on every record: ``record.association`` (the id
    or None) and ``record.association_tag`` (``"[a1b2] "`` or ``""``, for the text
    format). On the handler, so it sees pynetdicom's and every library's records too."""

    def filter(self, record: logging.LogRecord) -> bool:
        # A record made in another thread (a QueueHandler's) keeps the id it came with.
        association = getattr(record, "association", None)
        if association is None:
            association = ASSOCIATION.get()
            record.association = association
        record.association_tag = f"[{association}] " if association else ""
        return True


def _utc_timestamp(record: logging.LogRecord) -> str:
    """ISO-8601 UTC with milliseconds, e.g. ``2024-05-01T12:00:00.123Z``."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _jsonable(value: object) -> str:
    # Paths, UIDs, exceptions, enums...: their text is what a reader wants.
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, thread, then ``extra={"fields":
    {...}}`` entries, then exc (formatted traceback) and stack when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc_timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "thread": record.threadName,
        }
        association = getattr(record, "association", None)
        if association:
            entry["association"] = association
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                if str(key) not in _CORE_KEYS:
                    entry[str(key)] = value
        if record.exc_info and record.exc_info[0] is not None:
            # Cached on the record like logging.Formatter does, for other handlers.
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            entry["exc"] = record.exc_text
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: the line stays valid whatever encoding stderr has in a container.
        return json.dumps(entry, default=_jsonable, ensure_ascii=True)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger: `level` (DEBUG, INFO, WARNING, ERROR) to stderr, in
    `fmt` ``"text"`` or ``"json"``; quieten the libraries that log too much or log PHI."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f'expected log format "text" or "json", got {fmt!r}')
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(AssociationFilter())
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    # pynetdicom logs PDUs and identifiers (PHI) at INFO: show its warnings only.
    logging.getLogger("pynetdicom").setLevel(
        logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
    )
    # httpx logs every request URL at INFO, and QIDO-RS query strings are patient data.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # Python warnings (pydicom's about odd values) would otherwise be printed raw on
    # stderr, breaking one-JSON-object-per-line.
    logging.captureWarnings(True)


class Progress:
    """Progress lines of a long transfer, at most one per `interval_s` seconds.

    ``update(done, nbytes, failed)`` after each instance (sent or failed) costs one clock
    read and a comparison until a line is due; the line counts the failed instances too,
    and gives the rate over the interval since the previous line (the current
    throughput, not the average). No line is written before the first
    interval has passed, so short transfers log only their summary. One Progress per
    transfer, used from one thread. Every update also goes to `board` (the operator
    page's running transfers), under the id of the association that made the Progress.
    """

    def __init__(
        self,
        service: str,
        peer: str,
        total: int,
        interval_s: float,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
        board: StatusBoard | None = None,
    ) -> None:
        self.service = service
        self.peer = peer
        self.total = total
        self.interval_s = interval_s
        self.logger = logger
        self._clock = clock
        self._last_t = clock()
        self._last_bytes = 0
        self._due = self._last_t + interval_s
        self._board = board
        self._association = ASSOCIATION.get()

    def update(self, done: int, nbytes: int, failed: int = 0, *, force: bool = False) -> None:
        """`done` instances dealt with, `failed` of them failed, and `nbytes` bytes
        transferred so far (cumulative); `force` writes the line even if none is due (a
        jump such as an outage failing every remaining instance at once)."""
        if self._board is not None:
            self._board.progress(self._association, done, failed, self.total, nbytes)
        now = self._clock()
        if now < self._due and not force:
            return
        elapsed = now - self._last_t
        rate_mb_s = (nbytes - self._last_bytes) / elapsed / 1e6 if elapsed > 0 else 0.0
        self.logger.info(
            "%s to %s: %d/%d instances, %d failed, %.1f MB, %.1f MB/s",
            self.service,
            self.peer,
            done,
            self.total,
            failed,
            nbytes / 1e6,
            rate_mb_s,
            extra={
                "fields": {
                    "service": self.service,
                    "peer": self.peer,
                    "done": done,
                    "total": self.total,
                    "failed": failed,
                    "bytes": nbytes,
                    "rate_mb_s": round(rate_mb_s, 3),
                }
            },
        )
        self._last_t, self._last_bytes = now, nbytes
        self._due = now + self.interval_s
