"""The operators' HTTP listener: ``/metrics``, ``/healthz``, ``/readyz``, ``/status`` and ``/``.

A stdlib ``ThreadingHTTPServer`` in a daemon thread: a handful of scrapes and probes a
minute need no framework, and keeping it off the HTTP event loop means a stuck DICOMweb
request cannot make the liveness probe fail.

- ``/healthz``: 200 while the process serves. The bridge keeps no state of its own, so a
  listener that answers is all liveness means; restarting it would fix nothing else.
- ``/readyz``: the ``ready()`` callable (a QIDO-RS probe of the DICOMweb server in the
  bridge), cached for a couple of seconds by ``CachedProbe`` so that several probers
  (kubelet, load balancers, people with curl) do not each hit the DICOMweb server.
- ``/metrics``: the Prometheus text exposition of ``Metrics``. The readiness check runs
  first (through the same cache), so that ``dimse_bridge_backend_up`` (set from the
  probes' outcomes) is fresh on every scrape even where nothing probes /readyz
  (systemd); with a backend that does not answer, a scrape waits for its probe's
  timeout (5 s).
- ``/status``: what runs now, as JSON (``bridge.ops.status.StatusBoard.snapshot``).
- ``/``: the operator page (``bridge.ops.page``), which shows ``/status`` every second.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from bridge.config import parse_listen
from bridge.ops.metrics import Metrics
from bridge.ops.page import PAGE

LOGGER = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, str]]
StatusSource = Callable[[], dict[str, Any]]

# Seconds a readiness answer is reused. Kubernetes probes every 10 s by default; 2 s
# still turns a burst of probes into one DICOMweb request while reacting fast enough.
DEFAULT_READY_CACHE_S = 2.0
# Seconds an ops client may take to send its request: a stalled client must not pin a
# handler thread for ever.
_REQUEST_TIMEOUT_S = 10.0
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"
PATHS = "/, /status, /metrics, /healthz, /readyz"


def _no_status() -> dict[str, Any]:
    return {"backends": [], "associations": [], "operations": [], "finished": [], "spool": None}


class CachedProbe:
    """Calls `probe` at most once per `ttl` seconds and answers from the last result.

    Callers arriving while a probe runs wait for that probe instead of starting their
    own (the lock is held across the call). A probe that raises counts as not ready, and
    that answer is cached too, so a failing server is not probed harder.
    """

    def __init__(
        self,
        probe: ReadyCheck,
        ttl: float = DEFAULT_READY_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._result: tuple[bool, str] | None = None
        self._at = 0.0

    def __call__(self) -> tuple[bool, str]:
        with self._lock:
            now = self._clock()
            if self._result is not None and now - self._at < self._ttl:
                return self._result
            try:
                ok, message = self._probe()
                result = (bool(ok), str(message))
            except Exception as exc:
                LOGGER.warning("readiness check failed", exc_info=True)
                result = (False, f"readiness check failed: {type(exc).__name__}: {exc}")
            # Timestamped after the probe: a slow probe's answer still lives `ttl` seconds.
            self._result, self._at = result, self._clock()
            return result

    def invalidate(self) -> None:
        """Forget the cached answer (e.g. when shutdown starts, so /readyz says so now)."""
        with self._lock:
            self._result = None


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    """Carries what the request handler needs; a stuck handler never blocks exit."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        metrics: Metrics,
        ready: ReadyCheck,
        status: StatusSource,
    ) -> None:
        if _is_ipv6(address[0]):
            self.address_family = socket.AF_INET6
        self.metrics = metrics
        self.ready = ready
        self.status = status
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = _REQUEST_TIMEOUT_S
    server_version = "dimse-bridge-ops"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            try:
                self.server.ready()  # refreshes dimse_bridge_backend_up (module docstring)
            except Exception:
                LOGGER.debug("readiness check before a scrape failed", exc_info=True)
            body, content_type = self.server.metrics.render()
            self._send(200, body, content_type)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            try:
                ok, message = self.server.ready()
            except Exception as exc:  # an uncached check that raises: not ready, say why
                ok, message = False, f"readiness check failed: {type(exc).__name__}: {exc}"
            self._send(200 if ok else 503, (message + "\n").encode("utf-8", "replace"))
        elif path == "/status":
            try:
                body = json.dumps(self.server.status(), ensure_ascii=True).encode()
            except Exception as exc:  # the page shows the error, the listener stays up
                LOGGER.warning("/status failed", exc_info=True)
                self._send(500, f"status failed: {type(exc).__name__}: {exc}\n".encode())
                return
            self._send(200, body + b"\n", _JSON)
        elif path == "/":
            self._send(200, PAGE.encode("utf-8"), _HTML)
        else:
            self._send(404, f"not found: try {PATHS}\n".encode())

    def _send(self, status: int, body: bytes, content_type: str = _TEXT) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        # Probe answers describe this instant: no proxy or client may reuse them.
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Probes every few seconds would drown the bridge's own log lines on stderr.
        return


class OpsServer:
    """``/metrics``, ``/healthz``, ``/readyz``, ``/status`` and ``/`` on `address`
    (``OpsConfig.address``, or ``"host:port"`` parsed by ``bridge.config.parse_listen``;
    port 0 picks a free port, see ``port`` and ``url`` after ``start()``).

    `ready` is wrapped in a ``CachedProbe`` of `ready_cache_s` seconds (0: no caching);
    `status` makes the ``/status`` document (default: nothing running, no backends).
    """

    def __init__(
        self,
        address: tuple[str, int] | str,
        metrics: Metrics,
        ready: ReadyCheck,
        *,
        ready_cache_s: float = DEFAULT_READY_CACHE_S,
        status: StatusSource = _no_status,
    ) -> None:
        self.host, self._port = parse_listen(address) if isinstance(address, str) else address
        self.metrics = metrics
        self.ready: ReadyCheck = CachedProbe(ready, ready_cache_s) if ready_cache_s > 0 else ready
        self.status = status
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if _is_ipv6(self.host) else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve in a daemon thread; OSError when the address cannot be bound."""
        if self._server is not None:
            return
        self._server = _Server((self.host, self._port), self.metrics, self.ready, self.status)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="bridge-ops-http",
            daemon=True,
        )
        self._thread.start()
        LOGGER.info("ops listener on %s (%s)", self.url, PATHS)

    def stop(self) -> None:
        """Stop serving and close the socket; requests in progress finish on their own."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
