"""What every DIMSE handler needs, passed as one typed object through ``evt_handlers``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from pynetdicom.events import Event

from bridge.config import Config, DicomwebConfig
from bridge.dicomweb.client import DicomwebClient
from bridge.dimse.stored import StoredIndex
from bridge.loop_thread import LoopThread
from bridge.models import QidoPage, QidoQuery
from bridge.ops.metrics import Metrics


@dataclass(frozen=True)
class BridgeContext:
    """The config, the event loop, and the DICOMweb backend a request is answered from.

    The context bound to the handlers is the default backend's; ``for_event`` picks the
    backend the called AE title of the association selects (``[backends.NAME]``).
    """

    config: Config
    loop: LoopThread
    client: DicomwebClient
    dicomweb: DicomwebConfig
    backend: str = "default"
    # The AE title the peer called, for the backend answering: RetrieveAETitle in C-FIND.
    ae_title: str = ""
    # called AE title → (backend name, client, config) of the named backends
    routes: Mapping[str, tuple[str, DicomwebClient, DicomwebConfig]] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    # Study and series of each instance recently stored, for storage commitment on
    # servers that search instances only hierarchically (bridge/dimse/stored.py).
    stored: StoredIndex = field(default_factory=StoredIndex)

    def for_event(self, event: Event) -> BridgeContext:
        # The called AE title of the A-ASSOCIATE-RQ: pynetdicom's acceptor.ae_title is the
        # server's own title whatever the peer called.
        primitive = event.assoc.requestor.primitive
        assert primitive is not None  # a served request: the A-ASSOCIATE-RQ has arrived
        called = str(primitive.called_ae_title).strip()
        route = self.routes.get(called)
        if route is None:
            return self
        name, client, dicomweb = route
        return replace(
            self, client=client, dicomweb=dicomweb, backend=name, ae_title=called, routes={}
        )

    def search_pages(
        self, query: QidoQuery, cancelled: Callable[[], bool] | None = None
    ) -> Iterator[QidoPage]:
        """Every page of a QIDO-RS search (the client's paging rule), each fetched when
        the caller asks for it (so a C-FIND streams as pages arrive); cancellable."""
        pager = self.client.search_pages(query)
        while (page := self.loop.call(pager.next(), cancelled)) is not None:
            yield page

    @property
    def retrieve_ae_title(self) -> str:
        return self.ae_title or self.config.dimse.ae_title


class CancelWatch:
    """Remembers a C-CANCEL, or the end of the association, once seen.

    ``event.is_cancelled`` consumes the C-CANCEL the first time it returns True, and
    several parts of a handler ask; this object asks pynetdicom and keeps the answer.
    """

    def __init__(self, event: Event) -> None:
        self._event = event
        self.cancelled = False
        self.reason = ""

    def __call__(self) -> bool:
        if self.cancelled:
            return True
        assoc = self._event.assoc
        # pynetdicom marks an acceptor's association ended only in its reactor, which
        # runs on the handler's own thread: while the handler waits on HTTP, an A-ABORT
        # or A-RELEASE-RQ from the peer shows only in the ACSE state.
        if not assoc.is_established or assoc.acse.is_aborted() or assoc.acse.is_release_requested():
            self.cancelled, self.reason = True, "association ended"
        elif self._event.is_cancelled:
            self.cancelled, self.reason = True, "C-CANCEL received"
        return self.cancelled
