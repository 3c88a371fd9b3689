"""C-GET / C-MOVE identifiers → the QIDO-RS instance search that lists what to retrieve.

A retrieve identifier holds unique keys only (PS3.4 C.4.2.2.1, C.4.3.2.1): the level's own
unique key (one value or a list) and single-valued unique keys of the levels above.
Anything else does not fit the level or the model and is refused with 0xA900.

Leniency, for clients that are not quite conformant (README "Client compatibility"):
File Meta elements (group 0002) are ignored, and a PATIENT-level retrieve on the Study
Root model is served as the Patient Root patient-level retrieve it means (Orthanc 1.10
proposes only Study Root and sends both; Orthanc's own SCP serves both).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset

from bridge.errors import InvalidIdentifier
from bridge.models import InformationModel, InstanceRef, QidoQuery, QidoResource, QueryLevel
from bridge.translate.frames import FrameError
from bridge.translate.query import is_file_meta, parse_level
from bridge.translate.status import INVALID_FRAME_REQUEST, TIME_BASED_ON_NON_TIME_BASED

UNIQUE_KEYS: dict[QueryLevel, str] = {
    QueryLevel.PATIENT: "PatientID",
    QueryLevel.STUDY: "StudyInstanceUID",
    QueryLevel.SERIES: "SeriesInstanceUID",
    QueryLevel.IMAGE: "SOPInstanceUID",
}
# Keys a retrieve identifier may carry besides unique keys.
_ALLOWED_EXTRA = frozenset(
    {"QueryRetrieveLevel", "SpecificCharacterSet", "QueryRetrieveView", "IssuerOfPatientID"}
)
_FRAME_KEYS = frozenset({"SimpleFrameList", "CalculatedFrameList", "TimeRange"})
# What the bridge needs from each matched instance (PS3.18 tags, 8 hex digits).
INSTANCE_FIELDS = (
    "00080016",  # SOPClassUID
    "00080018",  # SOPInstanceUID
    "0020000D",  # StudyInstanceUID
    "0020000E",  # SeriesInstanceUID
    "00200011",  # SeriesNumber
    "00200013",  # InstanceNumber
    "00280008",  # NumberOfFrames
)


@dataclass(frozen=True)
class RetrievePlan:
    """The instances a C-GET/C-MOVE names: one QIDO-RS instance search."""

    level: QueryLevel
    model: InformationModel
    query: QidoQuery
    # Frame-level retrieve (Composite Instance Root): requested frame numbers, 1-based.
    frames: tuple[int, ...] | None = None


def _values(identifier: Dataset, keyword: str) -> list[str]:
    if keyword not in identifier:
        return []
    value = identifier[keyword].value
    if value is None or value == "":
        return []
    if isinstance(value, str | int | float) or not isinstance(value, Iterable):
        text = str(value).strip()
        return [text] if text else []
    return [str(v).strip() for v in value if str(v).strip()]


def build_retrieve_plan(identifier: Dataset, model: InformationModel) -> RetrievePlan:
    """Translate a retrieve identifier; raises InvalidIdentifier (→ 0xA900) when it does not fit."""
    raw_level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if model is InformationModel.STUDY_ROOT and raw_level == QueryLevel.PATIENT.name:
        # Study Root has no PATIENT level (PS3.4 C.6.2), but a requester that proposed no
        # Patient Root context (Orthanc) can only ask this way, and means the patient.
        model = InformationModel.PATIENT_ROOT
    level_model = (
        InformationModel.STUDY_ROOT
        if model in (InformationModel.COMPOSITE_INSTANCE_ROOT, InformationModel.WITHOUT_BULK_DATA)
        else model
    )
    frame_level = model is InformationModel.COMPOSITE_INSTANCE_ROOT and raw_level == "FRAME"
    if frame_level:
        level = QueryLevel.IMAGE
    else:
        level = parse_level(identifier, level_model)
    if (
        model
        in (
            InformationModel.COMPOSITE_INSTANCE_ROOT,
            InformationModel.WITHOUT_BULK_DATA,
        )
        and level is not QueryLevel.IMAGE
    ):
        raise InvalidIdentifier(
            f"QueryRetrieveLevel {level.name} is not defined for this model (IMAGE or FRAME)"
        )

    allowed = {UNIQUE_KEYS[lvl] for lvl in QueryLevel if lvl <= level}
    if frame_level:
        allowed |= _FRAME_KEYS
    for elem in identifier:
        if elem.tag.element == 0 or elem.keyword in _ALLOWED_EXTRA or is_file_meta(elem):
            continue
        if elem.keyword not in allowed and not (
            elem.keyword == "PatientID" and model is not InformationModel.PATIENT_ROOT
        ):
            name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
            raise InvalidIdentifier(f"{name} is not a unique key of a {level.name}-level retrieve")

    own_key = UNIQUE_KEYS[level]
    own = _values(identifier, own_key)
    if not own:
        raise InvalidIdentifier(f"{own_key} is required for a {level.name}-level retrieve")
    for keyword in (allowed - _FRAME_KEYS) | {"PatientID"}:
        for value in _values(identifier, keyword):
            if "*" in value or "?" in value:
                raise InvalidIdentifier(f"{keyword} must not use wildcards in a retrieve")
    upper: dict[str, str] = {}
    for lvl in QueryLevel:
        keyword = UNIQUE_KEYS[lvl]
        if lvl >= level or keyword not in identifier:
            continue
        values = _values(identifier, keyword)
        if len(values) > 1:
            raise InvalidIdentifier(f"{keyword} above the retrieve level must be single-valued")
        if values:
            upper[keyword] = values[0]

    study_uid = upper.get("StudyInstanceUID")
    series_uid = upper.get("SeriesInstanceUID")
    if level is QueryLevel.STUDY and len(own) == 1:
        study_uid, own = own[0], []
    elif level is QueryLevel.SERIES and len(own) == 1 and study_uid is not None:
        series_uid, own = own[0], []
    match: dict[str, str] = {}
    if own:
        match[own_key] = ",".join(own)
    if "PatientID" in upper and study_uid is None:
        match["PatientID"] = upper["PatientID"]
    if series_uid is not None and study_uid is None:
        # QIDO-RS has no /series/{uid}/instances resource without its study.
        match["SeriesInstanceUID"] = series_uid
        series_uid = None
    query = QidoQuery(
        resource=QidoResource.INSTANCES,
        study_uid=study_uid,
        series_uid=series_uid,
        match=tuple(sorted(match.items())),
        includefield=tuple(sorted(set(INSTANCE_FIELDS) - set(match))),
    )
    frames = parse_frame_list(identifier) if frame_level else None
    return RetrievePlan(level=level, model=model, query=query, frames=frames)


def parse_frame_list(identifier: Dataset) -> tuple[int, ...]:
    """Frame numbers from Simple (0008,1161) or Calculated (0008,1162) Frame List."""
    if "TimeRange" in identifier:
        raise FrameError(
            TIME_BASED_ON_NON_TIME_BASED, "time-based frame requests are not supported"
        )
    if "SimpleFrameList" in identifier:
        raw = identifier.SimpleFrameList
        values = [int(v) for v in (raw if isinstance(raw, Iterable) else [raw])]
        if not values or any(v < 1 for v in values):
            raise FrameError(INVALID_FRAME_REQUEST, "SimpleFrameList must hold frame numbers >= 1")
        # WADO-RS (and dicomweb-client's URI) want ascending, distinct frame numbers.
        return tuple(sorted(set(values)))
    if "CalculatedFrameList" in identifier:
        raw = identifier.CalculatedFrameList
        triplets = [int(v) for v in (raw if isinstance(raw, Iterable) else [raw])]
        if not triplets or len(triplets) % 3:
            raise FrameError(
                INVALID_FRAME_REQUEST, "CalculatedFrameList must hold (start, end, step)"
            )
        frames: list[int] = []
        for start, end, step in zip(triplets[::3], triplets[1::3], triplets[2::3], strict=True):
            if start < 1 or end < start or step < 1:
                raise FrameError(INVALID_FRAME_REQUEST, "CalculatedFrameList triplet is invalid")
            frames.extend(range(start, end + 1, step))
        return tuple(sorted(set(frames)))
    raise FrameError(
        INVALID_FRAME_REQUEST, "FRAME level needs SimpleFrameList or CalculatedFrameList"
    )


def _first(result: Mapping[str, Any], tag: str) -> Any:
    element = result.get(tag)
    if not isinstance(element, Mapping):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def instance_ref(result: Mapping[str, Any]) -> InstanceRef | None:
    """An InstanceRef from one QIDO-RS instance result; None if its UIDs are missing."""
    study, series, sop = (_first(result, t) for t in ("0020000D", "0020000E", "00080018"))
    if not (isinstance(study, str) and isinstance(series, str) and isinstance(sop, str)):
        return None
    sop_class = _first(result, "00080016")
    return InstanceRef(
        study_uid=study,
        series_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=sop_class if isinstance(sop_class, str) else "",
        instance_number=_int_or_none(_first(result, "00200013")),
        series_number=_int_or_none(_first(result, "00200011")),
        number_of_frames=_int_or_none(_first(result, "00280008")),
    )


def sort_instances(refs: Iterable[InstanceRef]) -> list[InstanceRef]:
    """A stable sending order: study, series (number, UID), instance number, SOP UID."""
    big = 2**31

    def key(ref: InstanceRef) -> tuple[str, int, str, int, str]:
        series_number = ref.series_number if ref.series_number is not None else big
        instance_number = ref.instance_number if ref.instance_number is not None else big
        return (ref.study_uid, series_number, ref.series_uid, instance_number, ref.sop_instance_uid)

    return sorted(refs, key=key)
