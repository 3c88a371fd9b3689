"""The spool's crash-safe index: one SQLite database (WAL, ``synchronous=FULL``) in spool_dir.

Each spooled instance is one row; its ``state`` is one of::

    queued     waiting for an upload worker
    uploading  in a STOW-RS request now (back to queued at start-up and at shutdown)
    failed     an attempt failed; retried at next_attempt_at
    dead       refused for good, or retried for longer than retry_for; only
               ``spool retry`` brings it back (its file is kept)
    done       the server listed it as stored; the file is gone, the row is kept
               keep_done_days for storage commitment and audit

Several processes share the file safely: the running bridge, and the ``dimse-bridge
spool`` admin commands, each with a connection of its own. Every transaction is short
(one statement or a few), and ``busy_timeout`` makes a writer wait for another's commit
instead of failing. Inside one process the connection is shared by threads under a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX_NAME = "index.sqlite3"
QUEUED = "queued"
UPLOADING = "uploading"
FAILED = "failed"
DEAD = "dead"
DONE = "done"
STATES = (QUEUED, UPLOADING, FAILED, DEAD, DONE)
# States whose row owns a file in files/.
WITH_FILE = (QUEUED, UPLOADING, FAILED, DEAD)
# Not yet uploaded, still to be tried: what a storage commitment waits for.
PENDING = (QUEUED, UPLOADING, FAILED)
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL,
    file TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    retry_since REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    calling_ae TEXT NOT NULL,
    backend TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS instances_state ON instances (state, next_attempt_at, id);
CREATE INDEX IF NOT EXISTS instances_uid ON instances (sop_instance_uid, id);
"""
_COLUMNS = (
    "id, sop_instance_uid, file, state, attempts, last_error, received_at, retry_since, "
    "calling_ae, backend, bytes"
)


class SpoolIndexError(Exception):
    """The index cannot be opened or read (``spool`` commands exit 3)."""


@dataclass(frozen=True)
class Row:
    id: int
    sop_instance_uid: str
    file: str
    state: str
    attempts: int
    last_error: str
    received_at: float
    retry_since: float
    calling_ae: str
    backend: str
    bytes: int


@dataclass(frozen=True)
class Summary:
    counts: dict[str, int]
    bytes: int
    oldest_pending_at: float | None

    def document(self, mode: str) -> dict[str, Any]:
        """The JSON of ``dimse-bridge spool status --json`` (and /status's "spool")."""
        oldest = None
        if self.oldest_pending_at is not None:
            oldest = round(max(0.0, time.time() - self.oldest_pending_at), 3)
        return {
            "mode": mode,
            "counts": {state: self.counts[state] for state in STATES},
            "bytes": self.bytes,
            "oldest_queued_seconds": oldest,
        }


class Index:
    """One connection to the index; thread-safe within its process."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            if create:
                self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            else:
                # The admin commands never create a spool where there is none.
                self._db = sqlite3.connect(
                    f"file:{path}?mode=rw", uri=True, check_same_thread=False, isolation_level=None
                )
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # FULL: a commit is on disk (the WAL fsync'd) before it returns; the C-STORE
            # is acknowledged only after its row's commit. (Per connection: the admin
            # commands' writes are as durable.)
            self._db.execute("PRAGMA synchronous = FULL")
            if create:
                # Persistent in the file: set by the bridge, never changed by the admin
                # commands (a journal-mode change needs the database to itself).
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.executescript(_SCHEMA)
            else:
                self._db.execute("SELECT 1 FROM instances LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise SpoolIndexError(f"cannot open the spool index {path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        with self._lock:
            return [Row(*r) for r in self._db.execute(sql, args).fetchall()]

    # --- the write path -----------------------------------------------------------------

    def add(self, uid: str, file: str, calling_ae: str, backend: str, size: int) -> None:
        """Record a received instance as queued (committed and on disk on return)."""
        self.add_many([(uid, file, calling_ae, backend, size)])

    def add_many(self, rows: Sequence[tuple[str, str, str, str, int]]) -> None:
        """Record received instances (uid, file, calling AE, backend, bytes) as queued, in
        one transaction: all of them are committed and on disk on return, or none."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO instances (sop_instance_uid, file, state, received_at, "
                    "retry_since, next_attempt_at, calling_ae, backend, bytes) "
                    "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                    [(u, f, now, now, now, c, b, s) for u, f, c, b, s in rows],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # --- the uploader -------------------------------------------------------------------

    def claim(self, max_instances: int, max_bytes: int, now: float | None = None) -> list[Row]:
        """The next batch, marked uploading: the oldest due row and the due rows after it
        of the same backend, in arrival order, within the batch limits (at least one)."""
        now = time.time() if now is None else now
        due = "state IN ('queued', 'failed') AND next_attempt_at <= ?"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                first = self._db.execute(
                    f"SELECT backend FROM instances WHERE {due} ORDER BY id LIMIT 1", (now,)
                ).fetchone()
                if first is None:
                    self._db.execute("COMMIT")
                    return []
                candidates = [
                    Row(*r)
                    for r in self._db.execute(
                        f"SELECT {_COLUMNS} FROM instances WHERE {due} AND backend = ? "
                        "ORDER BY id LIMIT ?",
                        (now, first[0], max_instances),
                    )
                ]
                batch: list[Row] = []
                total = 0
                for row in candidates:
                    if batch and total + row.bytes > max_bytes:
                        break
                    batch.append(row)
                    total += row.bytes
                self._db.executemany(
                    "UPDATE instances SET state = 'uploading' WHERE id = ?",
                    [(row.id,) for row in batch],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return batch

    def next_due(self) -> float | None:
        """When the earliest waiting row is due (None when nothing waits)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM instances WHERE state IN ('queued', 'failed')"
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def mark_done(self, ids: Iterable[int]) -> None:
        now = time.time()
        with self._lock:
            self._db.executemany(
                "UPDATE instances SET state = 'done', done_at = ?, last_error = '' "
                "WHERE id = ? AND state = 'uploading'",
                [(now, i) for i in ids],
            )

    def mark_failed(self, retries: Sequence[tuple[int, str, float]]) -> None:
        """(row id, error, next attempt time) of each failed attempt, in one commit."""
        with self._lock:
            self._db.executemany(
                "UPDATE instances SET state = 'failed', attempts = attempts + 1, "
                "last_error = ?, next_attempt_at = ? WHERE id = ? AND state = 'uploading'",
                [(error, when, row_id) for row_id, error, when in retries],
            )

    def mark_dead(self, row_id: int, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE instances SET state = 'dead', attempts = attempts + 1, "
                "last_error = ? WHERE id = ?",
                (error, row_id),
            )

    def requeue(self, ids: Iterable[int]) -> None:
        """Rows taken for an upload that was interrupted go back to queued, untouched."""
        with self._lock:
            self._db.executemany(
                "UPDATE instances SET state = 'queued' WHERE id = ? AND state = 'uploading'",
                [(i,) for i in ids],
            )

    # --- start-up -----------------------------------------------------------------------

    def requeue_all_uploading(self) -> int:
        with self._lock:
            return self._db.execute(
                "UPDATE instances SET state = 'queued' WHERE state = 'uploading'"
            ).rowcount

    def files_by_state(self) -> dict[str, str]:
        """file name → state, for every row."""
        with self._lock:
            return {
                str(f): str(s) for f, s in self._db.execute("SELECT file, state FROM instances")
            }

    def rows_with_file(self) -> list[Row]:
        return self._rows(
            f"SELECT {_COLUMNS} FROM instances WHERE state IN "
            "('queued', 'uploading', 'failed', 'dead') ORDER BY id"
        )

    def forget_done_before(self, when: float) -> int:
        with self._lock:
            return self._db.execute(
                "DELETE FROM instances WHERE state = 'done' AND done_at < ?", (when,)
            ).rowcount

    # --- status, commitment and the admin commands ----------------------------------------

    def summary(self) -> Summary:
        with self._lock:
            counts = dict.fromkeys(STATES, 0)
            for state, n in self._db.execute(
                "SELECT state, COUNT(*) FROM instances GROUP BY state"
            ):
                counts[str(state)] = int(n)
            size, oldest = self._db.execute(
                "SELECT COALESCE(SUM(CASE WHEN state != 'done' THEN bytes END), 0), "
                "MIN(CASE WHEN state IN ('queued', 'uploading', 'failed') THEN received_at END) "
                "FROM instances"
            ).fetchone()
        return Summary(counts, int(size), None if oldest is None else float(oldest))

    def spooled_bytes(self) -> int:
        with self._lock:
            (size,) = self._db.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM instances WHERE state != 'done'"
            ).fetchone()
        return int(size)

    def latest_states(self, uids: Iterable[str]) -> dict[str, str]:
        """The state of the latest row of each UID the spool has (others are absent)."""
        wanted = list(dict.fromkeys(uids))
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for uid, state in self._db.execute(
                    "SELECT sop_instance_uid, state FROM instances WHERE id IN ("
                    "SELECT MAX(id) FROM instances WHERE sop_instance_uid IN "
                    f"({marks}) GROUP BY sop_instance_uid)",
                    chunk,
                ):
                    found[str(uid)] = str(state)
        return found

    def listing(self, states: Sequence[str], limit: int | None) -> list[Row]:
        marks = ",".join("?" * len(states))
        sql = f"SELECT {_COLUMNS} FROM instances WHERE state IN ({marks}) ORDER BY id"
        args: list[object] = list(states)
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return self._rows(sql, args)

    def retry(self, uids: Sequence[str] | None) -> tuple[int, list[str]]:
        """Dead (and waiting failed) rows back to queued, due now, with a fresh retry_for.

        `uids` None: every dead and failed row. Returns how many rows were requeued, and the UIDs
        named that the spool does not hold at all.
        """
        now = time.time()
        requeue = (
            "UPDATE instances SET state = 'queued', next_attempt_at = ?, retry_since = ?, "
            "attempts = 0 WHERE "
        )
        with self._lock:
            if uids is None:
                n = self._db.execute(requeue + "state IN ('dead', 'failed')", (now, now)).rowcount
                return n, []
            missing: list[str] = []
            n = 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for uid in uids:
                    known = self._db.execute(
                        "SELECT 1 FROM instances WHERE sop_instance_uid = ? LIMIT 1", (uid,)
                    ).fetchone()
                    if known is None:
                        missing.append(uid)
                        continue
                    n += self._db.execute(
                        requeue + "sop_instance_uid = ? AND state IN ('dead', 'failed')",
                        (now, now, uid),
                    ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return n, missing

    def purge_dead(self, older_than: float | None) -> list[Row]:
        """Delete dead rows (received before `older_than`, when given); their rows."""
        sql = f"SELECT {_COLUMNS} FROM instances WHERE state = 'dead'"
        args: list[object] = []
        if older_than is not None:
            sql += " AND received_at < ?"
            args.append(older_than)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = [Row(*r) for r in self._db.execute(sql, args)]
                self._db.executemany(
                    "DELETE FROM instances WHERE id = ? AND state = 'dead'",
                    [(r.id,) for r in rows],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return rows
