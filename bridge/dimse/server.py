"""The DIMSE server: AE, presentation contexts, association policy, listeners, draining."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from bridge.config import Config, TlsListenerConfig
from bridge.dimse import adapter
from bridge.dimse.context import BridgeContext
from bridge.dimse.gate import PeerGate
from bridge.dimse.negotiation import prefer_requested_syntaxes
from bridge.dimse.observe import dimse_event_handlers
from bridge.dimse.services import SERVICES, STORAGE_CLASSES, bindings
from bridge.dimse.trace import association_event_handlers
from bridge.errors import ListenError
from bridge.ops.metrics import Metrics
from bridge.translate.transcode import local_encoders

LOGGER = logging.getLogger(__name__)


def configure_pynetdicom() -> None:
    """pynetdicom's process-wide settings the bridge serves with. Set when a DimseServer
    is made, not on import: a process that only imports this module (the tests, with SCPs
    of their own) keeps pynetdicom's defaults. No PHI from pynetdicom's own logging; C-STORE
    data sets spooled to files as they arrive (``adapter.configure_process``)."""
    adapter.configure_process()


def _set_nodelay(event: Event) -> None:
    adapter.set_nodelay(event.assoc)


def _prepare(event: Event) -> None:
    # Before the reactor runs: the idle timer that ignores time spent serving, and the
    # reactor pause the storage-commitment report relies on (bridge/dimse/adapter.py).
    adapter.prepare(event.assoc)


def _tls_handshake(event: Event) -> None:
    # On the association's own thread, before pynetdicom reads: a client that speaks no
    # TLS (plain DICOM on the TLS port, a port scan) gets one WARNING line, not
    # pynetdicom's SSL traceback, and a silent one gives up after the ACSE timeout.
    assoc = event.assoc

    def handshake_first(run: Callable[[], None]) -> None:
        failure = adapter.tls_handshake(assoc, assoc.acse_timeout)
        if failure is None:
            run()
            return
        LOGGER.warning(
            "TLS handshake with %s:%s failed (%s): a client without DICOM TLS on the TLS port?",
            assoc.requestor.address,
            assoc.requestor.port,
            failure,
        )

    adapter.wrap_reactor(assoc, handshake_first)


# pynetdicom's acceptor picks the first of its own syntaxes the peer proposed: prefer
# Explicit VR Little Endian, which keeps VRs (private elements) and is what WADO-RS sends by
# default. For storage SOP classes each association reorders them by the requester's
# proposals (bridge/dimse/negotiation.py): this order is the tie-break after those.
ACCEPT_ORDER = [ExplicitVRLittleEndian, ImplicitVRLittleEndian] + [
    ts for ts in ALL_TRANSFER_SYNTAXES if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
]


def build_ae(config: Config) -> AE:
    """The application entity with every supported context and the association policy."""
    dimse = config.dimse
    ae = AE(ae_title=dimse.ae_title)
    ae.maximum_associations = dimse.max_associations
    ae.network_timeout = dimse.network_timeout
    ae.maximum_pdu_size = dimse.max_pdu
    ae.connection_timeout = config.move.connect_timeout
    ae.acse_timeout = config.move.acse_timeout
    ae.dimse_timeout = config.move.dimse_timeout
    if not dimse.accept_unknown_peers:
        # pynetdicom answers A-ASSOCIATE-RJ "calling AE title not recognised".
        ae.require_calling_aet = [peer.ae_title for peer in config.peers]
    for service in SERVICES:  # bridge/dimse/services.py
        if service.event is evt.EVT_C_STORE:
            # C-GET sends its sub-operations on the same association: accept the SCP role
            # the retrieving peer proposes for every storage SOP class, in any syntax.
            ae.add_supported_context(
                service.sop_class, ACCEPT_ORDER, scu_role=True, scp_role=True
            )
        else:
            ae.add_supported_context(service.sop_class, ACCEPT_ORDER)
    return ae


class DimseServer:
    """The DIMSE listeners (plain, and DICOM TLS when enabled) of one AE, with its
    association policy; ``stop()`` drains them. bridge/app.py builds what they serve with."""

    def __init__(self, config: Config) -> None:
        configure_pynetdicom()
        self.config = config
        self.ae = build_ae(config)
        self.gate = PeerGate(config)
        self.servers: list[ThreadedAssociationServer] = []
        self._force = threading.Event()

    def start(self, ctx: BridgeContext, metrics: Metrics) -> None:
        """Listen; the handlers get `ctx`. On ListenError the caller stops everything."""
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, _set_nodelay),
            (evt.EVT_CONN_OPEN, _prepare),
            (evt.EVT_REQUESTED, prefer_requested_syntaxes, [STORAGE_CLASSES, local_encoders()]),
            *self.gate.handlers(),
            *bindings(ctx),
            *dimse_event_handlers(metrics),
        ]
        # One tracker for both listeners (ids unique across them); its EVT_CONN_OPEN comes
        # after the TLS handshake's, so that it wraps the thread outermost and the
        # handshake's warning carries the id.
        tracing = association_event_handlers(ctx.board, metrics)
        dimse = self.config.dimse
        self._listen(dimse.host, dimse.port, handlers + tracing, None)
        if dimse.tls.enabled:
            tls = dimse.tls
            tls_handlers = [(evt.EVT_CONN_OPEN, _tls_handshake), *handlers, *tracing]
            self._listen(tls.host, tls.port, tls_handlers, server_tls_context(tls))

    def log_listening(self) -> None:
        dimse = self.config.dimse
        LOGGER.info("listening as %s on %s:%d", dimse.ae_title, dimse.host, dimse.port)
        if dimse.tls.enabled:
            LOGGER.info("DICOM TLS listener on %s:%d", dimse.tls.host, dimse.tls.port)

    def _listen(
        self, host: str, port: int, handlers: list[EventHandlerType], context: ssl.SSLContext | None
    ) -> None:
        try:
            server = self.ae.start_server(
                (host, port), block=False, evt_handlers=handlers, ssl_context=context
            )
        except OSError as exc:
            raise ListenError(f"{host}:{port}", exc.strerror or str(exc)) from exc
        assert server is not None  # block=False always returns the server
        if context is not None:
            server.get_request = _deferred_handshake(server, context)  # type: ignore[method-assign]
        self.servers.append(server)

    def active_associations(self) -> int:
        return sum(len(_working(server)) for server in self.servers)

    def force(self) -> None:
        """Stop waiting for running associations: ``stop()`` aborts them now."""
        self._force.set()

    def stop(self) -> None:
        """Stop accepting, let running associations finish (bounded by
        dimse.shutdown_timeout, or until ``force()``), then abort what is left."""
        for server in self.servers:
            server.shutdown()
        deadline = time.monotonic() + self.config.dimse.shutdown_timeout
        while (
            self.active_associations()
            and time.monotonic() < deadline
            and not self._force.is_set()
        ):
            time.sleep(0.1)
        for server in self.servers:
            for assoc in _working(server):
                LOGGER.warning("aborting association with %s at shutdown", assoc.requestor.ae_title)
                adapter.abort(assoc, adapter.SHUTDOWN)
        self.servers = []


def _deferred_handshake(
    server: ThreadedAssociationServer, context: ssl.SSLContext
) -> Callable[[], tuple[socket.socket, Any]]:
    """pynetdicom does the TLS handshake in its one accepting thread, without a timeout:
    a client that connects and stays silent would block every other TLS client (and
    shutdown). Wrap without the handshake; it happens on the association's own thread
    (``_tls_handshake``), bounded by the ACSE timeout."""

    def get_request() -> tuple[socket.socket, Any]:
        assert server.socket is not None
        client, address = server.socket.accept()
        return (
            context.wrap_socket(client, server_side=True, do_handshake_on_connect=False),
            address,
        )

    return get_request


def server_tls_context(tls: TlsListenerConfig) -> ssl.SSLContext:
    """DICOM TLS (PS3.15 B.1): server certificate, and client certificates when required."""
    context = ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH, cafile=tls.ca_certificates or None
    )
    context.load_cert_chain(tls.certificate, tls.private_key)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
    return context


def _working(server: ThreadedAssociationServer) -> list[Any]:
    """Associations with work to finish. A connection closed before its A-ASSOCIATE-RQ
    (a health check, a port scan) leaves a thread that waits out pynetdicom's ACSE
    timeout although its socket is gone: nothing to wait for at shutdown."""
    return [
        assoc
        for assoc in server.active_associations
        if assoc.is_established or adapter.dul_alive(assoc)
    ]
