"""What a failed DICOMweb exchange means: the one table the retry policy, the circuit
breaker, the metrics, the C-GET fallback and the DIMSE status mapping read.

Each outcome (an HTTP status, or the bridge error a transport failure became) has one
``Row``:

- ``busy``: the server is unreachable, overloaded or failing, and asking again later may
  well succeed. ``translate/status.py`` answers it with Out of Resources (0xA700), through
  ``DicomwebError.busy``, so the DIMSE side never looks at an HTTP code.
- ``retry``: an idempotent read (QIDO-RS, WADO-RS) is retried on it (``retry.py``).
  STOW-RS is retried only when the request never left (``DicomwebError.never_sent``).
- ``breaker``: what it proves about the server (``breaker.py``'s docstring says why).
- ``label``: the metrics outcome label (``bridge_http_requests_total{outcome=...}``).
- ``refused``: the server refused the bridge's credentials (401, 403): the
  ErrorComment says "authentication failed".
- ``as_stored``: a WADO-RS request for a transfer syntax that failed this way is asked
  again for the instance as stored: the server cannot transcode this instance (406), or
  failed trying to (5xx; Orthanc answers 500 for a syntax it cannot convert from).

::

    outcome                          busy  retry  breaker      label            as_stored
    HTTP 429                         yes   yes    reachable    "429"            no
    HTTP 500, 501, 505 and above     yes   no     reachable    "500"...         yes
    HTTP 502, 504                    yes   yes    unreachable  "502", "504"     yes
    HTTP 503 without Retry-After     yes   yes    unreachable  "503"            yes
    HTTP 503 with Retry-After        yes   yes    reachable    "503"            yes
    HTTP 406                         no    no     reachable    "406"            yes
    HTTP 401, 403 (refused)          no    no     reachable    "401", "403"     no
    any other HTTP status            no    no     reachable    the status       no
    circuit open (not asked)         yes   no     unreachable  "connect_error"  no
    timeout                          yes   no     unreachable  "timeout"        no
    connection never made            yes   yes    unreachable  "connect_error"  no
    connection broke under request   yes   yes    neither      "transport_error" no
    TLS handshake failed             no    no     neither      "tls_error"      no
    answer cut short                 no    yes    neither      "protocol_error" no
    answer not understood            no    no     neither      "protocol_error" no
    any other DicomwebError          no    no     neither      "error"          no
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from bridge.errors import (
    DicomwebCircuitOpen,
    DicomwebError,
    DicomwebHTTPError,
    DicomwebProtocolError,
    DicomwebTimeout,
    DicomwebTLSError,
    DicomwebUnavailable,
)
from bridge.models import StowVerdict


class Outcome(Enum):
    """What one exchange proves about the server, for the circuit breaker."""

    REACHABLE = "reachable"
    UNREACHABLE = "unreachable"
    NEITHER = "neither"


@dataclass(frozen=True)
class Row:
    busy: bool
    retry: bool
    breaker: Outcome
    label: str
    as_stored: bool = False
    refused: bool = False


_R, _U, _N = Outcome.REACHABLE, Outcome.UNREACHABLE, Outcome.NEITHER

# HTTP statuses with a row of their own; any other 5xx is SERVER_ERROR, anything else
# (3xx redirects not followed, 4xx) CLIENT_ERROR. The label is the status itself.
_HTTP: dict[int, Row] = {
    429: Row(busy=True, retry=True, breaker=_R, label="429"),
    502: Row(busy=True, retry=True, breaker=_U, label="502", as_stored=True),
    503: Row(busy=True, retry=True, breaker=_U, label="503", as_stored=True),
    504: Row(busy=True, retry=True, breaker=_U, label="504", as_stored=True),
    406: Row(busy=False, retry=False, breaker=_R, label="406", as_stored=True),
    401: Row(busy=False, retry=False, breaker=_R, label="401", refused=True),
    403: Row(busy=False, retry=False, breaker=_R, label="403", refused=True),
}
_SERVER_ERROR = Row(busy=True, retry=False, breaker=_R, label="", as_stored=True)
_CLIENT_ERROR = Row(busy=False, retry=False, breaker=_R, label="")
# A 503 that says when to come back comes from a live server (breaker.py).
_BUSY_WITH_RETRY_AFTER = Row(busy=True, retry=True, breaker=_R, label="503", as_stored=True)

CIRCUIT_OPEN = Row(busy=True, retry=False, breaker=_U, label="connect_error")
TIMEOUT = Row(busy=True, retry=False, breaker=_U, label="timeout")
NEVER_CONNECTED = Row(busy=True, retry=True, breaker=_U, label="connect_error")
CONNECTION_BROKE = Row(busy=True, retry=True, breaker=_N, label="transport_error")
TLS_FAILED = Row(busy=False, retry=False, breaker=_N, label="tls_error")
CUT_SHORT = Row(busy=False, retry=True, breaker=_N, label="protocol_error")
NOT_UNDERSTOOD = Row(busy=False, retry=False, breaker=_N, label="protocol_error")
OTHER = Row(busy=False, retry=False, breaker=_N, label="error")
# A 2xx answer.
SUCCESS = Row(busy=False, retry=False, breaker=_R, label="200")


def http_row(status_code: int, *, retry_after: bool = False) -> Row:
    """The row of an HTTP error status (`retry_after`: the answer carried Retry-After)."""
    if status_code == 503 and retry_after:
        return _BUSY_WITH_RETRY_AFTER
    row = _HTTP.get(status_code)
    if row is None:
        row = _SERVER_ERROR if status_code >= 500 else _CLIENT_ERROR
    return row if row.label else _labelled(row, status_code)


def _labelled(row: Row, status_code: int) -> Row:
    return Row(row.busy, row.retry, row.breaker, str(status_code), row.as_stored, row.refused)


def classify(error: DicomwebError | None) -> Row:
    """The row of one exchange's outcome (None: a 2xx answer)."""
    if error is None:
        return SUCCESS
    if isinstance(error, DicomwebHTTPError):
        return http_row(error.status_code, retry_after=error.retry_after is not None)
    if isinstance(error, DicomwebCircuitOpen):
        return CIRCUIT_OPEN
    if isinstance(error, DicomwebTimeout):
        return TIMEOUT
    if isinstance(error, DicomwebUnavailable):
        return NEVER_CONNECTED if error.never_sent else CONNECTION_BROKE
    if isinstance(error, DicomwebTLSError):
        return TLS_FAILED
    if isinstance(error, DicomwebProtocolError):
        return CUT_SHORT if error.transient else NOT_UNDERSTOOD
    return OTHER


def is_retryable(error: DicomwebError, *, idempotent: bool) -> bool:
    """Whether the retry policy tries `error`'s request again (its deadline permitting)."""
    if isinstance(error, DicomwebCircuitOpen):
        return False
    if not idempotent:
        return error.never_sent
    return classify(error).retry


def fetch_as_stored_instead(error: DicomwebError) -> bool:
    """Whether a WADO-RS request for a transfer syntax that failed with `error` should be
    asked again for the instance as stored (``transfer-syntax=*``)."""
    return classify(error).as_stored


# --- STOW-RS answers ----------------------------------------------------------------
#
# What each server answers about one instance, and the verdict it means (the C-STORE
# status of each verdict is in bridge/translate/status.py). Most specific first:
#
#   answer about the instance                              verdict
#   listed in ReferencedSOPSequence, 200, no warning       STORED
#   listed, with a Warning Reason or in a 202 answer       STORED_WITH_WARNING
#     (or in a 409 to several instances: some were not stored)
#     (Azure 202 "some stored, others failed or warned"; its Warning Reason 45063
#     is 0xB007, "data set does not match SOP class"; 1 = validation warnings)
#   Failure Reason 0x0111 (Duplicate SOP Instance)          DUPLICATE
#   Failure Reason 45070 (Azure: already stored)            DUPLICATE
#   Failure Reason 272 + "already exists" (Google, 409:     DUPLICATE
#     same UIDs, other content; the same content is a 200)
#   HTTP 409 without a Failure Reason                      DUPLICATE
#   Failure Reason 45071 (Azure: being created by another  BUSY
#     process, or a failed attempt not yet cleaned up)
#   Failure Reason 0xA700-0xA7FF (out of resources)         BUSY
#   Failure Reason 0xA900-0xA9FF (Azure 43264 validation,   MISMATCH
#     43265 study UID mismatch)
#   Failure Reason 0x0122 (SOP class not supported)         SOP_CLASS_NOT_SUPPORTED
#   HTTP busy (429, 5xx: the outcome table above)          BUSY
#   HTTP 401, 403                                          REFUSED
#   any other 2xx                                          NOT_LISTED
#   anything else                                          REJECTED
#   listed, but queries cannot find it (aws: a non-primary  NOT_VISIBLE
#     image set; found by the client's check after a store)
#
# Sources: Azure, learn.microsoft.com/azure/healthcare-apis/dicom/dicom-services-
# conformance-statement-v2 ("Store failure reason codes", "Store warning reason codes",
# "Store response status codes"); Google, github.com/dcmjs-org/dcmjs/issues/249 (409 with
# FailureReason 272 and a GOOGLE FailureDetail) and github.com/GoogleCloudPlatform/
# nodejs-docs-samples/issues/3502 ("An instance already exists in this DICOM Store with the
# same Study/Series/SOPInstance UID, but the DICOM files differ"); AWS,
# docs.aws.amazon.com/healthimaging/latest/devguide/dicomweb-storing.html.

REASON_AZURE_ALREADY_STORED = 45070
REASON_AZURE_BEING_CREATED = 45071
REASON_PROCESSING_FAILURE = 0x0110  # 272
REASON_DUPLICATE_SOP_INSTANCE = 0x0111
REASON_SOP_CLASS_NOT_SUPPORTED = 0x0122
_FAILURE_REASONS: dict[int, StowVerdict] = {
    REASON_DUPLICATE_SOP_INSTANCE: StowVerdict.DUPLICATE,
    REASON_AZURE_ALREADY_STORED: StowVerdict.DUPLICATE,
    REASON_AZURE_BEING_CREATED: StowVerdict.BUSY,
    REASON_SOP_CLASS_NOT_SUPPORTED: StowVerdict.SOP_CLASS_NOT_SUPPORTED,
}
# Failure Reason ranges (PS3.4 B.2.3 statuses reused by PS3.18 Table 10.5.3-3).
_FAILURE_RANGES: tuple[tuple[int, int, StowVerdict], ...] = (
    (0xA700, 0xA7FF, StowVerdict.BUSY),
    (0xA900, 0xA9FF, StowVerdict.MISMATCH),
)
_ALREADY_EXISTS = "already exists"


def stow_verdict(
    status_code: int,
    *,
    listed: bool,
    failed: bool,
    failure_reason: int | None,
    warning_reason: int | None,
    detail: str = "",
) -> StowVerdict:
    """The verdict of a STOW-RS answer on one instance (the table above). `listed`: in
    ReferencedSOPSequence; `failed`: in
    FailedSOPSequence; `detail`: the failure's text, if any."""
    success = 200 <= status_code < 300
    if listed and not failed:
        if warning_reason is not None or status_code in (202, 409):
            return StowVerdict.STORED_WITH_WARNING
        return StowVerdict.STORED
    if failure_reason is not None:
        if failure_reason == REASON_PROCESSING_FAILURE and _ALREADY_EXISTS in detail.lower():
            return StowVerdict.DUPLICATE
        verdict = _FAILURE_REASONS.get(failure_reason)
        if verdict is not None:
            return verdict
        for low, high, ranged in _FAILURE_RANGES:
            if low <= failure_reason <= high:
                return ranged
    if status_code == 409 and failure_reason is None:
        return StowVerdict.DUPLICATE
    if status_code >= 400:
        row = http_row(status_code)
        if row.busy:
            return StowVerdict.BUSY
        if row.refused:
            return StowVerdict.REFUSED
    if success:
        return StowVerdict.NOT_LISTED
    return StowVerdict.REJECTED
