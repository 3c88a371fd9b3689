"""The outcome table (bridge.dicomweb.outcomes), every row, and the QIDO-RS paging rule."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bridge.dicomweb.client import DicomwebClient, Pager, outcome_of
from bridge.dicomweb.multipart import MultipartError
from bridge.dicomweb.outcomes import (
    Outcome,
    Row,
    classify,
    fetch_as_stored_instead,
    is_retryable,
)
from bridge.errors import (
    DicomwebCircuitOpen,
    DicomwebError,
    DicomwebHTTPError,
    DicomwebProtocolError,
    DicomwebTimeout,
    DicomwebTLSError,
    DicomwebUnavailable,
)
from bridge.models import QidoPage, QidoQuery, QidoResource

R, U, N = Outcome.REACHABLE, Outcome.UNREACHABLE, Outcome.NEITHER


def http(code: int, retry_after: float | None = None) -> DicomwebHTTPError:
    return DicomwebHTTPError(code, "reason", "u", retry_after=retry_after)


def never_connected() -> DicomwebUnavailable:
    error = DicomwebUnavailable("refused")
    error.never_sent = True
    return error


# (outcome, busy, retry, breaker, label, as_stored): the module docstring's table.
ROWS: list[tuple[DicomwebError | None, bool, bool, Outcome, str, bool]] = [
    (None, False, False, R, "200", False),
    (http(429), True, True, R, "429", False),
    (http(500), True, False, R, "500", True),
    (http(501), True, False, R, "501", True),
    (http(507), True, False, R, "507", True),
    (http(502), True, True, U, "502", True),
    (http(504), True, True, U, "504", True),
    (http(503), True, True, U, "503", True),
    (http(503, retry_after=2.0), True, True, R, "503", True),
    (http(406), False, False, R, "406", True),
    (http(400), False, False, R, "400", False),
    (http(401), False, False, R, "401", False),  # refused (below)
    (http(403), False, False, R, "403", False),  # refused (below)
    (http(404), False, False, R, "404", False),
    (http(409), False, False, R, "409", False),
    (http(302), False, False, R, "302", False),
    (DicomwebCircuitOpen("open"), True, False, U, "connect_error", False),
    (DicomwebTimeout("slow"), True, False, U, "timeout", False),
    (never_connected(), True, True, U, "connect_error", False),
    (DicomwebUnavailable("reset"), True, True, N, "transport_error", False),
    (DicomwebTLSError("untrusted"), False, False, N, "tls_error", False),
    (MultipartError("truncated"), False, True, N, "protocol_error", False),
    (DicomwebProtocolError("not JSON"), False, False, N, "protocol_error", False),
    (DicomwebError("other"), False, False, N, "error", False),
]


@pytest.mark.parametrize(
    ("error", "busy", "retry", "breaker", "label", "as_stored"),
    ROWS,
    ids=[f"{type(row[0]).__name__}-{row[4]}" for row in ROWS],
)
def test_every_row_of_the_table(
    error: DicomwebError | None,
    busy: bool,
    retry: bool,
    breaker: Outcome,
    label: str,
    as_stored: bool,
) -> None:
    refused = label in ("401", "403")
    # The (*) rows: what Orthanc answers for a transcoding it cannot make.
    transcode = label == "406" or (label.startswith("5") and label not in ("502", "503", "504"))
    assert classify(error) == Row(busy, retry, breaker, label, as_stored, refused, transcode)
    if error is None:
        return
    assert error.credentials_refused is refused
    # Every reader answers from that row.
    assert error.busy is busy
    assert is_retryable(error, idempotent=True) is retry
    assert outcome_of(error) == label
    assert outcome_of(error, transcoding=True) == ("transcode_refused" if transcode else label)
    assert fetch_as_stored_instead(error) is as_stored


@pytest.mark.parametrize("error", [row[0] for row in ROWS if row[0] is not None])
def test_stow_is_retried_only_when_it_never_left(error: DicomwebError) -> None:
    # Not idempotent: the table's retry column does not apply; only never_sent does.
    assert is_retryable(error, idempotent=False) is (
        error.never_sent and not isinstance(error, DicomwebCircuitOpen)
    )


# --- the paging rule --------------------------------------------------------------------

QUERY = QidoQuery(QidoResource.STUDIES, match=(("PatientID", "P1"),))


def study(n: int) -> dict[str, object]:
    return {"0020000D": {"vr": "UI", "Value": [f"1.2.{n}"]}}


def pages_of(
    total: int, page_size: int, warn_on_short: bool = False
) -> tuple[list[int], list[str]]:
    """Page lengths a Pager yields from a server holding `total` studies, and the URLs it
    asked; a server that caps each answer at `page_size - 1` and (optionally) says so."""
    cap = page_size - 1 if warn_on_short else page_size
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        offset = int(request.url.params.get("offset", "0"))
        limit = int(request.url.params["limit"])
        chunk = [study(n) for n in range(offset, min(total, offset + min(limit, cap)))]
        headers = {"content-type": "application/dicom+json"}
        if warn_on_short and offset + len(chunk) < total:
            headers["warning"] = '299 pacs "There are additional results that can be requested"'
        if not chunk:
            return httpx.Response(204)
        return httpx.Response(200, content=json.dumps(chunk).encode(), headers=headers)

    async def go() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as transport:
            client = DicomwebClient(
                transport, "http://pacs/dicom-web", query_encoding="dicom", page_size=page_size
            )
            pager = client.search_pages(QUERY)
            assert isinstance(pager, Pager)
            lengths: list[int] = []
            while (page := await pager.next()) is not None:
                assert isinstance(page, QidoPage)
                lengths.append(len(page.results))
            assert await pager.next() is None  # stays done
            return lengths

    return asyncio.run(go()), seen


def test_pages_until_a_short_page() -> None:
    lengths, seen = pages_of(7, 3)
    assert lengths == [3, 3, 1]
    assert [url.rsplit("?", 1)[1] for url in seen] == [
        "PatientID=P1&limit=3",
        "PatientID=P1&limit=3&offset=3",
        "PatientID=P1&limit=3&offset=6",
    ]


def test_a_full_last_page_costs_one_empty_page() -> None:
    lengths, seen = pages_of(6, 3)
    assert lengths == [3, 3, 0]
    assert len(seen) == 3


def test_nothing_found_is_one_empty_page() -> None:
    assert pages_of(0, 3) == ([0], ["http://pacs/dicom-web/studies?PatientID=P1&limit=3"])


def test_a_short_page_with_a_warning_header_is_not_the_last() -> None:
    # The server caps answers at 2 below our limit of 3, and says there is more.
    lengths, seen = pages_of(5, 3, warn_on_short=True)
    assert lengths == [2, 2, 1]
    assert seen[-1].endswith("offset=4")


def test_make_client_pages_by_the_configured_page_size() -> None:
    from bridge.config import DicomwebConfig
    from bridge.dicomweb.client import make_client

    async def go() -> int:
        client = make_client(DicomwebConfig(page_size=42), fast_http=False)
        try:
            return client.search_pages(QUERY).page_size
        finally:
            await client.aclose()

    assert asyncio.run(go()) == 42


def test_the_status_mapping_reads_the_table_without_loading_httpx() -> None:
    # translate/status asks DicomwebError.busy, which reads this table: the table must
    # stay importable without the HTTP stack (checked in a fresh interpreter).
    code = (
        "import sys\n"
        "from bridge.errors import DicomwebHTTPError\n"
        "from bridge.translate.status import find_failure\n"
        "assert find_failure(DicomwebHTTPError(503, 'busy', 'u')).Status == 0xA700\n"
        "assert 'bridge.dicomweb.outcomes' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'httpcore',"
        " 'pynetdicom', 'anyio')))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
