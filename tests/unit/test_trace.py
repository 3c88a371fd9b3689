"""Association ids on log lines (text and JSON, event-loop tasks included), the status
board behind /status, the /status and / routes, and how an association's end is named."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.dimse import adapter
from bridge.loop_thread import LoopThread
from bridge.ops.http import OpsServer
from bridge.ops.logs import _MARK, ASSOCIATION, AssociationFilter, Progress, setup_logging
from bridge.ops.metrics import Metrics
from bridge.ops.page import PAGE
from bridge.ops.status import FINISHED_KEPT, BackendStatus, StatusBoard, public_url

LOGGER = logging.getLogger("tests.unit.test_trace")


@pytest.fixture
def bridge_logging() -> Iterator[None]:
    """setup_logging's effects for the test's duration only: its handler, the root and
    library levels and the warnings capture are put back (pytest's handlers stay)."""
    root = logging.getLogger()
    level = root.level
    levels = {n: logging.getLogger(n).level for n in ("pynetdicom", "httpx", "httpcore")}
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
        for name, saved in levels.items():
            logging.getLogger(name).setLevel(saved)
        logging.captureWarnings(False)


class _Records(logging.Handler):
    """Keeps the records, through the bridge's AssociationFilter like its own handler."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(AssociationFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)  # under the handler's own lock (Handler.handle)


@pytest.fixture
def records() -> Iterator[_Records]:
    handler = _Records()
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        LOGGER.removeHandler(handler)


def _in_thread(association: str | None, work: Any) -> Any:
    """Run `work()` in a new thread (a fresh context, as pynetdicom's threads have) with
    ASSOCIATION set to `association`; its result."""
    result: list[Any] = []

    def run() -> None:
        if association is not None:
            ASSOCIATION.set(association)
        result.append(work())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return result[0]


# --------------------------------------------------------------------------- log lines


def test_text_lines_carry_the_association_id(
    bridge_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", "text")
    _in_thread("a1b2", lambda: LOGGER.info("C-FIND done"))
    LOGGER.info("listening")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(" INFO [a1b2] tests.unit.test_trace: C-FIND done"), lines
    assert lines[1].endswith(" INFO tests.unit.test_trace: listening"), lines


def test_json_lines_have_an_association_field(
    bridge_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO", "json")
    _in_thread("c3d4", lambda: LOGGER.info("done", extra={"fields": {"association": "forged"}}))
    LOGGER.info("listening")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["association"] == "c3d4" and first["msg"] == "done"
    assert "association" not in second


def test_loop_thread_tasks_log_with_the_submitters_id(records: _Records) -> None:
    """A coroutine submitted from an association's thread, and a task it starts, run in
    a copy of that thread's context: their lines, written in the loop thread, carry the
    id; a coroutine submitted by a thread with no association gets none."""
    loop = LoopThread()
    loop.start()

    async def child() -> None:
        LOGGER.info("child task")

    async def work() -> str | None:
        LOGGER.info("on the loop")
        await asyncio.get_running_loop().create_task(child())
        return ASSOCIATION.get()

    try:
        assert _in_thread("e5f6", lambda: loop.call(work())) == "e5f6"
        assert _in_thread(None, lambda: loop.call(work())) is None
        assert ASSOCIATION.get() is None  # the loop never leaked it back
    finally:
        loop.stop()
    got = [(r.getMessage(), r.association, r.threadName) for r in records.records]  # type: ignore[attr-defined]
    assert got == [
        ("on the loop", "e5f6", "bridge-http"),
        ("child task", "e5f6", "bridge-http"),
        ("on the loop", None, "bridge-http"),
        ("child task", None, "bridge-http"),
    ]


def test_a_cancelled_submission_never_starts_and_leaves_no_warning() -> None:
    loop = LoopThread()
    loop.start()
    started = threading.Event()

    async def work() -> None:
        started.set()

    try:
        gate = threading.Event()
        # Keep the loop busy so that the submission is still queued when cancelled.
        loop.loop.call_soon_threadsafe(gate.wait, 5)
        future = loop.submit(work())
        assert future.cancel()
        gate.set()
        assert loop.call(asyncio.sleep(0, "after")) == "after"
    finally:
        loop.stop()
    assert not started.is_set()


# --------------------------------------------------------------------------- the board


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_status_board_snapshot_has_the_documented_shape() -> None:
    clock = _Clock()
    board = StatusBoard(clock=clock)
    board.backends = lambda: [
        BackendStatus("default", "https://user:secret@pacs.example/dicom-web", True, None)
    ]
    board.opened("a1b2", "CT1", "DIMSE_BRIDGE", "10.0.0.5:51234")
    board.started("a1b2", "C-GET")
    clock.now += 2.0
    Progress(
        "C-GET", "CT1", 200, 10.0, LOGGER, clock=clock, board=board
    )  # made outside the association: its updates name no operation
    board.progress("a1b2", 40, 1, 200, 8_000_000)
    snapshot = board.snapshot()
    assert snapshot == {
        "backends": [
            {
                "name": "default",
                "url": "https://pacs.example/dicom-web",
                "ready": True,
                "reason": None,
            }
        ],
        "associations": [
            {
                "id": "a1b2",
                "calling_ae": "CT1",
                "called_ae": "DIMSE_BRIDGE",
                "peer": "10.0.0.5:51234",
                "age_s": 2.0,
            }
        ],
        "operations": [
            {
                "association": "a1b2",
                "service": "C-GET",
                "calling_ae": "CT1",
                "done": 40,
                "failed": 1,
                "total": 200,
                "bytes": 8_000_000,
                "mb_s": 4.0,
                "eta_s": 8.0,
            }
        ],
        "finished": [],
        "spool": None,
    }
    clock.now += 8.0
    finished = board.finished(
        "a1b2", 0xB000, "1 failed: peer answered C-STORE 0xA700", (200, 1, 200)
    )
    assert finished is not None and finished.mb_s == pytest.approx(0.8)
    assert board.snapshot()["finished"] == [
        {
            "association": "a1b2",
            "service": "C-GET",
            "calling_ae": "CT1",
            "status": "0xB000",
            "category": "warning",
            "done": 200,
            "failed": 1,
            "total": 200,
            "seconds": 10.0,
            "error_comment": "1 failed: peer answered C-STORE 0xA700",
        }
    ]
    assert board.snapshot()["operations"] == []


def test_progress_feeds_the_board_under_its_association() -> None:
    clock = _Clock()
    board = StatusBoard(clock=clock)
    board.opened("a1b2", "CT1", "DIMSE_BRIDGE", "10.0.0.5:51234")
    board.started("a1b2", "C-MOVE")
    progress = _in_thread(
        "a1b2", lambda: Progress("C-MOVE", "STORESCP", 10, 60.0, LOGGER, clock=clock, board=board)
    )
    progress.update(3, 3_000, 1)  # no log line due yet: the board is updated anyway
    (op,) = board.snapshot()["operations"]
    assert (op["done"], op["failed"], op["total"], op["bytes"]) == (3, 1, 10, 3_000)


def test_finished_operations_keep_the_last_fifty_latest_first() -> None:
    board = StatusBoard()
    board.opened("a1b2", "CT1", "DIMSE_BRIDGE", "10.0.0.5:51234")
    for n in range(FINISHED_KEPT + 5):
        board.started("a1b2", "C-FIND")
        board.add("a1b2", done=n)
        board.finished("a1b2", 0x0000)
    finished = board.snapshot()["finished"]
    assert len(finished) == FINISHED_KEPT == 50
    assert [f["done"] for f in finished] == list(range(54, 4, -1))


def test_an_operation_cut_short_is_aborted_and_the_association_counts_it() -> None:
    board = StatusBoard()
    board.opened("a1b2", "CT1", "DIMSE_BRIDGE", "10.0.0.5:51234")
    board.started("a1b2", "C-GET")
    board.progress("a1b2", 5, 0, 50, 1000)
    cut = board.finished("a1b2", None)
    assert cut is not None
    assert (cut.status_text, cut.category, cut.done, cut.total) == (None, "aborted", 5, 50)
    ended = board.closed("a1b2")
    assert ended is not None and dict(ended[0].served) == {"C-GET": 1}
    assert board.closed("a1b2") is None and board.finished("a1b2", 0) is None


def test_public_url_drops_credentials_only() -> None:
    assert public_url("https://u:p@host:8042/dicom-web") == "https://host:8042/dicom-web"
    assert public_url("http://host/dicom-web?x=1") == "http://host/dicom-web?x=1"


# --------------------------------------------------------------------------- ops routes


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, exc.headers["Content-Type"], body


def test_ops_server_serves_status_and_the_page() -> None:
    board = StatusBoard()
    board.opened("a1b2", "CT1", "DIMSE_BRIDGE", "10.0.0.5:51234")
    server = OpsServer("127.0.0.1:0", Metrics(), lambda: (True, "ok"), status=board.snapshot)
    server.start()
    try:
        code, kind, body = _get(server.url + "/status")
        assert (code, kind) == (200, "application/json")
        assert json.loads(body)["associations"][0]["id"] == "a1b2"
        code, kind, page = _get(server.url + "/")
        assert (code, kind) == (200, "text/html; charset=utf-8") and page == PAGE
        code, _, body = _get(server.url + "/nothing")
        assert code == 404 and "/status" in body
    finally:
        server.stop()


def test_page_has_no_external_assets() -> None:
    """One document: no script, style sheet, image or font from anywhere else."""
    lowered = PAGE.lower()
    for marker in ("src=", "href=", "@import", "url(", "http://", "https://", "//cdn"):
        assert marker not in lowered, marker
    assert 'fetch("status"' in PAGE  # relative: works behind a path prefix too
    assert "innerHTML" not in PAGE  # peers' AE titles are text, never markup


# --------------------------------------------------------------------------- end cause


def _ended(**state: Any) -> SimpleNamespace:
    timer = adapter._IdleTimer(30)
    timer.fired = state.pop("idle", False)
    values = {"is_released": False, "_sent_abort": False, **state}
    return SimpleNamespace(dul=SimpleNamespace(_idle_timer=timer), **values)


def test_end_cause_names_who_ended_the_association() -> None:
    assert adapter.end_cause(_ended(is_released=True)) == ("released", "peer")
    assert adapter.end_cause(_ended()) == ("aborted", "peer")
    assert adapter.end_cause(_ended(_sent_abort=True)) == ("aborted", "bridge")
    assert adapter.end_cause(_ended(_sent_abort=True, idle=True)) == ("aborted", "timeout")
    assert adapter.end_cause(_ended(_sent_abort=True, _bridge_timed_out=True)) == (
        "aborted",
        "timeout",
    )
