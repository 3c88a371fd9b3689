"""Each server's STOW-RS answers → verdict (bridge/dicomweb/outcomes.py, stow_verdict) → C-STORE
status (bridge/translate/status.py): the answers documented by Azure, Google and AWS, next to
Orthanc's and the standard's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.dicomweb.stow import parse_stow_response
from bridge.models import StowVerdict
from bridge.translate.status import (
    IDENTIFIER_MISMATCH,
    OUT_OF_RESOURCES,
    STORE_COERCION,
    STORE_MISMATCH_WARNING,
    SUCCESS,
    UNABLE_TO_PROCESS,
    store_status,
)

UID = "1.2.826.0.1.3680043.8.498.1"
OTHER = "1.2.826.0.1.3680043.8.498.2"


def ref(uid: str, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [uid]},
    }
    item.update(extra)
    return item


def us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


def answer(stored: list[dict[str, Any]] = (), failed: list[dict[str, Any]] = ()) -> bytes:  # type: ignore[assignment]
    body: dict[str, Any] = {"00081190": {"vr": "UR", "Value": ["http://x/studies/1"]}}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": list(stored)}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": list(failed)}
    return json.dumps(body).encode()


GOOGLE_DETAIL = {
    "00090010": {"vr": "LO", "Value": ["GOOGLE"]},
    "00091097": {
        "vr": "LT",
        "Value": [
            "An instance already exists in this DICOM Store with the same "
            "Study/Series/SOPInstance UID, but the DICOM files differ (checksum mismatch)."
        ],
    },
}

# server, HTTP status, body → verdict, C-STORE status, ErrorComment start (None: none)
CASES = [
    # Orthanc: a re-send of a stored instance is listed as stored again (200).
    ("orthanc", 200, answer([ref(UID)]), StowVerdict.STORED, SUCCESS, None),
    # Google: the same instance again is a 200; other content under the same UIDs is a
    # 409 with FailureReason 272 and an "already exists" FailureDetail.
    ("google", 200, answer([ref(UID)]), StowVerdict.STORED, SUCCESS, None),
    (
        "google",
        409,
        answer(failed=[ref(UID, **{"00081197": us(272)}, **GOOGLE_DETAIL)]),
        StowVerdict.DUPLICATE,
        STORE_COERCION,
        "already present on the DICOMweb server (HTTP 409): not replaced",
    ),
    # 272 without that text is a processing failure, not a duplicate.
    (
        "google",
        409,
        answer(failed=[ref(UID, **{"00081197": us(272)})]),
        StowVerdict.REJECTED,
        UNABLE_TO_PROCESS,
        "DICOMweb server refused it: HTTP 409 (failure reason 0x0110)",
    ),
    # Azure: 45070 = already stored (409: none stored).
    (
        "azure",
        409,
        answer(failed=[ref(UID, **{"00081197": us(45070)})]),
        StowVerdict.DUPLICATE,
        STORE_COERCION,
        "already present on the DICOMweb server (HTTP 409)",
    ),
    # Azure 45071: being created by another process: try later.
    (
        "azure",
        409,
        answer(failed=[ref(UID, **{"00081197": us(45071)})]),
        StowVerdict.BUSY,
        OUT_OF_RESOURCES,
        "DICOMweb server busy or failing: HTTP 409 (failure reason 0xB00F)",
    ),
    # Azure 43264 validation failed, 43265 study UID mismatch.
    (
        "azure",
        409,
        answer(failed=[ref(UID, **{"00081197": us(43264)})]),
        StowVerdict.MISMATCH,
        IDENTIFIER_MISMATCH,
        "server says the data set does not match its SOP class (failure reason 0xA900)",
    ),
    (
        "azure",
        409,
        answer(failed=[ref(UID, **{"00081197": us(43265)})]),
        StowVerdict.MISMATCH,
        IDENTIFIER_MISMATCH,
        "server says the data set does not match its SOP class (failure reason 0xA901)",
    ),
    # Azure 202: ours stored with validation warnings (Warning Reason 1), another failed.
    (
        "azure",
        202,
        answer(
            [ref(UID, **{"00081196": us(1)})],
            [ref(OTHER, **{"00081197": us(43264)})],
        ),
        StowVerdict.STORED_WITH_WARNING,
        STORE_COERCION,
        "stored by the DICOMweb server with warning reason 0x0001",
    ),
    # Azure 202: ours is the one that failed (a batch STOW).
    (
        "azure",
        202,
        answer([ref(OTHER)], [ref(UID, **{"00081197": us(45070)})]),
        StowVerdict.DUPLICATE,
        STORE_COERCION,
        "already present on the DICOMweb server (HTTP 202)",
    ),
    # Azure warning 45063 is 0xB007, data set does not match its SOP class.
    (
        "azure",
        202,
        answer([ref(UID, **{"00081196": us(45063)})]),
        StowVerdict.STORED_WITH_WARNING,
        STORE_MISMATCH_WARNING,
        "stored by the DICOMweb server with warning reason 0xB007",
    ),
    # A 200 that lists only another instance: not ours.
    (
        "generic",
        200,
        answer([ref(OTHER)]),
        StowVerdict.NOT_LISTED,
        UNABLE_TO_PROCESS,
        "HTTP 200 but the server did not list the instance",
    ),
    # AWS: StoreDICOM answers as the standard says (its non-primary filing is found by
    # the client's check afterwards, see test_stow_check).
    ("aws", 200, answer([ref(UID)]), StowVerdict.STORED, SUCCESS, None),
]


@pytest.mark.parametrize(("server", "code", "body", "verdict", "status", "comment"), CASES)
def test_stow_answer_table(
    server: str,
    code: int,
    body: bytes,
    verdict: StowVerdict,
    status: int,
    comment: str | None,
) -> None:
    result = parse_stow_response(code, body, UID)
    assert result.verdict is verdict, server
    ds = store_status(result)
    assert ds.Status == status
    if comment is None:
        assert "ErrorComment" not in ds
    else:
        assert ds.ErrorComment.startswith(comment[:61])


def test_only_a_listed_instance_is_success() -> None:
    """0x0000 only when ReferencedSOPSequence names the instance (or a bare 200)."""
    for code in (200, 201, 202):
        for body in (answer([ref(OTHER)]), answer(failed=[ref(UID)]), b"[]", b"{}"):
            assert store_status(parse_stow_response(code, body, UID)).Status != SUCCESS


def test_every_verdict_has_a_status() -> None:
    from bridge.translate.status import _STORE_STATUSES

    stored = {StowVerdict.STORED, StowVerdict.STORED_WITH_WARNING}
    assert set(_STORE_STATUSES) | stored == set(StowVerdict)


def test_409_to_several_instances_lists_those_it_stored() -> None:
    """A batch STOW-RS (the spool's) answered 409: the instances it lists as stored are."""
    body = answer([ref(UID)], [ref(OTHER, **{"00081197": us(0xA700)})])
    assert parse_stow_response(409, body, UID).verdict is StowVerdict.STORED_WITH_WARNING
    assert parse_stow_response(409, body, UID).stored
    assert parse_stow_response(409, body, OTHER).verdict is StowVerdict.BUSY
