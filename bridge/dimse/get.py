"""C-GET SCP: QIDO-RS for the count, WADO-RS per instance, C-STORE sub-operations on the same
association; cancel aborts the in-flight HTTP requests.

Follows pynetdicom's ``doc_handle_c_get`` contract: the first yield is the number of
sub-operations, then ``(0xFF00, dataset)`` per instance, and a failure, warning or cancel
status with a Failed SOP Instance UID List ends it. A failure found before the count is
known is reported as count 1 followed by the failure status, the only way pynetdicom lets
a handler answer with a status of its own choosing; ``refusing`` then sends it as Orthanc
does, without an identifier and with zero counters (see ``bridge.dimse.refusal``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.events import Event

from bridge.dimse.context import BridgeContext, CancelWatch
from bridge.dimse.find import decode_identifier, unsupported_sop_class
from bridge.dimse.refusal import refusing
from bridge.dimse.retrieval.listing import find_instances
from bridge.dimse.retrieval.send import (
    FinalComment,
    Response,
    StoreOutcomes,
    run_suboperations,
)
from bridge.dimse.retrieval.tally import Tally, failed_list
from bridge.errors import BridgeError
from bridge.loop_thread import Cancelled
from bridge.models import InformationModel, InstanceRef
from bridge.ops.logs import ASSOCIATION
from bridge.translate.frames import FrameError, check_frames, frame_instance, strip_bulk_data
from bridge.translate.query import json_to_dataset
from bridge.translate.status import (
    CANCEL,
    INVALID_FRAME_REQUEST,
    NO_FRAMES_FOUND,
    PENDING,
    UNABLE_TO_CREATE_OBJECT,
    UNABLE_TO_EXTRACT_FRAMES,
    describe,
    status_dataset,
)

LOGGER = logging.getLogger(__name__)


def handle_get(
    event: Event, ctx: BridgeContext, models: Mapping[str, InformationModel]
) -> Iterator[Response]:
    """pynetdicom EVT_C_GET handler; `models` maps each C-GET SOP class to its model."""
    sop_class = event.request.AffectedSOPClassUID
    model = models.get(str(sop_class))
    if model is None:
        LOGGER.warning("C-GET for SOP class %s, which has no model here", sop_class)
        refusal = unsupported_sop_class("C-GET", sop_class)
        with refusing(event.assoc, refusal):
            yield 1
            yield refusal, None
        return
    ctx = ctx.for_event(event)
    peer = event.assoc.requestor.ae_title
    cancelled = CancelWatch(event)
    found = find_instances(event, ctx, model, cancelled, "C-GET")
    if isinstance(found, Dataset):
        with refusing(event.assoc, found):
            yield 1
            yield found, None
        return
    plan, refs = found
    if plan.frames is not None:
        yield from _send_frames(event, ctx, plan.frames, refs, cancelled)
        return
    yield len(refs)
    if not refs:
        LOGGER.info("C-GET from %s: no matching instances", peer)
        return
    yield from run_suboperations(
        "C-GET",
        event.assoc,
        ctx,
        refs,
        cancelled,
        peer,
        metadata_only=plan.model is InformationModel.WITHOUT_BULK_DATA,
    )


def _send_frames(
    event: Event,
    ctx: BridgeContext,
    frames: tuple[int, ...],
    refs: list[InstanceRef],
    cancelled: CancelWatch,
) -> Iterator[Response]:
    """Frame-level retrieve: one new instance made of the requested frames (PS3.4 C.4.3.3)."""
    if not refs:
        refusal = status_dataset(NO_FRAMES_FOUND, "no such instance")
        with refusing(event.assoc, refusal):
            yield 1
            yield refusal, None
        return
    yield 1
    if len(refs) != 1:
        yield (
            status_dataset(INVALID_FRAME_REQUEST, "FRAME level needs exactly one instance"),
            failed_list([ref.sop_instance_uid for ref in refs]),
        )
        return
    ref = refs[0]
    try:
        metadata = ctx.loop.call(ctx.client.retrieve_metadata(ref), cancelled)
        source = json_to_dataset(strip_bulk_data(metadata))
        check_frames(frames, int(source.get("NumberOfFrames") or 1))
        pixels = ctx.loop.call(
            ctx.client.retrieve_frames(ref, frames, ExplicitVRLittleEndian), cancelled
        )
        ds = frame_instance(metadata, pixels, frames, decode_identifier(event))
    except Cancelled:
        yield CANCEL, failed_list([ref.sop_instance_uid])
        return
    except FrameError as exc:
        yield status_dataset(exc.status, str(exc)), failed_list([ref.sop_instance_uid])
        return
    except BridgeError as exc:
        yield (
            status_dataset(UNABLE_TO_EXTRACT_FRAMES, describe(exc)),
            failed_list([ref.sop_instance_uid]),
        )
        return
    except Exception as exc:
        LOGGER.exception("C-GET: cannot build the frame-level instance")
        yield (
            status_dataset(UNABLE_TO_CREATE_OBJECT, f"{type(exc).__name__}: {exc}"),
            failed_list([ref.sop_instance_uid]),
        )
        return
    tally = Tally(total=1)
    with FinalComment(event.assoc) as final, StoreOutcomes(event.assoc) as outcomes:
        yield PENDING, ds
        tally.record_store(ref, outcomes.last, len(ds.PixelData))
        ctx.board.add(ASSOCIATION.get(), nbytes=tally.bytes_sent)
        status = tally.final_status()
        final.comment = tally.comment()
        if tally.failed:
            yield status_dataset(status, final.comment), failed_list([str(ds.SOPInstanceUID)])
