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

from bridge.dicomweb.multipart import MultipartEncoder
from bridge.dicomweb.outcomes import http_row
from bridge.models import StowResult

PART10 = "application/dicom"

_CHUNK = 256 * 1024
# PS3.18 Table 10.5.3-2 attributes of the Store Instances Response Module.
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"


# Up to this size a file is sent from memory: reading it in one go costs less than
# handing every chunk to a worker thread, and the C-STORE waits on this round trip.
IN_MEMORY_LIMIT = 16 * 1024 * 1024


def part10_body(path: Path, encoder: MultipartEncoder) -> bytes | AsyncIterator[bytes]:
    """The STOW-RS request body for one Part 10 file (`encoder.content_type` is its
    Content-Type): bytes when small, else a stream."""
    head = encoder.part(PART10)
    if path.stat().st_size > IN_MEMORY_LIMIT:
        return stream_part10(path, head, encoder.close())
    return head + path.read_bytes() + encoder.close()


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
    is_stored = 200 <= status_code < 300 and bool(stored) and not failed
    if 200 <= status_code < 300 and not stored and not failed and not parsed:
        # A 200 without a body: some servers answer that way; the status is the answer.
        is_stored = status_code == 200
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
    )


def batch_length(paths: Sequence[Path], encoder: MultipartEncoder) -> int:
    """The byte length of ``stream_batch(paths, encoder)``: its Content-Length."""
    probe = MultipartEncoder(encoder.boundary)  # the same framing, without using `encoder`
    return sum(len(probe.part(PART10)) + path.stat().st_size for path in paths) + len(
        probe.close()
    )


async def stream_batch(paths: Sequence[Path], encoder: MultipartEncoder) -> AsyncIterator[bytes]:
    """One multipart/related STOW-RS body of several Part 10 files, read from disk in chunks
    (never a whole file in memory), one part per file in the order given."""
    for path in paths:
        yield encoder.part(PART10)
        async with await anyio.open_file(path, "rb") as handle:
            while chunk := await handle.read(_CHUNK):
                yield chunk
    yield encoder.close()


def parse_batch_response(
    status_code: int, body: bytes, sop_instance_uids: Sequence[str], reason_phrase: str = ""
) -> list[StowResult]:
    """What a STOW-RS answer to a request of several instances says about each.

    PS3.18 10.5.3: a 409 (some failed) is read instance by instance like a 202, so an
    instance it lists in the ReferencedSOPSequence, and not as failed, is stored.
    """
    results = [
        parse_stow_response(status_code, body, uid, reason_phrase) for uid in sop_instance_uids
    ]
    if status_code != 409:
        return results
    try:
        parsed: Any = json.loads(body) if body.strip() else {}
    except ValueError:
        return results
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], Mapping):
        parsed = parsed[0]
    if not isinstance(parsed, Mapping):
        return results
    referenced = _items(parsed, _REFERENCED_SOP_SEQUENCE)
    return [
        replace(result, stored=True)
        if result.failure_reason is None and any(_refers_to(i, uid) for i in referenced)
        else result
        for uid, result in zip(sop_instance_uids, results, strict=True)
    ]
