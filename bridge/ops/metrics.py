"""Prometheus metrics of the bridge: plain recording methods, and the exposition.

``Metrics`` owns its own ``CollectorRegistry``: nothing is registered in prometheus_client's
global registry, so tests (and a process embedding several bridges) can create as many as
they like. Every recording method is a few dictionary look-ups under prometheus_client's
own locks: cheap and safe to call from any DIMSE thread or from the HTTP event loop.

Label values are kept to small closed sets (service names, status codes, outcome names):
no AE titles, hosts, UIDs or URLs, which would make the series count unbounded and could
carry patient data.

The DIMSE side feeds it from pynetdicom's events (bridge/dimse/observe.py), so this
module, and the /metrics listener, need only prometheus-client. HTTP requests are
reported by the DICOMweb client itself (its ``observer``, bound to
``Metrics.http_request``), which already classifies their outcomes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from bridge import __version__
from bridge.translate.status import category as status_category

# The classic Prometheus text format. prometheus_client's CONTENT_TYPE_LATEST moved to
# "version=1.0.0" in recent releases, which older scrapers do not know; our metric and
# label names are plain ASCII, so the 0.0.4 text is what generate_latest writes anyway.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# DICOMweb request durations: QIDO-RS pages take milliseconds, WADO-RS of a large
# multi-frame instance or a STOW-RS upload can take most of dicomweb.timeout (30 s by
# default) or longer when the body streams slowly, hence buckets up to two minutes.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# DIMSE operation durations: a C-ECHO takes a millisecond or two, a C-FIND tens of
# milliseconds, a C-STORE as long as its STOW-RS upload, and a C-GET or C-MOVE of a large
# study many minutes: millisecond buckets at the bottom, up to an hour at the top.
DIMSE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip

# Why an association (or a connection that never became one) ended other than by an
# orderly release: the ``cause`` label of dimse_bridge_association_aborts_total. Every
# cause is exported from the start, at 0, so that rate() and increase() see a zero
# before the first one. bridge/dimse/adapter.py ``abort_cause`` decides which applies.
ABORT_CAUSES = (
    "peer_abort",  # the peer sent an A-ABORT
    "connection_lost",  # the connection closed without A-ABORT or A-RELEASE (A-P-ABORT)
    "bridge_abort",  # the bridge sent an A-ABORT for a reason other than those below
    "idle_timeout",  # dimse.network_timeout of silence from a peer the bridge owed nothing
    "artim_timeout",  # a connection that sent no A-ASSOCIATE-RQ within the ACSE timeout
    "dimse_timeout",  # a peer that did not answer a DIMSE request (a C-GET's C-STORE)
    "shutdown",  # still running when dimse.shutdown_timeout ran out at shutdown
)

# The outcome label of a 2xx answer (bridge/dicomweb/outcomes.py SUCCESS).
SUCCESS_OUTCOME = "200"

# prometheus_client exports a *_created series next to every counter and histogram by
# default: twice the series, and no alert or dashboard reads them. The switch is process
# wide; the bridge has no other use for them.
disable_created_metrics()  # type: ignore[no-untyped-call]


def status_label(status: int) -> str:
    """The status as the label value ``0x0000``: the notation of PS3.7 and the README."""
    return f"0x{status & 0xFFFF:04X}"


class Metrics:
    """The bridge's metrics, in a registry of their own; see the module docstring."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            # process_resident_memory_bytes & co.: what the memory sizing of deploy/ is
            # checked against; the GC counters explain latency spikes.
            ProcessCollector(registry=r)
            GCCollector(registry=r)
        build = Gauge(
            "dimse_bridge_build_info",
            "Always 1; the version label says which bridge is running.",
            ["version"],
            registry=r,
        )
        build.labels(__version__).set(1)
        self._associations_active = Gauge(
            "dimse_bridge_associations_active",
            "DIMSE associations established with the bridge and not yet ended.",
            registry=r,
        )
        self._associations = Counter(
            "dimse_bridge_associations_total",
            "Association requests received, by outcome (accepted or rejected).",
            ["outcome"],
            registry=r,
        )
        self._rejections = Counter(
            "dimse_bridge_association_rejections_total",
            "Association requests rejected, by reason.",
            ["reason"],
            registry=r,
        )
        self._dimse = Counter(
            "dimse_bridge_dimse_requests_total",
            "DIMSE requests answered, by service and final status (category: success, "
            "warning, failure or cancel; status none, category aborted: the association "
            "ended before the final response).",
            ["service", "status", "category"],
            registry=r,
        )
        self._subops = Counter(
            "dimse_bridge_suboperations_total",
            "C-STORE sub-operations of C-GET and C-MOVE, by outcome.",
            ["service", "outcome"],
            registry=r,
        )
        self._bytes = Counter(
            "dimse_bridge_bytes_total",
            "Bytes of DICOM instances moved over DIMSE, by service and direction.",
            ["service", "direction"],
            registry=r,
        )
        self._http = Counter(
            "dimse_bridge_http_requests_total",
            "HTTP requests to DICOMweb backends, by kind (qido, wado, stow, probe) and "
            "outcome (HTTP status code, or timeout, connect_error, cancelled, ...).",
            ["backend", "kind", "outcome"],
            registry=r,
        )
        self._http_seconds = Histogram(
            "dimse_bridge_http_request_seconds",
            "Duration of HTTP requests to DICOMweb backends, body transfer included.",
            ["backend", "kind"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self._circuit_openings = Counter(
            "dimse_bridge_dicomweb_circuit_openings_total",
            "Outages: times a DICOMweb backend's circuit breaker opened (closed to open).",
            ["backend"],
            registry=r,
        )
        self._circuit_open = Gauge(
            "dimse_bridge_dicomweb_circuit_open",
            "1 while a DICOMweb backend's circuit breaker is open or half-open, else 0.",
            ["backend"],
            registry=r,
        )
        self._circuit_states: dict[str, str] = {}
        self._cancels = Counter(
            "dimse_bridge_cancels_total",
            "C-CANCEL requests received, by the service they cancel.",
            ["service"],
            registry=r,
        )
        self._dimse_seconds = Histogram(
            "dimse_bridge_dimse_request_seconds",
            "Duration of DIMSE requests, from the request's arrival to its final response, "
            "by service and final status category (success, warning, failure, cancel).",
            ["service", "category"],
            buckets=DIMSE_BUCKETS,
            registry=r,
        )
        self._aborts = Counter(
            "dimse_bridge_association_aborts_total",
            "Associations ended by an abort or a timeout instead of a release, by cause: "
            "those peers open (and connections that never sent an A-ASSOCIATE-RQ) and the "
            "bridge's own C-MOVE and storage-commitment associations.",
            ["cause"],
            registry=r,
        )
        self._backend_up = Gauge(
            "dimse_bridge_backend_up",
            "1 when the DICOMweb backend answered its last readiness probe (QIDO-RS), 0 when "
            "that failed or its circuit breaker is open.",
            ["backend"],
            registry=r,
        )
        for cause in ABORT_CAUSES:
            self._aborts.labels(cause)
        self._spool_instances = Gauge(
            "dimse_bridge_spool_instances",
            "Instances in the store-and-forward spool, by state (queued, uploading, failed, "
            "dead, done).",
            ["state"],
            registry=r,
        )
        self._spool_bytes = Gauge(
            "dimse_bridge_spool_bytes",
            "Bytes of instance files in the spool (everything not yet done).",
            registry=r,
        )
        self._spool_oldest = Gauge(
            "dimse_bridge_spool_oldest_queued_seconds",
            "Age of the oldest spooled instance not yet uploaded (0 when none waits).",
            registry=r,
        )
        self._spool_uploads = Counter(
            "dimse_bridge_spool_uploads_total",
            "Spooled instances through an upload attempt, by outcome (stored, "
            "already_present, retry, dead).",
            ["outcome"],
            registry=r,
        )
        self._spool_batch = Histogram(
            "dimse_bridge_spool_batch_instances",
            "Instances per STOW-RS request of the spool's uploader.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200),
            registry=r,
        )
        # Both outcomes exist from the start so that rate() and absent() work on a bridge
        # that has not yet rejected anyone.
        for outcome in ("accepted", "rejected"):
            self._associations.labels(outcome)
        self._active = 0
        self._active_lock = threading.Lock()

    # --- associations -------------------------------------------------------------------

    def association_opened(self) -> None:
        """An association was established (A-ASSOCIATE-AC sent)."""
        self._associations.labels("accepted").inc()
        with self._active_lock:
            self._active += 1
            self._associations_active.set(self._active)

    def association_closed(self) -> None:
        """An established association ended (released, aborted or its connection lost)."""
        with self._active_lock:
            # Clamped: a stray extra close must not leave the gauge negative for good.
            self._active = max(0, self._active - 1)
            self._associations_active.set(self._active)

    def expect(self, *, cancels: Iterable[str] = (), rejections: Iterable[str] = ()) -> None:
        """Export the C-CANCEL counters of `cancels` (service names) and the rejection
        counters of `rejections` (reasons) at 0 before the first one, so that rate() and
        dashboards see a series from the start."""
        for service in cancels:
            self._cancels.labels(service)
        for reason in rejections:
            self._rejections.labels(reason)

    def backend_configured(self, backend: str) -> None:
        """Export `backend`'s circuit-breaker series (closed, no openings) from the start."""
        self._circuit_openings.labels(backend)
        self._circuit_open.labels(backend).set(
            1 if self._circuit_states.get(backend, "closed") != "closed" else 0
        )

    def association_rejected(self, reason: str) -> None:
        """An association request was answered with A-ASSOCIATE-RJ for `reason`."""
        self._associations.labels("rejected").inc()
        self._rejections.labels(reason).inc()

    # --- DIMSE --------------------------------------------------------------------------

    def dimse_request(self, service: str, status: int) -> None:
        """A request of `service` (``C-FIND``, ...) was answered with final `status`.

        Pending statuses (0xFF00, 0xFF01) are not final: pass only the last response's.
        """
        self._dimse.labels(service, status_label(status), status_category(status)).inc()

    def dimse_aborted(self, service: str) -> None:
        """A request of `service` got no final response: its association ended first
        (the peer aborted or went away, or the bridge aborted it). Counted with status
        ``none`` and category ``aborted``."""
        self._dimse.labels(service, "none", "aborted").inc()

    def suboperations(self, service: str, completed: int, warning: int, failed: int) -> None:
        """Outcomes of the C-STORE sub-operations of one C-GET or C-MOVE."""
        # Negative counts would make prometheus_client raise in a DIMSE thread: drop them.
        self._subops.labels(service, "completed").inc(max(0, completed))
        self._subops.labels(service, "warning").inc(max(0, warning))
        self._subops.labels(service, "failed").inc(max(0, failed))

    def bytes_transferred(self, service: str, direction: str, n: int) -> None:
        """`n` bytes of instances moved for `service`; direction ``in`` (received from a
        DIMSE peer: C-STORE) or ``out`` (sent to one: C-GET/C-MOVE sub-operations)."""
        if n > 0:
            self._bytes.labels(service, direction).inc(n)

    def cancelled(self, service: str) -> None:
        """A C-CANCEL arrived for a running request of `service`."""
        self._cancels.labels(service).inc()

    def dimse_duration(self, service: str, status: int, seconds: float) -> None:
        """A request of `service` got its final `status` `seconds` after it arrived."""
        self._dimse_seconds.labels(service, status_category(status)).observe(max(0.0, seconds))

    def association_aborted(self, cause: str) -> None:
        """An association ended by abort or timeout, for `cause` (one of ABORT_CAUSES;
        anything else is counted as bridge_abort rather than growing the label set)."""
        self._aborts.labels(cause if cause in ABORT_CAUSES else "bridge_abort").inc()

    # --- backends -----------------------------------------------------------------------

    def backend_ready(self, backend: str, ready: bool) -> None:
        """DICOMweb `backend` answered its readiness probe (`ready`), or not."""
        self._backend_up.labels(backend).set(1 if ready else 0)

    # --- HTTP ---------------------------------------------------------------------------

    def http_request(self, backend: str, kind: str, outcome: str, seconds: float) -> None:
        """One HTTP request to DICOMweb `backend` ended with `outcome` after `seconds`.

        A ``probe`` is the readiness probe (/readyz, and a scrape, run it; so does the
        start-up check): its outcome is the backend's ``dimse_bridge_backend_up``. One
        cancelled did not answer within the readiness check's 5 s: down too."""
        self._http.labels(backend, kind, outcome).inc()
        self._http_seconds.labels(backend, kind).observe(max(0.0, seconds))
        if kind == "probe":
            self.backend_ready(backend, outcome == SUCCESS_OUTCOME)

    def circuit_state(self, backend: str, state: str) -> None:
        """`backend`'s circuit breaker went to `state` (closed, open, half_open)."""
        previous = self._circuit_states.get(backend, "closed")
        self._circuit_states[backend] = state
        if state == "open" and previous == "closed":
            self._circuit_openings.labels(backend).inc()
        self._circuit_open.labels(backend).set(0 if state == "closed" else 1)
        if state == "open":
            # The probe now fails at once without asking (no outcome reaches http_request)
            # and /readyz says not ready: so does the gauge, until a probe answers again.
            self.backend_ready(backend, False)

    # --- spool --------------------------------------------------------------------------

    def spool_state(self, counts: dict[str, int], size: int, oldest_seconds: float) -> None:
        """The spool's index, as last counted (bridge/spool/)."""
        for state, n in counts.items():
            self._spool_instances.labels(state).set(n)
        self._spool_bytes.set(size)
        self._spool_oldest.set(max(0.0, oldest_seconds))

    def spool_uploads(self, outcome: str, n: int = 1) -> None:
        """`n` spooled instances came out of an upload attempt with `outcome`."""
        if n > 0:
            self._spool_uploads.labels(outcome).inc(n)

    def spool_batch(self, instances: int) -> None:
        """One STOW-RS request of the spool's uploader carried `instances` instances."""
        self._spool_batch.observe(instances)

    # --- exposition ---------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE
