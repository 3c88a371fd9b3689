"""C-MOVE SCP: the C-GET retrieve pipeline, sent over one sub-association to the destination.

Follows pynetdicom's ``doc_handle_move`` contract: the first yield is the destination
``(host, port, kwargs)`` (``(None, None)`` when unknown → 0xA801), the second the number
of sub-operations, then the pending/final responses of ``run_suboperations``. pynetdicom
opens the sub-association itself after the count; the ``kwargs`` dict holds the
presentation contexts the bridge worked out from the QIDO-RS results, and an
``EVT_CONN_OPEN`` handler that sets TCP_NODELAY and the configured calling AE title on
the outgoing association and hands the association back to this handler. The QIDO-RS
listing is done before the first yield, so that a refused request (bad identifier, failed
search) is answered without opening a sub-association, as Orthanc does: the handler
yields ``(None, None)`` and ``bridge.dimse.refusal`` turns pynetdicom's 0xA801 into the
refusal's own status.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from pydicom import Dataset
from pynetdicom import build_context, evt
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from bridge.dimse import adapter, sop
from bridge.dimse.aborts import abort_handlers
from bridge.dimse.context import BridgeContext, CancelWatch
from bridge.dimse.find import unsupported_sop_class
from bridge.dimse.refusal import refusing
from bridge.dimse.retrieval.listing import find_instances
from bridge.dimse.retrieval.send import run_suboperations
from bridge.models import InformationModel, InstanceRef
from bridge.ops.logs import ASSOCIATION
from bridge.translate.status import (
    INVALID_FRAME_REQUEST,
    MOVE_DESTINATION_UNKNOWN,
    status_dataset,
)
from bridge.translate.syntax import (
    COMPRESSED_SYNTAXES,
    RARE_NATIVE_SYNTAXES,
    UNCOMPRESSED_SYNTAXES,
)

LOGGER = logging.getLogger(__name__)

_MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


def move_contexts(refs: list[InstanceRef]) -> list[PresentationContext]:
    """Contexts for the sub-association: per SOP class, the uncompressed pair (which every
    destination accepts, and which the server can always transcode to), then one context
    per common compressed syntax so stored compressed data can go as is, then Explicit VR
    Big Endian and Deflated for destinations that take only those, as room allows."""
    classes = sorted({ref.sop_class_uid for ref in refs if ref.sop_class_uid})
    contexts = [build_context(uid, list(UNCOMPRESSED_SYNTAXES)) for uid in classes]
    for syntax in (*COMPRESSED_SYNTAXES, *RARE_NATIVE_SYNTAXES):
        for uid in classes:
            if len(contexts) >= _MAX_CONTEXTS:
                return contexts
            contexts.append(build_context(uid, [syntax]))
    return contexts


class _SubAssociation:
    """Catches the outgoing association pynetdicom opens, and prepares its socket."""

    def __init__(self, calling_ae_title: str) -> None:
        self.calling_ae_title = calling_ae_title
        self.assoc: Any = None
        self.opened = threading.Event()
        # The requesting association's id, for the lines of the sub-association's threads.
        self.association = ASSOCIATION.get()

    def on_open(self, event: Event) -> None:
        ASSOCIATION.set(self.association)  # its DUL thread, where EVT_CONN_OPEN fires
        adapter.set_nodelay(event.assoc)
        adapter.set_calling_ae_title(event.assoc, self.calling_ae_title)
        # Its reactor is held for the whole move, and its idle timer paused meanwhile.
        adapter.prepare(event.assoc)
        self.assoc = event.assoc
        self.opened.set()


@contextlib.contextmanager
def _comment_on_refusal(assoc: Any, comment: Callable[[], str]) -> Iterator[None]:
    """Adds an ErrorComment to the 0xA801 response pynetdicom sends by itself."""

    def add_comment(rsp: Any) -> bool:
        if getattr(rsp, "Status", None) == MOVE_DESTINATION_UNKNOWN and not getattr(
            rsp, "ErrorComment", None
        ):
            rsp.ErrorComment = comment()[:64]
        return False

    with adapter.editing_sent(assoc, add_comment):
        yield


def handle_move(
    event: Event, ctx: BridgeContext, models: Mapping[str, InformationModel]
) -> Iterator[Any]:
    """pynetdicom EVT_C_MOVE handler; `models` maps each C-MOVE SOP class to its model."""
    sop_class = event.request.AffectedSOPClassUID
    model = models.get(str(sop_class))
    if model is None:
        LOGGER.warning("C-MOVE for SOP class %s, which has no model here", sop_class)
        with refusing(event.assoc, unsupported_sop_class("C-MOVE", sop_class)):
            yield None, None
        return
    ctx = ctx.for_event(event)
    requestor = event.assoc.requestor.ae_title
    destination_ae = str(cast(C_MOVE, event.request).MoveDestination or "").strip()
    peer = ctx.config.peer(destination_ae)
    if peer is None:
        LOGGER.warning("C-MOVE from %s: unknown destination %r", requestor, destination_ae)
        with _comment_on_refusal(event.assoc, lambda: f"move destination {destination_ae} unknown"):
            yield None, None
        return
    # The identifier and the listing come before the destination is yielded: a refusal
    # then goes out before pynetdicom opens the sub-association (see bridge.dimse.refusal).
    cancelled = CancelWatch(event)
    found = find_instances(event, ctx, model, cancelled, "C-MOVE")
    if not isinstance(found, Dataset) and found[0].frames is not None:
        found = _frames_not_supported()
    if isinstance(found, Dataset):
        with refusing(event.assoc, found):
            yield None, None
        return
    _plan, refs = found
    move = ctx.config.move
    sub = _SubAssociation(move.calling_ae_title or ctx.config.dimse.ae_title)
    kwargs: dict[str, Any] = {
        # Its aborts are counted too: a destination that stops answering is a DIMSE timeout.
        "evt_handlers": [(evt.EVT_CONN_OPEN, sub.on_open), *abort_handlers(ctx.metrics)],
        "contexts": move_contexts(refs) or [build_context(sop.VERIFICATION)],
    }
    with _comment_on_refusal(
        event.assoc,
        lambda: f"cannot associate with {destination_ae} at {peer.host}:{peer.port}",
    ):
        yield peer.host, peer.port, kwargs
        yield len(refs)
    if not refs:
        return
    # pynetdicom resumes this generator only once the sub-association is established.
    if sub.assoc is None:
        sub.opened.wait(5)
    yield from run_suboperations(
        "C-MOVE", sub.assoc, ctx, refs, cancelled, destination_ae, requestor=event.assoc
    )


def _frames_not_supported() -> Dataset:
    return status_dataset(INVALID_FRAME_REQUEST, "frame-level retrieve is offered by C-GET only")
