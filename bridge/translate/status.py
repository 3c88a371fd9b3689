"""Named DIMSE statuses (PS3.4, PS3.7 C), their categories, and the mapping from bridge
errors to them: every status the bridge sends or reads is named here, once.

Pure (pydicom only): the category of a status is a PS3.7 table of our own rather than
``pynetdicom.status.code_to_category``, because this layer imports no pynetdicom; a unit
test checks the two agree on every code 0x0000-0xFFFF that pynetdicom knows. The one
difference is deliberate: a code pynetdicom calls "Unknown" is a failure here (PS3.7
C.1: anything not success, warning, pending or cancel is a failure to the requestor).

DicomwebError → status goes by what the error says about itself (``busy``, set by the
outcome table in ``bridge/dicomweb/outcomes.py``), never by an HTTP code.
"""

from __future__ import annotations

from pydicom import Dataset

from bridge.errors import (
    BridgeError,
    DicomwebError,
    DicomwebHTTPError,
    DicomwebPagingLimit,
    DicomwebProtocolError,
    DicomwebTimeout,
    DicomwebTLSError,
    DicomwebUnavailable,
    InvalidIdentifier,
    QueryTooBroad,
)
from bridge.models import StowResult, StowVerdict

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_OPTIONAL_KEYS = 0xFF01  # C-FIND: pending, optional keys not supported
CANCEL = 0xFE00
WARNING_SUBOPS = 0xB000  # C-GET/C-MOVE: one or more sub-operations failed
# PS3.7 C.4 warnings outside 0xB000-0xBFFF: requested optional attributes not supported
# (C-FIND, N-GET; some storage SCPs answer a C-STORE with it), attribute list error and
# attribute value out of range (DIMSE-N).
WARNING_OPTIONAL_ATTRIBUTES = 0x0001
WARNING_ATTRIBUTE_LIST = 0x0107
WARNING_ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116

# Storage commitment (PS3.4 J.3): N-ACTION statuses, and the Failure Reason of an
# instance the bridge cannot commit.
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_ACTION = 0x0123

# C-FIND failures (PS3.4 C.4.1.1.4)
OUT_OF_RESOURCES = 0xA700
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5.1: a SOP class the service has no model for
# The bridge's own codes inside the 0xC000-0xCFFF "unable to process" range, so an
# integrator can tell the causes apart without reading ErrorComment.
DICOMWEB_REJECTED = 0xC001  # the DICOMweb server refused the request (HTTP 4xx)
DICOMWEB_UNREADABLE = 0xC002  # the DICOMweb server's answer could not be understood
INTERNAL_ERROR = 0xC0FF  # a bug in the bridge; the association stays up

# C-GET / C-MOVE failures (PS3.4 C.4.2.1.5, C.4.3.1.4)
OUT_OF_RESOURCES_MATCHES = 0xA701  # unable to calculate number of matches
OUT_OF_RESOURCES_SUBOPS = 0xA702  # unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801

# Frame-level retrieve failures (PS3.4 C.4.3.1.4, Table C.4-3a)
NO_FRAMES_FOUND = 0xAA00
UNABLE_TO_CREATE_OBJECT = 0xAA01
UNABLE_TO_EXTRACT_FRAMES = 0xAA02
TIME_BASED_ON_NON_TIME_BASED = 0xAA03
INVALID_FRAME_REQUEST = 0xAA04

# ErrorComment is LO: at most 64 characters.
_COMMENT_MAX = 64


def status_dataset(status: int, comment: str | None = None) -> Dataset:
    """A status Dataset for a handler to yield, with an ErrorComment when given."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = _clip(comment)
    return ds


def _clip(comment: str) -> str:
    text = " ".join(comment.replace("\\", "/").split())
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= _COMMENT_MAX else text[: _COMMENT_MAX - 3] + "..."


def describe(error: BridgeError) -> str:
    """A short, integrator-facing reason for an error (ErrorComment material)."""
    if isinstance(error, DicomwebHTTPError):
        if error.credentials_refused:
            return f"DICOMweb authentication failed: HTTP {error.status_code}"
        return f"DICOMweb server answered HTTP {error.status_code}"
    if isinstance(error, DicomwebTimeout):
        return "DICOMweb server timed out"
    if isinstance(error, DicomwebUnavailable):
        return "DICOMweb server unreachable"
    if isinstance(error, DicomwebProtocolError):
        return f"DICOMweb answer not understood: {error}"
    if isinstance(error, DicomwebTLSError):
        return f"DICOMweb TLS failed: {str(error).rsplit(': ', 1)[-1]}"
    return str(error)


def find_failure(error: BridgeError) -> Dataset:
    """The C-FIND failure status for an error raised while answering a query."""
    if isinstance(error, InvalidIdentifier):
        return status_dataset(IDENTIFIER_MISMATCH, str(error))
    if isinstance(error, QueryTooBroad | DicomwebPagingLimit):
        # The server answers, but not all of this query: a narrower one will work.
        return status_dataset(OUT_OF_RESOURCES, str(error))
    if isinstance(error, DicomwebError):
        if error.busy:
            return status_dataset(OUT_OF_RESOURCES, describe(error))
        if isinstance(error, DicomwebProtocolError):
            return status_dataset(DICOMWEB_UNREADABLE, describe(error))
        return status_dataset(DICOMWEB_REJECTED, describe(error))
    return status_dataset(UNABLE_TO_PROCESS, describe(error))


def internal_error(exc: BaseException) -> Dataset:
    """The status for an unexpected exception: a failure, never a dropped association."""
    return status_dataset(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")


# C-STORE (PS3.4 B.2.3); the STOW-RS failure/warning reasons (PS3.18 Table 10.5.3-3)
# reuse these codes.
STORE_COERCION = 0xB000
STORE_ELEMENTS_DISCARDED = 0xB006
STORE_MISMATCH_WARNING = 0xB007
DUPLICATE_SOP_INSTANCE = 0x0111
_STORE_WARNING_CODES = frozenset({STORE_COERCION, STORE_ELEMENTS_DISCARDED, STORE_MISMATCH_WARNING})
# What a peer's C-STORE response may say while still having stored the instance (a
# C-GET/C-MOVE sub-operation with a warning).
STORE_RESPONSE_WARNINGS = _STORE_WARNING_CODES | {WARNING_OPTIONAL_ATTRIBUTES}

SUCCESS_CATEGORY = "success"
WARNING_CATEGORY = "warning"
FAILURE_CATEGORY = "failure"
CANCEL_CATEGORY = "cancel"
PENDING_CATEGORY = "pending"
_WARNINGS = frozenset(
    {WARNING_OPTIONAL_ATTRIBUTES, WARNING_ATTRIBUTE_LIST, WARNING_ATTRIBUTE_VALUE_OUT_OF_RANGE}
)


def category(status: int) -> str:
    """success, warning, failure, cancel or pending: the class of a DIMSE status (PS3.7 C)."""
    if status == SUCCESS:
        return SUCCESS_CATEGORY
    if status == CANCEL:
        return CANCEL_CATEGORY
    if status in (PENDING, PENDING_OPTIONAL_KEYS):
        return PENDING_CATEGORY
    if 0xB000 <= status <= 0xBFFF or status in _WARNINGS:
        return WARNING_CATEGORY
    return FAILURE_CATEGORY


def store_status(result: StowResult) -> Dataset:
    """The C-STORE status for what STOW-RS said about the instance: its verdict
    (``bridge/dicomweb/outcomes.py``, ``stow_verdict``: one table for every server) to a
    status (``_STORE_STATUSES``), with an ErrorComment saying what the server answered.

    Success only when the server listed the instance as stored. An instance the server
    already holds (a duplicate: Orthanc, dcm4chee and Google answer an identical re-send
    as stored; Azure and Google refuse a second copy with other content) is answered with
    warning 0xB000 and a comment saying so: the data is on the server, a warning counts
    as stored at the modality (PS3.4 B.2.3), so it does not resend, and the comment says
    that the server kept its own copy (README, "Duplicates"). An instance AWS filed into a
    non-primary image set is stored but invisible to queries: warning 0xB000 too.
    """
    code = result.status_code
    verdict = result.verdict
    reason = result.failure_reason
    reason_text = f" (failure reason 0x{reason:04X})" if reason is not None else ""
    if verdict is StowVerdict.STORED:
        return status_dataset(SUCCESS)
    if verdict is StowVerdict.STORED_WITH_WARNING:
        warning = result.warning_reason
        status = warning if warning in _STORE_WARNING_CODES else STORE_COERCION
        detail = f"warning reason 0x{warning:04X}" if warning is not None else f"HTTP {code}"
        return status_dataset(status, f"stored by the DICOMweb server with {detail}")
    comment = {
        StowVerdict.DUPLICATE: f"already present on the DICOMweb server (HTTP {code}): "
        "not replaced",
        StowVerdict.NOT_VISIBLE: "stored as non-primary: conflicts with server data, not queryable",
        StowVerdict.MISMATCH: f"server says the data set does not match its SOP class{reason_text}",
        StowVerdict.SOP_CLASS_NOT_SUPPORTED: "SOP class not supported by the server",
        StowVerdict.BUSY: f"DICOMweb server busy or failing: HTTP {code}{reason_text}",
        StowVerdict.REFUSED: f"DICOMweb authentication failed: HTTP {code}",
        StowVerdict.NOT_LISTED: f"HTTP {code} but the server did not list the "
        f"instance{reason_text}",
    }.get(verdict, f"DICOMweb server refused it: HTTP {code}{reason_text}")
    return status_dataset(_STORE_STATUSES[verdict], comment)


# The C-STORE status of each STOW-RS verdict (the stored ones above).
_STORE_STATUSES: dict[StowVerdict, int] = {
    StowVerdict.DUPLICATE: STORE_COERCION,
    StowVerdict.NOT_VISIBLE: STORE_COERCION,
    StowVerdict.MISMATCH: IDENTIFIER_MISMATCH,
    StowVerdict.SOP_CLASS_NOT_SUPPORTED: SOP_CLASS_NOT_SUPPORTED,
    StowVerdict.BUSY: OUT_OF_RESOURCES,
    StowVerdict.REFUSED: DICOMWEB_REJECTED,
    StowVerdict.NOT_LISTED: UNABLE_TO_PROCESS,
    StowVerdict.REJECTED: UNABLE_TO_PROCESS,
}


def store_failure(error: BridgeError) -> Dataset:
    """The C-STORE status when STOW-RS could not be done at all (nothing was acknowledged)."""
    if isinstance(error, DicomwebError) and error.busy:
        return status_dataset(OUT_OF_RESOURCES, describe(error))
    if isinstance(error, DicomwebProtocolError):
        return status_dataset(DICOMWEB_UNREADABLE, describe(error))
    return status_dataset(UNABLE_TO_PROCESS, describe(error))
