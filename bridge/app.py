"""The application: config → backends → auth and HTTP clients → DIMSE server and ops
listener, started and stopped in one place, and the signals that stop it.

``bridge/cli.py`` parses arguments and calls into here; ``bridge/dimse/server.py`` keeps
the AE, its listeners and the association policy, and builds none of what they serve with.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from bridge.config import Backend, Config
from bridge.dicomweb.auth import build_auth
from bridge.dicomweb.breaker import State
from bridge.dicomweb.client import DicomwebClient, make_client
from bridge.dimse import adapter
from bridge.dimse.context import BridgeContext
from bridge.dimse.server import DimseServer
from bridge.errors import BridgeError, ListenError
from bridge.loop_thread import LoopThread
from bridge.ops.http import DEFAULT_READY_CACHE_S, OpsServer
from bridge.ops.metrics import Metrics
from bridge.ops.status import BackendStatus, Cached, StatusBoard
from bridge.spool.spool import Spool

LOGGER = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Bridge:
    """A running bridge: HTTP loop, DICOMweb clients, DIMSE listeners and the ops
    listener; ``stop()`` shuts all of them down, in order."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.backends: tuple[Backend, ...] = config.all_backends
        self.loop = LoopThread()
        self.dimse = DimseServer(config)
        self.clients: dict[str, DicomwebClient] = {}
        self.context: BridgeContext | None = None
        self.ops: OpsServer | None = None
        self.board = StatusBoard()
        self.board.backends = self.backend_status
        self._stopping = threading.Event()
        # One probe of every backend per couple of seconds, whoever asks (/readyz, /status).
        self._probes = Cached(self._probe_backends, DEFAULT_READY_CACHE_S)
        # Built here, off the event loop: credentials discovery may block, and a broken
        # auth setup must fail the start (ConfigError), not the first request.
        self.auths = {backend.name: build_auth(backend.dicomweb.auth) for backend in self.backends}
        # Spool mode: spool_dir checked (ConfigError) and recovered before anything listens.
        self.spool: Spool | None = None
        if config.store.mode == "spool":
            self.spool = Spool(config.store, config.source, self.metrics)
            adapter.receive_into(self.spool.incoming)
            spool = self.spool
            self.board.spool = lambda: spool.index.summary().document("spool")

    def start(self) -> None:
        self.loop.start()
        config = self.config
        self.clients = self.loop.call(_make_clients(self))
        for backend in self.backends:
            self.metrics.backend_configured(backend.name)
        default, *named = self.backends
        self.context = BridgeContext(
            config=config,
            loop=self.loop,
            client=self.clients[default.name],
            dicomweb=default.dicomweb,
            routes={b.ae_title: (b.name, self.clients[b.name], b.dicomweb) for b in named},
            metrics=self.metrics,
            board=self.board,
            spool=self.spool,
        )
        try:
            if self.spool is not None:
                self.spool.start(self.loop, self.clients)
            self.dimse.start(self.context, self.metrics)
            if config.ops.address is not None:
                # The probes are cached here (shared with /status), not again in the server.
                self.ops = OpsServer(
                    config.ops.address,
                    self.metrics,
                    self.ready,
                    ready_cache_s=0,
                    status=self.board.snapshot,
                )
                try:
                    self.ops.start()  # logs its address, once
                except OSError as exc:
                    raise ListenError(config.ops.listen, exc.strerror or str(exc)) from exc
        except Exception:
            self.stop()
            raise
        for backend in self.backends:
            LOGGER.info(
                "called AE %s → backend %s: %s",
                backend.ae_title,
                backend.name,
                backend.dicomweb.url,
            )
        self.dimse.log_listening()

    def ready(self) -> tuple[bool, str]:
        """Readiness for /readyz: every backend answers its QIDO-RS probe. In spool mode
        the bridge stays ready while a backend is down (C-STOREs are still kept), and the
        answer reports the spool's backlog."""
        if self._stopping.is_set():
            return False, "shutting down"
        summaries = []
        for status, summary in self._probes():
            if not status.ready:
                if self.spool is None:
                    return False, f"{status.name}: {status.reason}"
                summary = str(status.reason)
            summaries.append(f"{status.name}: {summary}")
        if self.spool is not None:
            summaries.append(self.spool.backlog())
        return True, "; ".join(summaries)

    def backend_status(self) -> list[BackendStatus]:
        """Each backend and its readiness, for /status (the /readyz probes)."""
        if self._stopping.is_set():
            return [
                BackendStatus(b.name, b.dicomweb.url, False, "shutting down")
                for b in self.backends
            ]
        return [status for status, _ in self._probes()]

    def _probe_backends(self) -> list[tuple[BackendStatus, str]]:
        """(status, probe summary) of every backend, probed one after the other."""
        results = []
        for backend in self.backends:
            name, url = backend.name, backend.dicomweb.url
            client = self.clients.get(name)
            reason: str | None = None
            summary = ""
            if client is None:
                reason = "not started"
            else:
                try:
                    summary = self.loop.call(client.probe(), timeout=5.0)
                except BridgeError as exc:
                    reason = str(exc)
                except TimeoutError:
                    reason = "DICOMweb probe timed out after 5 s"
                except Exception as exc:  # a probe must answer, not raise
                    reason = f"readiness check failed: {type(exc).__name__}: {exc}"
            results.append((BackendStatus(name, url, reason is None, reason), summary))
        return results

    def active_associations(self) -> int:
        return self.dimse.active_associations()

    def force(self) -> None:
        """Abort running associations instead of waiting for them (a second SIGINT)."""
        self.dimse.force()

    def stop(self) -> None:
        """Stop accepting, let running associations finish (bounded), then free everything."""
        self._stopping.set()
        self.dimse.stop()
        if self.spool is not None:
            # After the listeners: the C-STOREs being received are kept first. Uploads in
            # flight are interrupted; their rows go back to queued.
            self.spool.stop()
        self._close_http()
        self.loop.stop()
        # Last, so /healthz keeps answering while associations drain.
        if self.ops is not None:
            self.ops.stop()
            self.ops = None

    def _close_http(self) -> None:
        clients, self.clients = self.clients, {}
        for client in clients.values():
            try:
                self.loop.call(client.aclose(), timeout=5)
            except Exception:  # shutting down: nothing left to tell
                LOGGER.debug("closing an HTTP client failed", exc_info=True)


async def _make_clients(bridge: Bridge) -> dict[str, DicomwebClient]:
    # Created on the loop thread: each client's connection pool belongs to that loop.
    metrics = bridge.metrics

    def on_breaker(backend: str, state: State) -> None:
        metrics.circuit_state(backend, state.value)

    return {
        backend.name: make_client(
            backend.dicomweb,
            backend=backend.name,
            observer=metrics.http_request,
            auth=bridge.auths[backend.name],
            fast_http=bridge.config.retrieve.fast_http,
            breaker_listener=on_breaker,
        )
        for backend in bridge.backends
    }


class Signals:
    """SIGINT and SIGTERM ask for a graceful shutdown; a second SIGINT forces it.

    As uvicorn's ``Server.capture_signals``: ``signal.signal`` (not the event loop's
    handlers), only in the main thread, and the original handlers are restored on exit.
    Unlike uvicorn the captured signal is not raised again afterwards: ``run`` exiting 0
    on SIGINT/SIGTERM is the command's contract.
    """

    def __init__(self) -> None:
        self.should_exit = threading.Event()
        self.force_exit = threading.Event()
        self.on_force: Callable[[], None] | None = None

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only
            return
        original: dict[int, Any] = {sig: signal.signal(sig, self.handle) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.should_exit.is_set() and signum == signal.SIGINT:
            LOGGER.warning("received %s again: aborting running associations", name)
            self.force_exit.set()
            if self.on_force is not None:
                self.on_force()
            return
        LOGGER.info("received %s", name)
        self.should_exit.set()


def serve(bridge: Bridge, signals: Signals) -> None:
    """Run `bridge` until a signal asks it to stop, then shut it down; a second SIGINT
    during the shutdown aborts the associations still running."""
    signals.on_force = bridge.force
    if signals.force_exit.is_set():
        bridge.force()
    bridge.start()
    try:
        while not signals.should_exit.wait(0.5):
            pass
    finally:
        LOGGER.info("shutting down: %d association(s) running", bridge.active_associations())
        bridge.stop()
        LOGGER.info("stopped")
