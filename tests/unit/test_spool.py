"""Unit tests of the spool: [store] config, the fate table, backoff, the index and its
recovery at start, the spool_dir checks, and the batch STOW-RS body and answer."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from bridge.config import StoreConfig, parse_config
from bridge.dicomweb.client import DicomwebClient
from bridge.dicomweb.multipart import MultipartDecoder, boundary_from_content_type
from bridge.dicomweb.outcomes import stow_verdict
from bridge.errors import ConfigError
from bridge.models import StowResult
from bridge.spool.index import INDEX_NAME, Index
from bridge.spool.spool import GroupCommit, Spool, check_spool_dir, mount_type
from bridge.spool.uploader import Kind, fate, retry_delay

# --------------------------------------------------------------------------- config


def test_store_defaults_are_the_issue_contract() -> None:
    store = parse_config({}).store
    assert store == StoreConfig()
    assert (store.mode, store.upload_workers, store.batch_max_instances) == ("direct", 4, 20)
    assert store.batch_max_bytes == 64 * 2**20
    assert (store.max_spool_bytes, store.min_free_bytes) == (10 * 2**30, 2**30)
    assert (store.retry_initial, store.retry_max, store.retry_for) == (5.0, 600.0, 7 * 86400.0)
    assert (store.keep_done_days, store.commitment_timeout) == (7.0, 3600.0)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"mode": "spool"}, "store.spool_dir"),
        ({"mode": "later"}, "store.mode"),
        ({"spool_dir": "relative/dir"}, "store.spool_dir"),
        ({"upload_workers": 0}, "store.upload_workers"),
        ({"retry_initial": 10, "retry_max": 5}, "store.retry_max"),
        ({"spool_dirr": "/x"}, "store.spool_dirr"),
    ],
)
def test_bad_store_tables_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"store": table})
    assert key in str(caught.value)


def test_spool_dir_on_tmpfs_is_refused_unless_allowed(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if mount_type(shm) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm here")
    target = shm / f"dimse-bridge-test-{tmp_path.name}"
    try:
        with pytest.raises(ConfigError, match="not tmpfs"):
            check_spool_dir(StoreConfig(mode="spool", spool_dir=str(target)), "test")
        check_spool_dir(StoreConfig(mode="spool", spool_dir=str(target), allow_tmpfs=True), "test")
    finally:
        for sub in sorted(target.rglob("*"), reverse=True):
            sub.rmdir() if sub.is_dir() else sub.unlink()
        if target.exists():
            target.rmdir()


def test_unwritable_spool_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="writable"):
        check_spool_dir(StoreConfig(mode="spool", spool_dir=str(blocker / "spool")), "test")


# --------------------------------------------------------------------------- fates


def _result(
    code: int,
    *,
    stored: bool = False,
    failure_reason: int | None = None,
    warning_reason: int | None = None,
    detail: str = "",
) -> StowResult:
    # The verdict comes from the one STOW-RS table, as parse_stow_response makes it.
    verdict = stow_verdict(
        code,
        listed=stored,
        failed=failure_reason is not None,
        failure_reason=failure_reason,
        warning_reason=warning_reason,
        detail=detail,
    )
    return StowResult(
        status_code=code,
        stored=stored,
        failure_reason=failure_reason,
        warning_reason=warning_reason,
        http_success=200 <= code < 300,
        conflict=code == 409,
        busy=code == 429 or code >= 500,
        verdict=verdict,
        detail=detail,
    )


@pytest.mark.parametrize(
    ("result", "alone", "kind"),
    [
        (_result(200, stored=True), False, Kind.DONE),
        (_result(202, stored=True, warning_reason=0xB000), False, Kind.DONE),
        (_result(409, failure_reason=0x0111), False, Kind.DONE),  # already present
        (_result(409), True, Kind.DONE),
        (_result(409, failure_reason=45070), False, Kind.DONE),  # Azure: already stored
        (_result(409, failure_reason=0x0110, detail="An instance already exists"), True, Kind.DONE),
        (_result(409, failure_reason=45071), False, Kind.RETRY),  # Azure: being created
        (_result(409, failure_reason=0x0110, detail="processing failure"), True, Kind.DEAD),
        (_result(409), False, Kind.UNANSWERED),
        (_result(409, failure_reason=0xA900), False, Kind.DEAD),
        (_result(409, failure_reason=0x0122), False, Kind.DEAD),
        (_result(409, failure_reason=0xA700), False, Kind.RETRY),
        (_result(500), False, Kind.RETRY),
        (_result(503), True, Kind.RETRY),
        (_result(429), True, Kind.RETRY),
        (_result(408), True, Kind.RETRY),
        (_result(400), False, Kind.UNANSWERED),  # refused as a whole: each alone first
        (_result(400), True, Kind.DEAD),
        (_result(413), True, Kind.DEAD),
        (_result(200), True, Kind.RETRY),  # 2xx not listing it
    ],
)
def test_fate_table(result: StowResult, alone: bool, kind: Kind) -> None:
    assert fate(result, alone).kind is kind


def test_retry_delay_is_jittered_exponential_within_bounds() -> None:
    config = StoreConfig(retry_initial=5.0, retry_max=600.0)
    rng = random.Random(1)
    for attempts in range(1, 20):
        ceiling = min(600.0, 5.0 * 2 ** (attempts - 1))
        delay = retry_delay(attempts, config, rng)
        assert ceiling / 2 <= delay <= ceiling
    assert len({retry_delay(3, config, rng) for _ in range(10)}) > 1


# --------------------------------------------------------------------------- index, recovery


def test_index_claims_in_arrival_order_per_backend_within_limits(tmp_path: Path) -> None:
    index = Index(tmp_path / INDEX_NAME)
    for n, backend in enumerate(["a", "a", "b", "a", "a"]):
        index.add(f"1.2.{n}", f"f{n}", "SCU", backend, 100)
    batch = index.claim(max_instances=3, max_bytes=250)
    assert [r.sop_instance_uid for r in batch] == ["1.2.0", "1.2.1"]  # bytes limit
    assert {r.state for r in index.listing(["uploading"], None)} == {"uploading"}
    batch = index.claim(max_instances=3, max_bytes=10_000)
    assert [r.sop_instance_uid for r in batch] == ["1.2.2"]  # one backend per batch
    assert [r.sop_instance_uid for r in index.claim(3, 10)] == ["1.2.3"]  # at least one
    assert [r.sop_instance_uid for r in index.claim(3, 10_000)] == ["1.2.4"]
    assert index.claim(3, 10_000) == []
    pragmas = sqlite3.connect(tmp_path / INDEX_NAME).execute("PRAGMA journal_mode").fetchone()
    assert pragmas == ("wal",)


def test_start_up_recovery(tmp_path: Path) -> None:
    """uploading → queued; a file without a row removed; a row without a file dead;
    files of done rows removed; pynetdicom's leftovers in incoming/ removed."""
    config = StoreConfig(mode="spool", spool_dir=str(tmp_path / "spool"), min_free_bytes=0)
    spool = Spool(config, "test")
    files = spool.files
    for name in ("up", "lost", "kept", "finished"):
        (files / f"{name}.dcm").write_bytes(b"x" * 10)
    spool.index.add("1.1", "up.dcm", "SCU", "default", 10)
    spool.index.add("1.2", "gone.dcm", "SCU", "default", 10)
    spool.index.add("1.3", "kept.dcm", "SCU", "default", 10)
    spool.index.add("1.4", "finished.dcm", "SCU", "default", 10)
    claimed = spool.index.claim(4, 10_000)
    spool.index.mark_done([r.id for r in claimed if r.sop_instance_uid == "1.4"])
    spool.index.requeue([r.id for r in claimed if r.sop_instance_uid in ("1.2", "1.3")])
    (spool.incoming / "tmpabc.dcm").write_bytes(b"partial")
    spool.index.close()

    again = Spool(config, "test")
    states = {r.sop_instance_uid: (r.state, r.last_error) for r in again.index.listing(
        ["queued", "uploading", "failed", "dead", "done"], None
    )}  # fmt: skip
    assert states == {
        "1.1": ("queued", ""),
        "1.2": ("dead", "file missing"),
        "1.3": ("queued", ""),
        "1.4": ("done", ""),
    }
    assert sorted(p.name for p in files.iterdir()) == ["kept.dcm", "up.dcm"]
    assert list(again.incoming.iterdir()) == []
    again.stop()


def test_accept_keeps_a_durable_linked_copy_and_refuses_past_the_budget(tmp_path: Path) -> None:
    config = StoreConfig(
        mode="spool", spool_dir=str(tmp_path / "spool"), min_free_bytes=0, max_spool_bytes=25
    )
    spool = Spool(config, "test")
    received = spool.incoming / "rx.dcm"
    received.write_bytes(b"y" * 10)
    assert spool.accept(received, "1.1", "SCU", "default") is None
    assert spool.accept(received, "1.2", "SCU", "default") is None
    refusal = spool.accept(received, "1.3", "SCU", "default")
    assert refusal is not None and "spool full" in refusal.comment
    kept = list(spool.files.iterdir())
    assert len(kept) == 2 and all(p.stat().st_ino == received.stat().st_ino for p in kept)
    assert spool.index.summary().counts["queued"] == 2
    done, failed = spool.settle(["1.1", "9.9"], timeout=0)
    assert (done, failed) == (set(), {"1.1"})
    big = StoreConfig(mode="spool", spool_dir=str(tmp_path / "s2"), min_free_bytes=2**62)
    starved = Spool(big, "test")
    rx = starved.incoming / "rx.dcm"
    rx.write_bytes(b"z")
    refusal = starved.accept(rx, "1.1", "SCU", "default")
    assert refusal is not None and "min_free_bytes" in refusal.comment
    assert list(starved.files.iterdir()) == []
    spool.stop()
    starved.stop()


# --------------------------------------------------------------------------- batch STOW-RS


def test_batch_stow_body_is_one_multipart_of_the_files_and_answers_per_instance(
    tmp_path: Path,
) -> None:
    files = []
    for n in range(3):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(bytes([n]) * (300_000 + n))
        files.append((path, f"1.2.{n}"))
    seen: dict[str, object] = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        seen["length"] = int(request.headers["content-length"])
        decoder = MultipartDecoder(boundary_from_content_type(request.headers["content-type"]))
        parts = decoder.feed(body) + decoder.close()
        seen["parts"] = [p.content for p in parts]
        seen["body"] = len(body)
        answer = {
            "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.0"]}}]},
            "00081198": {
                "vr": "SQ",
                "Value": [
                    {
                        "00081155": {"vr": "UI", "Value": ["1.2.1"]},
                        "00081197": {"vr": "US", "Value": [0xA900]},
                    }
                ],
            },
        }
        return httpx.Response(409, json=answer)

    async def run() -> list[StowResult]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        client = DicomwebClient(http, "http://server/dicom-web", query_encoding="dicom")
        try:
            return await client.store_instances(files)
        finally:
            await http.aclose()

    results = asyncio.run(run())
    assert seen["parts"] == [path.read_bytes() for path, _ in files]
    assert seen["length"] == seen["body"]
    assert [fate(r, alone=False).kind for r in results] == [
        Kind.DONE,
        Kind.DEAD,
        Kind.UNANSWERED,
    ]
    assert json.dumps(results[1].failure_reason) == str(0xA900)


def test_group_commit_shares_one_commit_between_concurrent_c_stores(tmp_path: Path) -> None:
    """Eight C-STORE threads arriving while a commit is under way: every row is committed
    before its submit returns, in fewer commits than rows; a failed commit fails every
    submit of its group."""
    groups: list[int] = []
    committed: set[str] = set()

    def commit(size: int, rows: list[tuple[str, str, str, str, int]]) -> None:
        time.sleep(0.05)  # a slow disk flush: the others queue up meanwhile
        groups.append(len(rows))
        committed.update(row[0] for row in rows)

    group = GroupCommit(tmp_path, commit)
    returned: list[str] = []

    def submit(uid: str) -> None:
        group.submit((uid, f"{uid}.dcm", "SCU", "default", 1))
        assert uid in committed  # never before its own commit
        returned.append(uid)

    threads = [threading.Thread(target=submit, args=(f"1.{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(returned) == sorted(f"1.{n}" for n in range(8))
    assert sum(groups) == 8 and len(groups) < 8
    group.close()

    def broken(size: int, rows: list[tuple[str, str, str, str, int]]) -> None:
        raise OSError("disk gone")

    failing = GroupCommit(tmp_path, broken)
    with pytest.raises(OSError, match="disk gone"):
        failing.submit(("1.9", "f", "SCU", "default", 1))
    failing.close()
    with pytest.raises(RuntimeError):
        failing.submit(("1.10", "f", "SCU", "default", 1))
