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


class StowVerdict(enum.Enum):
    """What a STOW-RS answer means for one instance: the DICOMweb side decides it
    (``bridge/dicomweb/outcomes.py``: ``stow_verdict``, one table for every server), the
    C-STORE status follows from it alone (``bridge/translate/status.py``)."""

    STORED = "stored"  # listed in ReferencedSOPSequence, no warning
    STORED_WITH_WARNING = "stored_with_warning"  # listed, with a Warning Reason or a 202
    # The server already holds an instance with this SOP Instance UID and kept its own.
    DUPLICATE = "duplicate"
    # Stored where queries do not find it (AWS HealthImaging: a non-primary image set).
    NOT_VISIBLE = "not_visible"
    MISMATCH = "mismatch"  # the data set does not match its SOP class (or the study)
    SOP_CLASS_NOT_SUPPORTED = "sop_class_not_supported"
    BUSY = "busy"  # out of resources, overloaded or failing: may work later
    REFUSED = "refused"  # the server refused the bridge's credentials
    NOT_LISTED = "not_listed"  # a 2xx that does not list the instance
    REJECTED = "rejected"  # any other refusal


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
    # The meaning of it all (the one verdict the C-STORE status is made from), and the
    # server's own words about a failure (e.g. Google's "already exists" FailureDetail).
    verdict: StowVerdict = StowVerdict.REJECTED
    detail: str = ""
