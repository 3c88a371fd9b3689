"""What each DICOMweb server can do: one table of server profiles (issue 11).

A profile only sets defaults. ``[dicomweb.capabilities]`` (or
``[backends.NAME.capabilities]``) overrides any field, so an integrator can describe a
server that has no profile. The query planner (bridge/translate/), the DICOMweb client
and the C-STORE path all read the resulting :class:`Capabilities`; nothing else decides
what a server can take.

This module is pure data: it imports neither httpx nor pynetdicom, so translate/,
dicomweb/ and dimse/ may all use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Literal

ProfileName = Literal["generic", "orthanc", "google", "azure", "aws", "dcm4chee"]
PROFILE_NAMES: tuple[ProfileName, ...] = (
    "generic",
    "orthanc",
    "google",
    "azure",
    "aws",
    "dcm4chee",
)

# Transfer syntaxes named in the profiles below.
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG2000 = "1.2.840.10008.1.2.4.91"


@dataclass(frozen=True)
class Capabilities:
    """What one DICOMweb server accepts. ``None`` in a key set means "any attribute"."""

    # Attributes (pydicom keywords) the server matches at each QIDO-RS resource.
    study_search_keys: frozenset[str] | None = None
    series_search_keys: frozenset[str] | None = None
    instance_search_keys: frozenset[str] | None = None
    # Value forms the server matches (PS3.4 C.2.2.2): * and ? wildcards, lists of UIDs,
    # comma lists of other values, date/time ranges, and empty values (universal match
    # sent as a parameter).
    wildcards: bool = True
    uid_lists: bool = True
    value_lists: bool = True
    ranges: bool = True
    empty_values: bool = True
    # fuzzymatching=true gives a prefix word match on person names: a superset of a
    # trailing-* match that the bridge then filters exactly.
    fuzzy_matching: bool = False
    # Only /studies/{uid}/series and /studies/{uid}/series/{uid}/instances exist; no
    # /series or /instances at the root.
    hierarchical_only: bool = False
    # Largest limit= (0 = none), largest offset= (0 = none), and most rows a search can
    # ever page through (0 = no cap).
    max_limit: int = 0
    max_offset: int = 0
    max_records: int = 0
    # QIDO-RS answers carry NumberOfStudyRelated*/NumberOfSeriesRelated* counts.
    related_counts: bool = True
    # Study answers carry ModalitiesInStudy whether or not it is a match key. When not
    # (Azure), a list of modalities ("any of") is sent as one search per modality, and
    # the value returned to C-FIND is computed from a series search of each study.
    modalities_in_study: bool = True
    # Attributes the server accepts in includefield= (None = any, and "all").
    includefield_keys: frozenset[str] | None = None
    # Transfer syntaxes WADO-RS can transcode to on request (None = any; "*", the stored
    # syntax, is always available).
    retrieve_syntaxes: frozenset[str] | None = None
    # WADO-RS at study level (/studies/{uid}) exists.
    study_retrieve: bool = True
    # STOW-RS takes Implicit VR Little Endian data sets.
    stow_implicit_vr: bool = True
    # STOW-RS may answer "stored" for an instance that queries then do not show (AWS
    # files conflicting data in a non-primary image set): check with QIDO-RS after each
    # store, and answer the C-STORE with a warning when the instance is not visible.
    stow_verify: bool = False
    # WADO-RS requests per second to this server, all associations together (0 = no
    # limit), and the burst allowed above it.
    wado_rate: float = 0.0
    wado_burst: int = 0


GENERIC = Capabilities()

# Search keys of the profiles below that repeat at lower levels (a search of series or
# instances also matches the study's keys there).
_GOOGLE_STUDY_KEYS = frozenset(
    {
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDate",
    }
)
_AZURE_STUDY_KEYS = frozenset(
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
_AZURE_SERIES_KEYS = _AZURE_STUDY_KEYS | {
    "SeriesInstanceUID",
    "Modality",
    "PerformedProcedureStepStartDate",
    "ManufacturerModelName",
}

# Profiles. Each entry cites the vendor page its limits come from.
PROFILES: Mapping[ProfileName, Capabilities] = {
    # A PS3.18-conformant server: today's behaviour.
    "generic": GENERIC,
    # Orthanc 1.10 with its DICOMweb plugin: conformant for everything the bridge sends.
    "orthanc": GENERIC,
    # https://cloud.google.com/healthcare-api/docs/dicom (DICOM conformance statement,
    # "Search transaction"): the search keys per resource below; exact single-valued
    # matching except StudyDate ranges and fuzzymatching=true on PatientName; limit up
    # to 5,000 (studies, series; 50,000 for instances: the smaller one is kept), offset
    # up to 1,000,000; no Warning header; the NumberOf*Related* counts are not listed
    # among the returned attributes (computed by the bridge). (The copies of that page
    # at hand when this was written end before its Search section: these values are the
    # ones issue 11 quotes from it, not re-checked.)
    "google": Capabilities(
        study_search_keys=_GOOGLE_STUDY_KEYS,
        series_search_keys=_GOOGLE_STUDY_KEYS | {"SeriesInstanceUID", "Modality"},
        instance_search_keys=_GOOGLE_STUDY_KEYS
        | {"SeriesInstanceUID", "Modality", "SOPInstanceUID"},
        wildcards=False,
        uid_lists=False,
        value_lists=False,
        ranges=True,
        fuzzy_matching=True,
        max_limit=5000,
        max_offset=1_000_000,
        related_counts=False,
        # Same page, "Retrieve transaction": Accept transfer-syntax=*, 1.2.840.10008.1.2.1
        # (the default), .4.50, .4.90 and .4.91. A duplicate STOW-RS with other content is
        # a 409 whose FailureReason is 272 with an "already exists" FailureDetail
        # (github.com/GoogleCloudPlatform/nodejs-docs-samples/issues/3502,
        # github.com/dcmjs-org/dcmjs/issues/249); an identical one is a 200
        # (healthcare-dicom-dicomweb-adapter, BackupUploadService.java).
        retrieve_syntaxes=frozenset({EXPLICIT_VR_LE, JPEG_BASELINE, JPEG2000_LOSSLESS, JPEG2000}),
    ),
    # https://learn.microsoft.com/azure/healthcare-apis/dicom/dicom-services-conformance-statement-v2
    # ("Search (QIDO-RS)"): the searchable-attributes table (root resources; below a
    # parent, e.g. /studies/{study}/series, only the resource's own level: the planner
    # applies that rule to any server that lists its keys); matching is exact, range on
    # StudyDate/PatientBirthDate, fuzzy on PN; no UID or value lists; no empty-value
    # search; limit 1..200; an offset past the end is 204; newest first (pages may repeat
    # rows). includefield takes public and private tags. Only NumberOfStudyRelated-
    # Instances and NumberOfSeriesRelatedInstances exist (as includefield), so the
    # bridge computes the counts itself. "Search response": ModalitiesInStudy is not among
    # the study attributes returned (a row carries those and its matched keys only, as in
    # github.com/microsoft/dicom-server QueryResponseBuilder.cs), so it comes back only
    # when matched on: the bridge computes it from each study's series.
    "azure": Capabilities(
        study_search_keys=_AZURE_STUDY_KEYS,
        series_search_keys=_AZURE_SERIES_KEYS,
        instance_search_keys=_AZURE_SERIES_KEYS | {"SOPInstanceUID"},
        wildcards=False,
        uid_lists=False,
        value_lists=False,
        ranges=True,
        empty_values=False,
        fuzzy_matching=True,
        max_limit=200,
        related_counts=False,
        modalities_in_study=False,
        # Same page, "Retrieve (WADO-RS)": Accept transfer-syntax=*, 1.2.840.10008.1.2.1 or
        # 1.2.840.10008.1.2.4.90; "An unsupported transfer-syntax results in 406".
        retrieve_syntaxes=frozenset({EXPLICIT_VR_LE, JPEG2000_LOSSLESS}),
        # "Store (STOW-RS)": "Only transfer syntaxes with explicit Value Representations are
        # accepted"; failure reason 45070 = already stored, 45071 = being created by
        # another process; 202 = some stored, others failed or warned.
        stow_implicit_vr=False,
    ),
    # https://docs.aws.amazon.com/healthimaging/latest/devguide/dicomweb-search.html
    # (hierarchical resources only; at most 10,000 records; studies newest first; only
    # primary image sets), dicomweb-search-studies.html (the 8 study elements),
    # dicomweb-search-series.html (Modality, SeriesInstanceUID; needs the study UID),
    # dicomweb-search-instances.html (needs study and series UIDs; SOPInstanceUID is the
    # one instance key relied on) and dicomweb-retrieve.html.
    "aws": Capabilities(
        study_search_keys=frozenset(
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
        ),
        series_search_keys=frozenset({"Modality", "SeriesInstanceUID"}),
        instance_search_keys=frozenset({"SOPInstanceUID"}),
        wildcards=False,
        uid_lists=False,
        value_lists=False,
        hierarchical_only=True,
        max_records=10_000,
        # The search pages list no NumberOf*Related* among the returned elements: the
        # bridge counts (always correct, a few more searches).
        related_counts=False,
        # dicomweb-retrieve-instance.html: "in either its stored transfer syntax or as
        # uncompressed (ELE) format"; series and instance resources only.
        retrieve_syntaxes=frozenset({EXPLICIT_VR_LE}),
        study_retrieve=False,
        # throttling-limits.html: GetDICOMInstance, GetDICOMInstanceMetadata,
        # GetDICOMInstanceFrames, GetDICOMSeriesMetadata 50 tps, burst 100.
        wado_rate=50.0,
        wado_burst=100,
        # dicomweb-storing.html: StoreDICOM is synchronous, up to 1 GB per request; data
        # whose metadata conflicts with a primary image set goes to a non-primary one,
        # which QIDO-RS and WADO-RS (without imageSetId) do not show.
        stow_verify=True,
    ),
    # https://github.com/dcm4che/dcm4chee-arc-light/wiki (QIDO-RS): PS3.18 matching
    # (wildcards, UID lists, ranges), PN matching case-insensitive, full limit/offset
    # paging; fuzzymatching is not offered (fuzzy_matching stays off).
    "dcm4chee": GENERIC,
}

# TOML keys of a capabilities table, by kind, in the order `check` prints them.
KEY_SET_FIELDS = (
    "study_search_keys",
    "series_search_keys",
    "instance_search_keys",
    "includefield_keys",
    "retrieve_syntaxes",
)


def capabilities_for(
    profile: ProfileName, overrides: Mapping[str, object] | None = None
) -> Capabilities:
    """The profile's capabilities with `overrides` (already type-checked) applied."""
    caps = PROFILES[profile]
    return replace(caps, **dict(overrides)) if overrides else caps  # type: ignore[arg-type]


def describe(caps: Capabilities) -> list[str]:
    """One ``key = value`` line per capability, as `dimse-bridge check` prints them."""
    lines = []
    for f in fields(caps):
        value = getattr(caps, f.name)
        if f.name in KEY_SET_FIELDS:
            shown = "any" if value is None else ", ".join(sorted(value)) or "none"
        elif isinstance(value, bool):
            shown = "yes" if value else "no"
        elif value == 0:
            shown = "no limit"
        else:
            shown = str(value)
        lines.append(f"{f.name} = {shown}")
    return lines
