"""C-STORE sub-operations of a C-GET or C-MOVE, driven through pynetdicom's service classes.

pynetdicom sends each yielded dataset as a C-STORE sub-operation and keeps the counts;
this module feeds it in order from the fetch-ahead pipeline, records each sub-operation's
outcome, and produces the final status with the exact Failed SOP Instance UID List.

The destination's reactor is held at its checkpoint for the whole retrieve
(``adapter.reactor_paused``), so only the sender reads C-STORE responses off the DIMSE
queue, on the encoded fast path and on pynetdicom's stock ``send_c_store`` alike. On a
C-GET that is the requesting association, whose reactor is the thread running this.

With ``retrieve.fast_send`` the retrieve runs ``adapter.lean_sending`` on the sender:
encoded instances go out on the lean path where it applies (plain TCP), and so do the
pending C-GET responses between them (``bridge.dimse.fastsend`` lists which path each
sub-operation takes).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from pydicom import Dataset

from bridge.dimse import adapter
from bridge.dimse.context import ASSOCIATION_ENDED, BridgeContext, CancelWatch
from bridge.dimse.fastsend import EncodedInstance, send_encoded
from bridge.dimse.retrieval.instances import InstanceSource, accepted_syntaxes
from bridge.dimse.retrieval.largefile import SpooledInstance, send_spooled
from bridge.dimse.retrieval.tally import Tally, failed_list
from bridge.loop_thread import Cancelled
from bridge.models import InstanceRef
from bridge.ops.logs import Progress
from bridge.translate.status import (
    CANCEL,
    OUT_OF_RESOURCES,
    PENDING,
    SUCCESS,
    UNABLE_TO_PROCESS,
    internal_error,
    status_dataset,
)

LOGGER = logging.getLogger(__name__)

# The count (first), then (status, dataset-or-marker) pairs.
Response = int | tuple[int | Dataset, Any]


class FailedSubOp(Dataset):
    """Yielded as the pending data set of an instance that could not be fetched or
    converted. The wrapped ``send_c_store`` (StoreOutcomes) answers it with 0xA700
    without sending anything, so pynetdicom counts one failed sub-operation, lowers the
    remaining count and lists the SOP Instance UID: its counters stay exact."""

    def __init__(self, sop_instance_uid: str) -> None:
        super().__init__()
        self.SOPInstanceUID = sop_instance_uid


class StoreOutcomes:
    """Records the status of each C-STORE sub-operation pynetdicom sends for a C-GET or C-MOVE.

    pynetdicom offers no hook for sub-operation results, so the association's
    ``send_c_store`` is replaced for the duration of one retrieve
    (``adapter.replacing_send_c_store``).
    """

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self._stack = contextlib.ExitStack()
        self.last: int | None = None
        # A C-STORE went out and no response came back (timeout, abort): pynetdicom clears
        # is_established a moment later, so this is the first sign the peer is gone.
        self.no_response = False

    def __enter__(self) -> StoreOutcomes:
        self._stack.enter_context(adapter.replacing_send_c_store(self.assoc, self._wrap))
        return self

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def send_c_store(dataset: Any, *args: Any, **kwargs: Any) -> Any:
            self.last = None
            if isinstance(dataset, FailedSubOp):
                self.last = OUT_OF_RESOURCES
                return status_dataset(OUT_OF_RESOURCES)
            try:
                if isinstance(dataset, EncodedInstance):
                    rsp = send_encoded(self.assoc, dataset, *args, **kwargs)
                elif isinstance(dataset, SpooledInstance):
                    # A large instance, from its temporary file (largefile.py).
                    rsp = send_spooled(self.assoc, dataset, *args, **kwargs)
                else:
                    rsp = original(dataset, *args, **kwargs)
            except Exception as exc:
                LOGGER.warning("C-STORE sub-operation failed: %s", exc)
                raise
            status = rsp.get("Status") if isinstance(rsp, Dataset) else None
            self.last = int(status) if status is not None else None
            self.no_response = status is None
            if status is None:
                # No (valid) response: pynetdicom has aborted the association. Answer
                # with a failure status, or its C-GET/C-MOVE service class would read
                # the missing Status and fail with an AttributeError.
                return status_dataset(UNABLE_TO_PROCESS, "no C-STORE response")
            return rsp

        return send_c_store

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


class FinalComment:
    """Puts the tally's ErrorComment on the final C-GET/C-MOVE response.

    Once every sub-operation has a result, pynetdicom ignores the handler's final yield and
    builds the final response itself (``_get_scp``/``_move_scp``: "yielded further
    results but these will be ignored"), without an ErrorComment. For the duration of one
    retrieve, a non-pending response without an ErrorComment gets ``comment``
    (``adapter.editing_sent``).
    """

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self._stack = contextlib.ExitStack()
        self.comment: str | None = None

    def __enter__(self) -> FinalComment:
        self._stack.enter_context(adapter.editing_sent(self.assoc, self._comment))
        return self

    def _comment(self, rsp: Any) -> bool:
        status = getattr(rsp, "Status", None)
        if (
            self.comment
            and status is not None
            and status != PENDING
            and hasattr(rsp, "ErrorComment")
            and not rsp.ErrorComment
        ):
            rsp.ErrorComment = status_dataset(int(status), self.comment).ErrorComment
        return False  # every final response of the retrieve, for as long as it runs

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _lean(sender: Any, ctx: BridgeContext) -> contextlib.AbstractContextManager[bool]:
    """The lean send path for the retrieve, unless ``retrieve.fast_send`` is off."""
    if ctx.config.retrieve.fast_send:
        return adapter.lean_sending(sender)
    return contextlib.nullcontext(False)


def run_suboperations(
    service: str,
    sender: Any,
    ctx: BridgeContext,
    refs: list[InstanceRef],
    cancelled: CancelWatch,
    peer: str,
    *,
    requestor: Any = None,
    metadata_only: bool = False,
) -> Iterator[Response]:
    """Yield pynetdicom's pending/final C-GET or C-MOVE responses for `refs`.

    `sender` is the association the C-STORE sub-operations go out on: the requesting
    one for C-GET, the sub-association to the Move Destination for C-MOVE; `requestor`
    the association the responses go out on (default: `sender`).
    """
    final = FinalComment(requestor if requestor is not None else sender)
    with final:
        yield from _run(service, sender, ctx, refs, cancelled, peer, final, metadata_only)


def _run(
    service: str,
    sender: Any,
    ctx: BridgeContext,
    refs: list[InstanceRef],
    cancelled: CancelWatch,
    peer: str,
    final: FinalComment,
    metadata_only: bool,
) -> Iterator[Response]:
    tally = Tally(total=len(refs))
    accepted = accepted_syntaxes(sender.accepted_contexts, "scu")
    source = InstanceSource(ctx, refs, accepted, cancelled, metadata_only=metadata_only)
    done = 0
    progress = Progress(
        service, peer, len(refs), ctx.config.ops.progress_interval, LOGGER, board=ctx.board
    )
    with (
        StoreOutcomes(sender) as outcomes,
        adapter.reactor_paused(sender) as held,
        _lean(sender, ctx) as lean,
        contextlib.closing(source.subops()) as subops,
    ):
        LOGGER.debug(
            "%s to %s: %s", service, peer, "lean send path" if lean else "send through the DUL"
        )
        try:
            for subop in subops:
                if cancelled():
                    raise Cancelled()
                if outcomes.no_response or not held or adapter.lost(sender):
                    # The destination went away: every remaining sub-operation fails, and
                    # nothing more is fetched for it.
                    tally.record_failures(
                        [ref.sop_instance_uid for ref in refs[done:]],
                        f"association to {peer} lost",
                    )
                    LOGGER.warning("%s: association to %s lost", service, peer)
                    break
                done += 1
                if subop.outage:
                    # The DICOMweb server is unreachable (circuit open): fail this and
                    # every remaining sub-operation now, in one line, fetching nothing.
                    remaining = [ref.sop_instance_uid for ref in refs[done - 1 :]]
                    tally.record_failures(remaining, subop.error or "DICOMweb server unreachable")
                    LOGGER.warning(
                        "%s for %s: %s; %d remaining sub-operation(s) failed",
                        service,
                        peer,
                        subop.error,
                        len(remaining),
                    )
                    done = len(refs)
                    progress.update(done, tally.bytes_sent, len(tally.failed), force=True)
                    break
                if subop.dataset is None:
                    LOGGER.warning(
                        "%s sub-operation %s failed: %s",
                        service,
                        subop.ref.sop_instance_uid,
                        subop.error,
                    )
                    tally.record_failure(subop.ref.sop_instance_uid, subop.error or "failed")
                    yield PENDING, FailedSubOp(subop.ref.sop_instance_uid)
                    progress.update(done, tally.bytes_sent, len(tally.failed))
                    continue
                yield PENDING, subop.dataset
                before = tally.bytes_sent
                tally.record_store(subop.ref, outcomes.last, subop.size)
                ctx.metrics.bytes_transferred(service, "out", tally.bytes_sent - before)
                progress.update(done, tally.bytes_sent, len(tally.failed))
        except Cancelled:
            unsent = [ref.sop_instance_uid for ref in refs[done:]]
            if cancelled.reason == ASSOCIATION_ENDED:
                # Not a cancel: the peer aborted or went away. Nobody gets the final
                # response; the association's end line and the operation's "aborted"
                # line say what happened (bridge/dimse/trace.py).
                LOGGER.info("%s for %s stopped: the association ended", service, peer)
            else:
                LOGGER.info("%s for %s cancelled (%s)", service, peer, cancelled.reason)
            yield CANCEL, failed_list(tally.failed + unsent)
            return
        except Exception as exc:
            LOGGER.exception("%s: internal error while sending", service)
            yield (
                internal_error(exc),
                failed_list(tally.failed + [ref.sop_instance_uid for ref in refs[done:]]),
            )
            return
    status = tally.final_status()
    final.comment = tally.comment()
    if status != SUCCESS and tally.failed:
        yield status_dataset(status, final.comment), failed_list(tally.failed)
