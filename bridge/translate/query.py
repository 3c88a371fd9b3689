"""C-FIND identifiers → QIDO-RS queries, and QIDO-RS DICOM JSON → C-FIND response identifiers.

Matching follows PS3.4 C.2.2.2 and maps onto PS3.18 10.6.1.2:

* single value, wildcard (``*``, ``?``) and range (``A-B``, ``A-``, ``-B``) matching pass
  through unchanged, since QIDO-RS uses the same syntax;
* universal matching (an empty key) becomes ``includefield=`` so the server returns it;
* list of UID matching (``1.2\\1.3``) becomes QIDO's comma-separated list, and so does any
  other multi-valued key (e.g. ModalitiesInStudy ``CT\\MR``), which QIDO-RS treats as "any of";
* sequence keys are returned (``includefield``) but not matched on: the bridge documents
  sequence matching as unsupported rather than approximating it.

PATIENT level has no QIDO-RS resource: it is answered from a study-level search, one
response per distinct patient (see :func:`patient_identity`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from bridge.errors import InvalidIdentifier
from bridge.models import InformationModel, QidoQuery, QidoResource, QueryLevel

# The level each well-known key belongs to (PS3.4 C.6.1.1 and C.6.2.1). Keys that are not
# listed are treated as belonging to the level being queried: PS3.4 allows optional keys.
_LEVEL_KEYS: dict[QueryLevel, tuple[str, ...]] = {
    QueryLevel.PATIENT: (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "EthnicGroup",
        "PatientComments",
        "PatientSpeciesDescription",
        "PatientBreedDescription",
        "ResponsiblePerson",
        "ReferencedPatientSequence",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ),
    QueryLevel.STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "IssuerOfAccessionNumberSequence",
        "StudyID",
        "StudyInstanceUID",
        "ReferringPhysicianName",
        "StudyDescription",
        "ProcedureCodeSequence",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansOfRecord",
        "AdmittingDiagnosesDescription",
        "ReferencedStudySequence",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "Occupation",
        "AdditionalPatientHistory",
        "OtherStudyNumbers",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    QueryLevel.SERIES: (
        "Modality",
        "SeriesNumber",
        "SeriesInstanceUID",
        "SeriesDescription",
        "SeriesDate",
        "SeriesTime",
        "BodyPartExamined",
        "Laterality",
        "ProtocolName",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
        "NumberOfSeriesRelatedInstances",
    ),
    QueryLevel.IMAGE: (
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "ContentDate",
        "ContentTime",
        "AcquisitionNumber",
        "NumberOfFrames",
        "Rows",
        "Columns",
        "BitsAllocated",
        "ImageType",
        "ConceptNameCodeSequence",
        "ContentTemplateSequence",
        "CompletionFlag",
        "VerificationFlag",
        "ObservationDateTime",
        "AlternateRepresentationSequence",
    ),
}
KEY_LEVEL: dict[str, QueryLevel] = {
    keyword: level for level, keywords in _LEVEL_KEYS.items() for keyword in keywords
}

# Keys that describe the request or the answer itself, never matched against the server.
_CONTROL_KEYS = frozenset(
    {
        "QueryRetrieveLevel",
        "SpecificCharacterSet",
        "RetrieveAETitle",
        "QueryRetrieveView",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
    }
)
# Attributes a PATIENT-level answer derives from study-level QIDO results.
_PATIENT_COUNTS = (
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)

UTF8_CHARSET = "ISO_IR 192"


# Text VRs whose matching the bridge re-checks on the server's answers: servers differ on
# case (Orthanc's QIDO-RS ignores it; PS3.4 C.2.2.2 wants it for all but PN) and cannot
# always be sent the exact value.
_TEXT_VRS = frozenset({"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_ASCII_UNSAFE = re.compile(r"[^\x21-\x7e]+")


@dataclass(frozen=True)
class LocalCheck:
    """A matching key the bridge checks itself on each QIDO-RS result."""

    tag: BaseTag
    patterns: tuple[str, ...]  # any of them may match (multi-valued key)
    case_sensitive: bool

    def accepts(self, result: Dataset) -> bool:
        if self.tag not in result:
            return True  # the server did not return it: nothing to hold against it
        got = _element_values(result[self.tag])
        if not got:
            return False
        flags = 0 if self.case_sensitive else re.IGNORECASE
        regexes = [re.compile(_wildcard_regex(p), flags) for p in self.patterns]
        return any(rx.fullmatch(value) for rx in regexes for value in got)


def _wildcard_regex(pattern: str) -> str:
    """PS3.4 C.2.2.2.4 wildcards as a regular expression: * any run, ? one character."""
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


@dataclass(frozen=True)
class FindPlan:
    """What a C-FIND asks for: one QIDO-RS query and how to shape the answers."""

    level: QueryLevel
    model: InformationModel
    query: QidoQuery
    # (tag, VR) of every key the response must carry, in request order.
    keys: tuple[tuple[BaseTag, str], ...]
    # Single-valued, non-wildcard keys: equal in every match, so a missing value in a
    # server's answer can be filled from the request.
    exact: tuple[tuple[BaseTag, Any], ...]
    checks: tuple[LocalCheck, ...] = ()

    def accepts(self, result: Dataset) -> bool:
        """Whether a server's match also matches by the bridge's own rules."""
        return all(check.accepts(result) for check in self.checks)

    @property
    def needs_patient_counts(self) -> bool:
        wanted = {keyword_for_tag(tag) for tag, _ in self.keys}
        return any(keyword in wanted for keyword in _PATIENT_COUNTS)


def parse_level(identifier: Dataset, model: InformationModel) -> QueryLevel:
    """The Query/Retrieve Level of `identifier`; InvalidIdentifier when missing or unknown."""
    raw = identifier.get("QueryRetrieveLevel")
    if raw is None or not str(raw).strip():
        raise InvalidIdentifier("QueryRetrieveLevel (0008,0052) is missing")
    name = str(raw).strip().upper()
    try:
        level = QueryLevel[name]
    except KeyError:
        raise InvalidIdentifier(
            f"QueryRetrieveLevel {name!r} is not one of PATIENT, STUDY, SERIES, IMAGE"
        ) from None
    if level is QueryLevel.PATIENT and model is not InformationModel.PATIENT_ROOT:
        raise InvalidIdentifier("QueryRetrieveLevel PATIENT exists only in the Patient Root model")
    return level


def key_level(keyword: str, level: QueryLevel) -> QueryLevel:
    """The hierarchy level of a key; unknown keys belong to the level being queried."""
    return KEY_LEVEL.get(keyword, level)


def _element_values(elem: DataElement) -> list[str]:
    """The element's values as strings (empty list for an empty element)."""
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, bytes):
        return [value.decode("ascii", "replace")]
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if str(v) != ""]
    return [str(value)]


def _qido_name(elem: DataElement) -> str:
    """The attribute name QIDO-RS accepts: the keyword, or 8 hex digits for unknown tags."""
    return elem.keyword or f"{elem.tag:08X}"


def is_file_meta(elem: DataElement) -> bool:
    """A File Meta element (group 0002), which belongs to a Part 10 file, not to a data set
    (PS3.10 7.1). Orthanc 1.10 puts MediaStorageSOPInstanceUID (0002,0003) into its
    IMAGE-level C-MOVE identifiers; like a lenient PACS, the bridge ignores such elements
    in every identifier: not matched, not checked, not returned."""
    return bool(elem.tag.group == 0x0002)


def check_keys(identifier: Dataset, level: QueryLevel) -> None:
    """Reject keys of a level below the one queried (PS3.4 C.4.1.2.1, hierarchical search)."""
    for elem in identifier:
        keyword = elem.keyword
        if keyword in _CONTROL_KEYS or elem.tag.is_private or elem.tag.element == 0:
            continue
        if is_file_meta(elem):
            continue
        if key_level(keyword, level) > level:
            raise InvalidIdentifier(
                f"{keyword} ({elem.tag.group:04X},{elem.tag.element:04X}) is a "
                f"{key_level(keyword, level).name}-level key and cannot be used in a "
                f"{level.name}-level query"
            )


def build_find_plan(
    identifier: Dataset, model: InformationModel, *, ascii_queries: bool = False
) -> FindPlan:
    """Translate a C-FIND identifier into a QIDO-RS query; raises InvalidIdentifier.

    With `ascii_queries` (servers that do not percent-decode, like Orthanc 1.10), runs of
    spaces and non-ASCII characters in query values become ``*`` and the exact value is
    checked locally (``FindPlan.accepts``).
    """
    level = parse_level(identifier, model)
    check_keys(identifier, level)

    match: dict[str, str] = {}
    include: set[str] = set()
    keys: list[tuple[BaseTag, str]] = []
    exact: list[tuple[BaseTag, Any]] = []
    checks: list[LocalCheck] = []
    study_uid: str | None = None
    series_uid: str | None = None

    for elem in identifier:
        keyword = elem.keyword
        if elem.tag.element == 0 or keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        if is_file_meta(elem):
            continue
        if elem.tag.is_private_creator:
            # Says who owns a private block; it is not a key to match or return.
            continue
        keys.append((elem.tag, elem.VR))
        if keyword in _CONTROL_KEYS:
            continue
        name = _qido_name(elem)
        if elem.VR == "SQ":
            include.add(name)
            continue
        values = _element_values(elem)
        if not values:
            include.add(name)
            continue
        if any(value.strip() in ("", "*") for value in values) and len(values) == 1:
            # "*" alone is universal matching (PS3.4 C.2.2.2.4), not a filter.
            include.add(name)
            continue
        values = [value.strip() if elem.VR not in ("PN",) else value for value in values]
        if len(values) == 1 and not _is_pattern(values[0], elem.VR):
            exact.append((elem.tag, elem.value))
            if keyword == "StudyInstanceUID" and level > QueryLevel.STUDY:
                study_uid = values[0]
                continue
            if keyword == "SeriesInstanceUID" and level > QueryLevel.SERIES:
                series_uid = values[0]
                continue
        if elem.VR in _TEXT_VRS:
            checks.append(LocalCheck(elem.tag, tuple(values), case_sensitive=elem.VR != "PN"))
            if ascii_queries:
                values = [_ASCII_UNSAFE.sub("*", value) for value in values]
        match[name] = ",".join(values)
        include.add(name)

    if level is QueryLevel.PATIENT:
        # Study-level QIDO answers carry the patient module; the counts are derived.
        include.update(("PatientID", "PatientName", "NumberOfStudyRelatedSeries"))
        include.update(("NumberOfStudyRelatedInstances",))
        include.difference_update(_PATIENT_COUNTS)
    resource = {
        QueryLevel.PATIENT: QidoResource.STUDIES,
        QueryLevel.STUDY: QidoResource.STUDIES,
        QueryLevel.SERIES: QidoResource.SERIES,
        QueryLevel.IMAGE: QidoResource.INSTANCES,
    }[level]
    if series_uid is not None and study_uid is None:
        # QIDO-RS has no /series/{uid}/instances resource: match the series UID instead.
        match["SeriesInstanceUID"] = series_uid
        series_uid = None
    query = QidoQuery(
        resource=resource,
        study_uid=study_uid,
        series_uid=series_uid,
        match=tuple(sorted(match.items())),
        includefield=tuple(sorted(include - set(match))),
    )
    return FindPlan(
        level=level,
        model=model,
        query=query,
        keys=tuple(keys),
        exact=tuple(exact),
        checks=tuple(checks),
    )


def _is_pattern(value: str, vr: str) -> bool:
    """Whether a single value uses wildcard or range matching rather than single value."""
    if vr in ("DA", "TM", "DT") and "-" in value:
        return True
    return vr not in ("UI",) and ("*" in value or "?" in value)


def json_to_dataset(result: Mapping[str, Any]) -> Dataset:
    """Decode one DICOM JSON object (PS3.18 F.2) from a QIDO-RS answer."""
    return Dataset.from_json(dict(result))


def result_to_identifier(result: Dataset, plan: FindPlan, retrieve_ae_title: str) -> Dataset:
    """Shape a matched object into a C-FIND response: exactly the requested keys.

    Keys the server did not return are sent empty, except single-valued matching keys,
    which every match equals by definition.
    """
    exact = dict(plan.exact)
    response = Dataset()
    response.QueryRetrieveLevel = plan.level.name
    for tag, vr in plan.keys:
        if tag == Tag("RetrieveAETitle"):
            response.RetrieveAETitle = retrieve_ae_title
        elif tag in result:
            response[tag] = result[tag]
        elif tag in exact:
            response.add_new(tag, vr, exact[tag])
        else:
            response.add_new(tag, vr, [] if vr == "SQ" else None)
    if "RetrieveAETitle" not in response:
        response.RetrieveAETitle = retrieve_ae_title
    if _has_non_ascii(response):
        response.SpecificCharacterSet = UTF8_CHARSET
    return response


def _has_non_ascii(ds: Dataset) -> bool:
    for elem in ds.iterall():
        if elem.VR == "SQ":
            continue
        for value in _element_values(elem):
            if not value.isascii():
                return True
    return False


def patient_identity(result: Dataset) -> tuple[str, str]:
    """What makes two study-level results the same patient: PatientID and its issuer."""
    return (str(result.get("PatientID", "")), str(result.get("IssuerOfPatientID", "")))


def add_patient_counts(patient: Dataset, studies: list[Dataset]) -> None:
    """Set NumberOfPatientRelated{Studies,Series,Instances} from the patient's studies."""

    def total(keyword: str) -> int:
        return sum(int(study.get(keyword) or 0) for study in studies)

    patient.NumberOfPatientRelatedStudies = len(studies)
    patient.NumberOfPatientRelatedSeries = total("NumberOfStudyRelatedSeries")
    patient.NumberOfPatientRelatedInstances = total("NumberOfStudyRelatedInstances")
