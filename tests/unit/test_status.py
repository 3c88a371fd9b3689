"""Unit tests for bridge.translate.status: bridge errors → C-FIND failure statuses."""

from __future__ import annotations

import pytest
from pynetdicom.status import code_to_category

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
