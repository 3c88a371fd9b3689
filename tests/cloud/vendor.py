"""What each cloud DICOMweb server takes and how it answers: the conformance emulator's table.

Pure (no I/O): :func:`parse_route` names a request, :func:`check_qido` / :func:`check_wado`
say whether the vendor would refuse it, :func:`shape_search` turns Orthanc's full answer
into the page the vendor would send. The emulator (tests/cloud/emulator.py) does the I/O.

These models are written from the vendors' documents, independently of bridge/profiles.py
(which must not be imported here): a difference between the two is what the end-to-end
tests exist to find. Each :class:`Vendor` lists the pages it was built from in ``pages``;
where a page was silent and the model had to choose, the field's comment says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

# Transfer syntaxes named below.
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
ANY = "*"

# QIDO-RS "resources" as the emulator names them: the level searched and where from.
#   studies            /studies
#   series             /series                      (root)
#   study-series       /studies/{s}/series
#   instances          /instances                   (root)
#   study-instances    /studies/{s}/instances
#   series-instances   /studies/{s}/series/{se}/instances
SearchResource = Literal[
    "studies", "series", "study-series", "instances", "study-instances", "series-instances"
]
RouteKind = Literal["search", "retrieve", "store", "other"]

COUNT_TAGS = frozenset(
    {
        "00201200",  # NumberOfPatientRelatedStudies
        "00201202",  # NumberOfPatientRelatedSeries
        "00201204",  # NumberOfPatientRelatedInstances
        "00201206",  # NumberOfStudyRelatedSeries
        "00201208",  # NumberOfStudyRelatedInstances
        "00201209",  # NumberOfSeriesRelatedInstances
    }
)
COUNT_KEYWORDS = frozenset(keyword_for_tag(int(t, 16)) for t in COUNT_TAGS)
# The UID that names a row of each search level.
UID_TAGS = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_CONTROL = frozenset({"limit", "offset", "fuzzymatching", "includefield"})
_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


@dataclass(frozen=True)
class Refusal:
    """The vendor's answer to a request it does not take."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None


@dataclass(frozen=True)
class Route:
    """One request named: which transaction, which resource, which UIDs in the path."""

    kind: RouteKind
    resource: str  # a SearchResource, or study/series/instance/frames/metadata/rendered
    study_uid: str | None = None
    series_uid: str | None = None
    instance_uid: str | None = None


def parse_route(method: str, path: str) -> Route:
    """Name a request by its method and path below the DICOMweb root (query stripped)."""
    parts = [p for p in path.split("/") if p]
    method = method.upper()
    if method == "POST" and parts[:1] == ["studies"] and len(parts) <= 2:
        return Route("store", "studies", parts[1] if len(parts) == 2 else None)
    if method != "GET" or not parts:
        return Route("other", "/".join(parts))
    if parts == ["studies"]:
        return Route("search", "studies")
    if parts == ["series"]:
        return Route("search", "series")
    if parts == ["instances"]:
        return Route("search", "instances")
    if parts[0] != "studies":
        return Route("other", "/".join(parts))
    study = parts[1]
    rest = parts[2:]
    if rest == ["series"]:
        return Route("search", "study-series", study)
    if rest == ["instances"]:
        return Route("search", "study-instances", study)
    if not rest:
        return Route("retrieve", "study", study)
    if rest == ["metadata"]:
        return Route("retrieve", "metadata", study)
    if rest[0] != "series" or len(rest) < 2:
        return Route("other", "/".join(parts))
    series = rest[1]
    rest = rest[2:]
    if rest == ["instances"]:
        return Route("search", "series-instances", study, series)
    if not rest:
        return Route("retrieve", "series", study, series)
    if rest == ["metadata"]:
        return Route("retrieve", "metadata", study, series)
    if rest[0] != "instances" or len(rest) < 2:
        return Route("other", "/".join(parts))
    instance = rest[1]
    rest = rest[2:]
    if not rest:
        return Route("retrieve", "instance", study, series, instance)
    return Route("retrieve", rest[0], study, series, instance)


def keyword_of(name: str) -> str | None:
    """A QIDO-RS attribute ID (keyword or ggggeeee) as a keyword; None if unknown."""
    if _HEX_TAG.match(name):
        keyword = keyword_for_tag(int(name, 16))
        return keyword or None
    return name if tag_for_keyword(name) is not None else None


def vr_of(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return dictionary_VR(tag) if tag is not None else "UN"


def split_query(query: str) -> list[tuple[str, str]]:
    """``a=1&b=2`` as decoded (name, value) pairs, in order; ``a`` alone is ``("a", "")``."""
    pairs: list[tuple[str, str]] = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


@dataclass(frozen=True)
class Vendor:
    """One server's documented limits. ``None`` in a key table means "any attribute"."""

    name: str
    pages: tuple[str, ...]
    # Keywords matchable at each search resource; a resource missing from the mapping does
    # not exist (404). None: every resource exists and matches any attribute.
    search_keys: Mapping[str, frozenset[str] | None] | None = None
    wildcards: bool = True
    uid_lists: bool = True
    value_lists: bool = True
    # Keywords that take A-B ranges (None: every DA/TM/DT attribute).
    range_keys: frozenset[str] | None = None
    empty_values: bool = True
    # fuzzymatching=true accepted, and the PN keywords it applies to (prefix word match).
    fuzzy_keys: frozenset[str] = frozenset()
    # fuzzymatching= is refused outright (400) rather than ignored.
    fuzzy_refused: bool = False
    # includefield: whether "all" is taken, and the keywords refused.
    includefield_all: bool = True
    includefield_refused: frozenset[str] = frozenset()
    # Largest limit per search level (studies/series/instances); 0 = none. Default limit
    # when the request has none (0 = all).
    max_limit: Mapping[str, int] = field(default_factory=dict)
    default_limit: int = 0
    max_offset: int = 0
    # Most rows a search can ever page through (0 = no cap).
    max_records: int = 0
    # An empty page (offset past the end, or no match) is 204 No Content.
    empty_is_204: bool = False
    # Row order: "server" (Orthanc's), "newest" (last stored first), or "number"
    # (SeriesNumber / InstanceNumber ascending).
    order: Mapping[str, str] = field(default_factory=dict)
    # Whether the vendor computes the paging itself (else Orthanc's answer passes as is).
    pages_itself: bool = False
    related_counts: bool = True
    # Attributes an answer row can carry at each level (keywords), beyond the match keys;
    # None: whatever Orthanc returns. Root series rows also carry study attributes, root
    # instance rows study and series ones, study-instance rows series ones.
    returned_keys: Mapping[str, frozenset[str]] | None = None
    warning_header: bool = True
    # WADO-RS
    study_retrieve: bool = True
    # Accept transfer-syntax values served (None: any; "stored" = the instance's own).
    retrieve_syntaxes: frozenset[str] | None = None
    # Requests per second and burst on WADO-RS (0 = no limit).
    wado_rate: float = 0.0
    wado_burst: int = 0
    # STOW-RS
    stow_implicit_vr: bool = True
    stow_requires_patient_id: bool = False
    # How a duplicate SOP Instance UID is answered: "orthanc" (stored again, 200),
    # "google" (409 ALREADY_EXISTS), "azure" (failure 45070), "aws" (200, filed into a
    # non-primary image set that QIDO-RS does not show).
    duplicates: str = "orthanc"

    def level(self, resource: str) -> str:
        return (
            "studies"
            if resource == "studies"
            else ("series" if resource in ("series", "study-series") else "instances")
        )


# --------------------------------------------------------------------------- the vendors

_GOOGLE_STUDY = frozenset(
    {
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDate",
    }
)
_GOOGLE_SERIES = _GOOGLE_STUDY | {"SeriesInstanceUID", "Modality"}
_GOOGLE_INSTANCES = _GOOGLE_SERIES | {"SOPInstanceUID"}

_AZURE_STUDY = frozenset(
    {
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDate",
        "StudyDescription",
        "ModalitiesInStudy",
    }
)
_AZURE_SERIES_ONLY = frozenset(
    {"SeriesInstanceUID", "Modality", "PerformedProcedureStepStartDate", "ManufacturerModelName"}
)

_AWS_STUDY = frozenset(
    {
        "StudyDate",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "StudyID",
    }
)

GENERIC = Vendor(
    name="generic",
    pages=("https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_10.6",),
)

ORTHANC = Vendor(
    name="orthanc",
    pages=("https://orthanc.uclouvain.be/book/plugins/dicomweb.html",),
)

GOOGLE = Vendor(
    name="google",
    pages=(
        # DICOM conformance statement: Search transaction (search keys, fuzzymatching,
        # limits), Retrieve transaction (Accept headers), Store transaction.
        "https://cloud.google.com/healthcare-api/docs/dicom",
        # The search parameters Google's own tools send (the same six study keys, plus
        # SeriesInstanceUID/Modality and SOPInstanceUID).
        "https://googleapis.github.io/genai-toolbox/integrations/cloudhealthcare/tools/"
        "cloud-healthcare-search-dicom-instances",
    ),
    search_keys={
        "studies": _GOOGLE_STUDY,
        "series": _GOOGLE_SERIES,
        "study-series": _GOOGLE_SERIES,
        "instances": _GOOGLE_INSTANCES,
        "study-instances": _GOOGLE_INSTANCES,
        "series-instances": _GOOGLE_INSTANCES,
    },
    wildcards=False,
    uid_lists=False,
    value_lists=False,
    range_keys=frozenset({"StudyDate"}),
    fuzzy_keys=frozenset({"PatientName"}),
    # Google computes no NumberOf*Related* counts, and refuses them in includefield.
    includefield_refused=COUNT_KEYWORDS,
    max_limit={"studies": 5000, "series": 5000, "instances": 50000},
    max_offset=1_000_000,
    pages_itself=True,
    related_counts=False,
    warning_header=False,
    duplicates="google",
)

# Azure v2 "Search response": default and "other" tags per level, and the two counts it
# computes ("aggregated attribute ... supported in includeField"). The same lists are the
# open-source server's (github.com/microsoft/dicom-server, Features/Query/
# QueryResponseBuilder.cs: a row keeps only these tags and the filtered ones), so
# ModalitiesInStudy, for one, comes back only when it was matched on.
_AZURE_RETURNED = {
    "studies": frozenset(
        {
            "StudyDate",
            "AccessionNumber",
            "StudyDescription",
            "ReferringPhysicianName",
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "StudyInstanceUID",
            "SpecificCharacterSet",
            "StudyTime",
            "InstanceAvailability",
            "TimezoneOffsetFromUTC",
            "AnatomicRegionsInStudyCodeSequence",
            "ProcedureCodeSequence",
            "NameOfPhysiciansReadingStudy",
            "AdmittingDiagnosesDescription",
            "ReferencedStudySequence",
            "PatientAge",
            "PatientSize",
            "PatientWeight",
            "Occupation",
            "AdditionalPatientHistory",
            "PatientSex",
            "StudyID",
            "NumberOfStudyRelatedInstances",
        }
    ),
    "series": frozenset(
        {
            "Modality",
            "ManufacturerModelName",
            "SeriesInstanceUID",
            "PerformedProcedureStepStartDate",
            "SpecificCharacterSet",
            "TimezoneOffsetFromUTC",
            "SeriesNumber",
            "Laterality",
            "SeriesDate",
            "SeriesTime",
            "SeriesDescription",
            "PerformedProcedureStepStartTime",
            "RequestAttributesSequence",
            "NumberOfSeriesRelatedInstances",
        }
    ),
    "instances": frozenset(
        {
            "SOPInstanceUID",
            "SpecificCharacterSet",
            "SOPClassUID",
            "InstanceAvailability",
            "TimezoneOffsetFromUTC",
            "InstanceNumber",
            "Rows",
            "Columns",
            "BitsAllocated",
            "NumberOfFrames",
        }
    ),
}

AZURE = Vendor(
    name="azure",
    pages=(
        # "Search (QIDO-RS)": supported parameters (limit 1-200, default 100, 204 past the
        # end), searchable attributes per resource, no empty-value search, range only on
        # StudyDate/PatientBirthDate, fuzzy prefix word match on PN, newest-first paging;
        # "Retrieve (WADO-RS)": Accept *, 1.2.840.10008.1.2.1, 1.2.840.10008.1.2.4.90, else
        # 406; "Store (STOW-RS)": explicit VR only, PatientID required, 45070 duplicates,
        # 202 partial, 409 none stored.
        "https://learn.microsoft.com/azure/healthcare-apis/dicom/"
        "dicom-services-conformance-statement-v2",
        "https://github.com/MicrosoftDocs/azure-docs/blob/main/articles/healthcare-apis/"
        "dicom/dicom-services-conformance-statement-v2.md",
        # The attributes a search row carries (the same lists as the statement's).
        "https://github.com/microsoft/dicom-server/blob/main/src/Microsoft.Health.Dicom.Core/"
        "Features/Query/QueryResponseBuilder.cs",
    ),
    search_keys={
        "studies": _AZURE_STUDY,
        "series": _AZURE_STUDY | _AZURE_SERIES_ONLY,
        "study-series": _AZURE_SERIES_ONLY,
        "instances": _AZURE_STUDY | _AZURE_SERIES_ONLY | {"SOPInstanceUID"},
        "study-instances": _AZURE_SERIES_ONLY | {"SOPInstanceUID"},
        "series-instances": frozenset({"SOPInstanceUID"}),
    },
    wildcards=False,
    # The v2 statement lists Range, Exact and Fuzzy matching only: no lists of any kind.
    uid_lists=False,
    value_lists=False,
    range_keys=frozenset({"StudyDate", "PatientBirthDate"}),
    empty_values=False,
    fuzzy_keys=frozenset({"PatientName", "ReferringPhysicianName"}),
    max_limit={"studies": 200, "series": 200, "instances": 200},
    default_limit=100,
    returned_keys=_AZURE_RETURNED,
    empty_is_204=True,
    order={"studies": "newest", "series": "newest", "instances": "newest"},
    pages_itself=True,
    retrieve_syntaxes=frozenset({ANY, EXPLICIT_VR_LE, JPEG2000_LOSSLESS}),
    stow_implicit_vr=False,
    stow_requires_patient_id=True,
    duplicates="azure",
)

AWS = Vendor(
    name="aws",
    pages=(
        # Hierarchical QIDO-RS only, at most 10,000 records, studies newest first.
        "https://docs.aws.amazon.com/healthimaging/latest/devguide/dicomweb-search.html",
        "https://docs.aws.amazon.com/healthimaging/latest/devguide/dicomweb-search-studies.html",
        # Series keys Modality and SeriesInstanceUID, ordered by SeriesNumber ascending.
        "https://docs.aws.amazon.com/healthimaging/latest/devguide/dicomweb-search-series.html",
        # Instance keys SOPClassUID and SOPInstanceUID, ordered by InstanceNumber.
        "https://docs.aws.amazon.com/healthimaging/latest/devguide/dicomweb-search-instances.html",
        # Series- and instance-level retrieve, stored syntax or Explicit VR LE.
        "https://docs.aws.amazon.com/healthimaging/latest/devguide/dicomweb-retrieve.html",
        "https://docs.aws.amazon.com/healthimaging/latest/devguide/dicomweb-retrieve-instance.html",
        # 50 TPS (burst 100) on the DICOMweb retrieve actions.
        "https://docs.aws.amazon.com/healthimaging/latest/devguide/endpoints-quotas.html",
    ),
    search_keys={
        "studies": _AWS_STUDY,
        "study-series": frozenset({"Modality", "SeriesInstanceUID"}),
        "series-instances": frozenset({"SOPClassUID", "SOPInstanceUID"}),
    },
    wildcards=False,
    uid_lists=False,
    value_lists=False,
    # The search pages name StudyDate as a date key; the model takes ranges on it.
    range_keys=frozenset({"StudyDate"}),
    # fuzzymatching is not among the documented parameters.
    fuzzy_refused=True,
    max_records=10_000,
    order={"studies": "newest", "study-series": "number", "series-instances": "number"},
    pages_itself=True,
    study_retrieve=False,
    retrieve_syntaxes=frozenset({ANY, EXPLICIT_VR_LE, "stored"}),
    wado_rate=50.0,
    wado_burst=100,
    duplicates="aws",
)

DCM4CHEE = Vendor(
    name="dcm4chee",
    pages=(
        "https://github.com/dcm4che/dcm4chee-arc-light/wiki/QIDO-RS",
        "https://dcm4chee-arc-light.readthedocs.io/en/latest/",
    ),
    # No fuzzymatching: refused rather than ignored, so a bridge relying on it is seen.
    fuzzy_refused=True,
)

VENDORS: Mapping[str, Vendor] = {
    v.name: v for v in (GENERIC, ORTHANC, GOOGLE, AZURE, AWS, DCM4CHEE)
}
VENDOR_NAMES = tuple(VENDORS)


# --------------------------------------------------------------------------- QIDO-RS


def _bad(reason: str) -> Refusal:
    return Refusal(400, reason)


def _int(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def check_qido(v: Vendor, route: Route, params: Sequence[tuple[str, str]]) -> Refusal | None:
    """The vendor's refusal of one QIDO-RS request, or None if it takes it."""
    keys_table = v.search_keys
    allowed: frozenset[str] | None = None
    if keys_table is not None:
        if route.resource not in keys_table:
            return Refusal(404, f"{v.name} has no QIDO-RS resource {route.resource}")
        allowed = keys_table[route.resource]
    level = v.level(route.resource)
    fuzzy = any(n == "fuzzymatching" and val == "true" for n, val in params)
    for name, value in params:
        if name == "limit":
            limit = _int(value)
            top = v.max_limit.get(level, 0)
            if limit is None or (v.pages_itself and top and not 1 <= limit <= top):
                return _bad(f"limit={value} outside 1..{top or 'any'}")
            continue
        if name == "offset":
            offset = _int(value)
            if offset is None or (v.max_offset and offset > v.max_offset):
                return _bad(f"offset={value} not taken (max {v.max_offset or 'any'})")
            continue
        if name == "fuzzymatching":
            if v.fuzzy_refused:
                return _bad("fuzzymatching is not supported")
            if value not in ("true", "false"):
                return _bad(f"fuzzymatching={value}")
            continue
        if name == "includefield":
            for item in value.split(","):
                if item == "all":
                    if not v.includefield_all:
                        return _bad("includefield=all not supported")
                    continue
                keyword = keyword_of(item)
                if keyword is None:
                    return _bad(f"includefield={item}: unknown attribute")
                if keyword in v.includefield_refused:
                    return _bad(f"includefield={item} not supported")
            continue
        keyword = keyword_of(name)
        if keyword is None:
            if keys_table is None:
                continue  # a PS3.18 server ignores what it does not know (Orthanc does)
            return _bad(f"unknown query parameter {name}")
        if allowed is not None and keyword not in allowed:
            return _bad(f"{keyword} is not searchable at {route.resource}")
        refusal = _check_value(v, keyword, value, fuzzy)
        if refusal is not None:
            return refusal
    return None


def _check_value(v: Vendor, keyword: str, value: str, fuzzy: bool) -> Refusal | None:
    vr = vr_of(keyword)
    if value == "":
        return None if v.empty_values else _bad(f"{keyword}: empty value search")
    if ("*" in value or "?" in value) and vr != "UI":
        if not v.wildcards:
            return _bad(f"{keyword}={value}: wildcard matching not supported")
    if "," in value:
        if vr == "UI" and not v.uid_lists:
            return _bad(f"{keyword}: UID list matching not supported")
        if vr != "UI" and not v.value_lists:
            return _bad(f"{keyword}: multiple values not supported")
    if vr in _RANGE_VRS and "-" in value:
        if v.range_keys is not None and keyword not in v.range_keys:
            return _bad(f"{keyword}={value}: range matching not supported")
        if value.strip() == "-":
            return _bad(f"{keyword}=-: a range needs one end")
    del fuzzy  # fuzzy PN values are ordinary values as far as the syntax goes
    return None


def fuzzy_filters(v: Vendor, params: Sequence[tuple[str, str]]) -> dict[str, str]:
    """PN keys the vendor matches fuzzily in this request: keyword -> query value."""
    if not any(n == "fuzzymatching" and val == "true" for n, val in params):
        return {}
    out: dict[str, str] = {}
    for name, value in params:
        keyword = keyword_of(name) if name not in _CONTROL else None
        if keyword in v.fuzzy_keys and value:
            out[keyword] = value
    return out


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\^ =]+", text.lower()) if w]


def fuzzy_match(query: str, name: str) -> bool:
    """Prefix word match (Azure's description): every query word starts a word of the
    name. ``jo do`` matches ``John^Doe``, ``ohn`` does not."""
    words = _words(name)
    return all(any(w.startswith(q) for w in words) for q in _words(query))


def pn_text(element: Mapping[str, Any] | None) -> str:
    """The alphabetic text of a DICOM JSON PN element ("" if absent)."""
    if not element:
        return ""
    values = element.get("Value") or []
    if not values:
        return ""
    first = values[0]
    if isinstance(first, Mapping):
        return str(first.get("Alphabetic", ""))
    return str(first)


def _returned_tags(
    returned: Mapping[str, frozenset[str]], route: Route, params: Sequence[tuple[str, str]]
) -> frozenset[str]:
    """The tags (ggggeeee) a row of `route` may carry: the level's returned attributes, the
    higher levels' for root and study-level searches, and every matched attribute."""
    # Below a parent, the parent's attributes come back when asked for in includefield
    # (Azure's QueryResponseBuilder: "levelSpecificTags"); the emulator lets them through
    # whether asked or not, so it only removes what the server never returns.
    levels = {
        "studies": ("studies",),
        "series": ("studies", "series"),
        "study-series": ("studies", "series"),
        "instances": ("studies", "series", "instances"),
        "study-instances": ("studies", "series", "instances"),
        "series-instances": ("studies", "series", "instances"),
    }[route.resource]
    keywords: set[str] = set()
    for level in levels:
        keywords |= returned.get(level, frozenset())
    for name, _ in params:
        keyword = keyword_of(name) if name not in _CONTROL else None
        if keyword is not None:
            keywords.add(keyword)
    # The UIDs of the resource URL come back too.
    keywords |= {"StudyInstanceUID", "SeriesInstanceUID"} & {
        k
        for k, present in (
            ("StudyInstanceUID", route.study_uid),
            ("SeriesInstanceUID", route.series_uid),
        )
        if present
    }
    tags = {f"{tag_for_keyword(k):08X}" for k in keywords if tag_for_keyword(k) is not None}
    return frozenset(tags)


def _first(row: Mapping[str, Any], tag: str) -> str:
    values = (row.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def _number(row: Mapping[str, Any], tag: str) -> float:
    values = (row.get(tag) or {}).get("Value") or []
    try:
        return float(values[0])
    except (IndexError, TypeError, ValueError):
        return float("inf")


@dataclass(frozen=True)
class Shaped:
    """The page the vendor sends: status, rows (None for no body), and header tweaks."""

    status: int
    rows: list[dict[str, Any]] | None
    total_before_paging: int


def shape_search(
    v: Vendor,
    route: Route,
    params: Sequence[tuple[str, str]],
    rows: list[dict[str, Any]],
    recency: Mapping[str, int] | None = None,
) -> Shaped:
    """Orthanc's full answer (no limit/offset) as the vendor's page. `recency` ranks the
    rows' UIDs by when they were stored (higher = newer), for newest-first vendors."""
    for keyword, query in fuzzy_filters(v, params).items():
        tag = f"{tag_for_keyword(keyword):08X}"
        rows = [r for r in rows if fuzzy_match(query, pn_text(r.get(tag)))]
    order = v.order.get(route.resource) or v.order.get(v.level(route.resource), "server")
    if order == "newest":
        tag = UID_TAGS[v.level(route.resource)]
        ranks = recency or {}
        rows = sorted(rows, key=lambda r: -ranks.get(_first(r, tag), -1))
    elif order == "number":
        tag = "00200011" if v.level(route.resource) == "series" else "00200013"
        rows = sorted(rows, key=lambda r: _number(r, tag))
    if v.max_records:
        rows = rows[: v.max_records]
    if not v.related_counts:
        rows = [{k: val for k, val in r.items() if k not in COUNT_TAGS} for r in rows]
    if v.returned_keys is not None:
        kept = _returned_tags(v.returned_keys, route, params)
        rows = [{k: val for k, val in r.items() if k in kept} for r in rows]
    total = len(rows)
    values = dict(params)
    offset = _int(values.get("offset", "0")) or 0
    limit = _int(values["limit"]) if "limit" in values else None
    if limit is None or limit == 0:
        limit = v.default_limit or None
    page = rows[offset:] if limit is None else rows[offset : offset + limit]
    if not page and v.empty_is_204:
        return Shaped(204, None, total)
    return Shaped(200, page, total)


# --------------------------------------------------------------------------- WADO-RS


def accept_syntaxes(accept: str | None) -> list[str | None]:
    """The transfer-syntax asked for by each alternative of an Accept header (None: none
    named, the server's default)."""
    if not accept:
        return [None]
    out: list[str | None] = []
    for alternative in accept.split(","):
        syntax: str | None = None
        for param in alternative.split(";")[1:]:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "transfer-syntax":
                syntax = value.strip().strip('"')
        out.append(syntax)
    return out


def check_wado(
    v: Vendor, route: Route, accept: str | None, stored: frozenset[str] | None = None
) -> Refusal | None:
    """The vendor's refusal of one WADO-RS request; `stored` is the set of syntaxes the
    addressed instances are stored in (asked for only when the vendor serves "stored")."""
    if route.resource == "study" and not v.study_retrieve:
        return Refusal(404, f"{v.name} has no study-level WADO-RS")
    if route.resource not in ("study", "series", "instance") or v.retrieve_syntaxes is None:
        return None
    served = v.retrieve_syntaxes
    for syntax in accept_syntaxes(accept):
        if syntax is None or syntax in served:
            return None
        if "stored" in served and stored is not None and stored == {syntax}:
            return None
    return Refusal(406, f"{v.name} does not serve Accept: {accept}")


def needs_stored_syntax(v: Vendor, route: Route, accept: str | None) -> bool:
    """Whether :func:`check_wado` needs the stored syntaxes to decide."""
    if v.retrieve_syntaxes is None or "stored" not in v.retrieve_syntaxes:
        return False
    if route.resource not in ("series", "instance"):
        return False
    return all(s is not None and s not in v.retrieve_syntaxes for s in accept_syntaxes(accept))
