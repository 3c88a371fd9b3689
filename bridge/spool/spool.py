"""The store-and-forward spool: durable before acknowledging, recovered at start, drained in
the background.

Layout of ``spool_dir``::

    index.sqlite3 (+ -wal, -shm)   the index (bridge/spool/index.py)
    files/<uuid>.dcm               one Part 10 file per instance not yet done (and dead ones)
    incoming/                      where pynetdicom writes C-STOREs as they arrive

A C-STORE is acknowledged only after: its file in files/ (a hard link to what pynetdicom
received, so no copy; a streamed copy when that is impossible), that file fsync'd, files/
fsync'd, and its row committed (``synchronous=FULL``). Any failure answers 0xA700 and
removes what was made. A crash leaves, at worst, a file without a row (never
acknowledged: removed at start, with a WARNING) or a row in ``uploading`` (queued again):
an instance may be uploaded twice, which the server answers "already present", and is
never lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bridge.config import StoreConfig
from bridge.dicomweb.client import DicomwebClient
from bridge.errors import ConfigError
from bridge.loop_thread import LoopThread
from bridge.ops.metrics import Metrics
from bridge.spool.index import DEAD, DONE, INDEX_NAME, PENDING, WITH_FILE, Index
from bridge.spool.uploader import Uploader

LOGGER = logging.getLogger(__name__)

FILES = "files"
INCOMING = "incoming"
# File systems whose content does not survive a reboot: nothing on them is durable.
VOLATILE_FS = frozenset({"tmpfs", "ramfs"})
_HOUSEKEEPING_S = 1.0
_FORGET_EVERY_S = 3600.0
_SETTLE_POLL_S = 0.25


NewRow = tuple[str, str, str, str, int]  # uid, file, calling AE, backend, bytes


class GroupCommit:
    """The last two steps of every C-STORE's write, shared: one fsync of files/ and one
    index commit for all the instances waiting at that moment (one association never
    waits for more than its own, several share the disk's flushes). ``submit`` returns
    once its row is committed, after the directory fsync; it raises if either failed,
    and then no row of that group exists."""

    def __init__(self, files: Path, on_commit: Callable[[int, list[NewRow]], None]) -> None:
        self.files = files
        self.on_commit = on_commit  # (bytes, rows): commits the rows to the index
        self._cond = threading.Condition()
        self._pending: list[tuple[NewRow, concurrent.futures.Future[None]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="spool-commit", daemon=True)
        self._thread.start()

    def submit(self, row: NewRow) -> None:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the spool is closed")
            self._pending.append((row, future))
            self._cond.notify()
        future.result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                group, self._pending = self._pending, []
                if not group and self._closed:
                    return
            try:
                _fsync_path(self.files, directory=True)
                self.on_commit(sum(row[4] for row, _ in group), [row for row, _ in group])
            except BaseException as exc:
                for _, future in group:
                    future.set_exception(exc)
            else:
                for _, future in group:
                    future.set_result(None)


@dataclass(frozen=True)
class Refusal:
    """Why a C-STORE was not kept (answered 0xA700 with this as ErrorComment)."""

    comment: str


def mount_type(path: Path) -> str:
    """The file system type of the mount holding `path` (Linux /proc/self/mounts), or ""."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    real = str(path.resolve())
    best, kind = "", ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def check_spool_dir(config: StoreConfig, source: str) -> Path:
    """Create spool_dir (and files/, incoming/) if needed and check it: writable, one file
    system, not tmpfs unless allow_tmpfs. ConfigError otherwise (``run`` exits 2)."""
    root = Path(config.spool_dir)

    def refuse(why: str) -> ConfigError:
        return ConfigError(source, "store.spool_dir", f"{why} ({root})")

    try:
        for sub in (root, root / FILES, root / INCOMING):
            sub.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{uuid.uuid4().hex}"
        with probe.open("wb") as handle:
            handle.write(b"x")
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        raise refuse(f"expected a writable directory: {exc.strerror or exc}") from None
    devices = {(root / sub).stat().st_dev for sub in ("", FILES, INCOMING)}
    if len(devices) != 1:
        raise refuse(f"expected one file system, but {FILES}/ or {INCOMING}/ is a mount point")
    kind = mount_type(root)
    if kind in VOLATILE_FS and not config.allow_tmpfs:
        raise refuse(
            f"expected a directory on disk, not {kind} (lost at reboot); "
            "set store.allow_tmpfs = true to accept that"
        )
    return root


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        if directory:
            os.fsync(fd)
        else:
            # The data and the size needed to read it back; the name is the directory's
            # fsync, next.
            os.fdatasync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool of one bridge: ``accept`` (C-STORE threads), ``settle`` (storage
    commitment), ``start``/``stop`` (the uploader on the bridge's event loop)."""

    def __init__(self, config: StoreConfig, source: str, metrics: Metrics | None = None) -> None:
        self.config = config
        self.root = check_spool_dir(config, source)
        self.files = self.root / FILES
        self.incoming = self.root / INCOMING
        self.metrics = metrics or Metrics(process=False)
        self.index = Index(self.root / INDEX_NAME)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reserved = 0
        self._recover()
        self._bytes = self.index.spooled_bytes()
        self._commits = GroupCommit(self.files, self._commit)
        self._loop: LoopThread | None = None
        self._uploader: Uploader | None = None
        self._task: concurrent.futures.Future[None] | None = None
        self._run_task: asyncio.Task[None] | None = None

    # --- start-up recovery ----------------------------------------------------------------

    def _recover(self) -> None:
        requeued = self.index.requeue_all_uploading()
        if requeued:
            LOGGER.info(
                "spool: %d instance(s) left uploading by the last run queued again", requeued
            )
        for leftover in self.incoming.iterdir():
            if leftover.is_dir():
                # A retrieve's temporary directory (large WADO-RS answers: tempfile's
                # directory is incoming/ in spool mode) left by a crash.
                shutil.rmtree(leftover, ignore_errors=True)
                continue
            # pynetdicom's receive file of a C-STORE that was never acknowledged.
            LOGGER.warning("spool: removing %s, received but never acknowledged", leftover.name)
            leftover.unlink(missing_ok=True)
        owners = self.index.files_by_state()
        for path in self.files.iterdir():
            state = owners.get(path.name)
            if state in WITH_FILE:
                continue
            if state is None:
                LOGGER.warning(
                    "spool: removing %s: written but never acknowledged (no index row)", path.name
                )
            path.unlink(missing_ok=True)
        for row in self.index.rows_with_file():
            if row.state != DEAD and not (self.files / row.file).exists():
                LOGGER.warning("spool: an instance from %s has no file: dead", row.calling_ae)
                self.index.mark_dead(row.id, "file missing")
        self._forget_done()

    def _forget_done(self) -> None:
        self.index.forget_done_before(time.time() - self.config.keep_done_days * 86400)

    # --- the C-STORE path ---------------------------------------------------------------

    def accept(
        self, received: Path, sop_instance_uid: str, calling_ae: str, backend: str
    ) -> Refusal | None:
        """Keep the received Part 10 file durably and record it; None when kept (the
        C-STORE may be acknowledged), else why not (nothing is left of it)."""
        size = received.stat().st_size
        config = self.config
        with self._lock:
            if self._stopping.is_set():
                return Refusal("bridge shutting down")
            if self._bytes + self._reserved + size > config.max_spool_bytes:
                return Refusal(f"spool full: {self._bytes} bytes held, max_spool_bytes reached")
            self._reserved += size
        dest = self.files / f"{uuid.uuid4().hex}.dcm"
        try:
            disk = os.statvfs(self.root)
            free = disk.f_bavail * disk.f_frsize
            if free < config.min_free_bytes:
                return Refusal(f"spool disk has {free // 2**20} MiB free, below min_free_bytes")
            try:
                os.link(received, dest)
            except OSError:
                shutil.copyfile(received, dest)  # another file system: a streamed copy
            _fsync_path(dest)
            # files/ fsync'd, then the row committed: by the group commit, shared with the
            # C-STOREs of other associations that reach this point at the same time.
            self._commits.submit((sop_instance_uid, dest.name, calling_ae, backend, size))
        except Exception as exc:
            dest.unlink(missing_ok=True)
            LOGGER.error("spool: cannot keep a C-STORE from %s: %s", calling_ae, exc)
            return Refusal(f"spool write failed: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._reserved -= size
        self._wake()
        return None

    def _commit(self, size: int, rows: list[NewRow]) -> None:
        # Under the lock: the budget and the index change together (see _publish).
        with self._lock:
            self.index.add_many(rows)
            self._bytes += size

    def _freed(self, size: int) -> None:
        # Not subtracted here: the next count from the index (within a second) frees the
        # budget, so that a count racing with this one never lets the spool overfill.
        del size

    def _wake(self) -> None:
        loop, uploader = self._loop, self._uploader
        if loop is not None and uploader is not None:
            try:
                loop.loop.call_soon_threadsafe(uploader.wake.set)
            except RuntimeError:  # the loop is closing
                pass

    # --- storage commitment -------------------------------------------------------------

    def settle(
        self,
        uids: Iterable[str],
        timeout: float | None = None,
        stopping: Callable[[], bool] | None = None,
    ) -> tuple[set[str], set[str]]:
        """Wait until none of `uids` the spool holds is still to be uploaded, at most
        `timeout` (commitment_timeout) seconds. Returns (done, failed): the UIDs the server
        has stored through the spool, and those dead or still waiting at the deadline.
        UIDs the spool never had are in neither (the caller asks the server)."""
        wanted = list(dict.fromkeys(uids))
        deadline = time.monotonic() + (
            self.config.commitment_timeout if timeout is None else timeout
        )
        while True:
            states = self.index.latest_states(wanted)
            pending = {uid for uid, state in states.items() if state in PENDING}
            if (
                not pending
                or time.monotonic() >= deadline
                or self._stopping.is_set()
                or (stopping is not None and stopping())
            ):
                break
            time.sleep(_SETTLE_POLL_S)
        done = {uid for uid, state in states.items() if state == DONE}
        failed = {uid for uid, state in states.items() if state == DEAD} | pending
        return done, failed

    # --- status -------------------------------------------------------------------------

    def backlog(self) -> str:
        """One line for /readyz."""
        summary = self.index.summary()
        counts = summary.counts
        waiting = counts["queued"] + counts["uploading"] + counts["failed"]
        oldest = (
            f", oldest {time.time() - summary.oldest_pending_at:.0f} s"
            if summary.oldest_pending_at is not None
            else ""
        )
        return (
            f"spool: {waiting} to upload ({counts['failed']} waiting to retry{oldest}), "
            f"{counts['dead']} dead, {summary.bytes} bytes"
        )

    def _publish(self) -> None:
        summary = self.index.summary()
        oldest = summary.oldest_pending_at
        self.metrics.spool_state(
            summary.counts, summary.bytes, 0.0 if oldest is None else time.time() - oldest
        )
        with self._lock:
            # Picks up what another process changed (an admin purge).
            self._bytes = self.index.spooled_bytes()

    # --- the uploader -------------------------------------------------------------------

    def start(self, loop: LoopThread, clients: Mapping[str, DicomwebClient]) -> None:
        self._loop = loop
        self._uploader = Uploader(
            self.index, self.files, self.config, clients, self.metrics, self._freed
        )
        self._task = loop.submit(self._run(self._uploader))
        LOGGER.info(
            "spool mode: C-STOREs kept in %s and uploaded by %d worker(s) in batches of up "
            "to %d; %s",
            self.root,
            self.config.upload_workers,
            self.config.batch_max_instances,
            self.backlog(),
        )

    async def _run(self, uploader: Uploader) -> None:
        self._run_task = asyncio.current_task()
        upload = asyncio.create_task(uploader.run())
        forgotten = time.monotonic()
        try:
            while not upload.done():
                await asyncio.to_thread(self._publish)
                if time.monotonic() - forgotten > _FORGET_EVERY_S:
                    forgotten = time.monotonic()
                    await asyncio.to_thread(self._forget_done)
                await asyncio.wait({upload}, timeout=_HOUSEKEEPING_S)
            upload.result()
        finally:
            upload.cancel()
            await asyncio.gather(upload, return_exceptions=True)

    async def _cancel(self) -> None:
        task = self._run_task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def stop(self) -> None:
        """Interrupt the uploads in flight (their rows go back to queued) and close."""
        self._stopping.set()
        if self._task is not None and self._loop is not None:
            try:
                self._loop.call(self._cancel(), timeout=15)
            except Exception:  # shutting down: the rows are requeued below anyway
                LOGGER.debug("stopping the spool uploader failed", exc_info=True)
        self._commits.close()
        # Whatever an interrupted worker could not put back.
        requeued = self.index.requeue_all_uploading()
        if requeued:
            LOGGER.info("spool: %d upload(s) interrupted, queued again", requeued)
        self.index.close()
