"""Logs you can trace, /status and the operator page, on a real bridge process.

    pynetdicom SCU --DIMSE--> bridge --HTTP--> FaultProxy --HTTP--> private Orthanc

The bridge logs JSON lines (``[logging] format = "json"``) that the tests parse: every line
an association causes carries its id (those the event-loop thread writes included), each
operation ends with one summary line, each association with one end line. The proxy
makes a QIDO-RS request fail once (a retry line from the loop thread), or slows WADO-RS
down so that a C-GET is still running while ``/status`` and the page are read. The page
is loaded in a real headless Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from tests.faults.paths import is_qido_studies, is_wado
from tests.faults.proxy import FaultProxy
from tests.faults.study import Study
from tests.faults.test_get_cancel import abort_mid_transfer
from tests.integration.bridge_runner import BridgeProcess, bridge_config
from tests.scu import RetrieveOutcome, c_get, scu

pytestmark = pytest.mark.integration

STUDY_SIZE = 40
SLOW_DELAY_S = 0.2  # per WADO-RS request, one at a time: a C-GET of 8 s or more
# The study's patient (tests/integration/dataset.py make_ct_series): none of it may
# appear in /status or on the page.
PHI = ("BULK001", "BULK^SERIES", "BULK SERIES", "19700101")
STATUS_KEYS = {"backends", "associations", "operations", "finished", "spool"}
BACKEND_KEYS = {"name", "url", "ready", "reason"}
ASSOCIATION_KEYS = {"id", "calling_ae", "called_ae", "peer", "age_s"}
OPERATION_KEYS = {
    "association",
    "service",
    "calling_ae",
    "done",
    "failed",
    "total",
    "bytes",
    "mb_s",
    "eta_s",
}
FINISHED_KEYS = {
    "association",
    "service",
    "calling_ae",
    "status",
    "category",
    "done",
    "failed",
    "total",
    "seconds",
    "error_comment",
}
SUMMARY_FIELDS = {
    "service",
    "peer",
    "association",
    "done",
    "failed",
    "total",
    "bytes",
    "seconds",
    "mb_s",
    "status",
    "error_comment",
}


@dataclass
class Ops:
    bridge: BridgeProcess
    url: str

    def get(self, path: str) -> tuple[int, str]:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.status, response.read().decode("utf-8")

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200
        document: dict[str, Any] = json.loads(body)
        return document

    def lines(self) -> list[dict[str, Any]]:
        """The bridge's JSON log lines so far (the runner's own header line skipped)."""
        out = []
        for line in self.bridge.log_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


def _start(
    proxy: FaultProxy,
    bridge_process: Callable[..., BridgeProcess],
    free_port: Callable[[], int],
    fetches: int,
) -> Ops:
    ops_port = free_port()
    bridge = bridge_process(
        bridge_config(
            proxy.url + "/dicom-web",
            free_port(),
            ops={"listen": f"127.0.0.1:{ops_port}"},
            logging={"format": "json"},
            retrieve__max_concurrent_fetches=fetches,
            retrieve__max_buffer_bytes=1024 * 1024,
        )
    )
    return Ops(bridge, f"http://127.0.0.1:{ops_port}")


@pytest.fixture
def ops(
    proxy: FaultProxy,
    bridge_process: Callable[..., BridgeProcess],
    free_port: Callable[[], int],
) -> Ops:
    """The bridge in front of the proxy, JSON logs, its ops listener on a free port."""
    return _start(proxy, bridge_process, free_port, fetches=8)


@pytest.fixture
def slow_ops(
    proxy: FaultProxy,
    bridge_process: Callable[..., BridgeProcess],
    free_port: Callable[[], int],
) -> Iterator[Ops]:
    """As `ops`, fetching one instance at a time, each WADO-RS request delayed by the
    proxy: a C-GET of the study takes STUDY_SIZE x SLOW_DELAY_S seconds at least."""
    proxy.add_fault(path_filter=is_wado, delay_s=SLOW_DELAY_S)
    yield _start(proxy, bridge_process, free_port, fetches=1)


class SlowGet:
    """A C-GET of the study from PAGESCU, in a thread (started on entering)."""

    def __init__(self, bridge: BridgeProcess, study: Study) -> None:
        self.outcome: RetrieveOutcome | None = None
        self._thread = threading.Thread(target=self._run, args=(bridge, study), daemon=True)

    def _run(self, bridge: BridgeProcess, study: Study) -> None:
        self.outcome = c_get(
            scu("PAGESCU", timeouts=(30, 60, 60)),
            (bridge.host, bridge.port, bridge.ae_title),
            _study_query(study.study_uid),
            StudyRootQueryRetrieveInformationModelGet,
            [(CTImageStorage, None)],
        )

    def __enter__(self) -> SlowGet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=STUDY_SIZE * SLOW_DELAY_S + 60)

    def finish(self) -> RetrieveOutcome:
        self._thread.join(timeout=STUDY_SIZE * SLOW_DELAY_S + 60)
        assert self.outcome is not None, "the C-GET did not finish"
        return self.outcome


def running_get(ops: Ops, minimum: int = 1) -> dict[str, Any]:
    """The C-GET row of /status once it has `minimum` instances done."""
    rows: list[dict[str, Any]] = []

    def found() -> bool:
        rows[:] = [
            op
            for op in ops.status()["operations"]
            if op["service"] == "C-GET" and op["done"] >= minimum
        ]
        return bool(rows)

    _wait_for(found, timeout=30)
    return rows[0]


def _study_query(study_uid: str = "", **keys: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return query


def _association(bridge: BridgeProcess, stored: list[str], ae_title: str = "TRACESCU") -> Any:
    """An association for C-ECHO, C-FIND and C-GET (CT Image Storage in the SCP role);
    the SOP Instance UIDs it receives go to `stored`."""

    def on_store(event: Any) -> int:
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title)
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(
        bridge.host,
        bridge.port,
        ae_title=bridge.ae_title,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    return assoc


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _between(lines: list[dict[str, Any]], association: str) -> list[dict[str, Any]]:
    """The lines from the association's start line to its end line, both included."""
    start = next(
        i
        for i, line in enumerate(lines)
        if line.get("event") == "association_start" and line.get("association") == association
    )
    end = next(
        i
        for i, line in enumerate(lines)
        if line.get("event") == "association_end" and line.get("association") == association
    )
    return lines[start : end + 1]


def _only_association(lines: list[dict[str, Any]], calling_ae: str) -> str:
    starts = [
        line["association"]
        for line in lines
        if line.get("event") == "association_start" and line.get("calling_ae") == calling_ae
    ]
    assert len(starts) == 1, starts
    return str(starts[0])


# --------------------------------------------------------------------------- the logs


def test_every_line_of_an_association_carries_its_id(
    study: Study, proxy: FaultProxy, ops: Ops
) -> None:
    """C-ECHO, C-FIND (its QIDO-RS answered 503 once: a retry line from the event-loop
    thread) and C-GET on one association, then A-RELEASE: every line from its start line
    to its end line carries its id; each operation has one summary with every field,
    written by a thread named after the association; the end line says released by the
    peer, and counts three operations."""
    proxy.fail(503, is_qido_studies, count=1)
    stored: list[str] = []
    assoc = _association(ops.bridge, stored)
    try:
        assert assoc.send_c_echo().Status == 0x0000
        found = [
            (status.Status, identifier)
            for status, identifier in assoc.send_c_find(
                _study_query(study.study_uid), StudyRootQueryRetrieveInformationModelFind
            )
        ]
        assert [s for s, _ in found] == [0xFF00, 0x0000]
        results = list(
            assoc.send_c_get(
                _study_query(study.study_uid), StudyRootQueryRetrieveInformationModelGet
            )
        )
        assert results[-1][0].Status == 0x0000
        assert sorted(stored) == sorted(study.uids)
    finally:
        assoc.release()
    _wait_for(lambda: any(line.get("event") == "association_end" for line in ops.lines()))
    lines = ops.lines()
    association = _only_association(lines, "TRACESCU")
    assert re.fullmatch(r"[0-9a-f]{4}", association)
    mine = _between(lines, association)
    untagged = [line for line in mine if line.get("association") != association]
    assert not untagged, untagged
    loop_lines = [line for line in mine if line["thread"] == "bridge-http"]
    assert any("retry" in line["msg"] for line in loop_lines), [line["msg"] for line in mine]

    summaries = {line["service"]: line for line in mine if line.get("event") == "operation_end"}
    # The association's threads are named after it, not after the second it began in.
    assert {line["thread"] for line in summaries.values()} == {
        f"AcceptorThread-association-{association}"
    }
    assert set(summaries) == {"C-ECHO", "C-FIND", "C-GET"}
    for line in summaries.values():
        assert SUMMARY_FIELDS <= set(line), line
        assert line["peer"] == "TRACESCU" and line["status"] == "0x0000", line
    find, get = summaries["C-FIND"], summaries["C-GET"]
    assert (find["done"], find["failed"], find["total"]) == (1, 0, 1)
    assert find["msg"].startswith("C-FIND done: peer TRACESCU, 1 match, "), find["msg"]
    assert find["seconds"] > 0
    assert (get["done"], get["failed"], get["total"]) == (STUDY_SIZE, 0, STUDY_SIZE)
    assert get["bytes"] > STUDY_SIZE * 64 * 64 * 2  # the pixel data, at least
    assert get["error_comment"] is None

    end = mine[-1]
    assert (end["outcome"], end["by"], end["operations"]) == ("released", "peer", 3), end
    assert (end["calling_ae"], end["called_ae"]) == ("TRACESCU", "DIMSE_BRIDGE")
    assert end["services"] == {"C-ECHO": 1, "C-FIND": 1, "C-GET": 1}
    assert re.fullmatch(r"127\.0\.0\.1:\d+", end["address"]), end
    assert f"association {association} from TRACESCU" in end["msg"]


def test_the_ops_listener_start_up_line_is_written_once(ops: Ops) -> None:
    """The bridge and its ops listener used to log it both."""
    _wait_for(lambda: any("listening as" in line["msg"] for line in ops.lines()))
    listener = [line["msg"] for line in ops.lines() if "listener on http" in line["msg"]]
    assert listener == [f"ops listener on {ops.url} (/, /status, /metrics, /healthz, /readyz)"]


def test_a_peer_abort_mid_get_is_an_abort_and_still_counted(
    study: Study, proxy: FaultProxy, ops: Ops
) -> None:
    """A-ABORT from the SCU mid-C-GET: the operation is logged as aborted (not as a
    cancel) with the instances it got, the association as aborted by the peer, and the
    request is counted in dimse_requests_total as aborted, not as a success."""
    abort_mid_transfer(study, proxy, ops.bridge)
    _wait_for(lambda: any(line.get("event") == "association_end" for line in ops.lines()))
    lines = ops.lines()
    association = _only_association(lines, "GETSCU")
    mine = _between(lines, association)
    assert all(line.get("association") == association for line in mine)
    assert not [line for line in mine if "cancel" in line["msg"].lower()], mine
    (summary,) = [line for line in mine if line.get("event") == "operation_end"]
    assert summary["msg"].startswith("C-GET aborted: peer GETSCU, "), summary
    assert "not answered: association aborted by the peer" in summary["msg"], summary
    assert (summary["status"], summary["category"]) == (None, "aborted")
    assert 3 <= summary["done"] < STUDY_SIZE and summary["total"] == STUDY_SIZE
    end = mine[-1]
    assert (end["outcome"], end["by"], end["operations"]) == ("aborted", "peer", 1), end

    _, metrics = ops.get("/metrics")
    requests = [
        line
        for line in metrics.splitlines()
        if line.startswith("dimse_bridge_dimse_requests_total{")
    ]
    assert requests == [
        'dimse_bridge_dimse_requests_total{category="aborted",service="C-GET",status="none"} 1.0'
    ], requests
    finished = ops.status()["finished"]
    assert [(f["service"], f["status"], f["category"]) for f in finished] == [
        ("C-GET", None, "aborted")
    ]


# --------------------------------------------------------------------------- /status


def _find_patient(bridge: BridgeProcess) -> list[Dataset]:
    """A C-FIND by patient name and ID (an identifier full of PHI): its matches."""
    ae = AE("FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(bridge.host, bridge.port, ae_title=bridge.ae_title)
    assert assoc.is_established
    try:
        query = _study_query(PatientName="BULK^SERIES", PatientID="BULK001", PatientBirthDate="")
        matches: list[Dataset] = []
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            if status.Status == 0xFF00:
                assert identifier is not None
                matches.append(identifier)
        return matches
    finally:
        assoc.release()


def test_status_shows_the_running_get_and_no_patient_data(
    study: Study, proxy: FaultProxy, slow_ops: Ops
) -> None:
    """/status while a slow C-GET runs: exactly the documented keys; the association and
    its transfer with calling AE, n/N and bytes; afterwards the finished operations (the
    C-GET's success first). Neither /status nor the page holds the patient's name, ID or
    birth date, though a C-FIND asked for and got all three."""
    matches = _find_patient(slow_ops.bridge)
    assert [str(m.PatientID) for m in matches] == ["BULK001"]
    with SlowGet(slow_ops.bridge, study) as get:
        op = running_get(slow_ops, minimum=2)
        status = slow_ops.status()
        assert set(status) == STATUS_KEYS and status["spool"] is None
        (backend,) = status["backends"]
        assert set(backend) == BACKEND_KEYS
        assert backend == {
            "name": "default",
            "url": proxy.url + "/dicom-web",
            "ready": True,
            "reason": None,
        }
        assert set(op) == OPERATION_KEYS
        assert (op["service"], op["calling_ae"], op["total"]) == ("C-GET", "PAGESCU", STUDY_SIZE)
        assert 2 <= op["done"] < STUDY_SIZE and op["failed"] == 0
        assert op["bytes"] > op["done"] * 64 * 64 * 2 and op["mb_s"] >= 0
        assert op["eta_s"] is not None and op["eta_s"] > 0
        (assoc,) = [a for a in status["associations"] if a["id"] == op["association"]]
        assert set(assoc) == ASSOCIATION_KEYS
        assert (assoc["calling_ae"], assoc["called_ae"]) == ("PAGESCU", "DIMSE_BRIDGE")
        assert re.fullmatch(r"127\.0\.0\.1:\d+", assoc["peer"]) and assoc["age_s"] >= 0
        during = json.dumps(status)
        outcome = get.finish()
    assert outcome.status == 0x0000, outcome.describe()
    # The SCU has its final response and has released; the bridge's reactor thread may
    # take a moment more to end the association.
    _wait_for(lambda: slow_ops.status()["associations"] == [])
    after = slow_ops.status()
    assert after["operations"] == []
    first, find = after["finished"][0], after["finished"][-1]
    assert set(first) == FINISHED_KEYS
    assert first == {
        "association": op["association"],
        "service": "C-GET",
        "calling_ae": "PAGESCU",
        "status": "0x0000",
        "category": "success",
        "done": STUDY_SIZE,
        "failed": 0,
        "total": STUDY_SIZE,
        "seconds": first["seconds"],
        "error_comment": None,
    }
    assert first["seconds"] >= STUDY_SIZE * SLOW_DELAY_S
    assert (find["service"], find["calling_ae"], find["done"]) == ("C-FIND", "FINDSCU", 1)
    _, page = slow_ops.get("/")
    for text in (during, json.dumps(after), page):
        leaked = [value for value in PHI if value in text]
        assert not leaked, leaked


# --------------------------------------------------------------------------- the page


class _Rows(HTMLParser):
    """The rows of the page's transfers table: each row's class, and its cells' text and
    the style of the progress bar's inner block."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table == "operations":
            self.rows.append({"class": a.get("class"), "cells": [], "bars": []})
        elif tag == "td" and self._table == "operations" and self.rows:
            self._cell = []
        elif tag == "div" and self._table == "operations" and self.rows and a.get("style"):
            self.rows[-1]["bars"].append(a["style"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Headless Chromium (Debian's), as root: no sandbox; its own profile directory."""
    command = [
        CHROMIUM or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (tests/run.sh)")
def test_operator_page_shows_the_running_transfer_in_chromium(
    study: Study, proxy: FaultProxy, slow_ops: Ops, tmp_path: Path
) -> None:
    """The page at / in headless Chromium, while a slow C-GET runs: after its script has
    fetched /status, the transfers table has the C-GET's row, with its calling AE, n/N
    within what /status said just before and after, and a progress bar drawn; a
    screenshot of it is taken."""
    with SlowGet(slow_ops.bridge, study) as get:
        before = running_get(slow_ops, minimum=1)
        dom = chromium("--dump-dom", slow_ops.url + "/", profile=tmp_path / "profile")
        after = running_get(slow_ops, minimum=1)
        shot = chromium(
            f"--screenshot={tmp_path / 'operator-page.png'}",
            "--window-size=1280,900",
            slow_ops.url + "/",
            profile=tmp_path / "profile",
        )
        assert get.finish().status == 0x0000
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = _Rows()
    parser.feed(dom.stdout)
    transfers = [row for row in parser.rows if row["class"] == "transfer"]
    assert len(transfers) == 1, parser.rows
    cells = transfers[0]["cells"]
    # Id, Service, Calling AE, Peer, Done, Failed, Progress, MB, MB/s, ETA
    assert cells[0] == before["association"]
    assert (cells[1], cells[2]) == ("C-GET", "PAGESCU")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", cells[3]), cells
    done, total = (int(x) for x in cells[4].split("/"))
    assert total == STUDY_SIZE and before["done"] <= done <= after["done"], (cells, before, after)
    assert cells[5] == "0"
    (bar,) = transfers[0]["bars"]
    width = float(re.fullmatch(r"width: ([\d.]+)%;", bar).group(1))  # type: ignore[union-attr]
    assert width == pytest.approx(100 * done / total, abs=0.1)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert (tmp_path / "operator-page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
