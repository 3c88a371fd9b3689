"""Unit tests for bridge.ops: metrics, the pynetdicom hooks, the ops HTTP listener, JSON
logging and progress lines. Loopback only; no DICOMweb server."""

from __future__ import annotations

import http.client
import io
import json
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event

from bridge.config import parse_listen
from bridge.dimse.observe import DimseObserver, dimse_event_handlers
from bridge.dimse.sop import STUDY_ROOT_FIND, VERIFICATION
from bridge.ops.http import CachedProbe, OpsServer
from bridge.ops.logs import TEXT_FORMAT, JsonFormatter, Progress, setup_logging
from bridge.ops.metrics import (
    CONTENT_TYPE,
    Metrics,
    status_label,
)
from bridge.translate.status import category as status_category

# --- metrics ------------------------------------------------------------------------------

def _event(**fields: Any) -> Event:
    """A stand-in for a pynetdicom event: the observer reads only these attributes."""
    return cast(Event, SimpleNamespace(**fields))



def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.association_opened()
    assert _value(a, "dimse_bridge_associations_active") == 1
    assert _value(b, "dimse_bridge_associations_active") == 0


def test_circuit_breaker_metrics_count_outages_not_probes() -> None:
    m = Metrics()
    # One outage with a failed probe, then recovery, then a second outage.
    for state in ("open", "half_open", "open", "half_open", "closed", "open"):
        m.circuit_state("pacs", state)
    name = "dimse_bridge_dicomweb_circuit_openings_total"
    assert _value(m, name, backend="pacs") == 2
    assert _value(m, "dimse_bridge_dicomweb_circuit_open", backend="pacs") == 1
    m.circuit_state("pacs", "half_open")
    m.circuit_state("pacs", "closed")
    assert _value(m, "dimse_bridge_dicomweb_circuit_open", backend="pacs") == 0
    assert _value(m, name, backend="other") == 0


def test_association_metrics() -> None:
    m = Metrics()
    assert _value(m, "dimse_bridge_associations_total", outcome="rejected") == 0
    m.association_opened()
    m.association_opened()
    m.association_closed()
    m.association_rejected("too_many_associations")
    assert _value(m, "dimse_bridge_associations_active") == 1
    assert _value(m, "dimse_bridge_associations_total", outcome="accepted") == 2
    assert _value(m, "dimse_bridge_associations_total", outcome="rejected") == 1
    assert (
        _value(m, "dimse_bridge_association_rejections_total", reason="too_many_associations") == 1
    )
    m.association_closed()
    m.association_closed()  # one too many: the gauge stays at 0
    assert _value(m, "dimse_bridge_associations_active") == 0


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (0x0000, "success"),
        (0xFE00, "cancel"),
        (0xB000, "warning"),
        (0xB007, "warning"),
        (0xBFFF, "warning"),
        (0x0001, "warning"),
        (0x0107, "warning"),
        (0x0116, "warning"),
        (0xA700, "failure"),
        (0xA900, "failure"),
        (0xC0FF, "failure"),
        (0x0122, "failure"),
        (0x0110, "failure"),
    ],
)
def test_status_category(status: int, category: str) -> None:
    assert status_category(status) == category


def test_status_label_is_four_hex_digits() -> None:
    assert status_label(0) == "0x0000"
    assert status_label(0xFE00) == "0xFE00"
    assert status_label(0xB007) == "0xB007"


def test_dimse_request_counter() -> None:
    m = Metrics()
    m.dimse_request("C-FIND", 0x0000)
    m.dimse_request("C-FIND", 0x0000)
    m.dimse_request("C-FIND", 0xA700)
    m.dimse_request("C-GET", 0xFE00)
    name = "dimse_bridge_dimse_requests_total"
    assert _value(m, name, service="C-FIND", status="0x0000", category="success") == 2
    assert _value(m, name, service="C-FIND", status="0xA700", category="failure") == 1
    assert _value(m, name, service="C-GET", status="0xFE00", category="cancel") == 1


def test_suboperations_bytes_cancels() -> None:
    m = Metrics()
    m.suboperations("C-GET", 10, 2, 1)
    m.suboperations("C-GET", 5, 0, 0)
    m.suboperations("C-MOVE", -1, 0, 3)  # a negative count is ignored, not raised
    sub = "dimse_bridge_suboperations_total"
    assert _value(m, sub, service="C-GET", outcome="completed") == 15
    assert _value(m, sub, service="C-GET", outcome="warning") == 2
    assert _value(m, sub, service="C-GET", outcome="failed") == 1
    assert _value(m, sub, service="C-MOVE", outcome="completed") == 0
    assert _value(m, sub, service="C-MOVE", outcome="failed") == 3
    m.bytes_transferred("C-GET", "out", 1000)
    m.bytes_transferred("C-GET", "out", 500)
    m.bytes_transferred("C-STORE", "in", 0)
    assert _value(m, "dimse_bridge_bytes_total", service="C-GET", direction="out") == 1500
    m.cancelled("C-FIND")
    assert _value(m, "dimse_bridge_cancels_total", service="C-FIND") == 1


def test_http_request_counter_and_histogram() -> None:
    m = Metrics()
    m.http_request("default", "qido", "200", 0.02)
    m.http_request("default", "qido", "200", 0.2)
    m.http_request("default", "wado", "timeout", 30.0)
    count = "dimse_bridge_http_requests_total"
    assert _value(m, count, backend="default", kind="qido", outcome="200") == 2
    assert _value(m, count, backend="default", kind="wado", outcome="timeout") == 1
    hist = "dimse_bridge_http_request_seconds"
    assert _value(m, hist + "_count", backend="default", kind="qido") == 2
    assert _value(m, hist + "_sum", backend="default", kind="qido") == pytest.approx(0.22)
    assert _value(m, hist + "_bucket", backend="default", kind="qido", le="0.025") == 1
    assert _value(m, hist + "_bucket", backend="default", kind="qido", le="+Inf") == 2


def test_metrics_are_thread_safe() -> None:
    m = Metrics()

    def work() -> None:
        for _ in range(1000):
            m.association_opened()
            m.dimse_request("C-ECHO", 0)
            m.association_closed()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _value(m, "dimse_bridge_associations_active") == 0
    assert _value(m, "dimse_bridge_associations_total", outcome="accepted") == 8000
    assert (
        _value(
            m,
            "dimse_bridge_dimse_requests_total",
            service="C-ECHO",
            status="0x0000",
            category="success",
        )
        == 8000
    )


def test_render_parses() -> None:
    m = Metrics()
    m.association_opened()
    m.dimse_request("C-STORE", 0xB000)
    m.http_request("default", "stow", "200", 0.5)
    body, content_type = m.render()
    assert content_type == CONTENT_TYPE
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}
    # The parser names counters without their _total suffix.
    for name in (
        "dimse_bridge_associations_active",
        "dimse_bridge_associations",
        "dimse_bridge_dimse_requests",
        "dimse_bridge_suboperations",
        "dimse_bridge_bytes",
        "dimse_bridge_http_requests",
        "dimse_bridge_http_request_seconds",
        "dimse_bridge_cancels",
        "dimse_bridge_build_info",
    ):
        assert name in families, name
    samples = [
        s for s in families["dimse_bridge_dimse_requests"].samples if s.name.endswith("_total")
    ]
    assert samples[0].labels == {"service": "C-STORE", "status": "0xB000", "category": "warning"}
    assert "process_resident_memory_bytes" in families or "process_cpu_seconds" in families


class _Clock:
    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# --- pynetdicom hooks ----------------------------------------------------------------------


class _Assoc:
    """Stands in for a pynetdicom Association: hashable and weakly referenceable, and
    established (``adapter.lost`` reads these)."""

    is_established = True
    is_aborted = False
    dul = SimpleNamespace(is_alive=lambda: True)
    acse = SimpleNamespace(is_aborted=lambda: False)


def _message(**command: int) -> SimpleNamespace:
    ds = Dataset()
    for keyword, value in command.items():
        setattr(ds, keyword, value)
    return SimpleNamespace(command_set=ds)


def test_observer_counts_final_responses_only() -> None:
    m = Metrics()
    obs = DimseObserver(m)
    assoc = _Assoc()
    sent = obs.on_dimse_sent
    sent(_event(assoc=assoc, message=_message(CommandField=0x8020, Status=0xFF00)))
    sent(_event(assoc=assoc, message=_message(CommandField=0x8020, Status=0x0000)))
    sent(_event(assoc=assoc, message=_message(CommandField=0x0001)))  # a C-STORE-RQ
    sent(
        _event(
            assoc=assoc,
            message=_message(
                CommandField=0x8010,
                Status=0xB000,
                NumberOfCompletedSuboperations=7,
                NumberOfWarningSuboperations=1,
                NumberOfFailedSuboperations=2,
            ),
        )
    )
    name = "dimse_bridge_dimse_requests_total"
    assert _value(m, name, service="C-FIND", status="0x0000", category="success") == 1
    assert _value(m, name, service="C-FIND", status="0xFF00", category="failure") == 0
    assert _value(m, name, service="C-GET", status="0xB000", category="warning") == 1
    sub = "dimse_bridge_suboperations_total"
    assert _value(m, sub, service="C-GET", outcome="completed") == 7
    assert _value(m, sub, service="C-GET", outcome="warning") == 1
    assert _value(m, sub, service="C-GET", outcome="failed") == 2


def test_observer_attributes_c_cancel_to_the_running_request() -> None:
    m = Metrics()
    obs = DimseObserver(m)
    a, b = _Assoc(), _Assoc()
    obs.on_dimse_recv(_event(assoc=a, message=_message(CommandField=0x0010)))
    obs.on_dimse_recv(_event(assoc=b, message=_message(CommandField=0x0020)))
    obs.on_dimse_recv(_event(assoc=a, message=_message(CommandField=0x0FFF)))
    obs.on_dimse_recv(_event(assoc=b, message=_message(CommandField=0x0FFF)))
    obs.on_dimse_recv(_event(assoc=_Assoc(), message=_message(CommandField=0x0FFF)))
    assert _value(m, "dimse_bridge_cancels_total", service="C-GET") == 1
    assert _value(m, "dimse_bridge_cancels_total", service="C-FIND") == 1
    assert _value(m, "dimse_bridge_cancels_total", service="unknown") == 1


def test_observer_closes_each_association_once() -> None:
    m = Metrics()
    obs = DimseObserver(m)
    assoc = _Assoc()
    event = _event(assoc=assoc)
    obs.on_established(event)
    obs.on_ended(event)  # EVT_RELEASED
    obs.on_ended(event)  # then EVT_CONN_CLOSE
    obs.on_ended(_event(assoc=_Assoc()))  # a connection never established
    assert _value(m, "dimse_bridge_associations_active") == 0
    assert _value(m, "dimse_bridge_associations_total", outcome="accepted") == 1


def _wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@pytest.fixture
def echo_server() -> Iterator[tuple[AE, Any, Metrics]]:
    metrics = Metrics()
    ae = AE(ae_title="OPS_TEST")
    ae.add_supported_context(VERIFICATION)
    ae.require_calling_aet = ["FRIEND"]
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=dimse_event_handlers(metrics)
    )
    assert server is not None
    try:
        yield ae, server, metrics
    finally:
        server.shutdown()


def test_hooks_on_a_real_association(echo_server: tuple[AE, Any, Metrics]) -> None:
    _, server, metrics = echo_server
    port = server.server_address[1]
    scu = AE(ae_title="FRIEND")
    scu.add_requested_context(VERIFICATION)
    assoc = scu.associate("127.0.0.1", port, ae_title="OPS_TEST")
    assert assoc.is_established
    assert _wait_for(lambda: _value(metrics, "dimse_bridge_associations_active") == 1)
    status = assoc.send_c_echo()
    assert status.Status == 0
    assoc.release()
    assert _wait_for(lambda: _value(metrics, "dimse_bridge_associations_active") == 0)
    assert _value(metrics, "dimse_bridge_associations_total", outcome="accepted") == 1
    assert (
        _value(
            metrics,
            "dimse_bridge_dimse_requests_total",
            service="C-ECHO",
            status="0x0000",
            category="success",
        )
        == 1
    )

    stranger = AE(ae_title="STRANGER")
    stranger.add_requested_context(VERIFICATION)
    rejected = stranger.associate("127.0.0.1", port, ae_title="OPS_TEST")
    assert rejected.is_rejected
    assert _wait_for(
        lambda: (
            _value(
                metrics,
                "dimse_bridge_association_rejections_total",
                reason="calling_ae_not_recognized",
            )
            == 1
        )
    )
    assert _value(metrics, "dimse_bridge_associations_total", outcome="rejected") == 1
    assert _value(metrics, "dimse_bridge_associations_active") == 0


def test_hooks_see_a_real_c_cancel() -> None:
    metrics = Metrics()

    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for i in range(500):
            if event.is_cancelled:
                yield 0xFE00, None
                return
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = f"1.2.{i}"
            time.sleep(0.01)
            yield 0xFF00, ds

    ae = AE(ae_title="OPS_TEST")
    ae.add_supported_context(STUDY_ROOT_FIND)
    handlers = [(evt.EVT_C_FIND, handle_find), *dimse_event_handlers(metrics)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        scu = AE(ae_title="FRIEND")
        scu.add_requested_context(STUDY_ROOT_FIND)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="OPS_TEST")
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        last = None
        for count, (status, _) in enumerate(assoc.send_c_find(query, STUDY_ROOT_FIND, msg_id=7)):
            if count == 3:
                assoc.send_c_cancel(7, query_model=STUDY_ROOT_FIND)
            last = status.Status if status else None
        assoc.release()
        assert last == 0xFE00
        assert _wait_for(lambda: _value(metrics, "dimse_bridge_associations_active") == 0)
    finally:
        server.shutdown()
    assert _value(metrics, "dimse_bridge_cancels_total", service="C-FIND") == 1
    assert (
        _value(
            metrics,
            "dimse_bridge_dimse_requests_total",
            service="C-FIND",
            status="0xFE00",
            category="cancel",
        )
        == 1
    )


def test_hooks_include_the_association_events() -> None:
    events = {handler[0] for handler in dimse_event_handlers(Metrics())}
    assert {evt.EVT_ESTABLISHED, evt.EVT_REJECTED, evt.EVT_RELEASED, evt.EVT_ABORTED} <= events


# --- ops HTTP listener ---------------------------------------------------------------------


def _get(server: OpsServer, path: str) -> tuple[int, str, str]:
    # http.client, not urllib: an HTTP proxy in the environment must not be used.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return (
            response.status,
            response.getheader("Content-Type") or "",
            response.read().decode("utf-8"),
        )
    finally:
        conn.close()


class _Ready:
    def __init__(self, answer: tuple[bool, str]) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.answer


@pytest.fixture
def ops() -> Iterator[tuple[OpsServer, Metrics, _Ready]]:
    metrics = Metrics()
    ready = _Ready((True, "QIDO-RS answered HTTP 200"))
    server = OpsServer("127.0.0.1:0", metrics, ready)
    server.start()
    try:
        yield server, metrics, ready
    finally:
        server.stop()


def test_ops_port_zero_gets_a_real_port(ops: tuple[OpsServer, Metrics, _Ready]) -> None:
    server, _, _ = ops
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_healthz(ops: tuple[OpsServer, Metrics, _Ready]) -> None:
    status, _, body = _get(ops[0], "/healthz")
    assert (status, body.strip()) == (200, "ok")


def test_metrics_endpoint(ops: tuple[OpsServer, Metrics, _Ready]) -> None:
    server, metrics, _ = ops
    metrics.association_opened()
    status, content_type, body = _get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "dimse_bridge_associations_active 1.0" in body
    assert list(text_string_to_metric_families(body))


def test_readyz_ready_and_cached(ops: tuple[OpsServer, Metrics, _Ready]) -> None:
    server, _, ready = ops
    assert _get(server, "/readyz")[::2] == (200, "QIDO-RS answered HTTP 200\n")
    assert _get(server, "/readyz")[0] == 200
    assert ready.calls == 1


def test_readyz_not_ready_gives_503_with_reason() -> None:
    ready = _Ready((False, "cannot connect to http://pacs/dicom-web/studies"))
    server = OpsServer("127.0.0.1:0", Metrics(), ready)
    server.start()
    try:
        status, _, body = _get(server, "/readyz")
        assert status == 503
        assert "cannot connect" in body
        # /healthz does not depend on readiness.
        assert _get(server, "/healthz")[0] == 200
    finally:
        server.stop()


def test_readyz_check_that_raises_is_not_ready() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    server = OpsServer("127.0.0.1:0", Metrics(), broken, ready_cache_s=0)
    server.start()
    try:
        status, _, body = _get(server, "/readyz")
        assert status == 503
        assert "RuntimeError: boom" in body
    finally:
        server.stop()


def test_unknown_path_is_404(ops: tuple[OpsServer, Metrics, _Ready]) -> None:
    assert _get(ops[0], "/nope")[0] == 404
    assert _get(ops[0], "/metrics/extra")[0] == 404


def test_metrics_query_string_ignored(ops: tuple[OpsServer, Metrics, _Ready]) -> None:
    assert _get(ops[0], "/metrics?name[]=x")[0] == 200


def test_ops_server_does_not_log_requests(
    ops: tuple[OpsServer, Metrics, _Ready], capsys: pytest.CaptureFixture[str]
) -> None:
    _get(ops[0], "/healthz")
    _get(ops[0], "/nope")
    assert capsys.readouterr().err == ""


def test_ops_server_stop_frees_the_port() -> None:
    server = OpsServer("127.0.0.1:0", Metrics(), _Ready((True, "ok")))
    server.start()
    port = server.port
    server.stop()
    server.stop()  # idempotent
    again = OpsServer(f"127.0.0.1:{port}", Metrics(), _Ready((True, "ok")))
    again.start()
    try:
        assert _get(again, "/healthz")[0] == 200
    finally:
        again.stop()


def test_cached_probe_expires_and_caches_failures() -> None:
    clock = _Clock()
    answers = iter([(False, "down"), (True, "up")])
    calls: list[float] = []

    def probe() -> tuple[bool, str]:
        calls.append(clock.now)
        return next(answers)

    cached = CachedProbe(probe, ttl=2.0, clock=clock)
    assert cached() == (False, "down")
    clock.now += 1.9
    assert cached() == (False, "down")
    clock.now += 0.2
    assert cached() == (True, "up")
    assert len(calls) == 2
    cached.invalidate()
    # The probe runs again; this one raises (no more answers), which is "not ready".
    ok, message = cached()
    assert not ok and "StopIteration" in message
    assert len(calls) == 3


def test_cached_probe_single_flight() -> None:
    started = threading.Event()
    release = threading.Event()
    calls = 0

    def slow() -> tuple[bool, str]:
        nonlocal calls
        calls += 1
        started.set()
        release.wait(5)
        return True, "ok"

    cached = CachedProbe(slow, ttl=2.0)
    results: list[tuple[bool, str]] = []
    threads = [threading.Thread(target=lambda: results.append(cached())) for _ in range(5)]
    for t in threads:
        t.start()
    assert started.wait(5)
    release.set()
    for t in threads:
        t.join(5)
    assert calls == 1
    assert results == [(True, "ok")] * 5


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("0.0.0.0:9090", ("0.0.0.0", 9090)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9090", ("::1", 9090)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9090", ":9090", "host:", "host:port", "host:70000"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)


# --- logging -------------------------------------------------------------------------------


def _record(logger: logging.Logger, stream: io.StringIO) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return handler


def test_json_formatter_fields() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test_ops.json")
    handler = _record(logger, stream)
    try:
        logger.info("C-GET from %s: %d instances", "CT1", 3, extra={"fields": {"peer": "CT1"}})
        logger.warning("multi\nline", extra={"fields": {"msg": "ignored", "n": 5}})
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO"
    assert first["logger"] == "test_ops.json"
    assert first["msg"] == "C-GET from CT1: 3 instances"
    assert first["thread"] == threading.current_thread().name
    assert first["peer"] == "CT1"
    assert "exc" not in first
    # ISO-8601 UTC with milliseconds.
    assert time.strptime(first["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert len(first["ts"]) == len("2024-01-01T00:00:00.000Z")
    # Fields cannot overwrite the core keys; newlines stay inside the one line.
    assert second["msg"] == "multi\nline"
    assert second["n"] == 5


def test_json_formatter_exception_and_odd_values() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test_ops.exc")
    handler = _record(logger, stream)
    try:
        try:
            raise ValueError("bad thing")
        except ValueError:
            logger.exception("failed", extra={"fields": {"obj": object(), "uid": "1.2.3"}})
    finally:
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["level"] == "ERROR"
    assert "Traceback" in entry["exc"]
    assert "ValueError: bad thing" in entry["exc"]
    assert entry["obj"].startswith("<object object")
    assert entry["uid"] == "1.2.3"


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {n: logging.getLogger(n).level for n in ("pynetdicom", "httpx", "httpcore")}
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in saved[0]:
                root.removeHandler(handler)
        root.setLevel(saved[1])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        logging.captureWarnings(False)


def test_setup_logging_json(root_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    setup_logging("INFO", "json")  # replaces its own handler: no doubled lines
    logging.getLogger("bridge.test").info("hello %s", "world")
    logging.getLogger("bridge.test").debug("hidden")
    logging.getLogger("pynetdicom.acse").info("PDU with PHI")
    logging.getLogger("httpx").info("GET url?PatientName=DOE")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)
        warnings.warn("odd value", UserWarning, stacklevel=1)
    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["msg"] for e in entries][0] == "hello world"
    assert len([e for e in entries if e["msg"] == "hello world"]) == 1
    assert all("PHI" not in e["msg"] and "DOE" not in e["msg"] for e in entries)
    assert any(e["logger"] == "py.warnings" and "odd value" in e["msg"] for e in entries)
    assert logging.getLogger("pynetdicom").level == logging.WARNING


def test_setup_logging_text_and_debug(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("debug", "text")
    logging.getLogger("bridge.test").debug("details")
    err = capsys.readouterr().err
    assert " DEBUG bridge.test: details" in err
    assert logging.getLogger("pynetdicom").level == logging.DEBUG
    assert logging.getLogger("httpx").level == logging.WARNING
    assert "%(asctime)s" in TEXT_FORMAT


def test_setup_logging_rejects_bad_arguments(root_logging: None) -> None:
    with pytest.raises(ValueError):
        setup_logging("LOUD", "text")
    with pytest.raises(ValueError):
        setup_logging("INFO", "xml")


# --- progress ------------------------------------------------------------------------------


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def progress_log() -> Iterator[tuple[logging.Logger, _ListHandler]]:
    logger = logging.getLogger("test_ops.progress")
    handler = _ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)


def test_progress_rate_limited(progress_log: tuple[logging.Logger, _ListHandler]) -> None:
    logger, handler = progress_log
    clock = _Clock(0.0)
    progress = Progress("C-GET", "WORKSTATION", 1000, 10.0, logger, clock=clock)
    for done in range(1, 101):  # 100 instances in 5 s: no line yet
        clock.now = done * 0.05
        progress.update(done, done * 500_000)
    assert handler.records == []
    clock.now = 10.0
    progress.update(150, 75_000_000)
    assert len(handler.records) == 1
    assert handler.records[0].getMessage() == (
        "C-GET to WORKSTATION: 150/1000 instances, 0 failed, 75.0 MB, 7.5 MB/s"
    )
    fields = getattr(handler.records[0], "fields")  # noqa: B009 - set through `extra`
    assert fields["done"] == 150 and fields["total"] == 1000
    for step in range(1, 100):  # many updates within the next interval: no line
        clock.now = 10.0 + step * 0.09
        progress.update(150 + step, 75_000_000 + step * 1_000_000)
    assert len(handler.records) == 1
    clock.now = 20.0
    progress.update(300, 198_000_000)
    assert len(handler.records) == 2
    # The rate is over the last interval: 123 MB in 10 s.
    assert handler.records[1].getMessage() == (
        "C-GET to WORKSTATION: 300/1000 instances, 0 failed, 198.0 MB, 12.3 MB/s"
    )


def test_progress_counts_failed_instances(
    progress_log: tuple[logging.Logger, _ListHandler],
) -> None:
    """Failed sub-operations move the count on and are shown as failed."""
    logger, handler = progress_log
    clock = _Clock(0.0)
    progress = Progress("C-GET", "WORKSTATION", 1000, 10.0, logger, clock=clock)
    clock.now = 10.0
    progress.update(400, 50_000_000, 150)
    assert handler.records[0].getMessage() == (
        "C-GET to WORKSTATION: 400/1000 instances, 150 failed, 50.0 MB, 5.0 MB/s"
    )
    fields = getattr(handler.records[0], "fields")  # noqa: B009 - set through `extra`
    assert (fields["done"], fields["failed"]) == (400, 150)
    clock.now = 10.5  # no line due for 9.5 s, but an outage fails the rest at once
    progress.update(1000, 50_000_000, 750, force=True)
    last = handler.records[-1].getMessage()
    assert last.startswith("C-GET to WORKSTATION: 1000/1000 instances, 750 failed, ")
