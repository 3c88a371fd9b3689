"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION, QIDO-RS check, N-EVENT-REPORT.

The N-ACTION is answered at once; a worker thread then checks every referenced instance
with QIDO-RS and sends the N-EVENT-REPORT: event type 1 when all are present, 2 with a
Failed SOP Sequence (Failure Reason 0x0112, no such object instance) otherwise. It goes
on the same association while that is open, else on a new association to the requesting
AE as configured in ``[[peers]]``.

In spool mode the check first asks the spool (``Spool.settle``): instances it still has
to upload are waited for, up to ``store.commitment_timeout``; those it uploaded count as
present, those dead-lettered or still waiting at the deadline as failed (Failure Reason
0x0110, processing failure). QIDO-RS answers for the others.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import replace
from io import BytesIO
from typing import Any, cast

from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.events import Event

from bridge.dimse import adapter, sop
from bridge.dimse.aborts import abort_handlers
from bridge.dimse.context import BridgeContext
from bridge.errors import BridgeError
from bridge.models import QidoQuery, QidoResource
from bridge.profiles import Capabilities
from bridge.translate.status import (
    INVALID_ARGUMENT_VALUE,
    NO_SUCH_ACTION,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    SUCCESS,
    status_dataset,
)

LOGGER = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH = sop.STORAGE_COMMITMENT_PUSH
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1  # Action Type ID
ALL_COMMITTED = 1  # Event Type IDs
SOME_FAILED = 2
_UIDS_PER_QUERY = 50  # keeps each QIDO-RS URL well under common 8 KB limits
# Walking series for instances the bridge did not store: up to this many still missing
# are asked one SOPInstanceUID query each per series, more list the series once.
_UIDS_ASKED_ONE_BY_ONE = 5
_REPORT_TIMEOUT = 5.0  # seconds to wait for the N-EVENT-REPORT-RSP on the same association


def handle_action(event: Event, ctx: BridgeContext) -> tuple[Dataset | int, Dataset | None]:
    """pynetdicom EVT_N_ACTION handler."""
    ctx = ctx.for_event(event)
    if cast(N_ACTION, event.request).ActionTypeID != REQUEST_COMMITMENT:
        return status_dataset(NO_SUCH_ACTION, "only Request Storage Commitment (1)"), None
    try:
        info = event.action_information
        transaction_uid = str(info.TransactionUID)
        refs = [
            (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
            for item in info.ReferencedSOPSequence
        ]
    except Exception as exc:
        return status_dataset(INVALID_ARGUMENT_VALUE, f"bad commitment request: {exc}"), None
    requestor = event.assoc.requestor.ae_title
    LOGGER.info(
        "storage commitment from %s: %d instance(s), transaction %s",
        requestor,
        len(refs),
        transaction_uid,
    )
    worker = threading.Thread(
        # In a copy of this thread's context: its lines carry the association's id.
        target=contextvars.copy_context().run,
        args=(_commit, event.assoc, ctx, requestor, transaction_uid, refs),
        name="storage-commitment",
        daemon=True,
    )
    # The report is outstanding work: the requestor waits for it in silence, and its
    # association must not be dropped for idling meanwhile (ended in _commit).
    adapter.begin_work(event.assoc)
    try:
        worker.start()
    except BaseException:
        adapter.end_work(event.assoc)
        raise
    return SUCCESS, None


def needs_stored_index(caps: Capabilities) -> bool:
    """Whether commitment on this server asks by study and series, so that the C-STORE
    path must record where it stored each instance (bridge/dimse/stored.py)."""
    return not _root_uid_lists(caps)


def _root_uid_lists(caps: Capabilities) -> bool:
    """Whether /instances?SOPInstanceUID=a,b,... exists on this server."""
    keys = caps.instance_search_keys
    return (
        not caps.hierarchical_only
        and caps.uid_lists
        and (keys is None or "SOPInstanceUID" in keys)
    )


def present_instances(ctx: BridgeContext, uids: Iterable[str]) -> set[str]:
    """The SOP Instance UIDs among `uids` the DICOMweb server holds, asked only with
    queries the server answers (its Capabilities).

    * A server that takes UID lists at ``/instances``: SOP Instance UID lists, 50 a query.
    * Otherwise each instance the bridge itself stored is looked up in its series
      (``/studies/{study}/series/{series}/instances``, one query per series), with the
      study and series UIDs the C-STORE path recorded (``ctx.stored``, bounded).
    * An instance the bridge does not know the series of is asked at ``/instances`` one
      UID at a time where the server has that resource; on a server with hierarchical
      resources only (AWS HealthImaging) the bridge walks for it: ``/studies``, then each
      study's ``/studies/{study}/series``, then each series'
      ``/studies/{study}/series/{series}/instances?SOPInstanceUID=...`` (or the series'
      whole listing when many remain), until all are found. The walk reads at most
      ``dicomweb.max_results`` studies; instances not found by then are reported as
      failed (not committed), and so are those a failed search left unchecked: safe,
      since the modality then keeps its copy (PS3.4 J.3.3).
    """
    wanted = sorted(set(uids))
    found: set[str] = set()
    caps = ctx.dicomweb.capabilities
    if _root_uid_lists(caps):
        for start in range(0, len(wanted), _UIDS_PER_QUERY):
            chunk = wanted[start : start + _UIDS_PER_QUERY]
            found |= _listed(ctx, _by_uid(",".join(chunk)), set(chunk))
        return found
    by_series: dict[tuple[str, str], set[str]] = {}
    unknown: list[str] = []
    for uid in wanted:
        where = ctx.stored.locate(uid)
        if where is None:
            unknown.append(uid)
        else:
            by_series.setdefault(where, set()).add(uid)
    for (study_uid, series_uid), members in sorted(by_series.items()):
        query = QidoQuery(
            resource=QidoResource.INSTANCES, study_uid=study_uid, series_uid=series_uid
        )
        found |= _listed(ctx, query, members)
    keys = caps.instance_search_keys
    if not caps.hierarchical_only and (keys is None or "SOPInstanceUID" in keys):
        for uid in unknown:
            found |= _listed(ctx, _by_uid(uid), {uid})
    elif unknown:
        found |= _walked(ctx, set(unknown), caps)
    return found


def _walked(ctx: BridgeContext, wanted: set[str], caps: Capabilities) -> set[str]:
    """The UIDs among `wanted` found by walking studies → series → instances, with the
    hierarchical searches alone, over at most ``dicomweb.max_results`` studies."""
    found: set[str] = set()
    limit = ctx.dicomweb.max_results
    keys = caps.instance_search_keys
    by_uid = keys is None or "SOPInstanceUID" in keys
    studies = 0
    try:
        for study_uid in _uids(ctx, QidoQuery(resource=QidoResource.STUDIES), "0020000D"):
            studies += 1
            if limit and studies > limit:
                LOGGER.warning(
                    "storage commitment: %d instance(s) not stored by the bridge not found "
                    "in the first %d studies (dicomweb.max_results; hierarchical QIDO-RS "
                    "only): reported as failed",
                    len(wanted - found),
                    limit,
                )
                break
            series_query = QidoQuery(resource=QidoResource.SERIES, study_uid=study_uid)
            for series_uid in list(_uids(ctx, series_query, "0020000E")):
                found |= _in_series(ctx, study_uid, series_uid, wanted - found, by_uid)
                if found == wanted:
                    return found
    except BridgeError as exc:
        LOGGER.warning(
            "storage commitment: the search for %d instance(s) not stored by the bridge "
            "failed (%s): reported as failed",
            len(wanted - found),
            exc,
        )
    return found


def _in_series(
    ctx: BridgeContext, study_uid: str, series_uid: str, wanted: set[str], by_uid: bool
) -> set[str]:
    """The UIDs among `wanted` in one series: asked one by one while few remain (and the
    server matches SOPInstanceUID there), else from the series' whole listing."""
    base = QidoQuery(resource=QidoResource.INSTANCES, study_uid=study_uid, series_uid=series_uid)
    if not by_uid or len(wanted) > _UIDS_ASKED_ONE_BY_ONE:
        return _listed(ctx, base, wanted)
    found: set[str] = set()
    for uid in sorted(wanted):
        found |= _listed(ctx, replace(base, match=(("SOPInstanceUID", uid),)), {uid})
    return found


def _uids(ctx: BridgeContext, query: QidoQuery, tag: str) -> Iterator[str]:
    """The UID (`tag`) of each result of `query`, in order."""
    for page in ctx.search_pages(query):
        for result in page.results:
            element = result.get(tag)
            values = element.get("Value", []) if isinstance(element, dict) else []
            if values:
                yield str(values[0])


def _by_uid(uids: str) -> QidoQuery:
    return QidoQuery(
        resource=QidoResource.INSTANCES,
        match=(("SOPInstanceUID", uids),),
        includefield=("00080018",),
    )


def _listed(ctx: BridgeContext, query: QidoQuery, wanted: set[str]) -> set[str]:
    """The UIDs among `wanted` that `query`'s results list."""
    found: set[str] = set()
    for page in ctx.search_pages(query):
        for result in page.results:
            element = result.get("00080018")
            values = element.get("Value", []) if isinstance(element, dict) else []
            found.update(str(v) for v in values if str(v) in wanted)
    return found


def event_report(
    transaction_uid: str,
    refs: list[tuple[str, str]],
    present: set[str],
    unsettled: Collection[str] = (),
) -> tuple[int, Dataset]:
    """Event Type ID and Event Information of the N-EVENT-REPORT (PS3.4 J.3.3.1)."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    done, failed = [], []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        if sop_instance in present:
            done.append(item)
        else:
            # Spool mode: dead-lettered, or not uploaded within commitment_timeout.
            unsettled_here = sop_instance in unsettled
            item.FailureReason = PROCESSING_FAILURE if unsettled_here else NO_SUCH_OBJECT_INSTANCE
            failed.append(item)
    if done:
        info.ReferencedSOPSequence = DicomSequence(done)
    if failed:
        info.FailedSOPSequence = DicomSequence(failed)
        return SOME_FAILED, info
    return ALL_COMMITTED, info


def _commit(
    assoc: Any,
    ctx: BridgeContext,
    requestor: str,
    transaction_uid: str,
    refs: list[tuple[str, str]],
) -> None:
    try:
        _deliver(assoc, ctx, requestor, transaction_uid, refs)
    finally:
        adapter.end_work(assoc)


def _deliver(
    assoc: Any,
    ctx: BridgeContext,
    requestor: str,
    transaction_uid: str,
    refs: list[tuple[str, str]],
) -> None:
    spooled: set[str] = set()
    unsettled: set[str] = set()
    if ctx.spool is not None:
        # Not "committed" before the server has them: the modality may delete its copy.
        spooled, unsettled = ctx.spool.settle(uid for _, uid in refs)
    try:
        asked = {uid for _, uid in refs} - spooled - unsettled
        present = spooled | (present_instances(ctx, asked) if asked else set())
    except BridgeError as exc:
        # Unknown is not committed: report every instance as failed, so the modality keeps
        # its copy (PS3.4 J.3.3: failure means it must not delete them).
        LOGGER.warning("storage commitment %s: QIDO-RS failed: %s", transaction_uid, exc)
        present = spooled
    event_type, info = event_report(transaction_uid, refs, present, unsettled)
    if assoc.is_established and _send_on_same(assoc, event_type, info):
        LOGGER.info("storage commitment %s: event type %d sent", transaction_uid, event_type)
        return
    peer = ctx.config.peer(requestor)
    if peer is None:
        LOGGER.error(
            "storage commitment %s: association closed and %s is not in [[peers]]: "
            "the result cannot be delivered",
            transaction_uid,
            requestor,
        )
        return
    _send_on_new(ctx, peer.host, peer.port, peer.ae_title, event_type, info, transaction_uid)


def _send_on_same(assoc: Any, event_type: int, info: Dataset) -> bool:
    """The N-EVENT-REPORT on the requestor's own association, if it takes it.

    The acceptor's reactor also reads the DIMSE queue, so it is held at its checkpoint
    (``adapter.reactor_paused``: proved blocked, not guessed) while the response is
    awaited. A requestor that releases as the report crosses its release never answers
    it: the wait watches for that, then lets the reactor answer the release, and the
    report goes out on a new association instead.
    """
    try:
        with adapter.reactor_paused(assoc, timeout=_REPORT_TIMEOUT) as held:
            if not held or adapter.release_requested(assoc):
                return False
            context = adapter.valid_context(assoc, STORAGE_COMMITMENT_PUSH, "", None)
            syntax = context.transfer_syntax[0]
            req = N_EVENT_REPORT()
            req.MessageID = 1
            req.AffectedSOPClassUID = STORAGE_COMMITMENT_PUSH
            req.AffectedSOPInstanceUID = STORAGE_COMMITMENT_INSTANCE
            req.EventTypeID = event_type
            encoded = encode(
                info, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
            )
            if encoded is None:
                raise ValueError("the Event Information cannot be encoded")
            req.EventInformation = BytesIO(encoded)
            adapter.send_message(assoc, req, context.context_id)
            deadline = time.monotonic() + _REPORT_TIMEOUT
            while (remaining := deadline - time.monotonic()) > 0:
                _, rsp = adapter.wait_response(
                    assoc, remaining, give_up=lambda: adapter.release_requested(assoc)
                )
                if rsp is None:
                    return False
                if isinstance(rsp, N_EVENT_REPORT) and rsp.Status is not None:
                    return bool(rsp.Status == SUCCESS)
            return False
    except Exception as exc:
        LOGGER.warning("N-EVENT-REPORT on the same association failed: %s", exc)
        return False


def _prepare(event: Event) -> None:
    adapter.prepare(event.assoc)


def _send_on_new(
    ctx: BridgeContext,
    host: str,
    port: int,
    ae_title: str,
    event_type: int,
    info: Dataset,
    transaction_uid: str,
) -> None:
    ae = AE(ae_title=ctx.config.dimse.ae_title)
    ae.acse_timeout = ctx.config.move.acse_timeout
    ae.dimse_timeout = ctx.config.move.dimse_timeout
    ae.connection_timeout = ctx.config.move.connect_timeout
    assoc = ae.associate(
        host,
        port,
        contexts=[build_context(STORAGE_COMMITMENT_PUSH)],
        ae_title=ae_title,
        # On its own association the commitment SCP is the one that proposes the SCP role.
        ext_neg=[build_role(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)],
        evt_handlers=[(evt.EVT_CONN_OPEN, _prepare), *abort_handlers(ctx.metrics)],
    )
    if not assoc.is_established:
        LOGGER.error(
            "storage commitment %s: cannot associate with %s at %s:%d",
            transaction_uid,
            ae_title,
            host,
            port,
        )
        return
    try:
        # This requestor association's reactor reads the DIMSE queue too: hold it, so the
        # N-EVENT-REPORT-RSP reaches send_n_event_report.
        with adapter.reactor_paused(assoc) as held:
            status = None
            if held:
                status, _ = assoc.send_n_event_report(
                    info, event_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE
                )
        LOGGER.info(
            "storage commitment %s: event type %d sent to %s on a new association (0x%04X)",
            transaction_uid,
            event_type,
            ae_title,
            int(status.get("Status", 0xFFFF)) if status else 0xFFFF,
        )
    finally:
        assoc.release()
