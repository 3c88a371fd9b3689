"""Unit tests for bridge.dicomweb.client: QIDO-RS URLs, answer parsing, search and probe."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from bridge.dicomweb.client import (
    DICOM_JSON,
    DicomwebClient,
    build_qido_url,
    encode_query_value,
    is_last_page,
    map_errors,
    parse_qido_body,
)
from bridge.errors import (
    DicomwebError,
    DicomwebHTTPError,
    DicomwebProtocolError,
    DicomwebTimeout,
    DicomwebUnavailable,
)
from bridge.models import QidoPage, QidoQuery, QidoResource

BASE = "http://pacs.example.org:8042/dicom-web"

STUDY_QUERY = QidoQuery(
    QidoResource.STUDIES,
    match=(
        ("PatientName", "DOE^J*"),
        ("StudyDate", "20240101-20240131"),
        ("StudyInstanceUID", "1.2,1.3"),
    ),
    includefield=("AccessionNumber", "PatientID"),
)


# --- encode_query_value ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "dicom", "strict"),
    [
        ("DOE^J*", "DOE^J*", "DOE%5EJ%2A"),
        ("DOE^J?HN", "DOE^J?HN", "DOE%5EJ%3FHN"),
        ("1.2,1.3", "1.2,1.3", "1.2%2C1.3"),
        ("20240101-20240131", "20240101-20240131", "20240101-20240131"),
        ("A B", "A%20B", "A%20B"),
        ("a&b=c+d#e/f%g", "a%26b%3Dc%2Bd%23e%2Ff%25g", "a%26b%3Dc%2Bd%23e%2Ff%25g"),
        ("MÜLLER^HANS", "M%C3%9CLLER^HANS", "M%C3%9CLLER%5EHANS"),
        ("x_y~z", "x_y~z", "x_y~z"),
    ],
)
def test_encode_query_value(value: str, dicom: str, strict: str) -> None:
    assert encode_query_value(value, "dicom") == dicom
    assert encode_query_value(value, "strict") == strict


# --- build_qido_url -------------------------------------------------------------------


def test_url_dicom_policy() -> None:
    assert build_qido_url(BASE, STUDY_QUERY, policy="dicom") == (
        f"{BASE}/studies?PatientName=DOE^J*&StudyDate=20240101-20240131"
        "&StudyInstanceUID=1.2,1.3&includefield=AccessionNumber&includefield=PatientID"
    )


def test_url_strict_policy() -> None:
    assert build_qido_url(BASE, STUDY_QUERY, policy="strict") == (
        f"{BASE}/studies?PatientName=DOE%5EJ%2A&StudyDate=20240101-20240131"
        "&StudyInstanceUID=1.2%2C1.3&includefield=AccessionNumber&includefield=PatientID"
    )


def test_url_default_policy_is_dicom() -> None:
    assert build_qido_url(BASE, STUDY_QUERY) == build_qido_url(BASE, STUDY_QUERY, policy="dicom")


def test_url_space_is_percent_20_not_plus() -> None:
    query = QidoQuery(QidoResource.STUDIES, match=(("StudyDescription", "CT HEAD*"),))
    assert build_qido_url(BASE, query) == f"{BASE}/studies?StudyDescription=CT%20HEAD*"
    assert build_qido_url(BASE, query, policy="strict") == (
        f"{BASE}/studies?StudyDescription=CT%20HEAD%2A"
    )


def test_url_non_ascii_value_is_utf8_percent_encoded() -> None:
    query = QidoQuery(QidoResource.STUDIES, match=(("PatientName", "MÜLLER^HANS"),))
    assert build_qido_url(BASE, query) == f"{BASE}/studies?PatientName=M%C3%9CLLER^HANS"
    assert build_qido_url(BASE, query, policy="strict") == (
        f"{BASE}/studies?PatientName=M%C3%9CLLER%5EHANS"
    )


def test_url_limit_and_offset_come_last() -> None:
    assert build_qido_url(BASE, STUDY_QUERY, offset=1000, limit=500) == (
        f"{BASE}/studies?PatientName=DOE^J*&StudyDate=20240101-20240131"
        "&StudyInstanceUID=1.2,1.3&includefield=AccessionNumber&includefield=PatientID"
        "&limit=500&offset=1000"
    )


def test_url_offset_zero_is_omitted() -> None:
    query = QidoQuery(QidoResource.SERIES, study_uid="1.2")
    assert build_qido_url(BASE, query, offset=0, limit=500) == (
        f"{BASE}/studies/1.2/series?limit=500"
    )


def test_url_offset_without_limit() -> None:
    query = QidoQuery(QidoResource.INSTANCES)
    assert build_qido_url(BASE, query, offset=20) == f"{BASE}/instances?offset=20"


def test_url_without_parameters_has_no_question_mark() -> None:
    query = QidoQuery(QidoResource.INSTANCES, study_uid="1.2", series_uid="1.3")
    assert build_qido_url(BASE, query) == f"{BASE}/studies/1.2/series/1.3/instances"


def test_url_base_trailing_slash_is_dropped() -> None:
    query = QidoQuery(QidoResource.STUDIES)
    assert build_qido_url(BASE + "/", query, limit=1) == f"{BASE}/studies?limit=1"


def test_url_private_tag_includefield() -> None:
    query = QidoQuery(QidoResource.STUDIES, includefield=("00091010", "PatientID"))
    assert build_qido_url(BASE, query) == (
        f"{BASE}/studies?includefield=00091010&includefield=PatientID"
    )


def test_url_is_deterministic() -> None:
    urls = {build_qido_url(BASE, STUDY_QUERY, offset=5, limit=10) for _ in range(20)}
    assert len(urls) == 1


# --- parse_qido_body / is_last_page ---------------------------------------------------


def test_parse_empty_body() -> None:
    assert parse_qido_body(b"", DICOM_JSON) == []
    assert parse_qido_body(b"  \r\n", "") == []


def test_parse_array() -> None:
    body = b'[{"0020000D": {"vr": "UI", "Value": ["1.2"]}}, {}]'
    assert parse_qido_body(body, DICOM_JSON) == [
        {"0020000D": {"vr": "UI", "Value": ["1.2"]}},
        {},
    ]


def test_parse_html_body() -> None:
    with pytest.raises(DicomwebProtocolError) as info:
        parse_qido_body(b"<html><body>Login</body></html>", "text/html; charset=utf-8")
    assert str(info.value) == "QIDO-RS answer is not JSON (text/html)"


def test_parse_non_json_without_content_type() -> None:
    with pytest.raises(DicomwebProtocolError, match=r"not JSON \(no content type\)"):
        parse_qido_body(b"garbage", "")


@pytest.mark.parametrize(
    "body",
    [b'{"0020000D": {"vr": "UI"}}', b"[1, 2]", b'"text"', b"null", b'[{}, "x"]'],
)
def test_parse_json_that_is_not_an_array_of_objects(body: bytes) -> None:
    with pytest.raises(DicomwebProtocolError) as info:
        parse_qido_body(body, DICOM_JSON)
    assert str(info.value) == "QIDO-RS answer is not a JSON array of DICOM objects"


@pytest.mark.parametrize(
    ("count", "hinted", "page_size", "last"),
    [
        (0, False, 10, True),
        (0, True, 10, True),
        (3, False, 10, True),
        (3, True, 10, False),
        (10, False, 10, False),
        (10, True, 10, False),
        (11, False, 10, False),
    ],
)
def test_is_last_page(count: int, hinted: bool, page_size: int, last: bool) -> None:
    page = QidoPage(results=[{} for _ in range(count)], more_hinted=hinted)
    assert is_last_page(page, page_size) is last


# --- map_errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError("refused"), DicomwebUnavailable),
        (httpx.UnsupportedProtocol("bad scheme"), DicomwebUnavailable),
        (httpx.ReadError("reset"), DicomwebUnavailable),
        (httpx.ConnectTimeout("slow"), DicomwebTimeout),
        (httpx.ReadTimeout("slow"), DicomwebTimeout),
        (httpx.PoolTimeout("slow"), DicomwebTimeout),
        (httpx.RemoteProtocolError("bad"), DicomwebProtocolError),
        (httpx.DecodingError("bad gzip"), DicomwebError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v.__name__,
)
def test_map_errors(exc: Exception, expected: type[DicomwebError]) -> None:
    url = f"{BASE}/studies?PatientName=SECRET^NAME"
    with pytest.raises(expected) as info, map_errors(url):
        raise exc
    assert type(info.value) is expected
    assert f"{BASE}/studies" in str(info.value)
    assert "SECRET" not in str(info.value)  # query values are PHI: never in messages
    assert info.value.__cause__ is exc


def test_map_errors_leaves_other_exceptions_alone() -> None:
    with pytest.raises(KeyError), map_errors(BASE):
        raise KeyError("x")


# --- DicomwebClient with a mock transport ----------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def run_client(
    handler: Handler, call: Callable[[DicomwebClient], Any], *, encoding: str = "dicom"
) -> tuple[Any, list[httpx.Request]]:
    """Run `call(client)` against `handler`; returns its result and the requests seen."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as http:
            client = DicomwebClient(http, BASE + "/", query_encoding=encoding)
            return await call(client)

    return asyncio.run(go()), seen


def dicom_json(body: bytes, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": DICOM_JSON, **headers})


def search(client: DicomwebClient) -> Any:
    return client.search(STUDY_QUERY, offset=500, limit=500)


def test_search_requests_exact_url_with_accept() -> None:
    body = b'[{"0020000D": {"vr": "UI", "Value": ["1.2"]}}]'
    page, seen = run_client(lambda request: dicom_json(body), search)
    assert len(seen) == 1
    request = seen[0]
    assert request.method == "GET"
    assert str(request.url) == (
        f"{BASE}/studies?PatientName=DOE^J*&StudyDate=20240101-20240131"
        "&StudyInstanceUID=1.2,1.3&includefield=AccessionNumber&includefield=PatientID"
        "&limit=500&offset=500"
    )
    # What goes on the wire: the DICOM matching characters are not re-escaped by httpx.
    assert request.url.raw_path == (
        b"/dicom-web/studies?PatientName=DOE^J*&StudyDate=20240101-20240131"
        b"&StudyInstanceUID=1.2,1.3&includefield=AccessionNumber&includefield=PatientID"
        b"&limit=500&offset=500"
    )
    assert request.headers["accept"] == "application/dicom+json"
    assert page == QidoPage(results=[{"0020000D": {"vr": "UI", "Value": ["1.2"]}}])


def test_search_strict_encoding_on_the_wire() -> None:
    _, seen = run_client(lambda request: dicom_json(b"[]"), search, encoding="strict")
    assert seen[0].url.raw_path == (
        b"/dicom-web/studies?PatientName=DOE%5EJ%2A&StudyDate=20240101-20240131"
        b"&StudyInstanceUID=1.2%2C1.3&includefield=AccessionNumber&includefield=PatientID"
        b"&limit=500&offset=500"
    )


def test_search_204_is_an_empty_page() -> None:
    page, _ = run_client(lambda request: httpx.Response(204), search)
    assert page == QidoPage(results=[], more_hinted=False)


def test_search_empty_200_is_an_empty_page() -> None:
    page, _ = run_client(lambda request: dicom_json(b""), search)
    assert page == QidoPage(results=[], more_hinted=False)


def test_search_warning_header_hints_more() -> None:
    page, _ = run_client(
        lambda request: dicom_json(
            b"[{}]", warning='299 pacs "There are additional results that can be requested"'
        ),
        search,
    )
    assert page == QidoPage(results=[{}], more_hinted=True)


def test_search_500_is_http_error_without_phi() -> None:
    with pytest.raises(DicomwebHTTPError) as info:
        run_client(lambda request: httpx.Response(500, text="oops"), search)
    error = info.value
    assert error.status_code == 500
    assert error.reason == "Internal Server Error"
    assert error.url == f"{BASE}/studies"
    assert str(error) == f"HTTP 500 Internal Server Error from {BASE}/studies"


def test_search_400_is_http_error() -> None:
    with pytest.raises(DicomwebHTTPError) as info:
        run_client(lambda request: httpx.Response(400), search)
    assert info.value.status_code == 400


def test_search_html_body_is_protocol_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html></html>", headers={"content-type": "text/html"})

    with pytest.raises(DicomwebProtocolError, match=r"not JSON \(text/html\)"):
        run_client(handler, search)


def test_search_connection_refused_is_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(DicomwebUnavailable) as info:
        run_client(handler, search)
    assert str(info.value) == f"cannot connect to {BASE}/studies: [Errno 111] Connection refused"


def test_search_read_timeout_is_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(DicomwebTimeout) as info:
        run_client(handler, search)
    assert str(info.value) == f"timed out talking to {BASE}/studies: ReadTimeout"


def probe(client: DicomwebClient) -> Any:
    return client.probe()


def test_probe_ok() -> None:
    summary, seen = run_client(lambda request: dicom_json(b"[]", server="Orthanc"), probe)
    assert str(seen[0].url) == f"{BASE}/studies?limit=1"
    assert seen[0].headers["accept"] == "application/dicom+json"
    assert summary == "QIDO-RS answered HTTP 200 (0 result, Orthanc)"


def test_probe_204_is_ok() -> None:
    summary, _ = run_client(lambda request: httpx.Response(204), probe)
    assert summary == "QIDO-RS answered HTTP 204 (0 result, unknown server)"


@pytest.mark.parametrize("code", [401, 403])
def test_probe_auth_failure(code: int) -> None:
    with pytest.raises(DicomwebHTTPError) as info:
        run_client(lambda request: httpx.Response(code), probe)
    assert info.value.status_code == code
    assert "authentication" in str(info.value)


def test_probe_404_mentions_dicomweb_root() -> None:
    with pytest.raises(DicomwebHTTPError) as info:
        run_client(lambda request: httpx.Response(404), probe)
    assert info.value.status_code == 404
    assert "DICOMweb root" in str(info.value)


def test_probe_500() -> None:
    with pytest.raises(DicomwebHTTPError) as info:
        run_client(lambda request: httpx.Response(503), probe)
    assert info.value.status_code == 503


def test_probe_html_is_not_a_dicomweb_endpoint() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, text="<html>Welcome</html>", headers={"content-type": "text/html"}
        )

    with pytest.raises(DicomwebProtocolError) as info:
        run_client(handler, probe)
    assert str(info.value) == (
        f"{BASE}/studies?limit=1 answered text/html, not DICOM JSON: not a DICOMweb endpoint"
    )


def test_probe_json_object_is_protocol_error() -> None:
    with pytest.raises(DicomwebProtocolError, match="not a JSON array"):
        run_client(lambda request: dicom_json(b'{"error": "x"}'), probe)


def test_probe_connection_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("All connection attempts failed", request=request)

    with pytest.raises(DicomwebUnavailable, match="cannot connect to"):
        run_client(handler, probe)


@pytest.mark.parametrize("code", [301, 302, 307])
def test_search_redirect_is_an_error(code: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, headers={"location": "https://sso.example.org/login"})

    with pytest.raises(DicomwebError):
        run_client(handler, search)
