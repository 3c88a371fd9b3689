"""Retry policy: what is retried, how long it waits, and when it gives up."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from bridge.dicomweb.client import DicomwebClient, outcome_of
from bridge.dicomweb.multipart import MultipartError
from bridge.dicomweb.outcomes import is_retryable
from bridge.dicomweb.retry import RetryPolicy, backoff, parse_retry_after, retrying
from bridge.errors import (
    DicomwebError,
    DicomwebHTTPError,
    DicomwebProtocolError,
    DicomwebTimeout,
    DicomwebTLSError,
    DicomwebUnavailable,
)
from bridge.models import QidoQuery, QidoResource


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    # An HTTP date 10 s after "now".
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


@pytest.mark.parametrize(
    ("error", "idempotent", "expected"),
    [
        (DicomwebHTTPError(503, "busy", "u"), True, True),
        (DicomwebHTTPError(429, "slow down", "u"), True, True),
        (DicomwebHTTPError(502, "bad gateway", "u"), True, True),
        (DicomwebHTTPError(504, "gateway timeout", "u"), True, True),
        (DicomwebHTTPError(500, "error", "u"), True, False),
        (DicomwebHTTPError(401, "unauthorized", "u"), True, False),
        (DicomwebHTTPError(404, "not found", "u"), True, False),
        (DicomwebUnavailable("reset"), True, True),
        (MultipartError("truncated"), True, True),
        (DicomwebProtocolError("not JSON"), True, False),
        (DicomwebTimeout("slow"), True, False),
        (DicomwebUnavailable("reset mid-upload"), False, False),
        (DicomwebHTTPError(503, "busy", "u"), False, False),
    ],
)
def test_what_is_retried(error: DicomwebError, idempotent: bool, expected: bool) -> None:
    assert is_retryable(error, idempotent=idempotent) is expected


def test_a_request_that_never_left_may_be_retried_even_if_not_idempotent() -> None:
    error = DicomwebUnavailable("connection refused")
    error.never_sent = True
    assert is_retryable(error, idempotent=False)


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(base_delay=0.2, max_delay=5.0)
    rng = random.Random(1)
    delays = [backoff(n, policy, None, rng) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(5.0, 0.2 * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert backoff(1, policy, 3.0, rng) == 3.0
    assert backoff(1, policy, 60.0, rng) == 5.0


def test_retrying_stops_at_max_retries_and_deadline() -> None:
    calls: list[float] = []

    async def always_busy() -> str:
        calls.append(time.monotonic())
        raise DicomwebHTTPError(503, "busy", "u", retry_after=0.01)

    policy = RetryPolicy(deadline=10, max_retries=3)
    with pytest.raises(DicomwebHTTPError):
        asyncio.run(retrying(always_busy, policy, idempotent=True, what="t"))
    assert len(calls) == 4  # the first try and three retries

    calls.clear()
    policy = RetryPolicy(deadline=0.05, max_retries=10)

    async def busy_long() -> str:
        calls.append(time.monotonic())
        raise DicomwebHTTPError(503, "busy", "u", retry_after=1.0)

    with pytest.raises(DicomwebHTTPError):
        asyncio.run(retrying(busy_long, policy, idempotent=True, what="t"))
    assert len(calls) == 1  # waiting 1 s would pass the 0.05 s deadline


def test_client_retries_503_with_retry_after_then_succeeds() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if len(seen) < 3:
            return httpx.Response(503, headers={"Retry-After": "0"})
        return httpx.Response(200, json=[], headers={"Content-Type": "application/dicom+json"})

    observed: list[tuple[str, str, str]] = []

    async def run() -> int:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = DicomwebClient(
                http,
                "http://server/dicom-web",
                query_encoding="dicom",
                policy=RetryPolicy(deadline=5, max_retries=4, base_delay=0.01),
                backend="b1",
                observer=lambda backend, kind, outcome, s: observed.append(
                    (backend, kind, outcome)
                ),
            )
            page = await client.search(QidoQuery(QidoResource.STUDIES), offset=0, limit=10)
            return len(page.results)

    assert asyncio.run(run()) == 0
    assert len(seen) == 3
    assert observed == [("b1", "qido", "503"), ("b1", "qido", "503"), ("b1", "qido", "200")]


def test_client_does_not_retry_stow_after_the_request_was_sent(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "x.dcm"
    path.write_bytes(b"\0" * 200)
    attempts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        return httpx.Response(503)

    async def run() -> int:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = DicomwebClient(
                http,
                "http://server/dicom-web",
                query_encoding="dicom",
                policy=RetryPolicy(deadline=5, max_retries=4, base_delay=0.01),
            )
            result = await client.store_instance(path, "1.2.3")
            return result.status_code

    assert asyncio.run(run()) == 503
    assert attempts == [1]


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (DicomwebHTTPError(404, "Not Found", "u"), "404"),
        (DicomwebTimeout("slow"), "timeout"),
        (DicomwebTLSError("untrusted"), "tls_error"),
        (MultipartError("truncated"), "protocol_error"),
        (DicomwebUnavailable("reset under the request"), "transport_error"),
        (DicomwebError("other"), "error"),
    ],
)
def test_outcome_labels(error: DicomwebError, outcome: str) -> None:
    assert outcome_of(error) == outcome


def test_outcome_of_a_connection_never_made() -> None:
    error = DicomwebUnavailable("refused")
    error.never_sent = True
    assert outcome_of(error) == "connect_error"


def test_client_reports_connect_errors_and_cancels_to_the_observer() -> None:
    observed: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def stall(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        raise AssertionError("not reached")

    async def run(handler: object) -> None:
        transport = httpx.MockTransport(handler)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport) as http:
            client = DicomwebClient(
                http,
                "http://server/dicom-web",
                query_encoding="dicom",
                policy=RetryPolicy(deadline=0, max_retries=0),
                observer=lambda backend, kind, outcome, s: observed.append(outcome),
            )
            task = asyncio.create_task(
                client.search(QidoQuery(QidoResource.STUDIES), offset=0, limit=1)
            )
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises((DicomwebUnavailable, asyncio.CancelledError)):
                await task

    asyncio.run(run(refuse))
    asyncio.run(run(stall))
    assert observed == ["connect_error", "cancelled"]
