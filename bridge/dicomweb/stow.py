"""STOW-RS request bodies streamed from a Part 10 file, and STOW-RS answers parsed (PS3.18 10.5).

The framing around the file is ``multipart.MultipartEncoder``'s, the one encoder.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from bridge.dicomweb.explicit_vr import implicit_to_explicit, transfer_syntax_of
from bridge.dicomweb.multipart import MultipartEncoder
from bridge.dicomweb.outcomes import http_row, stow_verdict
from bridge.models import StowResult, StowVerdict

PART10 = "application/dicom"

_CHUNK = 256 * 1024
# Enough of a file to hold its File Meta Information (a few hundred bytes in practice).
_META_PEEK = 64 * 1024
# PS3.18 Table 10.5.3-2 attributes of the Store Instances Response Module.
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"


# Up to this size a file is sent from memory: reading it in one go costs less than
# handing every chunk to a worker thread, and the C-STORE waits on this round trip.
IN_MEMORY_LIMIT = 16 * 1024 * 1024


def part10_body(
    path: Path, encoder: MultipartEncoder, *, explicit_vr_only: bool = False
) -> bytes | AsyncIterator[bytes]:
    """The STOW-RS request body for one Part 10 file (`encoder.content_type` is its
    Content-Type): bytes when small, else a stream. With `explicit_vr_only` (a server
    whose STOW-RS refuses implicit VR: ``Capabilities.stow_implicit_vr`` false), an
    Implicit VR Little Endian file is sent re-encoded as Explicit VR Little Endian,
    losslessly (``stow_part10``)."""
    head = encoder.part(PART10)
    if explicit_vr_only and _is_implicit_vr(path):
        return head + stow_part10(path.read_bytes(), explicit_vr_only=True) + encoder.close()
    if path.stat().st_size > IN_MEMORY_LIMIT:
        return stream_part10(path, head, encoder.close())
    return head + path.read_bytes() + encoder.close()


def stow_part10(data: bytes, *, explicit_vr_only: bool) -> bytes:
    """One instance as STOW-RS should carry it: unchanged, or (`explicit_vr_only`, and
    Implicit VR Little Endian) re-encoded as Explicit VR Little Endian with the same
    elements and values (``explicit_vr.py``). For every STOW-RS sender: C-STORE and the
    spool's uploads alike."""
    if explicit_vr_only and transfer_syntax_of(data) == ImplicitVRLittleEndian:
        return implicit_to_explicit(data)
    return data


def _is_implicit_vr(path: Path) -> bool:
    with path.open("rb") as handle:
        start = handle.read(_META_PEEK)
    return transfer_syntax_of(start) == ImplicitVRLittleEndian


async def stream_part10(path: Path, head: bytes, tail: bytes) -> AsyncIterator[bytes]:
    """One-part multipart/related body, read from `path` in chunks (never whole in memory)."""
    yield head
    async with await anyio.open_file(path, "rb") as handle:
        while chunk := await handle.read(_CHUNK):
            yield chunk
    yield tail


def _uint(item: Mapping[str, Any], tag: str) -> int | None:
    element = item.get(tag)
    if isinstance(element, Mapping):
        values = element.get("Value")
        if isinstance(values, list) and values and isinstance(values[0], int | float):
            return int(values[0])
    return None


def _items(body: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    element = body.get(tag)
    if isinstance(element, Mapping):
        values = element.get("Value")
        if isinstance(values, list):
            return [item for item in values if isinstance(item, Mapping)]
    return []


def _refers_to(item: Mapping[str, Any], sop_instance_uid: str) -> bool:
    element = item.get(_REFERENCED_SOP_INSTANCE_UID)
    if isinstance(element, Mapping):
        values = element.get("Value")
        return isinstance(values, list) and sop_instance_uid in values
    return False


# The study-level attributes AWS HealthImaging groups image sets by (understanding-image-
# sets.html, "DICOM elements used when creating image sets"): a difference in any of them
# is a conflict that files the instance into a non-primary image set.
STUDY_KEYS = {
    "PatientID": "00100020",
    "StudyDate": "00080020",
    "AccessionNumber": "00080050",
    "StudyID": "00200010",
}
IMAGE_SET_KEYS = ["StudyInstanceUID", "SeriesInstanceUID", *STUDY_KEYS]
_SOP_INSTANCE_UID = "00080018"


def is_listed(result: StowResult) -> bool:
    """Whether the server listed the instance as stored (with or without a warning)."""
    return result.verdict in (StowVerdict.STORED, StowVerdict.STORED_WITH_WARNING)


def not_visible(result: StowResult) -> StowResult:
    """`result` for an instance stored where queries do not find it (``stow_verify``)."""
    return replace(result, verdict=StowVerdict.NOT_VISIBLE)


def shows_instance(results: Sequence[Mapping[str, Any]], sent: Dataset, uid: str) -> bool:
    """Whether a QIDO-RS instance search's `results` show the instance `sent` (SOP Instance
    UID `uid`) as stored: listed, and with the study attributes it was sent with (an
    instance of that UID listed with others is a different, primary copy)."""
    for found in results:
        if _json_text(found, _SOP_INSTANCE_UID) != uid:
            continue
        return all(
            _json_text(found, tag) in (None, str(sent.get(keyword, "")))
            for keyword, tag in STUDY_KEYS.items()
        )
    return False


def _json_text(found: Mapping[str, Any], tag: str) -> str | None:
    """The first value of `tag` in a DICOM JSON object as text (None if absent)."""
    element = found.get(tag)
    values = element.get("Value") if isinstance(element, Mapping) else None
    if not isinstance(values, list) or not values:
        return None
    value = values[0]
    if isinstance(value, Mapping):  # PN
        return str(value.get("Alphabetic", ""))
    return str(value)


def _texts(item: Mapping[str, Any]) -> str:
    """Every text value of a FailedSOPSequence item, nested ones too (a server's own
    words about the failure: Google puts "already exists" in a private FailureDetail)."""
    found: list[str] = []
    for element in item.values():
        if not isinstance(element, Mapping):
            continue
        vr = element.get("vr")
        for value in element.get("Value") or []:
            if vr in ("LO", "LT", "ST", "UT", "SH", "UC") and isinstance(value, str):
                found.append(value)
            elif vr == "SQ" and isinstance(value, Mapping):
                found.append(_texts(value))
    return " ".join(text for text in found if text)


def parse_stow_response(
    status_code: int, body: bytes, sop_instance_uid: str, reason_phrase: str = ""
) -> StowResult:
    """What a STOW-RS answer says about one instance."""
    parsed: Any = None
    if body.strip():
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], Mapping):
        parsed = parsed[0]
    if not isinstance(parsed, Mapping):
        parsed = {}
    stored = [
        i for i in _items(parsed, _REFERENCED_SOP_SEQUENCE) if _refers_to(i, sop_instance_uid)
    ]
    failed = [i for i in _items(parsed, _FAILED_SOP_SEQUENCE) if _refers_to(i, sop_instance_uid)]
    failure_reason = _uint(failed[0], _FAILURE_REASON) if failed else None
    warning_reason = _uint(stored[0], _WARNING_REASON) if stored else None
    if warning_reason is None:
        warning_reason = _uint(parsed, _WARNING_REASON)
    # Stored only when listed: a 2xx without a Store Instances Response naming the
    # instance (PS3.18 10.5.3) proves nothing, and no C-STORE is acknowledged unproven.
    # A 409 to a request of several instances lists those it did store (read like a 202).
    is_stored = (200 <= status_code < 300 or status_code == 409) and bool(stored) and not failed
    detail = _texts(failed[0]) if failed else ""
    return StowResult(
        status_code=status_code,
        stored=is_stored,
        failure_reason=failure_reason,
        warning_reason=warning_reason,
        reason_phrase=reason_phrase,
        http_success=200 <= status_code < 300,
        # PS3.18 10.5.3: 202 Accepted, some instances stored with warnings or failed.
        accepted_with_warnings=status_code == 202,
        conflict=status_code == 409,
        busy=status_code >= 400 and http_row(status_code).busy,
        credentials_refused=status_code >= 400 and http_row(status_code).refused,
        verdict=stow_verdict(
            status_code,
            listed=is_stored,
            failed=bool(failed),
            failure_reason=failure_reason,
            warning_reason=warning_reason,
            detail=detail,
        ),
        detail=detail,
    )
