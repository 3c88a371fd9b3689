"""C-FIND SCP (Patient Root and Study Root): identifier → QIDO-RS, pages → pending responses."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pynetdicom.dsutils import encode
from pynetdicom.events import Event

from bridge.dimse.context import BridgeContext, CancelWatch
from bridge.dimse.search import (
    PlanRun,
    decode,
    series_count,
    study_counts,
    study_modalities,
    study_series,
)
from bridge.errors import (
    BridgeError,
    DicomwebCircuitOpen,
    DicomwebProtocolError,
    InvalidIdentifier,
)
from bridge.loop_thread import Cancelled
from bridge.models import InformationModel, QueryLevel
from bridge.profiles import Capabilities
from bridge.translate.plan import COUNT_KEYWORDS, SERIES_COUNTS, STUDY_COUNTS, plan_search
from bridge.translate.query import (
    FindPlan,
    add_patient_counts,
    build_find_plan,
    patient_identity,
    result_to_identifier,
)
from bridge.translate.status import (
    CANCEL,
    OUT_OF_RESOURCES,
    PENDING,
    SOP_CLASS_NOT_SUPPORTED,
    find_failure,
    internal_error,
    status_dataset,
)

LOGGER = logging.getLogger(__name__)

Response = tuple[int | Dataset, Dataset | None]


def decode_identifier(event: Event) -> Dataset:
    """The request identifier, or InvalidIdentifier when it cannot be decoded."""
    try:
        identifier = event.identifier
    except Exception as exc:  # pydicom raises many kinds on a corrupt byte stream
        raise InvalidIdentifier(f"identifier cannot be decoded: {exc}") from exc
    if not isinstance(identifier, Dataset):
        raise InvalidIdentifier("the request has no identifier")
    return identifier


def unsupported_sop_class(service: str, sop_class: object) -> Dataset:
    """The failure for a SOP class the bridge has no information model for on `service`:
    answering it as another model's query would be a wrong answer, not a failure."""
    return status_dataset(SOP_CLASS_NOT_SUPPORTED, f"{service} SOP class {sop_class} not served")


def handle_find(
    event: Event, ctx: BridgeContext, models: Mapping[str, InformationModel]
) -> Iterator[Response]:
    """pynetdicom EVT_C_FIND handler: pending per match, then stop (pynetdicom adds Success).

    `models` maps each C-FIND SOP class to its information model (bridge/dimse/services.py).
    """
    sop_class = event.request.AffectedSOPClassUID
    model = models.get(str(sop_class))
    if model is None:
        LOGGER.warning("C-FIND for SOP class %s, which has no model here", sop_class)
        yield unsupported_sop_class("C-FIND", sop_class), None
        return
    ctx = ctx.for_event(event)
    cancelled = CancelWatch(event)
    try:
        plan = build_find_plan(
            decode_identifier(event),
            model,
            ascii_queries=ctx.dicomweb.query_encoding == "dicom",
        )
        LOGGER.info(
            "C-FIND %s %s from %s",
            model.value,
            plan.level.name,
            event.assoc.requestor.ae_title,
        )
        LOGGER.debug("C-FIND query %s", plan.query)
        yield from _answer(plan, ctx, cancelled)
    except Cancelled:
        yield CANCEL, None
    except DicomwebCircuitOpen as exc:
        # Answered at once, without asking the server; the breaker logged the outage.
        LOGGER.info("C-FIND failed: %s", exc)
        yield status_dataset(OUT_OF_RESOURCES, exc.summary), None
    except BridgeError as exc:
        LOGGER.warning("C-FIND failed: %s", exc)
        yield find_failure(exc), None
    except Exception as exc:
        LOGGER.exception("C-FIND: internal error")
        yield internal_error(exc), None


def _answer(plan: FindPlan, ctx: BridgeContext, cancelled: CancelWatch) -> Iterator[Response]:
    ae_title = ctx.retrieve_ae_title
    max_results = ctx.dicomweb.max_results
    caps = ctx.dicomweb.capabilities
    # The searches this server can answer, and what the bridge matches itself.
    searches = plan_search(plan.level, plan.query, caps, extra_checks=plan.checks)
    LOGGER.debug("C-FIND plan %s", searches)
    counts = _counts_to_compute(plan, caps)
    sent = 0
    patients: dict[tuple[str, str], list[Dataset]] = {}
    hold_patients = plan.level is QueryLevel.PATIENT and plan.needs_patient_counts
    for raw in PlanRun(searches, ctx, cancelled, budget=max_results).results():
        if cancelled():
            yield CANCEL, None
            return
        result = decode(raw)
        if counts:
            _add_counts(result, counts, ctx, cancelled)
        if plan.level is QueryLevel.PATIENT:
            identity = patient_identity(result)
            seen = identity in patients
            patients.setdefault(identity, []).append(result)
            if seen or hold_patients:
                continue
        if max_results and sent >= max_results:
            yield _too_many(max_results), None
            return
        yield PENDING, _encodable(result_to_identifier(result, plan, ae_title))
        sent += 1
    if hold_patients:
        for studies in patients.values():
            if cancelled():
                yield CANCEL, None
                return
            if max_results and sent >= max_results:
                yield _too_many(max_results), None
                return
            patient = studies[0]
            add_patient_counts(patient, studies)
            yield PENDING, _encodable(result_to_identifier(patient, plan, ae_title))
            sent += 1
    # The summary line ("C-FIND done: peer ..., 1 match, ...") is bridge/dimse/trace.py's,
    # written as the final response goes out.


def _counts_to_compute(plan: FindPlan, caps: Capabilities) -> frozenset[str]:
    """The NumberOf*Related* counts the C-FIND asks for that the server does not return
    (``related_counts`` false), and ModalitiesInStudy if it does not return that
    (``modalities_in_study`` false): computed from hierarchical series/instance searches."""
    asked = {keyword_for_tag(tag) for tag, _ in plan.keys}
    modalities = {"ModalitiesInStudy"} & asked if not caps.modalities_in_study else set()
    if caps.related_counts:
        return frozenset(modalities)
    wanted = (asked & COUNT_KEYWORDS) | modalities
    # A patient's series and instances are sums over its studies (add_patient_counts).
    if "NumberOfPatientRelatedSeries" in wanted:
        wanted.add("NumberOfStudyRelatedSeries")
    if "NumberOfPatientRelatedInstances" in wanted:
        wanted.add("NumberOfStudyRelatedInstances")
    return frozenset(wanted)


def _add_counts(
    result: Dataset, counts: frozenset[str], ctx: BridgeContext, cancelled: CancelWatch
) -> None:
    study_uid = str(result.get("StudyInstanceUID", ""))
    if not study_uid:
        return
    rows = None
    if "ModalitiesInStudy" in counts:
        # One series search of the study serves this and the study counts.
        rows = study_series(ctx, study_uid, cancelled, modalities=True)
        result.ModalitiesInStudy = study_modalities(rows)
    if counts & set(STUDY_COUNTS):
        series, instances = study_counts(
            ctx,
            study_uid,
            cancelled,
            instances="NumberOfStudyRelatedInstances" in counts,
            rows=rows,
        )
        result.NumberOfStudyRelatedSeries = series
        if "NumberOfStudyRelatedInstances" in counts:
            result.NumberOfStudyRelatedInstances = instances
    series_uid = str(result.get("SeriesInstanceUID", ""))
    if counts & set(SERIES_COUNTS) and series_uid:
        result.NumberOfSeriesRelatedInstances = series_count(ctx, study_uid, series_uid, cancelled)


def _encodable(response: Dataset) -> Dataset:
    """The response, once it is known to encode: pynetdicom would otherwise fail it with
    0xC312 and a traceback. A value pydicom cannot encode came from the server."""
    if encode(response, True, True) is None:
        raise DicomwebProtocolError("a QIDO-RS value cannot be encoded as DICOM")
    return response


def _too_many(limit: int) -> Dataset:
    return status_dataset(OUT_OF_RESOURCES, f"more than {limit} matches; narrow the query")
