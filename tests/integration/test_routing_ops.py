"""Named backends routed by called AE title, and the operations side of a running bridge.

(a) ``[backends.second]`` with ``ae_title = "SECOND_GW"``: C-FIND/C-GET sent to that called
    AE are answered from Orthanc B, everything else from ``[dicomweb]`` (Orthanc A, the
    session Orthanc). An unknown called AE title is accepted (pynetdicom does not check
    called AE titles) and served by the default backend, like the bridge's own title.
(b) ``[ops] listen``: /healthz, /readyz following the DICOMweb server (cached ~2 s),
    /metrics counting associations, DIMSE requests, sub-operations, HTTP requests, bytes
    and cancels (read as deltas: the ops bridge is shared by the tests of this module).
(c) ``[logging] format = "json"``: one JSON object per line, and no patient name in it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.conftest import OrthancFixture, require_orthanc
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.dataset import Manifest, make_ct_series, to_bytes, write_dataset
from tests.integration.orthanc import OrthancServer
from tests.integration.tools import free_port
from tests.scu import RetrieveOutcome, c_get

FIND_MODEL = StudyRootQueryRetrieveInformationModelFind
GET_MODEL = StudyRootQueryRetrieveInformationModelGet
SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
MSG_ID = 5
SECOND_AE = "SECOND_GW"
READY_CACHE_S = 2.0  # bridge/ops/http.py DEFAULT_READY_CACHE_S


# --------------------------------------------------------------------------- SCUs


def _ae(ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = 10
    ae.dimse_timeout = 30
    ae.network_timeout = 30
    return ae


def c_find_studies(
    port: int, called: str, calling: str = "FINDSCU", **keys: str
) -> tuple[list[Dataset], int]:
    """STUDY-level Study Root C-FIND to 127.0.0.1:`port` as `called`: (matches, status)."""
    ae = _ae(calling)
    ae.add_requested_context(FIND_MODEL)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, f"association to {called} refused"
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientID = ""
    query.PatientName = ""
    query.RetrieveAETitle = ""
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    matches: list[Dataset] = []
    status = -1
    try:
        for rsp, identifier in assoc.send_c_find(query, FIND_MODEL):
            if "Status" not in rsp:
                break
            if int(rsp.Status) in (PENDING, 0xFF01):
                assert identifier is not None  # a pending response carries its match
                matches.append(identifier)
            else:
                status = int(rsp.Status)
    finally:
        assoc.release()
    return matches, status


def c_get_study(
    port: int,
    called: str,
    study_uid: str,
    sop_class: str,
    on_store: Callable[[Any, int], None] | None = None,
) -> RetrieveOutcome:
    """C-GET one study (STUDY level) as GETSCU, storing `sop_class` in Explicit VR LE."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return c_get(
        _ae("GETSCU"),
        ("127.0.0.1", port, called),
        query,
        GET_MODEL,
        [(sop_class, [ExplicitVRLittleEndian])],
        msg_id=MSG_ID,
        on_store=None if on_store is None else lambda item, n: on_store(item.event.assoc, n),
    )


# --------------------------------------------------------------------------- (a) routing


@dataclass(frozen=True)
class Routing:
    bridge: BridgeProcess
    b_study_uid: str
    b_uids: tuple[str, ...]


@pytest.fixture(scope="module")
def routing(orthanc: OrthancFixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routing]:
    """Orthanc B (a private one holding 3 generated CT instances) and a bridge with
    ``[dicomweb]`` → Orthanc A (the session Orthanc), ``[backends.second]`` → Orthanc B."""
    require_orthanc()
    datasets = make_ct_series(3, key="routing-b", patient_id="ROUTEB01", accession="ACCROUTB")
    server_b = OrthancServer(tmp_path_factory.mktemp("orthanc-b")).start()
    bridge: BridgeProcess | None = None
    try:
        server_b.upload_many(to_bytes(ds) for ds in datasets)
        assert server_b.statistics()["CountInstances"] == 3
        config = bridge_config(
            orthanc.dicomweb_url,
            free_port(),
            backends={"second": {"ae_title": SECOND_AE, "url": server_b.dicomweb_url}},
        )
        bridge = start_bridge(config, tmp_path_factory.mktemp("bridge-routing"), name="routing")
        yield Routing(
            bridge=bridge,
            b_study_uid=str(datasets[0].StudyInstanceUID),
            b_uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
        )
    finally:
        if bridge is not None:
            bridge.stop()
        server_b.stop()


def test_own_and_unknown_called_ae_use_the_default_backend(
    routing: Routing, orthanc: OrthancFixture
) -> None:
    """Called AE DIMSE_BRIDGE, and an unknown one (OTHER): answered from Orthanc A."""
    a_studies = sorted(orthanc.manifest.study_uids)
    for called in ("DIMSE_BRIDGE", "OTHER"):
        matches, status = c_find_studies(routing.bridge.port, called)
        assert status == SUCCESS, called
        assert sorted(str(m.StudyInstanceUID) for m in matches) == a_studies, called
        assert all(m.RetrieveAETitle == "DIMSE_BRIDGE" for m in matches), called
    log = routing.bridge.log_text()
    assert f"called AE {SECOND_AE} → backend second" in log, routing.bridge.log_tail()


def test_second_gw_find_answers_from_the_second_backend(routing: Routing) -> None:
    matches, status = c_find_studies(routing.bridge.port, SECOND_AE)
    assert status == SUCCESS
    assert [str(m.StudyInstanceUID) for m in matches] == [routing.b_study_uid]
    assert [str(m.PatientID) for m in matches] == ["ROUTEB01"]


def test_second_gw_get_retrieves_from_the_second_backend(routing: Routing) -> None:
    outcome = c_get_study(routing.bridge.port, SECOND_AE, routing.b_study_uid, CTImageStorage)
    assert outcome.status == SUCCESS, outcome.final
    assert sorted(outcome.received_uids) == sorted(routing.b_uids)
    assert outcome.count("NumberOfCompletedSuboperations") == 3


def test_second_gw_find_names_second_gw_as_retrieve_ae(routing: Routing) -> None:
    matches, status = c_find_studies(
        routing.bridge.port, SECOND_AE, StudyInstanceUID=routing.b_study_uid
    )
    assert status == SUCCESS
    assert [str(m.RetrieveAETitle) for m in matches] == [SECOND_AE]


# --------------------------------------------------------------------------- (b)(c) ops


@dataclass(frozen=True)
class Ops:
    bridge: BridgeProcess
    server: OrthancServer
    manifest: Manifest
    ops_url: str

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.ops_url + path, timeout=10)

    def metrics(self) -> Metrics:
        response = self.get("/metrics")
        assert response.status_code == 200
        return Metrics(response.text)

    def metrics_when(self, settled: Callable[[Metrics], bool], timeout: float = 3.0) -> Metrics:
        """The first scrape for which `settled` holds (the last one after `timeout`): the
        bridge updates some counters on its own threads, after the SCU saw the answer."""
        deadline = time.monotonic() + timeout
        while True:
            scrape = self.metrics()
            if settled(scrape) or time.monotonic() > deadline:
                return scrape
            time.sleep(0.05)


class Metrics:
    """A parsed /metrics scrape."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    """A private Orthanc with the standard data set, and a bridge on it with the ops
    listener, JSON logs, and an allow-list (GETSCU and FINDSCU only)."""
    require_orthanc()
    root = tmp_path_factory.mktemp("ops")
    manifest = write_dataset(root / "dataset")
    server = OrthancServer(root / "orthanc").start()
    bridge: BridgeProcess | None = None
    try:
        server.upload_many(manifest.paths)
        listen = f"127.0.0.1:{free_port()}"
        config = bridge_config(
            server.dicomweb_url,
            free_port(),
            accept_unknown_peers=False,
            peers=[("GETSCU", "127.0.0.1", 11113), ("FINDSCU", "127.0.0.1", 11114)],
            ops={"listen": listen},
            logging={"format": "json", "level": "INFO"},
        )
        bridge = start_bridge(config, root, name="ops")
        yield Ops(bridge=bridge, server=server, manifest=manifest, ops_url=f"http://{listen}")
    finally:
        if bridge is not None:
            bridge.stop()
        server.stop()


def mr_study(manifest: Manifest) -> tuple[str, list[str]]:
    """P002's study (MR only, 6 instances): its UID and instance UIDs."""
    (study,) = manifest.studies_of("P002")
    uids = [i.SOPInstanceUID for i in manifest.instances_of(study_uid=study.StudyInstanceUID)]
    return study.StudyInstanceUID, uids


def test_metrics_after_a_c_get(ops: Ops) -> None:
    """A C-GET of a 6-instance study moves the sub-operation, request, HTTP and byte
    counters by exactly what it did."""
    study_uid, uids = mr_study(ops.manifest)
    before = ops.metrics()
    outcome = c_get_study(ops.bridge.port, "DIMSE_BRIDGE", study_uid, MRImageStorage)
    assert outcome.status == SUCCESS, outcome.final
    assert sorted(outcome.received_uids) == sorted(uids)
    # The association was released: wait until the bridge has seen it end.
    after = ops.metrics_when(lambda m: m.value("dimse_bridge_associations_active") == 0)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    n = len(uids)
    assert n == 6
    subops = "dimse_bridge_suboperations_total"
    assert delta(subops, service="C-GET", outcome="completed") == n
    assert delta(subops, service="C-GET", outcome="failed") == 0
    assert delta(subops, service="C-GET", outcome="warning") == 0
    requests = "dimse_bridge_dimse_requests_total"
    assert delta(requests, service="C-GET", status="0x0000", category="success") == 1
    assert delta(requests, service="C-GET") == 1
    http = "dimse_bridge_http_requests_total"
    assert delta(http, backend="default", kind="wado", outcome="200") >= n
    assert delta(http, backend="default", kind="qido", outcome="200") >= 1
    sent = delta("dimse_bridge_bytes_total", service="C-GET", direction="out")
    assert sent >= sum(len(item.raw) for item in outcome.received) * 0.9, sent
    assert delta("dimse_bridge_associations_total", outcome="accepted") == 1
    assert after.value("dimse_bridge_associations_active") == 0
    assert after.value("dimse_bridge_build_info") == 1


def test_rejected_association_is_counted(ops: Ops) -> None:
    """An AE title missing from the allow-list is rejected, and counted once with its
    reason."""
    before = ops.metrics()
    ae = _ae("INTRUDER")
    ae.add_requested_context(FIND_MODEL)
    assoc = ae.associate("127.0.0.1", ops.bridge.port, ae_title="DIMSE_BRIDGE")
    assert not assoc.is_established
    assert assoc.is_rejected
    total = "dimse_bridge_associations_total"
    rejected_before = before.value(total, outcome="rejected")
    after = ops.metrics_when(lambda m: m.value(total, outcome="rejected") > rejected_before)
    assert after.value(total, outcome="rejected") - before.value(total, outcome="rejected") == 1
    assert after.value(total, outcome="accepted") == before.value(total, outcome="accepted")
    reasons = "dimse_bridge_association_rejections_total"
    reason = {"reason": "calling_ae_not_recognized"}
    assert after.value(reasons, **reason) - before.value(reasons, **reason) == 1


def test_cancelled_c_get_is_counted(ops: Ops) -> None:
    """A C-CANCEL sent after the first of 6 instances: 0xFE00, one cancel counted."""
    study_uid, _uids = mr_study(ops.manifest)
    before = ops.metrics()

    def on_store(assoc: Any, n: int) -> None:
        if n == 1:
            assoc.send_c_cancel(MSG_ID, query_model=GET_MODEL)

    outcome = c_get_study(ops.bridge.port, "DIMSE_BRIDGE", study_uid, MRImageStorage, on_store)
    assert outcome.status == CANCEL, outcome.final
    assert len(outcome.received) == 1
    after = ops.metrics()
    cancels = "dimse_bridge_cancels_total"
    assert after.value(cancels, service="C-GET") - before.value(cancels, service="C-GET") == 1
    requests = "dimse_bridge_dimse_requests_total"
    cancel = {"service": "C-GET", "status": "0xFE00", "category": "cancel"}
    assert after.value(requests, **cancel) - before.value(requests, **cancel) == 1


def json_lines(bridge: BridgeProcess) -> list[dict[str, Any]]:
    """Every line the bridge wrote, parsed; the runner's own ``=====`` header excepted."""
    entries = []
    for line in bridge.log_text().splitlines():
        if line.startswith("===== ") and line.endswith(" ====="):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line in the bridge's output: {line!r}")
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def test_json_logs_and_no_patient_names(ops: Ops) -> None:
    """format = "json": every line is a JSON object with level, logger and msg; a C-GET
    logs an INFO "C-GET done" line; C-FINDs by PatientName leave no name in the log."""
    names = sorted({p.PatientName for p in ops.manifest.patients})
    queries = ["DOE^JANE", "SMITH^ANNA", "VAN DEN BERG^PIETER", "DOE^*", "M*LLER^HANS"]
    for query in queries:
        matches, status = c_find_studies(ops.bridge.port, "DIMSE_BRIDGE", PatientName=query)
        assert status == SUCCESS, query
        assert matches, query
    study_uid, uids = mr_study(ops.manifest)
    done_before = ops.bridge.log_text().count("C-GET done")
    outcome = c_get_study(ops.bridge.port, "DIMSE_BRIDGE", study_uid, MRImageStorage)
    assert outcome.status == SUCCESS
    deadline = time.monotonic() + 3  # the summary may be written after the final response
    while ops.bridge.log_text().count("C-GET done") == done_before:
        assert time.monotonic() < deadline, "no 'C-GET done' line after the C-GET"
        time.sleep(0.05)

    entries = json_lines(ops.bridge)
    assert len(entries) > 10
    for entry in entries:
        assert isinstance(entry.get("level"), str) and entry["level"], entry
        assert isinstance(entry.get("logger"), str) and entry["logger"], entry
        assert isinstance(entry.get("msg"), str), entry
    done = [e for e in entries if e["level"] == "INFO" and "C-GET done" in e["msg"]]
    assert done, [e["msg"] for e in entries][-20:]
    assert any(f"{len(uids)}/{len(uids)} instances sent" in e["msg"] for e in done), done
    assert any(e["level"] == "INFO" and "C-FIND done" in e["msg"] for e in entries)

    text = ops.bridge.log_text()
    decoded = json.dumps(entries, ensure_ascii=False)
    for needle in [*names, *queries, "DOE^", "LLER^HANS", "PIETER"]:
        assert needle not in text, f"{needle!r} in the bridge's log"
        assert needle not in decoded, f"{needle!r} in the bridge's log"


def poll_readyz(ops: Ops, status: int, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = ops.get("/readyz")
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.25)


def test_healthz_and_readyz_follow_the_dicomweb_server(ops: Ops) -> None:
    """/healthz 200 throughout; /readyz 200 while Orthanc answers, 503 with the reason
    once it is stopped (after at most the ~2 s cache), 200 again after its restart.
    Runs last in this module: it stops the Orthanc the ops bridge fronts."""
    health = ops.get("/healthz")
    assert (health.status_code, health.text) == (200, "ok\n")
    ready = ops.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.text.startswith("default: QIDO-RS answered HTTP 200"), ready.text
    assert ready.headers["cache-control"] == "no-store"
    assert ops.get("/nothing-here").status_code == 404

    ops.server.stop()
    try:
        stopped_at = time.monotonic()
        down = poll_readyz(ops, 503, timeout=READY_CACHE_S + 6)
        assert down.status_code == 503, down.text
        assert time.monotonic() - stopped_at < READY_CACHE_S + 6
        assert down.text.startswith("default: cannot connect to "), down.text
        assert ops.server.dicomweb_url in down.text
        assert ops.get("/healthz").status_code == 200  # liveness does not follow the server
    finally:
        ops.server.start()
    up = poll_readyz(ops, 200, timeout=READY_CACHE_S + 6)
    assert up.status_code == 200, up.text
    assert up.text.startswith("default: QIDO-RS answered HTTP 200"), up.text
    metrics = ops.metrics()
    probes = metrics.value("dimse_bridge_http_requests_total", backend="default", kind="probe")
    failed = metrics.value(
        "dimse_bridge_http_requests_total",
        backend="default",
        kind="probe",
        outcome="connect_error",
    )
    assert probes >= 3 and failed >= 1, (probes, failed)
    assert ops.bridge.running
