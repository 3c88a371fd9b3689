"""C-GET SCP: QIDO-RS for the count, WADO-RS per instance, C-STORE sub-operations on the same
association; cancel aborts the in-flight HTTP requests.

Follows pynetdicom's ``doc_handle_c_get`` contract: the first yield is the number of
sub-operations, then ``(0xFF00, dataset)`` per instance, and a failure, warning or cancel
status with a Failed SOP Instance UID List ends it. A failure found before the count is
known is reported as count 1 followed by the failure status, the only way pynetdicom lets
a handler answer with a status of its own choosing (pynetdicom then reports one failed
sub-operation).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from bridge.aio import Cancelled
from bridge.dimse import sop
from bridge.dimse.context import BridgeContext, CancelWatch
from bridge.dimse.find import decode_identifier
from bridge.dimse.retrieve import (
    InstanceSource,
    Tally,
    accepted_syntaxes,
    failed_list,
    list_instances,
)
from bridge.errors import BridgeError, InvalidIdentifier
from bridge.models import InformationModel, InstanceRef
from bridge.translate.frames import FrameError, check_frames, frame_instance, strip_bulk_data
from bridge.translate.query import json_to_dataset
from bridge.translate.retrieve import RetrievePlan, build_retrieve_plan
from bridge.translate.status import (
    CANCEL,
    IDENTIFIER_MISMATCH,
    INVALID_FRAME_REQUEST,
    NO_FRAMES_FOUND,
    OUT_OF_RESOURCES_MATCHES,
    PENDING,
    SUCCESS,
    UNABLE_TO_CREATE_OBJECT,
    UNABLE_TO_EXTRACT_FRAMES,
    describe,
    internal_error,
    status_dataset,
)

LOGGER = logging.getLogger(__name__)

GET_MODELS = {
    sop.PATIENT_ROOT_GET: InformationModel.PATIENT_ROOT,
    sop.STUDY_ROOT_GET: InformationModel.STUDY_ROOT,
    sop.COMPOSITE_INSTANCE_ROOT_GET: InformationModel.COMPOSITE_INSTANCE_ROOT,
    sop.WITHOUT_BULK_DATA_GET: InformationModel.WITHOUT_BULK_DATA,
}

# The count (first), then (status, dataset-or-marker) pairs.
Response = int | tuple[int | Dataset, Any]


class _FailedSubOp:
    """Yielded as a pending 'dataset' for an instance that could not be fetched.

    pynetdicom counts a pending yield that is not a Dataset as one failed sub-operation,
    which keeps its Number of Failed/Remaining Sub-operations exact; the bridge's own
    Failed SOP Instance UID List replaces pynetdicom's at the end.
    """

    def __bool__(self) -> bool:
        return True


FAILED_SUBOP = _FailedSubOp()


class _DropInvalidDatasetLog(logging.Filter):
    # pynetdicom logs an ERROR for every FAILED_SUBOP; the bridge logs the real reason.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Received invalid dataset from callback" not in record.getMessage()


logging.getLogger("pynetdicom.service_class").addFilter(_DropInvalidDatasetLog())


class StoreOutcomes:
    """Records the status of each C-STORE sub-operation pynetdicom sends for a C-GET.

    pynetdicom offers no hook for sub-operation results, so the association's
    ``send_c_store`` is wrapped for the duration of one C-GET.
    """

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self.last: int | None = None

    def __enter__(self) -> StoreOutcomes:
        original: Callable[..., Any] = self.assoc.send_c_store

        def send_c_store(dataset: Any, *args: Any, **kwargs: Any) -> Any:
            self.last = None
            try:
                rsp = original(dataset, *args, **kwargs)
            except Exception as exc:
                LOGGER.warning("C-STORE sub-operation failed: %s", exc)
                raise
            status = rsp.get("Status") if isinstance(rsp, Dataset) else None
            self.last = int(status) if status is not None else None
            return rsp

        self.assoc.send_c_store = send_c_store
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(AttributeError):
            del self.assoc.send_c_store


def handle_get(event: Any, ctx: BridgeContext) -> Iterator[Response]:
    """pynetdicom EVT_C_GET handler."""
    model = GET_MODELS.get(event.request.AffectedSOPClassUID, InformationModel.STUDY_ROOT)
    peer = event.assoc.requestor.ae_title
    cancelled = CancelWatch(event)
    try:
        plan = build_retrieve_plan(decode_identifier(event), model)
    except FrameError as exc:
        yield 1
        yield status_dataset(exc.status, str(exc)), failed_list([])
        return
    except InvalidIdentifier as exc:
        LOGGER.warning("C-GET from %s refused: %s", peer, exc)
        yield 1
        yield status_dataset(IDENTIFIER_MISMATCH, str(exc)), failed_list([])
        return
    except Exception as exc:
        LOGGER.exception("C-GET: internal error while reading the identifier")
        yield 1
        yield internal_error(exc), failed_list([])
        return
    LOGGER.info("C-GET %s %s from %s", model.value, plan.level.name, peer)
    try:
        refs = list_instances(plan, ctx, cancelled)
    except Cancelled:
        yield 1
        yield CANCEL, failed_list([])
        return
    except BridgeError as exc:
        LOGGER.warning("C-GET from %s: cannot list instances: %s", peer, exc)
        yield 1
        yield status_dataset(OUT_OF_RESOURCES_MATCHES, describe(exc)), failed_list([])
        return
    except Exception as exc:
        LOGGER.exception("C-GET: internal error while listing instances")
        yield 1
        yield internal_error(exc), failed_list([])
        return
    if plan.frames is not None:
        yield from _send_frames(event, ctx, plan.frames, refs, cancelled, peer)
        return
    yield len(refs)
    if not refs:
        LOGGER.info("C-GET from %s: no matching instances", peer)
        return
    yield from _send_all(event, ctx, plan, refs, cancelled, peer)


def _send_frames(
    event: Any,
    ctx: BridgeContext,
    frames: tuple[int, ...],
    refs: list[InstanceRef],
    cancelled: CancelWatch,
    peer: str,
) -> Iterator[Response]:
    """Frame-level retrieve: one new instance made of the requested frames (PS3.4 C.4.3.3)."""
    yield 1
    if len(refs) != 1:
        yield (
            status_dataset(
                NO_FRAMES_FOUND if not refs else INVALID_FRAME_REQUEST,
                "no such instance" if not refs else "FRAME level needs exactly one instance",
            ),
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
    with StoreOutcomes(event.assoc) as outcomes:
        yield PENDING, ds
        tally.record_store(ref, outcomes.last, len(ds.PixelData))
    status = tally.final_status()
    tally.log("C-GET frames", peer, status)
    if tally.failed:
        yield status_dataset(status), failed_list([str(ds.SOPInstanceUID)])


def _send_all(
    event: Any,
    ctx: BridgeContext,
    plan: RetrievePlan,
    refs: list[InstanceRef],
    cancelled: CancelWatch,
    peer: str,
) -> Iterator[Response]:
    tally = Tally(total=len(refs))
    accepted = accepted_syntaxes(event.assoc.accepted_contexts, "scu")
    source = InstanceSource(
        ctx,
        refs,
        accepted,
        cancelled,
        metadata_only=plan.model is InformationModel.WITHOUT_BULK_DATA,
    )
    done = 0
    with StoreOutcomes(event.assoc) as outcomes, contextlib.closing(source.subops()) as subops:
        try:
            for subop in subops:
                if cancelled():
                    raise Cancelled()
                done += 1
                if subop.dataset is None:
                    LOGGER.warning(
                        "C-GET sub-operation %s failed: %s", subop.ref.sop_instance_uid, subop.error
                    )
                    tally.failed.append(subop.ref.sop_instance_uid)
                    yield PENDING, FAILED_SUBOP
                    continue
                yield PENDING, subop.dataset
                tally.record_store(subop.ref, outcomes.last, subop.size)
        except Cancelled:
            unsent = [ref.sop_instance_uid for ref in refs[done:]]
            tally.log("C-GET", peer, CANCEL)
            LOGGER.info("C-GET from %s cancelled (%s)", peer, cancelled.reason or "C-CANCEL")
            yield CANCEL, failed_list(tally.failed + unsent)
            return
        except Exception as exc:
            LOGGER.exception("C-GET: internal error while sending")
            yield (
                internal_error(exc),
                failed_list(tally.failed + [ref.sop_instance_uid for ref in refs[done:]]),
            )
            return
    status = tally.final_status()
    tally.log("C-GET", peer, status)
    if status != SUCCESS and tally.failed:
        yield status_dataset(status), failed_list(tally.failed)
