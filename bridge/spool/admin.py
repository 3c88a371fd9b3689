"""``dimse-bridge spool status|list|retry|purge``: the operator's view of the spool.

They open the index with a connection of their own (never creating one), so they work
the same whether ``run`` is running or not: the running bridge's uploader sees a
``retry`` at its next look at the index (within a second), and never touches the dead
rows a ``purge`` deletes. Exit statuses: 0 done (also when there was nothing to do), 1 a
named UID is not in the spool, 2 invalid config, 3 the index cannot be opened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from bridge.config import Config
from bridge.spool.index import DONE, INDEX_NAME, STATES, Index, Row, SpoolIndexError
from bridge.spool.spool import FILES

EXIT_OK = 0
EXIT_UNKNOWN_UID = 1
EXIT_CONFIG = 2
EXIT_INDEX = 3
NOT_VISIBLE = "note: spooled instances are not visible to C-FIND, C-GET or C-MOVE until uploaded"


class AdminError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def open_index(config: Config) -> Index:
    """The index of the configured spool; AdminError (2 or 3) when there is none."""
    if not config.store.spool_dir:
        raise AdminError(EXIT_CONFIG, f"{config.source}: store.spool_dir is not set: no spool")
    path = Path(config.store.spool_dir) / INDEX_NAME
    if not path.is_file():
        raise AdminError(EXIT_INDEX, f"cannot open the spool index {path}: no such file")
    try:
        return Index(path, create=False)
    except SpoolIndexError as exc:
        raise AdminError(EXIT_INDEX, str(exc)) from None


def row_json(row: Row) -> dict[str, Any]:
    return {
        "sop_instance_uid": row.sop_instance_uid,
        "state": row.state,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "received_at": _iso(row.received_at),
        "calling_ae": row.calling_ae,
        "backend": row.backend,
        "bytes": row.bytes,
    }


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def status(config: Config, *, as_json: bool, out: TextIO) -> int:
    index = open_index(config)
    try:
        summary = index.summary()
    finally:
        index.close()
    document = summary.document(config.store.mode)
    oldest = document["oldest_queued_seconds"]
    if as_json:
        out.write(json.dumps(document) + "\n")
        return EXIT_OK
    counts = summary.counts
    out.write(f"spool {config.store.spool_dir} (store.mode = {config.store.mode})\n")
    out.write(", ".join(f"{state} {counts[state]}" for state in STATES) + "\n")
    files = sum(counts[s] for s in STATES if s != DONE)
    out.write(f"{summary.bytes} bytes in {files} file(s)\n")
    if oldest is None:
        out.write("nothing waiting to be uploaded\n")
    else:
        out.write(f"oldest instance waiting to be uploaded: {oldest:.0f} s\n")
    if counts["dead"]:
        out.write(
            f"{counts['dead']} dead: see `dimse-bridge spool list --state dead`, "
            "then `spool retry` or `spool purge --dead`\n"
        )
    out.write(NOT_VISIBLE + "\n")
    return EXIT_OK


def listing(
    config: Config, *, state: str | None, limit: int | None, as_json: bool, out: TextIO
) -> int:
    index = open_index(config)
    try:
        states = [state] if state else [s for s in STATES if s != DONE]
        rows = index.listing(states, limit)
    finally:
        index.close()
    if as_json:
        out.write(json.dumps([row_json(row) for row in rows]) + "\n")
        return EXIT_OK
    if not rows:
        out.write(f"no instance in state {' or '.join(states)}\n")
        return EXIT_OK
    out.write(
        f"{'state':<10} {'attempts':>8} {'bytes':>10}  {'received (UTC)':<20} "
        f"{'calling AE':<16} {'backend':<10} SOP Instance UID / last error\n"
    )
    for row in rows:
        out.write(
            f"{row.state:<10} {row.attempts:>8} {row.bytes:>10}  {_iso(row.received_at):<20} "
            f"{row.calling_ae:<16} {row.backend:<10} {row.sop_instance_uid}\n"
        )
        if row.last_error:
            out.write(f"{'':>10} last error: {row.last_error}\n")
    return EXIT_OK


def retry(config: Config, *, uids: Sequence[str] | None, out: TextIO, err: TextIO) -> int:
    index = open_index(config)
    try:
        count, missing = index.retry(uids)
    finally:
        index.close()
    out.write(f"{count} instance(s) queued for upload now\n")
    for uid in missing:
        err.write(f"dimse-bridge: {uid}: not in the spool\n")
    return EXIT_UNKNOWN_UID if missing else EXIT_OK


def purge(config: Config, *, older_than_days: float | None, out: TextIO) -> int:
    index = open_index(config)
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    try:
        rows = index.purge_dead(cutoff)
    finally:
        index.close()
    files = Path(config.store.spool_dir) / FILES
    freed = 0
    for row in rows:
        # After the rows' commit: a crash in between leaves files without rows, which the
        # bridge's next start removes.
        (files / row.file).unlink(missing_ok=True)
        freed += row.bytes
    out.write(f"{len(rows)} dead instance(s) purged, {freed} bytes freed\n")
    return EXIT_OK
