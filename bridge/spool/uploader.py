"""The spool's background uploader: workers on the bridge's event loop, batches, fates, retries.

Each worker takes the next batch from the index (arrival order, one backend, within
batch_max_instances and batch_max_bytes), sends it as one STOW-RS request through that
backend's DICOMweb client (so auth, TLS, max_connections, the circuit breaker, metrics
and server profiles apply), and gives each instance its fate from the answer (``fate``,
the one table). A batch the server refuses as a whole, without a word about each
instance, is sent again one instance per request before anything in it is declared dead:
one bad instance never dead-letters its neighbours.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.config import StoreConfig
from bridge.dicomweb.client import DicomwebClient
from bridge.errors import DicomwebError
from bridge.models import StowResult, StowVerdict
from bridge.ops.metrics import Metrics
from bridge.spool.index import Index, Row

LOGGER = logging.getLogger(__name__)

# HTTP 408 Request Timeout: asking again may work (429 and 5xx are StowResult.busy).
_REQUEST_TIMEOUT = 408
# How often an idle uploader looks for due rows (new rows also wake it).
IDLE_POLL_S = 0.5
# After a new row wakes it, the uploader waits this long before taking a batch, so that
# a modality's burst goes up in a few full batches rather than many of one instance.
LINGER_S = 0.02


class Kind(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    DEAD = "dead"
    # The answer said nothing about this instance: alone it is a RETRY or DEAD by the
    # HTTP status; in a batch it is sent again on its own first.
    UNANSWERED = "unanswered"


@dataclass(frozen=True)
class Fate:
    kind: Kind
    reason: str
    outcome: str = ""  # metrics label (stored, already_present, retry, dead)


def fate(result: StowResult, alone: bool) -> Fate:
    """What to do with one instance after the server's answer about it, read from the one
    STOW-RS verdict table (bridge/dicomweb/outcomes.py ``stow_verdict``)::

        STORED, STORED_WITH_WARNING                  done      stored
        DUPLICATE (0x0111, Azure 45070, Google       done      already_present
          "already exists", a 409 alone)
        BUSY (0xA7xx, Azure 45071, 429, 5xx), 408    retry
        NOT_LISTED (a 2xx without the instance)      in a batch: sent alone; alone: retry
        nothing about the instance in a batch        sent alone (one bad instance must
          (a 4xx refusing the whole request)           not dead-letter its neighbours)
        MISMATCH, SOP_CLASS_NOT_SUPPORTED,           dead      the reason
          NOT_VISIBLE, REFUSED, REJECTED
    """
    code = result.status_code
    reason = result.failure_reason
    verdict = result.verdict
    why = (
        f"HTTP {code}, failure reason 0x{reason:04X}"
        if reason is not None
        else f"HTTP {code} {result.reason_phrase}".strip()
    )
    if verdict in (StowVerdict.STORED, StowVerdict.STORED_WITH_WARNING):
        return Fate(Kind.DONE, "", "stored")
    # A batch answer that says nothing about this instance: ask again with it alone.
    if not alone and reason is None and verdict is not StowVerdict.BUSY:
        if code != _REQUEST_TIMEOUT:
            return Fate(Kind.UNANSWERED, f"HTTP {code}")
    if verdict is StowVerdict.DUPLICATE:
        return Fate(Kind.DONE, "already present", "already_present")
    if verdict is StowVerdict.BUSY or code == _REQUEST_TIMEOUT:
        return Fate(Kind.RETRY, why)
    if verdict is StowVerdict.NOT_LISTED:
        return Fate(Kind.RETRY, f"HTTP {code} but the instance was not listed as stored")
    if verdict is StowVerdict.NOT_VISIBLE:
        return Fate(Kind.DEAD, f"{why}: stored where queries do not find it")
    return Fate(Kind.DEAD, why)


def retry_delay(attempts: int, config: StoreConfig, rng: random.Random) -> float:
    """Seconds before the next try after `attempts` failed ones: full-jitter exponential
    backoff from retry_initial, capped at retry_max."""
    ceiling = min(config.retry_max, config.retry_initial * 2 ** max(0, attempts - 1))
    return rng.uniform(ceiling / 2, ceiling)


class Uploader:
    """The upload workers of one spool; ``run()`` until cancelled."""

    def __init__(
        self,
        index: Index,
        files: Path,
        config: StoreConfig,
        clients: Mapping[str, DicomwebClient],
        metrics: Metrics,
        on_done: Callable[[int], None],
    ) -> None:
        self.index = index
        self.files = files
        self.config = config
        self.clients = clients
        self.metrics = metrics
        self.on_done = on_done  # bytes freed: the spool's budget
        self.rng = random.Random()
        self.wake = asyncio.Event()

    async def run(self) -> None:
        """Take a batch whenever one of the upload_workers slots is free, and upload it in
        a task of its own: one claim at a time, and while every slot is busy the backlog
        grows into fuller batches."""
        slots = asyncio.Semaphore(self.config.upload_workers)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                rows = await asyncio.to_thread(
                    self.index.claim, self.config.batch_max_instances, self.config.batch_max_bytes
                )
                if not rows:
                    slots.release()
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), IDLE_POLL_S)
                        await asyncio.sleep(LINGER_S)
                    except TimeoutError:
                        pass
                    continue
                task = asyncio.create_task(self._batch(rows, slots), name="spool-upload")
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in list(running):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _batch(self, rows: Sequence[Row], slots: asyncio.Semaphore) -> None:
        try:
            await self._upload(rows)
        except asyncio.CancelledError:
            # Shutdown: what was in flight goes back to queued, as it was.
            await asyncio.shield(asyncio.to_thread(self.index.requeue, [r.id for r in rows]))
            raise
        except Exception:
            LOGGER.exception("spool upload of %d instance(s) failed", len(rows))
            await asyncio.to_thread(self.index.requeue, [r.id for r in rows])
            await asyncio.sleep(self.config.retry_initial)
        finally:
            slots.release()

    async def _upload(self, rows: Sequence[Row]) -> None:
        client = self.clients.get(rows[0].backend)
        if client is None:
            for row in rows:
                await self._settle(row, Fate(Kind.DEAD, f"no backend {row.backend!r} configured"))
            return
        if len(rows) > 1 and any(not (self.files / r.file).exists() for r in rows):
            # An admin purge or a disk accident: send what is there, one by one.
            for row in rows:
                await self._upload([row])
            return
        if not (self.files / rows[0].file).exists():
            await self._settle(rows[0], Fate(Kind.DEAD, "file missing"))
            return
        started = time.monotonic()
        size = sum(r.bytes for r in rows)
        self.metrics.spool_batch(len(rows))
        try:
            results = await client.store_instances(
                [(self.files / r.file, r.sop_instance_uid) for r in rows]
            )
            fates = [fate(result, len(rows) == 1) for result in results]
        except DicomwebError as exc:
            fates = [Fate(Kind.RETRY, str(exc))] * len(rows)
        tally: dict[str, int] = {}
        alone: list[Row] = []
        done: list[Row] = []
        retries: list[tuple[int, str, float]] = []
        for row, row_fate in zip(rows, fates, strict=True):
            if row_fate.kind is Kind.UNANSWERED:
                alone.append(row)
                continue
            tally[row_fate.kind.value] = tally.get(row_fate.kind.value, 0) + 1
            if row_fate.kind is Kind.DONE:
                done.append(row)
                self.metrics.spool_uploads(row_fate.outcome or "stored")
            else:
                retry = await self._settle(row, row_fate)
                if retry is not None:
                    retries.append(retry)
        if done:
            await asyncio.to_thread(self._done, done)
        if retries:  # one commit for the whole batch, not one per instance
            await asyncio.to_thread(self.index.mark_failed, retries)
            self.metrics.spool_uploads("retry", len(retries))
        LOGGER.info(
            "spool upload to %s: %d instance(s), %.1f MB, %.2f s: %s",
            rows[0].backend,
            len(rows),
            size / 1e6,
            time.monotonic() - started,
            ", ".join(f"{n} {k}" for k, n in sorted(tally.items()))
            + (f"{', ' if tally else ''}{len(alone)} sent again one by one" if alone else ""),
        )
        for row in alone:
            # Refused as a whole: each alone, so that only the bad ones are dead.
            await self._upload([row])

    async def _settle(self, row: Row, row_fate: Fate) -> tuple[int, str, float] | None:
        """A failed attempt: dead (recorded here), or the (id, error, next attempt) of
        its retry for the caller to record."""
        now = time.time()
        expired = now - row.retry_since >= self.config.retry_for
        if row_fate.kind is Kind.DEAD or expired:
            reason = row_fate.reason
            if row_fate.kind is not Kind.DEAD:
                reason = f"retried for {self.config.retry_for:g} s: {reason}"
            await asyncio.to_thread(self.index.mark_dead, row.id, reason)
            self.metrics.spool_uploads("dead")
            LOGGER.warning(
                "spool: instance from %s dead-lettered after %d attempt(s): %s "
                "(`dimse-bridge spool retry` sends it again)",
                row.calling_ae,
                row.attempts + 1,
                reason,
            )
            LOGGER.debug("spool: dead-lettered %s", row.sop_instance_uid)
            return None
        delay = retry_delay(row.attempts + 1, self.config, self.rng)
        return row.id, row_fate.reason, now + delay

    def _done(self, rows: Sequence[Row]) -> None:
        # The rows first (one commit): a crash between the two leaves files whose rows are
        # done, which the next start removes; never a row waiting for a deleted file.
        self.index.mark_done([row.id for row in rows])
        for row in rows:
            try:
                (self.files / row.file).unlink()
            except FileNotFoundError:
                pass
        self.on_done(sum(row.bytes for row in rows))
