"""Store-and-forward spool (issue 12): the bridge as a real process in spool mode, a real
Orthanc behind the tests' fault proxy, dcmtk storescu and pynetdicom SCUs.

    storescu / pynetdicom --C-STORE--> bridge [spool_dir] --STOW-RS--> FaultProxy --> Orthanc

What every test checks in the end: each instance the bridge acknowledged is in Orthanc
with every element and the PixelData bytes equal to what was sent (read back over
Orthanc's REST API, not through the bridge), and ``dimse-bridge spool status --json``
says what the test expects. Instances are tiny (8x8 CT) so that 1,000 take seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel

from tests.conftest import require_orthanc
from tests.faults.proxy import Fault, FaultProxy
from tests.integration.bridge_runner import REPO_ROOT, BridgeProcess, bridge_config, start_bridge
from tests.integration.dataset import make_ct_series, to_bytes
from tests.integration.orthanc import OrthancServer
from tests.integration.tools import free_port, run_dcmtk

pytestmark = pytest.mark.integration

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
ALL_COMMITTED = 1
SOME_FAILED = 2
PROCESSING_FAILURE = 0x0110
STOW = "/dicom-web/studies"
DRAIN_TIMEOUT = 90.0
# Fast retries, so that outages in the tests are over in seconds.
FAST_RETRY = {"retry_initial": 0.2, "retry_max": 1.0, "min_free_bytes": 0}


# --------------------------------------------------------------------------- fixtures


@dataclass
class Side:
    server: OrthancServer
    proxy: FaultProxy
    workdir: Path


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    require_orthanc()
    workdir = tmp_path_factory.mktemp("spool")
    server = OrthancServer(workdir / "orthanc").start()
    try:
        with FaultProxy(server.http_url) as proxy:
            yield Side(server, proxy, workdir)
    finally:
        server.stop()


@pytest.fixture
def proxy(side: Side) -> Iterator[FaultProxy]:
    side.proxy.clear_faults()
    side.proxy.clear()
    yield side.proxy
    side.proxy.clear_faults()


class SpoolBridge:
    """A bridge in spool mode with its own spool_dir; restartable on the same port."""

    def __init__(self, side: Side, tmp_path: Path, name: str, **store: Any) -> None:
        self.side = side
        self.spool_dir = tmp_path / f"{name}-spool"
        self.workdir = tmp_path
        self.name = name
        self.port = free_port()
        self.config_text = bridge_config(
            side.proxy.url + "/dicom-web",
            self.port,
            store={"mode": "spool", "spool_dir": str(self.spool_dir), **FAST_RETRY, **store},
        )
        self.process: BridgeProcess | None = None
        self.config_path.write_text(self.config_text, encoding="utf-8")

    def start(self) -> BridgeProcess:
        self.process = start_bridge(self.config_text, self.workdir, name=self.name)
        return self.process

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}.toml"

    def kill(self) -> None:
        assert self.process is not None
        self.process.process.send_signal(signal.SIGKILL)
        self.process.process.wait(10)

    def stop(self) -> int:
        return self.process.stop() if self.process is not None else 0

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return spool_cli(self.config_path, *args)

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def wait_drained(self, timeout: float = DRAIN_TIMEOUT) -> dict[str, Any]:
        """Until nothing is queued, uploading or failed (retrying); the last status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            counts = status["counts"]
            if counts["queued"] + counts["uploading"] + counts["failed"] == 0:
                return status
            if time.monotonic() > deadline:
                log = self.process.log_tail() if self.process else ""
                raise AssertionError(f"spool not drained: {status}\n{log}")
            time.sleep(0.5)


def spool_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("DIMSE_BRIDGE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "bridge", "spool", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture
def make_bridge(side: Side, tmp_path: Path) -> Iterator[Any]:
    made: list[SpoolBridge] = []

    def make(name: str = "spool", **store: Any) -> SpoolBridge:
        bridge = SpoolBridge(side, tmp_path, name, **store)
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        bridge.stop()


# --------------------------------------------------------------------------- data, senders


def instances(key: str, n: int, tmp_path: Path) -> tuple[list[Dataset], list[Path]]:
    """`n` tiny CT instances of a new study, written to files; decoded back from them."""
    directory = tmp_path / f"in-{key}"
    directory.mkdir()
    paths: list[Path] = []
    datasets: list[Dataset] = []
    for ds in make_ct_series(n, rows=8, columns=8, key=f"spool-{key}"):
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(to_bytes(ds))
        paths.append(path)
        datasets.append(dcmread(path))
    return datasets, paths


def storescu_parallel(bridge: BridgeProcess, paths: Sequence[Path], associations: int = 4) -> int:
    """storescu on `associations` associations at once; how many Success responses."""
    chunks = [list(paths[i::associations]) for i in range(associations)]
    successes = [0] * associations

    def run(i: int) -> None:
        result = run_dcmtk(
            "storescu", "-v", "-aet", "STORESCU", "-aec", bridge.ae_title,
            bridge.host, str(bridge.port), *chunks[i], timeout=300,
        )  # fmt: skip
        text = result.stdout + result.stderr
        successes[i] = text.count("Received Store Response (Success)")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(associations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(successes)


def send_until_acked(
    host: str, port: int, datasets: Sequence[Dataset], acked: set[str], deadline: float
) -> None:
    """pynetdicom SCU: send each data set until the bridge acknowledges it, associating
    again whenever the association is lost (the bridge killed and restarted)."""
    ae = AE(ae_title="KILLSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    i = 0
    while i < len(datasets) and time.monotonic() < deadline:
        assoc = ae.associate(host, port, ae_title="DIMSE_BRIDGE")
        if not assoc.is_established:
            time.sleep(0.2)
            continue
        try:
            while i < len(datasets) and assoc.is_established:
                rsp = assoc.send_c_store(datasets[i])
                if "Status" not in rsp:
                    break
                if int(rsp.Status) == SUCCESS:
                    acked.add(str(datasets[i].SOPInstanceUID))
                    i += 1
        except (RuntimeError, OSError):
            pass
        finally:
            if assoc.is_established:
                assoc.release()


def pynetdicom_store(bridge: BridgeProcess, datasets: Sequence[Dataset]) -> list[int]:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(bridge.host, bridge.port, ae_title=bridge.ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def assert_in_orthanc_equal(server: OrthancServer, datasets: Sequence[Dataset]) -> None:
    """Every data set is in Orthanc, each element and the PixelData bytes equal."""
    for ds in datasets:
        stored = dcmread(BytesIO(server.instance_file(str(ds.SOPInstanceUID))))
        assert stored.PixelData == ds.PixelData, ds.SOPInstanceUID
        assert stored == ds, ds.SOPInstanceUID


def orthanc_uids(server: OrthancServer) -> set[str]:
    return set(server.sop_instance_uids())


def stow_posts(proxy: FaultProxy) -> list[Any]:
    return [r for r in proxy.records() if r.method == "POST" and STOW in r.path]


# --------------------------------------------------------------------------- 1,000 instances


@pytest.mark.slow
def test_thousand_instances_server_up(side: Side, proxy: FaultProxy, make_bridge: Any,
                                      tmp_path: Path) -> None:  # fmt: skip
    """1,000 instances over 4 storescu associations: all acknowledged, all uploaded in
    batches (fewer STOW-RS requests than instances), all in Orthanc unchanged."""
    datasets, paths = instances("up", 1000, tmp_path)
    bridge = make_bridge()
    process = bridge.start()
    assert storescu_parallel(process, paths) == 1000
    status = bridge.wait_drained()
    assert status["counts"]["dead"] == 0
    assert status["counts"]["done"] == 1000
    assert status["bytes"] == 0 and status["oldest_queued_seconds"] is None
    assert len(stow_posts(proxy)) < 1000  # batched
    assert_in_orthanc_equal(side.server, datasets)
    assert list((bridge.spool_dir / "files").iterdir()) == []


@pytest.mark.slow
def test_thousand_instances_server_stopped_20s(side: Side, proxy: FaultProxy, make_bridge: Any,
                                               tmp_path: Path) -> None:  # fmt: skip
    """Orthanc is stopped for 20 s while the stream arrives: every C-STORE is still
    acknowledged, and once Orthanc is back the spool drains into it. (Stopped before the
    stream starts: tiny instances arrive and upload faster than Orthanc takes to stop, so
    a stop "in the middle" could miss the stream altogether.)"""
    datasets, paths = instances("outage", 1000, tmp_path)
    bridge = make_bridge()
    process = bridge.start()
    side.server.stop()
    stopped = time.monotonic()
    acked: list[int] = []
    sender = threading.Thread(target=lambda: acked.append(storescu_parallel(process, paths)))
    sender.start()
    try:
        sender.join(150)
        assert not sender.is_alive() and acked == [1000]
        time.sleep(max(0.0, 20.0 - (time.monotonic() - stopped)))
        counts = bridge.status()["counts"]
        assert counts["queued"] + counts["failed"] + counts["uploading"] > 0, counts
    finally:
        side.server.start()
    status = bridge.wait_drained()
    assert status["counts"]["done"] == 1000 and status["counts"]["dead"] == 0
    assert_in_orthanc_equal(side.server, datasets)


@pytest.mark.slow
def test_thousand_instances_with_30_percent_stow_failures(
    side: Side, proxy: FaultProxy, make_bridge: Any, tmp_path: Path
) -> None:
    """30% of STOW-RS requests answered 500, 503 or reset: all acknowledged, all in
    Orthanc, nothing dead."""
    datasets, paths = instances("flaky", 1000, tmp_path)
    rng = random.Random(12)
    lock = threading.Lock()

    def sometimes(_: str) -> bool:
        with lock:
            return rng.random() < 0.1

    for kind in ({"status_override": 500}, {"status_override": 503}, {"reset_after_bytes": 0}):
        proxy.add_fault(Fault(path_filter=sometimes, method="POST", **kind))  # type: ignore[arg-type]
    bridge = make_bridge()
    assert storescu_parallel(bridge.start(), paths) == 1000
    status = bridge.wait_drained()
    assert status["counts"]["done"] == 1000 and status["counts"]["dead"] == 0
    assert any(r.fault for r in stow_posts(proxy)), "no fault was injected"
    assert_in_orthanc_equal(side.server, datasets)


@pytest.mark.slow
def test_sigkill_twice_loses_nothing_acknowledged(
    side: Side, proxy: FaultProxy, make_bridge: Any, tmp_path: Path
) -> None:
    """The bridge is killed with SIGKILL twice at random points of a 4-association stream
    (uploads slowed by 20 ms, so some are in flight) and restarted each time: afterwards
    zero acknowledged-but-missing instances, none corrupt in Orthanc."""
    datasets, _ = instances("kill", 1000, tmp_path)
    proxy.delay_s = 0.02
    bridge = make_bridge()
    process = bridge.start()
    acked: set[str] = set()
    deadline = time.monotonic() + 150
    chunks = [datasets[i::4] for i in range(4)]
    senders = [
        threading.Thread(
            target=send_until_acked, args=(process.host, process.port, chunk, acked, deadline)
        )
        for chunk in chunks
    ]
    for sender in senders:
        sender.start()
    rng = random.Random(7)
    backlog_at_kill = []
    for _ in range(2):
        time.sleep(rng.uniform(0.5, 2.5))
        bridge.kill()
        counts = bridge.status()["counts"]  # the index of the dead process
        backlog_at_kill.append(counts["queued"] + counts["uploading"] + counts["failed"])
        bridge.start()
    for sender in senders:
        sender.join(160)
    assert len(acked) == 1000, "the senders did not get every instance acknowledged"
    status = bridge.wait_drained()
    assert status["counts"]["dead"] == 0
    missing = acked - orthanc_uids(side.server)
    assert missing == set()
    assert_in_orthanc_equal(side.server, datasets)
    log = bridge.process.log_text() if bridge.process else ""
    assert log.count("-m bridge run --config") == 3  # started three times
    assert sum(backlog_at_kill) > 0, backlog_at_kill  # killed with work pending


# --------------------------------------------------------------------------- dead letters


def _holds(uids: set[str]) -> Any:
    encoded = [uid.encode() for uid in uids]
    return lambda body: any(uid in body for uid in encoded)


def _failed_answer(uid: str, sop_class: str, reason: int) -> bytes:
    item = {
        "00081150": {"vr": "UI", "Value": [sop_class]},
        "00081155": {"vr": "UI", "Value": [uid]},
        "00081197": {"vr": "US", "Value": [reason]},
    }
    return json.dumps({"00081198": {"vr": "SQ", "Value": [item]}}).encode()


def test_permanent_refusals_dead_letter_exactly_those_then_retry_stores_them(
    side: Side, proxy: FaultProxy, make_bridge: Any, tmp_path: Path
) -> None:
    """Two instances refused with HTTP 400 (the whole request: the batch is then sent one
    instance per request), one with Failure Reason 0xA900 in a 409: exactly those three
    are dead, with the reason; their neighbours are stored. After the fault is removed,
    ``spool retry`` stores them."""
    datasets, paths = instances("dead", 12, tmp_path)
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    bad400 = {uids[3], uids[7]}
    bad_a900 = uids[10]
    proxy.add_fault(Fault(method="POST", body_filter=_holds(bad400), status_override=400))
    proxy.add_fault(
        Fault(
            method="POST",
            body_filter=_holds({bad_a900}),
            status_override=409,
            headers={"Content-Type": "application/dicom+json"},
            body=_failed_answer(bad_a900, CTImageStorage, 0xA900),
        )
    )
    bridge = make_bridge(batch_max_instances=6)
    process = bridge.start()
    assert storescu_parallel(process, paths, associations=1) == 12
    status = bridge.wait_drained()
    assert status["counts"]["dead"] == 3 and status["counts"]["done"] == 9
    listed = json.loads(bridge.cli("list", "--state", "dead", "--json").stdout)
    reasons = {row["sop_instance_uid"]: row["last_error"] for row in listed}
    assert set(reasons) == bad400 | {bad_a900}
    assert all("HTTP 400" in reasons[uid] for uid in bad400), reasons
    assert "0xA900" in reasons[bad_a900], reasons
    assert set(listed[0]) == {
        "sop_instance_uid", "state", "attempts", "last_error", "received_at", "calling_ae",
        "backend", "bytes",
    }  # fmt: skip
    assert listed[0]["calling_ae"] == "STORESCU" and listed[0]["backend"] == "default"
    in_orthanc = orthanc_uids(side.server)
    assert set(uids) - in_orthanc == bad400 | {bad_a900}
    assert "dead-lettered" in process.log_text()
    # Dead letters stay dead (not retried by themselves).
    time.sleep(1.5)
    assert bridge.status()["counts"]["dead"] == 3
    proxy.clear_faults()
    one = bridge.cli("retry", bad_a900)
    assert one.returncode == 0 and one.stdout.startswith("1 instance"), one
    rest = bridge.cli("retry", "--all")
    assert rest.returncode == 0 and rest.stdout.startswith("2 instance"), rest
    status = bridge.wait_drained()
    assert status["counts"]["dead"] == 0 and status["counts"]["done"] == 12
    assert_in_orthanc_equal(side.server, datasets)


def test_full_spool_answers_out_of_resources_and_keeps_what_it_acknowledged(
    side: Side, proxy: FaultProxy, make_bridge: Any, tmp_path: Path
) -> None:
    """max_spool_bytes for about three instances, the server refusing every upload (503):
    the fourth C-STORE on gets 0xA700 with an ErrorComment; exactly the acknowledged ones
    are spooled, and reach Orthanc once it answers again; the refused ones never do."""
    datasets, paths = instances("full", 6, tmp_path)
    size = paths[0].stat().st_size
    proxy.fail(503, STOW, method="POST")
    bridge = make_bridge(max_spool_bytes=size * 3 + size // 2)
    process = bridge.start()
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(process.host, process.port, ae_title=process.ae_title)
    assert assoc.is_established
    try:
        responses = [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()
    statuses = [int(r.Status) for r in responses]
    assert statuses == [SUCCESS] * 3 + [OUT_OF_RESOURCES] * 3
    assert "spool full" in str(responses[3].ErrorComment)
    status = bridge.status()
    held = status["counts"]["queued"] + status["counts"]["failed"] + status["counts"]["uploading"]
    assert held == 3 and status["bytes"] <= size * 3 + size // 2
    assert len(list((bridge.spool_dir / "files").iterdir())) == 3
    proxy.clear_faults()
    bridge.wait_drained()
    in_orthanc = orthanc_uids(side.server)
    assert_in_orthanc_equal(side.server, datasets[:3])
    assert not {str(ds.SOPInstanceUID) for ds in datasets[3:]} & in_orthanc


# --------------------------------------------------------------------------- commitment


def _commit(process: BridgeProcess, datasets: Sequence[Dataset], wait: float) -> list[Any]:
    """N-ACTION Request Storage Commitment on an association kept open; the reports."""
    reports: list[Any] = []

    def on_report(event: Any) -> tuple[int, None]:
        reports.append((int(event.request.EventTypeID), event.event_information))
        return SUCCESS, None

    ae = AE(ae_title="COMMITSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        process.host,
        process.port,
        ae_title=process.ae_title,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    assert assoc.is_established
    info = Dataset()
    info.TransactionUID = generate_uid()
    refs = []
    for ds in datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        refs.append(item)
    info.ReferencedSOPSequence = DicomSequence(refs)
    try:
        status, _ = assoc.send_n_action(
            info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
        assert int(status.Status) == SUCCESS
        deadline = time.monotonic() + wait
        while not reports and time.monotonic() < deadline and assoc.is_established:
            time.sleep(0.1)
    finally:
        if assoc.is_established:
            assoc.release()
    return reports


def test_commitment_waits_for_uploads_then_reports_committed(
    side: Side, proxy: FaultProxy, make_bridge: Any, tmp_path: Path
) -> None:
    """With the server down (every request answered 503), a commitment request for
    spooled instances gets no report; once the server is back and they are uploaded,
    event type 1. Meanwhile /readyz stays 200 and reports the backlog, and /metrics has
    the spool's gauges."""
    datasets, _ = instances("commit", 3, tmp_path)
    proxy.fail(503, "/dicom-web")
    listen = f"127.0.0.1:{free_port()}"
    bridge = make_bridge()
    bridge.config_text += f'\n[ops]\nlisten = "{listen}"\n'
    bridge.config_path.write_text(bridge.config_text)
    process = bridge.start()
    assert pynetdicom_store(process, datasets) == [SUCCESS] * 3
    time.sleep(2.5)  # the readiness cache and the metrics' housekeeping
    ready = httpx.get(f"http://{listen}/readyz", timeout=15)
    assert ready.status_code == 200, ready.text
    assert "503" in ready.text and "spool: 3 to upload" in ready.text, ready.text
    metrics = httpx.get(f"http://{listen}/metrics", timeout=15).text
    waiting = [
        line
        for line in metrics.splitlines()
        if line.startswith("dimse_bridge_spool_instances{") and 'state="done"' not in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in waiting) == 3, waiting
    assert "dimse_bridge_spool_oldest_queued_seconds" in metrics
    # /status carries the same document as `spool status --json`.
    board = httpx.get(f"http://{listen}/status", timeout=15).json()["spool"]
    assert board["mode"] == "spool"
    waiting_states = ("queued", "uploading", "failed")
    assert sum(board["counts"][state] for state in waiting_states) == 3, board
    assert board["counts"]["done"] == 0 and board["oldest_queued_seconds"] > 0
    results: list[list[Any]] = []
    asker = threading.Thread(target=lambda: results.append(_commit(process, datasets, 30)))
    asker.start()
    time.sleep(3)
    assert asker.is_alive(), "a report came while the instances were not uploaded"
    assert bridge.status()["counts"]["done"] == 0
    proxy.clear_faults()
    asker.join(40)
    assert results and len(results[0]) == 1
    event_type, info = results[0][0]
    assert event_type == ALL_COMMITTED
    assert {str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence} == {
        str(ds.SOPInstanceUID) for ds in datasets
    }
    assert "FailedSOPSequence" not in info


def test_commitment_lists_a_dead_letter_as_failed(
    side: Side, proxy: FaultProxy, make_bridge: Any, tmp_path: Path
) -> None:
    datasets, _ = instances("commit-dead", 3, tmp_path)
    bad = str(datasets[1].SOPInstanceUID)
    proxy.add_fault(Fault(method="POST", body_filter=_holds({bad}), status_override=400))
    bridge = make_bridge()
    process = bridge.start()
    assert pynetdicom_store(process, datasets) == [SUCCESS] * 3
    reports = _commit(process, datasets, 30)
    assert len(reports) == 1
    event_type, info = reports[0]
    assert event_type == SOME_FAILED
    failed = {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in info.FailedSOPSequence}
    assert failed == {bad: PROCESSING_FAILURE}
    assert len(info.ReferencedSOPSequence) == 2


# --------------------------------------------------------------------------- operations


def test_admin_commands_with_run_running_and_stopped(
    side: Side, proxy: FaultProxy, make_bridge: Any, tmp_path: Path
) -> None:
    """status/list/retry/purge and their exit codes, while ``run`` runs and after."""
    datasets, _ = instances("admin", 4, tmp_path)
    bad = str(datasets[0].SOPInstanceUID)
    proxy.add_fault(Fault(method="POST", body_filter=_holds({bad}), status_override=400))
    bridge = make_bridge()
    missing_index = bridge.cli("status")
    assert missing_index.returncode == 3, missing_index
    process = bridge.start()
    assert pynetdicom_store(process, datasets) == [SUCCESS] * 4
    status = bridge.wait_drained()
    assert set(status) == {"mode", "counts", "bytes", "oldest_queued_seconds"}
    assert status["mode"] == "spool" and status["oldest_queued_seconds"] is None
    assert status["counts"] == {"queued": 0, "uploading": 0, "failed": 0, "dead": 1, "done": 3}
    assert status["bytes"] == (bridge.spool_dir / "files").iterdir().__next__().stat().st_size
    plain = bridge.cli("status")
    assert plain.returncode == 0 and "dead 1" in plain.stdout
    assert "not visible to C-FIND" in plain.stdout
    listing = bridge.cli("list")
    assert listing.returncode == 0 and bad in listing.stdout and "HTTP 400" in listing.stdout
    unknown = bridge.cli("retry", "1.2.3.4.5.6.7")
    assert unknown.returncode == 1 and "not in the spool" in unknown.stderr
    assert bridge.stop() == 0
    # Stopped: the same commands work on the index alone.
    assert bridge.cli("status", "--json").returncode == 0
    rows = json.loads(bridge.cli("list", "--json", "--limit", "10").stdout)
    assert [r["sop_instance_uid"] for r in rows] == [bad]
    kept = bridge.cli("purge", "--dead", "--older-than", "1")
    assert kept.returncode == 0 and kept.stdout.startswith("0 dead")
    purged = bridge.cli("purge", "--dead")
    assert purged.returncode == 0 and purged.stdout.startswith("1 dead")
    assert list((bridge.spool_dir / "files").iterdir()) == []
    empty = bridge.cli("purge", "--dead")
    assert empty.returncode == 0 and empty.stdout.startswith("0 dead")
    assert json.loads(bridge.cli("list", "--json").stdout) == []
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text('[store]\nmode = "sometimes"\n')
    assert spool_cli(bad_config, "status").returncode == 2


def test_sigterm_interrupts_uploads_and_requeues_them(
    side: Side, proxy: FaultProxy, make_bridge: Any, tmp_path: Path
) -> None:
    """SIGTERM while uploads hang: the bridge exits 0 at once, the rows are queued (not
    uploading) for the next start, which uploads them."""
    datasets, _ = instances("term", 5, tmp_path)
    hang = proxy.stall(0, STOW, method="POST")
    bridge = make_bridge()
    process = bridge.start()
    assert pynetdicom_store(process, datasets) == [SUCCESS] * 5
    proxy.wait_for(lambda records: any(STOW in r.path for r in records), timeout=10)
    assert bridge.stop() == 0
    status = bridge.status()
    assert status["counts"]["uploading"] == 0
    assert status["counts"]["queued"] == 5
    proxy.plan.remove(hang)
    bridge.start()
    assert bridge.wait_drained()["counts"]["done"] == 5
    assert_in_orthanc_equal(side.server, datasets)


def test_unacknowledged_leftovers_are_removed_at_start(
    side: Side, proxy: FaultProxy, make_bridge: Any, tmp_path: Path
) -> None:
    """A file without an index row (written, never acknowledged) is removed with a
    WARNING; a row whose file vanished is dead with "file missing"."""
    datasets, _ = instances("leftover", 2, tmp_path)
    proxy.fail(503, STOW, method="POST")
    bridge = make_bridge()
    process = bridge.start()
    assert pynetdicom_store(process, datasets) == [SUCCESS] * 2
    assert bridge.stop() == 0
    files = bridge.spool_dir / "files"
    stray = files / "0123456789abcdef.dcm"
    stray.write_bytes(b"never acknowledged")
    victim = sorted(files.iterdir())[0] if sorted(files.iterdir())[0] != stray else None
    victim = victim or sorted(files.iterdir())[1]
    victim.unlink()
    proxy.clear_faults()
    process = bridge.start()
    status = bridge.wait_drained()
    assert not stray.exists()
    assert "never acknowledged" in process.log_text()
    assert status["counts"]["dead"] == 1 and status["counts"]["done"] == 1
    dead = json.loads(bridge.cli("list", "--state", "dead", "--json").stdout)
    assert dead[0]["last_error"] == "file missing"
