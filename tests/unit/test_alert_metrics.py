"""The metrics alerts are written on (issue 14 item 4): the DIMSE duration histogram,
aborts and timeouts by cause on real associations over loopback, the backend gauge the
readiness probe sets (and a scrape refreshes), no ``*_created`` series, and the labels of
declined transcodings and STOW-RS errors. No DICOMweb server: httpx.MockTransport."""

from __future__ import annotations

import asyncio
import http.client
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage

from bridge.app import Bridge
from bridge.config import parse_config
from bridge.dicomweb.client import DicomwebClient
from bridge.dicomweb.multipart import encode_multipart
from bridge.dimse import adapter
from bridge.dimse.observe import REJECTION_REASONS, dimse_event_handlers, rejection_reason
from bridge.dimse.sop import VERIFICATION
from bridge.models import InstanceRef
from bridge.ops.http import OpsServer
from bridge.ops.metrics import ABORT_CAUSES, DIMSE_BUCKETS, Metrics
from tests.integration.tools import free_port

ABORTS = "dimse_bridge_association_aborts_total"


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def aborts(metrics: Metrics) -> dict[str, float]:
    return {cause: value(metrics, ABORTS, cause=cause) for cause in ABORT_CAUSES}


def only(cause: str) -> dict[str, float]:
    """One abort of `cause` and none of any other."""
    assert cause in ABORT_CAUSES
    return {c: (1.0 if c == cause else 0.0) for c in ABORT_CAUSES}


NO_ABORTS = dict.fromkeys(ABORT_CAUSES, 0.0)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --- the registry -------------------------------------------------------------------------


def test_no_created_series() -> None:
    m = Metrics()
    m.dimse_request("C-FIND", 0)
    m.dimse_duration("C-FIND", 0, 0.02)
    m.http_request("default", "qido", "200", 0.01)
    text = m.render()[0].decode()
    assert "dimse_bridge_dimse_requests_total{" in text
    assert "_created" not in text


def test_duration_buckets_tell_a_c_echo_from_a_study_c_move() -> None:
    m = Metrics()
    m.dimse_duration("C-ECHO", 0x0000, 0.0015)
    m.dimse_duration("C-MOVE", 0xA702, 20 * 60.0)
    m.dimse_duration("C-MOVE", 0xFE00, 3.0)
    name = "dimse_bridge_dimse_request_seconds_bucket"
    echo = {"service": "C-ECHO", "category": "success"}
    assert value(m, name, le="0.001", **echo) == 0
    assert value(m, name, le="0.0025", **echo) == 1
    failed = {"service": "C-MOVE", "category": "failure"}
    assert value(m, name, le="600.0", **failed) == 0
    assert value(m, name, le="1800.0", **failed) == 1
    assert value(m, name, le="5.0", service="C-MOVE", category="cancel") == 1
    assert value(m, "dimse_bridge_dimse_request_seconds_count", **failed) == 1
    assert DIMSE_BUCKETS[0] <= 0.001 and DIMSE_BUCKETS[-1] >= 3600


def test_every_abort_cause_starts_at_zero_and_unknown_ones_are_bridge_aborts() -> None:
    m = Metrics()
    text = m.render()[0].decode()
    for cause in ABORT_CAUSES:
        assert f'{ABORTS}{{cause="{cause}"}} 0.0' in text
    m.association_aborted("a cause nobody listed")
    assert aborts(m) == only("bridge_abort")


def test_the_adapter_causes_are_the_metric_label_set() -> None:
    causes = {
        adapter.PEER_ABORT,
        adapter.CONNECTION_LOST,
        adapter.BRIDGE_ABORT,
        adapter.IDLE_TIMEOUT,
        adapter.ARTIM_TIMEOUT,
        adapter.DIMSE_TIMEOUT,
        adapter.SHUTDOWN,
    }
    assert causes == set(ABORT_CAUSES)


def test_cancel_and_rejection_series_exist_before_the_first_one() -> None:
    m = Metrics()
    dimse_event_handlers(m)
    for service in ("C-FIND", "C-GET", "C-MOVE"):
        assert m.registry.get_sample_value("dimse_bridge_cancels_total", {"service": service}) == 0
    for reason in REJECTION_REASONS:
        labels = {"reason": reason}
        assert m.registry.get_sample_value("dimse_bridge_association_rejections_total", labels) == 0
    m.backend_configured("pacs")
    assert (
        m.registry.get_sample_value("dimse_bridge_dicomweb_circuit_open", {"backend": "pacs"}) == 0
    )
    openings = "dimse_bridge_dicomweb_circuit_openings_total"
    assert m.registry.get_sample_value(openings, {"backend": "pacs"}) == 0


def test_rejection_reasons_lists_what_rejection_reason_returns() -> None:
    assert rejection_reason(object()) in REJECTION_REASONS  # broken input: "other"


# --- aborts and timeouts on real associations ---------------------------------------------


class Server:
    """A pynetdicom SCP with the bridge's observer (and its adapter preparation)."""

    def __init__(self, *, network_timeout: float = 30, acse_timeout: float = 30) -> None:
        self.metrics = Metrics()
        self.ae = AE(ae_title="OPS_TEST")
        self.ae.add_supported_context(VERIFICATION)
        self.ae.network_timeout = network_timeout
        self.ae.acse_timeout = acse_timeout
        handlers = [
            (evt.EVT_CONN_OPEN, lambda event: adapter.prepare(event.assoc)),
            *dimse_event_handlers(self.metrics),
        ]
        server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        assert server is not None
        self.server = server
        self.port = int(server.server_address[1])

    def associate(self) -> Any:
        scu = AE(ae_title="FRIEND")
        scu.add_requested_context(VERIFICATION)
        scu.network_timeout = 30
        assoc = scu.associate("127.0.0.1", self.port, ae_title="OPS_TEST")
        assert assoc.is_established
        return assoc


@pytest.fixture
def make_server() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(**kwargs: float) -> Server:
        servers.append(Server(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.server.shutdown()


def test_a_real_c_echo_is_timed(make_server: Callable[..., Server]) -> None:
    server = make_server()
    assoc = server.associate()
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    labels = {"service": "C-ECHO", "category": "success"}
    count = "dimse_bridge_dimse_request_seconds_count"
    assert wait_for(lambda: value(server.metrics, count, **labels) == 1)
    seconds = value(server.metrics, "dimse_bridge_dimse_request_seconds_sum", **labels)
    assert 0 < seconds < 30
    assert aborts(server.metrics) == NO_ABORTS  # released


def test_peer_abort(make_server: Callable[..., Server]) -> None:
    server = make_server()
    server.associate().abort()
    assert wait_for(lambda: sum(aborts(server.metrics).values()) >= 1)
    assert aborts(server.metrics) == only("peer_abort")


SILENT_PEER = textwrap.dedent(
    """
    import sys, time
    from pynetdicom import AE
    ae = AE(ae_title="FRIEND")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="OPS_TEST")
    print("established" if assoc.is_established else "refused", flush=True)
    time.sleep(60)
    """
)


def test_a_peer_process_that_dies_is_a_lost_connection(
    make_server: Callable[..., Server],
) -> None:
    server = make_server()
    peer = subprocess.Popen(
        [sys.executable, "-c", SILENT_PEER, str(server.port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert peer.stdout is not None
        assert peer.stdout.readline().strip() == "established"
        assert wait_for(lambda: value(server.metrics, "dimse_bridge_associations_active") == 1)
        peer.kill()  # the kernel closes its socket: no A-ABORT, no A-RELEASE
    finally:
        peer.wait(10)
        if peer.stdout is not None:
            peer.stdout.close()
    assert wait_for(lambda: sum(aborts(server.metrics).values()) >= 1)
    assert aborts(server.metrics) == only("connection_lost")


def test_idle_timeout(make_server: Callable[..., Server]) -> None:
    server = make_server(network_timeout=0.5)
    assoc = server.associate()
    try:
        assert wait_for(lambda: sum(aborts(server.metrics).values()) >= 1)
        assert aborts(server.metrics) == only("idle_timeout")
        assert wait_for(lambda: assoc.is_aborted)
    finally:
        assoc.release()


def test_artim_timeout_of_a_silent_connection_but_not_of_a_probe(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(acse_timeout=0.5)
    # A TCP probe that connects and hangs up at once: not a timeout.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
    time.sleep(1.0)
    assert aborts(server.metrics) == NO_ABORTS
    # A client that connects and sends nothing: pynetdicom's ARTIM timer closes it.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as silent:
        silent.settimeout(5)
        assert silent.recv(1) == b""  # closed by the bridge's side
    assert wait_for(lambda: sum(aborts(server.metrics).values()) >= 1)
    assert aborts(server.metrics) == only("artim_timeout")


@pytest.fixture
def pynetdicom_settings() -> Iterator[None]:
    """DimseServer changes pynetdicom's process-wide settings: put them back afterwards,
    so that this process's other SCPs keep the defaults."""
    saved = {k: v for k, v in vars(_config).items() if k.isupper()}
    yield
    for key, saved_value in saved.items():
        setattr(_config, key, saved_value)


def test_associations_still_open_at_shutdown_are_aborted_as_shutdown(
    pynetdicom_settings: None, tmp_path: Path
) -> None:
    config = parse_config(
        {
            "dimse": {"host": "127.0.0.1", "port": free_port(), "shutdown_timeout": 0.2},
            # Nothing listens there: this bridge serves no request.
            "dicomweb": {"url": "http://127.0.0.1:9/dicom-web"},
        }
    )
    bridge = Bridge(config)
    bridge.start()
    try:
        port = config.dimse.port
        scu = AE(ae_title="FRIEND")
        scu.add_requested_context(VERIFICATION)
        assoc = scu.associate("127.0.0.1", port, ae_title="DIMSE_BRIDGE")
        assert assoc.is_established
        assert wait_for(lambda: value(bridge.metrics, "dimse_bridge_associations_active") == 1)
    finally:
        bridge.stop()
    assert wait_for(lambda: sum(aborts(bridge.metrics).values()) >= 1)
    assert aborts(bridge.metrics) == only("shutdown")
    assert wait_for(lambda: assoc.is_aborted)


# --- the backend gauge ---------------------------------------------------------------------


def scrape(server: OpsServer) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def test_a_scrape_runs_the_readiness_probe_that_sets_backend_up() -> None:
    metrics = Metrics()
    answers = {"default": True, "archive": False}
    calls = []

    def ready() -> tuple[bool, str]:
        # What Bridge.ready does: one probe per backend, reported by the DICOMweb client.
        calls.append(1)
        for name, ok in answers.items():
            metrics.http_request(name, "probe", "200" if ok else "connect_error", 0.01)
        return all(answers.values()), "archive: refused"

    server = OpsServer("127.0.0.1:0", metrics, ready, ready_cache_s=0)
    server.start()
    try:
        text = scrape(server)
        assert 'dimse_bridge_backend_up{backend="default"} 1.0' in text
        assert 'dimse_bridge_backend_up{backend="archive"} 0.0' in text
        answers["archive"] = True
        assert 'dimse_bridge_backend_up{backend="archive"} 1.0' in scrape(server)
        assert len(calls) == 2
    finally:
        server.stop()


def test_backend_up_follows_probes_and_the_circuit_breaker() -> None:
    m = Metrics()
    m.http_request("pacs", "qido", "503", 0.1)  # not a probe: no opinion
    assert m.registry.get_sample_value("dimse_bridge_backend_up", {"backend": "pacs"}) is None
    m.http_request("pacs", "probe", "200", 0.1)
    assert value(m, "dimse_bridge_backend_up", backend="pacs") == 1
    m.http_request("pacs", "probe", "cancelled", 5.0)  # no answer within the 5 s check
    assert value(m, "dimse_bridge_backend_up", backend="pacs") == 0
    m.http_request("pacs", "probe", "200", 0.1)
    m.circuit_state("pacs", "open")  # probes now fail without asking: no outcome comes
    assert value(m, "dimse_bridge_backend_up", backend="pacs") == 0
    m.circuit_state("pacs", "half_open")
    m.http_request("pacs", "probe", "200", 0.1)
    m.circuit_state("pacs", "closed")
    assert value(m, "dimse_bridge_backend_up", backend="pacs") == 1


# --- HTTP outcome labels -------------------------------------------------------------------

REF = InstanceRef("1.2.3", "1.2.3.4", "1.2.3.4.5", str(CTImageStorage))
J2K = "1.2.840.10008.1.2.4.90"


def part10() -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = REF.sop_instance_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = REF.study_uid, REF.series_uid
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def observed(answer: Callable[[httpx.Request], httpx.Response], call: Any) -> list[str]:
    """The outcome labels the client reports for the exchanges of `call(client)`."""
    seen: list[str] = []

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            client = DicomwebClient(
                http,
                "http://pacs/dicom-web",
                query_encoding="dicom",
                observer=lambda backend, kind, outcome, seconds: seen.append(f"{kind}:{outcome}"),
            )
            await call(client)

    asyncio.run(go())
    return seen


def orthanc_like(request: httpx.Request) -> httpx.Response:
    """Answers as stored; HTTP 500 for a transcoding (Orthanc's answer for JPEG 2000)."""
    if "transfer-syntax=*" not in request.headers["accept"]:
        return httpx.Response(500, text="cannot transcode")
    content_type, chunks = encode_multipart([("application/dicom", part10())])
    body = httpx.ByteStream(b"".join(chunks))  # streamed, as the client reads WADO-RS
    return httpx.Response(200, stream=body, headers={"content-type": content_type})


def test_a_declined_transcoding_is_labelled_transcode_refused() -> None:
    seen = observed(orthanc_like, lambda c: c.retrieve_instance_transcoded(REF, J2K))
    assert seen == ["wado:transcode_refused", "wado:200"]


def test_a_failure_fetching_as_stored_keeps_its_status() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="disk full")

    async def fetch(client: DicomwebClient) -> None:
        with pytest.raises(Exception, match="500"):
            await client.retrieve_instance(REF)

    assert observed(broken, fetch) == ["wado:500"]


def test_a_stow_rs_http_error_is_labelled_with_its_status(tmp_path: Path) -> None:
    path = tmp_path / "instance.dcm"
    path.write_bytes(part10())

    def refusing(request: httpx.Request) -> httpx.Response:
        request.read()
        return httpx.Response(500, text="database locked")

    async def store(client: DicomwebClient) -> None:
        result = await client.store_instance(path, REF.sop_instance_uid)
        assert result.status_code == 500
        assert not result.stored

    assert observed(refusing, store) == ["stow:500"]
