"""Paging per server (bridge/dicomweb/client.py Pager) against a scripted httpx.MockTransport:
page size capped by max_limit, 204 past the end, end detection without a Warning header,
rows repeated between pages, and servers that cannot page further."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bridge.dicomweb.client import DICOM_JSON, DicomwebClient
from bridge.errors import DicomwebPagingLimit
from bridge.models import QidoPage, QidoQuery, QidoResource
from bridge.profiles import GENERIC, PROFILES, Capabilities

BASE = "http://dicomweb.test/dicom-web"
QUERY = QidoQuery(QidoResource.STUDIES, match=(("PatientID", "P1"),))


def study(uid: str) -> dict[str, object]:
    return {"0020000D": {"vr": "UI", "Value": [uid]}}


class Server:
    """A QIDO-RS server holding `rows` (a list, may change between requests) that pages
    them with limit/offset; 204 past the end when `no_content`."""

    def __init__(self, rows: list[str], *, no_content: bool = False) -> None:
        self.rows = rows
        self.no_content = no_content
        self.seen: list[tuple[int, int]] = []  # (offset, limit) of each request
        self.before_page: Callable[[int], None] = lambda index: None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = parse_qs(urlsplit(str(request.url)).query)
        offset = int(params.get("offset", ["0"])[0])
        limit = int(params["limit"][0])
        self.before_page(len(self.seen))
        self.seen.append((offset, limit))
        page = self.rows[offset : offset + limit]
        if not page and self.no_content:
            return httpx.Response(204)
        body = json.dumps([study(uid) for uid in page]).encode()
        return httpx.Response(200, content=body, headers={"content-type": DICOM_JSON})


def pages(server: Server, caps: Capabilities = GENERIC, page_size: int = 3) -> list[QidoPage]:
    async def go() -> list[QidoPage]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
            client = DicomwebClient(
                http, BASE, query_encoding="dicom", page_size=page_size, capabilities=caps
            )
            pager = client.search_pages(QUERY)
            got = []
            while (page := await pager.next()) is not None:
                got.append(page)
            return got

    return asyncio.run(go())


def uids(got: list[QidoPage]) -> list[str]:
    return [str(r["0020000D"]["Value"][0]) for p in got for r in p.results]  # type: ignore[index]


@pytest.mark.parametrize("no_content", [False, True], ids=["empty-200", "204"])
def test_exactly_one_page_asks_once_more_and_stops(no_content: bool) -> None:
    # No Warning header (Google sends none): a full page asks for the next; the empty
    # (or 204, Azure) answer past the end ends the search.
    server = Server(["1", "2", "3"], no_content=no_content)
    got = pages(server)
    assert uids(got) == ["1", "2", "3"]
    assert server.seen == [(0, 3), (3, 3)]


def test_short_page_ends_without_another_request() -> None:
    server = Server(["1", "2", "3", "4"])
    assert uids(pages(server)) == ["1", "2", "3", "4"]
    assert server.seen == [(0, 3), (3, 3)]


def test_page_size_is_capped_by_max_limit() -> None:
    server = Server([str(i) for i in range(450)])
    got = pages(server, PROFILES["azure"], page_size=500)
    assert len(uids(got)) == 450
    assert server.seen == [(0, 200), (200, 200), (400, 200)]


def test_row_repeated_between_pages_is_answered_once() -> None:
    # Newest first: a study arriving after the first page pushes "3" onto the second.
    server = Server(["3", "2", "1", "0"])

    def arrive(index: int) -> None:
        if index == 1:
            server.rows.insert(0, "4")

    server.before_page = arrive
    got = uids(pages(server))
    assert got == ["3", "2", "1", "0"]
    assert server.seen == [(0, 3), (3, 3)]


def test_max_records_is_a_failure_not_a_silent_end() -> None:
    server = Server([str(i) for i in range(10)])
    caps = replace(GENERIC, max_records=5)
    with pytest.raises(DicomwebPagingLimit, match=r"cannot page further \(5 records max\)"):
        pages(server, caps)
    # The second page asked only for what the server still lists (5 - 3).
    assert server.seen == [(0, 3), (3, 2)]


def test_max_records_not_reached_pages_normally() -> None:
    server = Server([str(i) for i in range(4)])
    assert len(uids(pages(server, replace(GENERIC, max_records=5)))) == 4


def test_offset_past_max_offset_is_a_failure() -> None:
    server = Server([str(i) for i in range(10)])
    with pytest.raises(DicomwebPagingLimit, match=r"cannot page further \(offset 3 max\)"):
        pages(server, replace(GENERIC, max_offset=3))
    assert server.seen == [(0, 3), (3, 3)]
