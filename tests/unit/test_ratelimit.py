"""The WADO-RS rate limit (bridge/dicomweb/ratelimit.py): a token bucket on an injected clock,
the requests it counts, and its place on httpx's request path (MockTransport, no network)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bridge.config import parse_config
from bridge.dicomweb.client import make_client
from bridge.dicomweb.ratelimit import TokenBucket, WadoRateLimit, is_wado_request


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted_now(bucket: TokenBucket, asked: int) -> int:
    """How many of `asked` requests made now may go at once (the others wait)."""
    return sum(1 for _ in range(asked) if bucket.reserve() == 0.0)


def test_burst_then_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=50.0, burst=100, clock=clock)
    waits = [bucket.reserve() for _ in range(150)]
    # The burst goes at once; the next 50 are spaced at 1/50 s, in arrival order.
    assert waits[:100] == [0.0] * 100
    assert waits[100] == pytest.approx(0.02)
    assert waits[149] == pytest.approx(1.0)
    assert waits[100:] == sorted(waits[100:])


def test_requests_admitted_per_refill() -> None:
    """600 requests at once (every association of a backend asking together): the burst
    goes at once, then exactly `rate` per second, whatever the number waiting."""
    clock = Clock()
    bucket = TokenBucket(rate=50.0, burst=100, clock=clock)
    sent_at = [bucket.reserve() for _ in range(600)]
    assert sum(1 for t in sent_at if t == 0.0) == 100
    # Windows of one second, offset by half a slot so no send time sits on a boundary.
    for second in range(1, 10):
        start = second - 0.01
        assert sum(1 for t in sent_at if start <= t < start + 1.0) == 50
    assert max(sent_at) == pytest.approx(10.0)


def test_idle_bucket_refills_to_the_burst_only() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=50.0, burst=100, clock=clock)
    assert admitted_now(bucket, 100) == 100
    clock.now += 3600
    assert admitted_now(bucket, 1000) == 100


def test_no_burst_means_one_at_a_time() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10.0, burst=0, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])


def test_retry_after_pauses_every_request() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=50.0, burst=100, clock=clock)
    bucket.pause(2.0)
    assert bucket.reserve() == pytest.approx(2.0)
    clock.now += 2.0
    assert bucket.reserve() == 0.0


def test_refund_gives_the_token_back() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(1.0)
    bucket.refund()
    assert bucket.reserve() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("method", "path", "wado"),
    [
        ("GET", "/dicom-web/studies/1.2/series/3.4/instances/5.6", True),
        ("GET", "/dicom-web/studies/1.2/series/3.4/instances/5.6/metadata", True),
        ("GET", "/dicom-web/studies/1.2/series/3.4/instances/5.6/frames/1,2", True),
        ("GET", "/dicom-web/studies/1.2/series/3.4", True),
        ("GET", "/dicom-web/studies/1.2/series/3.4/metadata", True),
        ("GET", "/dicom-web/studies/1.2", True),
        ("GET", "/dicom-web/studies", False),
        ("GET", "/dicom-web/studies/1.2/series", False),
        ("GET", "/dicom-web/studies/1.2/series/3.4/instances", False),
        ("GET", "/dicom-web/studies/1.2/instances", False),
        ("GET", "/dicom-web/series", False),
        ("GET", "/dicom-web/instances", False),
        ("POST", "/dicom-web/studies", False),
        ("POST", "/dicom-web/studies/1.2", False),
    ],
)
def test_what_counts_as_wado_rs(method: str, path: str, wado: bool) -> None:
    assert is_wado_request(method, path) is wado


def test_httpx_request_path_waits_for_tokens_and_reads_429() -> None:
    """On httpx's own request path: QIDO-RS passes free, WADO-RS takes tokens, and a 429
    with Retry-After pauses the bucket for every later WADO-RS request."""
    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    bucket = TokenBucket(rate=5.0, burst=2, clock=clock, sleep=sleep)
    answers = iter([200, 200, 429, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/studies"):
            return httpx.Response(200, json=[])
        status = next(answers)
        return httpx.Response(status, headers={"Retry-After": "3"} if status == 429 else {})

    async def scenario() -> list[int]:
        limit = WadoRateLimit(bucket)
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(handler), event_hooks=limit.event_hooks()
        ) as client:
            codes = [(await client.get("http://x/studies")).status_code for _ in range(5)]
            wado = "http://x/studies/1/series/2/instances/3"
            codes += [(await client.get(wado)).status_code for _ in range(4)]
            return codes

    codes = asyncio.run(scenario())
    assert codes == [200] * 5 + [200, 200, 429, 200]
    # 5 QIDO-RS: no token. WADO 1-2: the burst. WADO 3: 1/5 s. WADO 4: the 429's 3 s.
    assert slept == pytest.approx([0.2, 3.0])


def test_make_client_puts_the_profile_rate_on_its_backend() -> None:
    aws = parse_config({"dicomweb": {"url": "http://x/dicom-web", "profile": "aws"}})
    generic = parse_config({"dicomweb": {"url": "http://x/dicom-web"}})

    async def hooks(config: object) -> tuple[int, bool]:
        client = make_client(config.dicomweb)  # type: ignore[attr-defined]
        try:
            return len(client.http.event_hooks["request"]), client.raw is None
        finally:
            await client.aclose()

    assert asyncio.run(hooks(aws)) == (1, True)
    assert asyncio.run(hooks(generic))[0] == 0
