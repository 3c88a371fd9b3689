"""Value types that cross the boundary between the DIMSE side, translation and DICOMweb."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class QueryLevel(enum.IntEnum):
    """Query/Retrieve levels, ordered from the top of the hierarchy down."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


class InformationModel(enum.Enum):
    """Query/Retrieve information models the bridge serves."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"
    COMPOSITE_INSTANCE_ROOT = "COMPOSITE_INSTANCE_ROOT"
    WITHOUT_BULK_DATA = "WITHOUT_BULK_DATA"


class QidoResource(enum.Enum):
    """The QIDO-RS resource a search targets (PS3.18 10.6)."""

    STUDIES = "studies"
    SERIES = "series"
    INSTANCES = "instances"


@dataclass(frozen=True)
class QidoQuery:
    """One QIDO-RS search, without paging: resource, parent UIDs, match and include keys.

    ``match`` and ``includefield`` are kept sorted so the URL built from a query is
    deterministic and tests can compare exact strings.
    """

    resource: QidoResource
    study_uid: str | None = None
    series_uid: str | None = None
    match: tuple[tuple[str, str], ...] = ()
    includefield: tuple[str, ...] = ()
    # fuzzymatching=true (PS3.18 8.3.4.2): only sent to servers whose person-name fuzzy
    # match is a superset of what the bridge then matches locally (bridge/translate/plan.py).
    fuzzymatching: bool = False

    def path(self) -> str:
        """The resource path relative to the DICOMweb base URL, e.g. ``/studies/1.2/series``."""
        parts: list[str] = []
        if self.study_uid is not None:
            parts += ["studies", self.study_uid]
        if self.series_uid is not None:
            parts += ["series", self.series_uid]
        if not parts or parts[-2] != self.resource.value:
            parts.append(self.resource.value)
        return "/" + "/".join(parts)


@dataclass(frozen=True)
class InstanceRef:
    """One instance to retrieve, as learned from a QIDO-RS instance search."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""
    instance_number: int | None = None
    series_number: int | None = None
    number_of_frames: int | None = None


@dataclass(frozen=True)
class QidoPage:
    """One page of QIDO-RS results (DICOM JSON objects) and whether the server hinted at more."""

    results: list[dict[str, object]] = field(default_factory=list)
    more_hinted: bool = False


@dataclass(frozen=True)
class StowResult:
    """What a STOW-RS answer said about one instance."""

    status_code: int
    stored: bool
    # PS3.18 Failure Reason (0008,1197) / Warning Reason (0008,1196), when given.
    failure_reason: int | None = None
    warning_reason: int | None = None
    reason_phrase: str = ""
    # The HTTP answer's verdict, read by the DICOMweb side (bridge/dicomweb/stow.py and
    # its outcome table) so that the C-STORE status mapping need not know HTTP codes:
    # a 2xx; a 202 (stored with warnings); a 409 (conflict: already held); busy
    # (429, 5xx); credentials refused (401, 403).
    http_success: bool = False
    accepted_with_warnings: bool = False
    conflict: bool = False
    busy: bool = False
    credentials_refused: bool = False
