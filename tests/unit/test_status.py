"""Unit tests for bridge.translate.status: bridge errors → C-FIND failure statuses."""

from __future__ import annotations

import json

import pytest
from pynetdicom.status import code_to_category

from bridge.dicomweb.stow import parse_stow_response
from bridge.errors import (
    BridgeError,
    DicomwebError,
    DicomwebHTTPError,
    DicomwebProtocolError,
    DicomwebTimeout,
    DicomwebUnavailable,
    InvalidIdentifier,
    TranslationError,
)
from bridge.translate import status as status_module
from bridge.translate.status import (
    STORE_RESPONSE_WARNINGS,
    category,
    find_failure,
    internal_error,
    status_dataset,
    store_failure,
    store_status,
)

URL = "http://pacs.example.org/dicom-web/studies"


def http(code: int, reason: str = "Reason") -> DicomwebHTTPError:
    return DicomwebHTTPError(code, reason, URL)


def _named_statuses() -> dict[str, int]:
    """Every status constant bridge.translate.status names (upper-case int attributes)."""
    return {
        name: value
        for name, value in vars(status_module).items()
        if name.isupper()
        and not name.startswith("_")
        and isinstance(value, int)
        and 0 <= value <= 0xFFFF
        and not name.endswith("_MAX")
    }


def test_every_named_status_has_the_category_pynetdicom_and_ps3_7_give_it() -> None:
    named = _named_statuses()
    assert len(named) >= 30  # the check below is not vacuous
    for name, code in named.items():
        theirs = code_to_category(code).lower()
        ours = category(code)
        # pynetdicom does not know the bridge's own 0xC0xx codes: they are failures
        # (PS3.7 C.1: 0xC000-0xCFFF "unable to process").
        assert ours == (theirs if theirs != "unknown" else "failure"), (name, hex(code))


def test_category_agrees_with_pynetdicom_on_every_code_it_knows() -> None:
    for code in range(0x10000):
        theirs = code_to_category(code).lower()
        assert category(code) == ("failure" if theirs == "unknown" else theirs), hex(code)


def test_store_response_warnings_are_warnings() -> None:
    assert STORE_RESPONSE_WARNINGS >= {0x0001, 0xB000, 0xB006, 0xB007}
    assert {category(code) for code in STORE_RESPONSE_WARNINGS} == {"warning"}


def test_invalid_identifier() -> None:
    message = "QueryRetrieveLevel (0008,0052) is missing"
    ds = find_failure(InvalidIdentifier(message))
    assert ds.Status == 0xA900
    assert ds.ErrorComment == message


@pytest.mark.parametrize(
    ("error", "comment"),
    [
        (DicomwebUnavailable("cannot connect to x"), "DICOMweb server unreachable"),
        (DicomwebTimeout("timed out talking to x"), "DICOMweb server timed out"),
        (http(500, "Internal Server Error"), "DICOMweb server answered HTTP 500"),
        (http(502, "Bad Gateway"), "DICOMweb server answered HTTP 502"),
        (http(503, "Service Unavailable"), "DICOMweb server answered HTTP 503"),
        (http(429, "Too Many Requests"), "DICOMweb server answered HTTP 429"),
    ],
    ids=["unavailable", "timeout", "500", "502", "503", "429"],
)
def test_transient_errors_are_out_of_resources(error: BridgeError, comment: str) -> None:
    ds = find_failure(error)
    assert ds.Status == 0xA700
    assert ds.ErrorComment == comment


@pytest.mark.parametrize("code", [400, 404, 405, 413])
def test_http_client_errors_are_rejected(code: int) -> None:
    ds = find_failure(http(code))
    assert ds.Status == 0xC001
    assert ds.ErrorComment == f"DICOMweb server answered HTTP {code}"


@pytest.mark.parametrize("code", [401, 403])
def test_authentication_errors_are_rejected_and_say_so(code: int) -> None:
    ds = find_failure(http(code))
    assert ds.Status == 0xC001
    assert ds.ErrorComment == f"DICOMweb authentication failed: HTTP {code}"
    assert "authentication" in ds.ErrorComment


def test_protocol_error_is_unreadable() -> None:
    ds = find_failure(DicomwebProtocolError("QIDO-RS answer is not JSON (text/html)"))
    assert ds.Status == 0xC002
    assert ds.ErrorComment.startswith("DICOMweb answer not understood: QIDO-RS answer is ")
    assert len(ds.ErrorComment) <= 64


def test_plain_dicomweb_error_is_rejected() -> None:
    ds = find_failure(DicomwebError("HTTP error talking to x: boom"))
    assert ds.Status == 0xC001
    assert ds.ErrorComment == "HTTP error talking to x: boom"


def test_other_translation_error_is_unable_to_process() -> None:
    ds = find_failure(TranslationError("cannot translate this"))
    assert ds.Status == 0xC000
    assert ds.ErrorComment == "cannot translate this"


@pytest.mark.parametrize(
    "error",
    [
        InvalidIdentifier("x" * 200),
        InvalidIdentifier("PatientName 'MÜLLER^HANS' — ünïcödé everywhere " * 3),
        InvalidIdentifier("a\\b\nc\td"),
        DicomwebProtocolError("QIDO-RS answer is not a JSON array of DICOM objects " * 4),
        TranslationError("é" * 100),
    ],
    ids=["long", "non-ascii", "backslash-newline", "long-protocol", "all-non-ascii"],
)
def test_error_comment_is_short_ascii_lo(error: BridgeError) -> None:
    comment = find_failure(error).ErrorComment
    assert 0 < len(comment) <= 64
    assert comment.isascii()
    assert "\\" not in comment
    assert all(0x20 <= ord(c) < 0x7F for c in comment)


def test_long_comment_is_clipped_with_ellipsis() -> None:
    comment = find_failure(InvalidIdentifier("y" * 100)).ErrorComment
    assert comment == "y" * 61 + "..."


def test_comment_exactly_64_is_not_clipped() -> None:
    assert find_failure(InvalidIdentifier("z" * 64)).ErrorComment == "z" * 64


def test_non_ascii_replaced_and_whitespace_collapsed() -> None:
    comment = find_failure(InvalidIdentifier("bad  name\n'MÜLLER'\\x")).ErrorComment
    assert comment == "bad name 'M?LLER'/x"


def test_internal_error() -> None:
    ds = internal_error(ValueError("boom"))
    assert ds.Status == 0xC0FF
    assert ds.ErrorComment == "internal error: ValueError: boom"


def test_internal_error_long_message_is_clipped() -> None:
    ds = internal_error(RuntimeError("ü" * 500))
    assert ds.Status == 0xC0FF
    assert len(ds.ErrorComment) == 64
    assert ds.ErrorComment.startswith("internal error: RuntimeError: ???")
    assert ds.ErrorComment.endswith("...")


def test_status_dataset_without_comment() -> None:
    ds = status_dataset(0x0000)
    assert ds.Status == 0x0000
    assert "ErrorComment" not in ds
    assert "ErrorComment" not in status_dataset(0xC000, "")


# --- STOW-RS answer → C-STORE status (parse_stow_response on the DICOMweb side, then
# store_status, which reads only the verdict) -------------------------------------------

UID = "1.2.3.4"
STORED = json.dumps(
    {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [UID]}}]}}
).encode()


def failed_with(reason: int) -> bytes:
    item = {"00081155": {"vr": "UI", "Value": [UID]}, "00081197": {"vr": "US", "Value": [reason]}}
    return json.dumps({"00081198": {"vr": "SQ", "Value": [item]}}).encode()


@pytest.mark.parametrize(
    ("code", "body", "status", "comment"),
    [
        (200, STORED, 0x0000, None),
        (200, b"", 0xC000, "HTTP 200 but the server did not list the instance"),
        (202, STORED, 0xB000, "stored by the DICOMweb server with HTTP 202"),
        (409, b"", 0xB000, "already present on the DICOMweb server (HTTP 409)"),
        (409, failed_with(0x0111), 0xB000, "already present on the DICOMweb server (HTTP 409)"),
        (409, failed_with(0xA900), 0xA900, "server says the data set does not match its SOP"),
        (409, failed_with(0x0122), 0x0122, "SOP class not supported by the server"),
        (409, failed_with(0xA700), 0xA700, "DICOMweb server busy or failing: HTTP 409"),
        (503, b"", 0xA700, "DICOMweb server busy or failing: HTTP 503"),
        (500, b"", 0xA700, "DICOMweb server busy or failing: HTTP 500"),
        (429, b"", 0xA700, "DICOMweb server busy or failing: HTTP 429"),
        (401, b"", 0xC001, "DICOMweb authentication failed: HTTP 401"),
        (403, b"", 0xC001, "DICOMweb authentication failed: HTTP 403"),
        (204, b"", 0xC000, "HTTP 204 but the server did not list the instance"),
        (400, b"", 0xC000, "DICOMweb server refused it: HTTP 400"),
        (413, b"", 0xC000, "DICOMweb server refused it: HTTP 413"),
    ],
)
def test_stow_answer_to_c_store_status(
    code: int, body: bytes, status: int, comment: str | None
) -> None:
    ds = store_status(parse_stow_response(code, body, UID))
    assert ds.Status == status
    if comment is None:
        assert "ErrorComment" not in ds
    else:
        assert ds.ErrorComment.startswith(comment)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (DicomwebUnavailable("refused"), 0xA700),
        (DicomwebTimeout("slow"), 0xA700),
        (DicomwebProtocolError("not JSON"), 0xC002),
        (DicomwebError("other"), 0xC000),
        (TranslationError("x"), 0xC000),
    ],
)
def test_stow_not_done_at_all_to_c_store_status(error: BridgeError, status: int) -> None:
    assert store_failure(error).Status == status
