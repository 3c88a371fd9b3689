"""The alert rules and the Grafana dashboard against a real bridge's /metrics, and the
metrics they rely on, on a real Orthanc.

After a C-ECHO, a C-FIND, a C-GET and a C-STORE through the bridge, every metric that
deploy/prometheus/alerts.yaml and deploy/grafana/dimse-bridge.json query is in the scrape
(names from tests/deploy/promql.py's tokenizer; only the spool's, listed there, are not
exported yet). The same bridge also shows what those rules depend on: the duration
histogram per service, ``dimse_bridge_backend_up`` for a backend that answers and one that
does not, a C-GET served by the bridge's own decompression after Orthanc declined the
transcoding (HTTP 500) counted as ``transcode_refused`` and not as an error, and a peer
that does not answer a C-STORE sub-operation counted as a DIMSE timeout, on the requester's
C-GET association and on a C-MOVE sub-association alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.conftest import require_orthanc
from tests.deploy.promql import SPOOL_METRICS, alert_exprs, dashboard_exprs, metric_names
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.dataset import make_ct_series, to_bytes
from tests.integration.orthanc import OrthancServer
from tests.integration.test_routing_ops import GET_MODEL, Metrics, c_find_studies, c_get_study
from tests.integration.tools import free_port
from tests.scu import c_get, c_move

pytestmark = pytest.mark.integration

MOVE_MODEL = StudyRootQueryRetrieveInformationModelMove
DIMSE_TIMEOUT_S = 2.0  # the bridge's [move] dimse_timeout: also its C-GET sub-operations'
BRIDGE_AE = "DIMSE_BRIDGE"
SLOW_AE = "SLOWSCP"  # a C-MOVE destination that stalls on its first C-STORE


@dataclass(frozen=True)
class Observed:
    bridge: BridgeProcess
    ops_url: str
    ct_study_uid: str
    ct_uids: tuple[str, ...]
    j2k: Dataset  # stored as JPEG 2000 Lossless, which Orthanc cannot transcode
    slow_port: int  # where the bridge's [[peers]] entry SLOWSCP points

    def scrape_text(self) -> str:
        response = httpx.get(self.ops_url + "/metrics", timeout=10)
        assert response.status_code == 200
        return response.text

    def metrics_when(self, settled: Callable[[Metrics], bool], timeout: float = 5.0) -> Metrics:
        """The first scrape for which `settled` holds (the last one after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            scrape = Metrics(self.scrape_text())
            if settled(scrape) or time.monotonic() > deadline:
                return scrape
            time.sleep(0.05)

    def settled(self) -> Metrics:
        """A scrape once every association has ended (counters are final then)."""
        return self.metrics_when(lambda m: m.value("dimse_bridge_associations_active") == 0)


def j2k_instance() -> Dataset:
    path = get_testdata_file("MR_small_jp2klossless.dcm")
    if path is None:
        pytest.skip("pydicom test file MR_small_jp2klossless.dcm is not available")
    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    # pydicom's MR_small files share UIDs: fresh ones, so that nothing else collides.
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        setattr(ds, keyword, generate_uid(entropy_srcs=["dashboards", keyword]))
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["dashboards", "j2k"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "DASH0001"
    return ds


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    """A private Orthanc with a 3-instance CT series and one JPEG 2000 MR instance, and a
    bridge on it with the ops listener and a second backend nothing listens for."""
    require_orthanc()
    workdir = tmp_path_factory.mktemp("dashboards")
    ct = make_ct_series(3, key="dashboards", patient_id="DASH0001", accession="ACCDASH1")
    j2k = j2k_instance()
    server = OrthancServer(workdir / "orthanc").start()
    bridge: BridgeProcess | None = None
    try:
        assert server.upload_many([*(to_bytes(ds) for ds in ct), to_bytes(j2k)]) == 4
        ops = f"127.0.0.1:{free_port()}"
        slow_port = free_port()
        config = bridge_config(
            server.dicomweb_url,
            free_port(),
            ops={"listen": ops},
            backends={"down": {"ae_title": "DOWN_GW", "url": f"http://127.0.0.1:{free_port()}/"}},
            move__dimse_timeout=DIMSE_TIMEOUT_S,
            peers=[(SLOW_AE, "127.0.0.1", slow_port)],
            # Spool mode, so that the spool's metrics are in the scrape too.
            store={"mode": "spool", "spool_dir": str(workdir / "spool")},
        )
        bridge = start_bridge(config, workdir, name="dashboards-bridge")
        yield Observed(
            bridge=bridge,
            ops_url=f"http://{ops}",
            ct_study_uid=str(ct[0].StudyInstanceUID),
            ct_uids=tuple(str(ds.SOPInstanceUID) for ds in ct),
            j2k=j2k,
            slow_port=slow_port,
        )
    finally:
        if bridge is not None:
            bridge.stop()
        server.stop()


def c_echo_and_store(port: int, dataset: Dataset) -> tuple[int, int]:
    """A C-ECHO and a C-STORE of `dataset` on one association: their statuses."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=BRIDGE_AE)
    assert assoc.is_established
    try:
        echo = int(assoc.send_c_echo().Status)
        store = int(assoc.send_c_store(dataset).Status)
    finally:
        assoc.release()
    return echo, store


def scrape_names(text: str) -> set[str]:
    """Every family and sample name of a scrape (a histogram's ``_bucket``, ...)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_of_the_rules_and_the_dashboard_is_in_a_real_scrape(
    observed: Observed,
) -> None:
    port = observed.bridge.port
    matches, status = c_find_studies(port, BRIDGE_AE, PatientID="DASH0001")
    assert status == 0x0000
    assert {str(m.StudyInstanceUID) for m in matches} == {
        observed.ct_study_uid,
        str(observed.j2k.StudyInstanceUID),
    }
    outcome = c_get_study(port, BRIDGE_AE, observed.ct_study_uid, CTImageStorage)
    assert outcome.status == 0x0000, outcome.final
    assert sorted(outcome.received_uids) == sorted(observed.ct_uids)
    (new,) = make_ct_series(1, key="dashboards-store", patient_id="DASH0002")
    assert c_echo_and_store(port, new) == (0x0000, 0x0000)

    observed.settled()
    # The spooled C-STORE is uploaded in the background: done once Orthanc has it.
    scrape = observed.metrics_when(
        lambda m: m.value("dimse_bridge_spool_instances", state="done") >= 1, timeout=20
    )
    assert scrape.value("dimse_bridge_spool_instances", state="done") >= 1
    text = observed.scrape_text()
    names = scrape_names(text)
    queried = {
        **{f"alert {name}": expr for name, expr in alert_exprs().items()},
        **{f"panel {name}": expr for name, expr in dashboard_exprs().items()},
    }
    missing = {
        where: sorted(metric_names(expr) - names)
        for where, expr in queried.items()
        if metric_names(expr) - names
    }
    assert missing == {}, missing
    assert "_created" not in text

    count = "dimse_bridge_dimse_request_seconds_count"
    for service in ("C-ECHO", "C-FIND", "C-GET", "C-STORE"):
        assert scrape.value(count, service=service, category="success") >= 1, service
    assert scrape.value("dimse_bridge_bytes_total", service="C-STORE", direction="in") > 0
    assert scrape.value("dimse_bridge_backend_up", backend="default") == 1
    assert scrape.value("dimse_bridge_backend_up", backend="down") == 0
    assert SPOOL_METRICS <= {sample for sample in names if sample.startswith("dimse_bridge_spool")}
    assert scrape.value("dimse_bridge_spool_instances", state="queued") == 0


def test_a_declined_transcoding_done_by_the_bridge_is_no_http_error(observed: Observed) -> None:
    """Orthanc answers HTTP 500 when asked to turn JPEG 2000 into Explicit VR LE; the
    bridge decompresses the instance itself and the C-GET succeeds. Before, that 500 was
    counted as outcome="500", what an error-rate alert fires on."""
    before = observed.settled()
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = observed.j2k.StudyInstanceUID
    query.SeriesInstanceUID = observed.j2k.SeriesInstanceUID
    query.SOPInstanceUID = observed.j2k.SOPInstanceUID
    outcome = c_get(
        AE(ae_title="GETSCU"),
        ("127.0.0.1", observed.bridge.port, BRIDGE_AE),
        query,
        GET_MODEL,
        [(MRImageStorage, [ExplicitVRLittleEndian])],
    )
    assert outcome.status == 0x0000, outcome.final
    assert outcome.received_uids == [str(observed.j2k.SOPInstanceUID)]
    assert outcome.received[0].transfer_syntax == ExplicitVRLittleEndian
    after = observed.settled()

    def delta(**labels: str) -> float:
        name = "dimse_bridge_http_requests_total"
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta(kind="wado", outcome="transcode_refused") >= 1
    assert delta(kind="wado", outcome="500") == 0
    assert delta(kind="wado") == delta(kind="wado", outcome="200") + delta(
        kind="wado", outcome="transcode_refused"
    )


def test_a_peer_that_does_not_answer_a_c_store_is_a_dimse_timeout(observed: Observed) -> None:
    """The C-GET requester's C-STORE handler takes twice the bridge's DIMSE timeout on the
    first instance: the bridge aborts the association, counted as dimse_timeout."""
    before = observed.settled()

    def stall(item: Any, n: int) -> None:
        if n == 1:
            time.sleep(DIMSE_TIMEOUT_S * 2)

    outcome = c_get_study(
        observed.bridge.port, BRIDGE_AE, observed.ct_study_uid, CTImageStorage, stall
    )
    assert outcome.status != 0x0000
    name = "dimse_bridge_association_aborts_total"
    after = observed.metrics_when(
        lambda m: m.value(name, cause="dimse_timeout") > before.value(name, cause="dimse_timeout")
    )
    for cause in ("dimse_timeout", "peer_abort", "connection_lost", "bridge_abort"):
        expected = 1 if cause == "dimse_timeout" else 0
        assert after.value(name, cause=cause) - before.value(name, cause=cause) == expected, cause


def test_a_c_move_destination_that_does_not_answer_is_a_dimse_timeout(
    observed: Observed,
) -> None:
    """The C-MOVE destination's C-STORE handler takes twice the bridge's DIMSE timeout:
    the bridge aborts its own sub-association, counted as dimse_timeout."""
    release = threading.Event()

    def handle_store(event: Any) -> int:
        release.wait(DIMSE_TIMEOUT_S * 2)
        return 0x0000

    destination = AE(ae_title=SLOW_AE)
    destination.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = destination.start_server(
        ("127.0.0.1", observed.slow_port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, handle_store)],
    )
    assert server is not None
    before = observed.settled()
    name = "dimse_bridge_association_aborts_total"
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = observed.ct_study_uid
        outcome = c_move(
            AE(ae_title="MOVESCU"),
            ("127.0.0.1", observed.bridge.port, BRIDGE_AE),
            query,
            SLOW_AE,
            MOVE_MODEL,
        )
        assert outcome.status != 0x0000, outcome.final
        after = observed.metrics_when(
            lambda m: (
                m.value(name, cause="dimse_timeout") > before.value(name, cause="dimse_timeout")
            )
        )
    finally:
        release.set()
        server.shutdown()
    for cause in ("dimse_timeout", "peer_abort", "connection_lost", "bridge_abort"):
        expected = 1 if cause == "dimse_timeout" else 0
        assert after.value(name, cause=cause) - before.value(name, cause=cause) == expected, cause
