"""Self-tests for the fault-injecting proxy against a tiny in-process upstream."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .proxy import Fault, FaultProxy, RequestRecord

BIG = random.Random(1234).randbytes(1 << 20)
CHUNKS = [random.Random(n).randbytes(n) for n in (1, 17, 4096, 65536, 100_000, 3)]
CHUNKED = b"".join(CHUNKS)
CLOSE_BODY = random.Random(7).randbytes(300_000)


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the proxy aborting a stalled/reset upstream exchange is expected


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Upstream

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _fixed(self, body: bytes, send_body: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.server.hits.append(("HEAD", self.path))
        self._fixed(BIG, send_body=False)

    def do_GET(self) -> None:
        self.server.hits.append(("GET", self.path))
        if self.path == "/fixed":
            self._fixed(BIG)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in CHUNKS:
                self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/close":
            self.send_response(200)
            self.send_header("Content-Type", "multipart/related; boundary=x")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(CLOSE_BODY)
            self.close_connection = True
        else:
            self._fixed(f"path={self.path}".encode())

    def do_POST(self) -> None:
        self.server.hits.append(("POST", self.path))
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._fixed(body)


@pytest.fixture(scope="module")
def upstream() -> Iterator[_Upstream]:
    server = _Upstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[FaultProxy]:
    upstream.hits.clear()
    with FaultProxy(upstream.url) as p:
        yield p


def settled(proxy: FaultProxy, n: int, timeout: float = 5.0) -> list[RequestRecord]:
    """Wait until ``n`` requests were recorded and the proxy is done with all of them."""
    return proxy.wait_for(lambda rs: len(rs) == n and not any(r.in_flight for r in rs), timeout)


# --------------------------------------------------------------------------- pass-through


@pytest.mark.parametrize("path", ["/fixed", "/chunked", "/close"])
def test_passthrough_is_byte_identical(proxy: FaultProxy, path: str) -> None:
    expected = {"/fixed": BIG, "/chunked": CHUNKED, "/close": CLOSE_BODY}[path]
    r = httpx.get(proxy.url + path, timeout=10)
    assert r.status_code == 200
    assert r.content == expected
    if path == "/fixed":
        assert r.headers["content-length"] == str(len(BIG))
    elif path == "/chunked":
        assert r.headers["transfer-encoding"] == "chunked"
    else:
        assert "content-length" not in r.headers
        assert r.headers["connection"] == "close"
    (rec,) = settled(proxy, 1)
    assert (rec.method, rec.path, rec.status, rec.fault) == ("GET", path, 200, None)
    assert rec.bytes_relayed == len(expected)
    assert rec.completed_at is not None and rec.headers_at is not None
    assert rec.client_closed_at is None and rec.upstream_error is None


def test_keep_alive_several_requests_on_one_client(proxy: FaultProxy, upstream: _Upstream) -> None:
    payload = random.Random(3).randbytes(200_000)
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        assert client.get("/fixed").content == BIG
        echoed = client.post("/echo?x=1", content=payload)
        assert echoed.status_code == 200 and echoed.content == payload
        chunked_req = client.post("/echo", content=iter([b"ab", b"", b"cde"]))
        assert chunked_req.content == b"abcde"
        assert client.get("/chunked").content == CHUNKED
        assert client.get("/close").content == CLOSE_BODY  # proxy closes afterwards
        head = client.head("/fixed")
        assert head.headers["content-length"] == str(len(BIG)) and head.content == b""
    recs = settled(proxy, 6)
    assert [(r.method, r.path) for r in recs] == [
        ("GET", "/fixed"),
        ("POST", "/echo?x=1"),
        ("POST", "/echo"),
        ("GET", "/chunked"),
        ("GET", "/close"),
        ("HEAD", "/fixed"),
    ]
    conns = [r.conn_id for r in recs]
    assert len(set(conns[:5])) == 1, conns  # keep-alive reused up to the close-delimited one
    assert conns[5] != conns[0]
    assert recs[1].request_body_bytes == len(payload)
    assert [r.status for r in recs] == [200] * 6
    assert upstream.hits[1] == ("POST", "/echo?x=1")


def test_upstream_path_prefix_and_unreachable_upstream(upstream: _Upstream) -> None:
    with FaultProxy(upstream.url + "/base/") as p:
        assert httpx.get(p.url + "/a?b=c").content == b"path=/base/a?b=c"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with FaultProxy(f"http://127.0.0.1:{dead_port}") as p:
        r = httpx.get(p.url + "/x")
        assert r.status_code == 502
        (rec,) = settled(p, 1)
        assert rec.upstream_error is not None and "connect failed" in rec.upstream_error


# --------------------------------------------------------------------------- latency / rate


def test_delay_adds_latency(proxy: FaultProxy) -> None:
    proxy.delay_s = 0.3
    t0 = time.monotonic()
    r = httpx.get(proxy.url + "/small", timeout=10)
    elapsed = time.monotonic() - t0
    assert r.content == b"path=/small"
    assert 0.3 <= elapsed < 3.0
    (rec,) = settled(proxy, 1)
    assert rec.headers_at is not None and rec.headers_at - rec.started_at >= 0.29
    proxy.delay_s = 0.0
    proxy.add_fault(path_filter="/slow", delay_s=0.25)  # per-rule delay, only for /slow
    t0 = time.monotonic()
    httpx.get(proxy.url + "/slow", timeout=10)
    assert time.monotonic() - t0 >= 0.25


def test_throttle_slows_body(proxy: FaultProxy) -> None:
    proxy.throttle_bytes_per_s = 400_000  # CHUNKED is ~170 kB -> ~0.42 s
    t0 = time.monotonic()
    r = httpx.get(proxy.url + "/chunked", timeout=10)
    elapsed = time.monotonic() - t0
    assert r.content == CHUNKED
    assert 0.3 <= elapsed < 5.0
    proxy.throttle_bytes_per_s = None
    proxy.add_fault(path_filter="/close", throttle_bytes_per_s=1_000_000)  # ~0.3 s
    t0 = time.monotonic()
    assert httpx.get(proxy.url + "/close", timeout=10).content == CLOSE_BODY
    assert time.monotonic() - t0 >= 0.2


# --------------------------------------------------------------------------- status overrides


def test_status_override_with_count_then_passes_through(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    fault = proxy.fail(503, "/instances/", count=2, headers={"Retry-After": "1"})
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        responses = [client.get("/instances/1.2.3") for _ in range(3)]
    assert [r.status_code for r in responses] == [503, 503, 200]
    assert responses[0].headers["retry-after"] == "1"
    assert responses[1].headers["retry-after"] == "1"
    assert b"503" in responses[0].content
    assert responses[2].content == b"path=/instances/1.2.3"
    assert "retry-after" not in responses[2].headers
    assert fault.hits == 2 and fault.exhausted
    assert upstream.hits == [("GET", "/instances/1.2.3")]  # overrides never reach upstream
    recs = settled(proxy, 3)
    assert [r.fault for r in recs] == ["status:503", "status:503", None]
    assert len({r.conn_id for r in recs}) == 1  # error answers keep the connection alive


def test_path_filters_target_only_matching_requests(proxy: FaultProxy) -> None:
    proxy.fail(404, lambda path: path.endswith("/9.9.9"))
    proxy.truncate(10, "/instances/1.2.3")
    proxy.fail(500, "/instances/1.2.3")  # shadowed: first matching rule wins
    proxy.fail(418, "/series", method="POST")
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        ok = client.get("/instances/4.5.6")
        assert (ok.status_code, ok.content) == (200, b"path=/instances/4.5.6")
        assert client.get("/instances/9.9.9").status_code == 404
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/instances/1.2.3")
        assert client.get("/series").status_code == 200
        assert client.post("/series", content=b"x").status_code == 418
    recs = settled(proxy, 5)
    assert [r.fault for r in recs] == [None, "status:404", "truncate", None, "status:418"]
    assert recs[2].bytes_relayed == 10


# --------------------------------------------------------------------------- broken bodies


def _read_until_error(
    url: str, expected_error: type[Exception] | tuple[type[Exception], ...]
) -> bytes:
    got = bytearray()
    with httpx.Client(timeout=5) as client, pytest.raises(expected_error):
        with client.stream("GET", url) as r:
            assert r.status_code == 200
            for part in r.iter_raw():
                got += part
    return bytes(got)


def test_truncate_content_length_body(proxy: FaultProxy) -> None:
    proxy.truncate(1000, "/fixed")
    got = _read_until_error(proxy.url + "/fixed", (httpx.RemoteProtocolError, httpx.ReadError))
    assert got == BIG[:1000]
    (rec,) = settled(proxy, 1)
    assert rec.bytes_relayed == 1000 and rec.completed_at is None
    assert rec.client_closed_at is None  # the proxy closed, not the client


def test_truncate_chunked_body(proxy: FaultProxy) -> None:
    proxy.truncate(5000, "/chunked")
    got = _read_until_error(proxy.url + "/chunked", (httpx.RemoteProtocolError, httpx.ReadError))
    assert got == CHUNKED[:5000]


def test_truncate_close_delimited_body_is_silently_short(proxy: FaultProxy) -> None:
    proxy.truncate(12345, "/close")
    r = httpx.get(proxy.url + "/close", timeout=5)
    assert r.status_code == 200
    assert r.content == CLOSE_BODY[:12345]


def test_reset_before_response(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.reset(0, "/fixed")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(proxy.url + "/fixed", timeout=5)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /fixed HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            sock.recv(65536)
    assert upstream.hits == []
    recs = settled(proxy, 2)
    assert [(r.fault, r.status, r.bytes_relayed) for r in recs] == [("reset", None, 0)] * 2


def test_reset_mid_body(proxy: FaultProxy) -> None:
    proxy.reset(20_000, "/fixed")
    got = _read_until_error(proxy.url + "/fixed", (httpx.ReadError, httpx.RemoteProtocolError))
    assert len(got) <= 20_000 and BIG.startswith(got)
    (rec,) = settled(proxy, 1)
    assert rec.bytes_relayed == 20_000 and rec.completed_at is None


# --------------------------------------------------------------------------- stalls and aborts


def test_stall_then_client_read_timeout_is_recorded(proxy: FaultProxy) -> None:
    proxy.stall(5000, "/fixed")
    got = bytearray()
    with httpx.Client(timeout=httpx.Timeout(5.0, read=0.5)) as client:
        with pytest.raises(httpx.ReadTimeout):
            with client.stream("GET", proxy.url + "/fixed") as r:
                for part in r.iter_raw():
                    got += part
        closed_at = time.monotonic()
    assert bytes(got) == BIG[:5000]
    (rec,) = proxy.wait_for(lambda rs: rs[0].client_closed_at is not None, timeout=2)
    assert rec.client_closed_at is not None
    assert abs(rec.client_closed_at - closed_at) < 0.2
    assert rec.bytes_relayed == 5000 and rec.completed_at is None and rec.fault == "stall"
    settled(proxy, 1)


def test_stall_then_client_closes_stream_from_other_thread(proxy: FaultProxy) -> None:
    # Note: no thread is blocked reading this response. On Linux, close() of a socket that
    # another thread is blocked in recv() on sends nothing until that recv returns, so a
    # canceller must shutdown() the socket (or rely on timeouts) to be visible here.
    proxy.stall(0, "/close")  # headers only, then nothing
    client = httpx.Client(timeout=10)
    response = client.send(client.build_request("GET", proxy.url + "/close"), stream=True)
    assert response.status_code == 200
    proxy.wait_for(lambda rs: len(rs) == 1 and rs[0].headers_at is not None)
    time.sleep(0.2)
    assert proxy.records()[0].client_closed_at is None  # still stalled, client still there
    closer = threading.Thread(target=response.close)
    closer.start()
    closer.join(5)
    closed_at = time.monotonic()
    (rec,) = proxy.wait_for(lambda rs: rs[0].client_closed_at is not None, timeout=2)
    assert rec.client_closed_at is not None and rec.client_closed_at - closed_at < 0.2
    client.close()
    settled(proxy, 1)


def test_client_abort_while_throttled_is_noticed(proxy: FaultProxy) -> None:
    proxy.throttle_bytes_per_s = 100_000
    got = bytearray()
    with httpx.Client(timeout=5) as client:
        with client.stream("GET", proxy.url + "/fixed") as r:
            for part in r.iter_raw():
                got += part
                if len(got) >= 20_000:
                    break
        closed_at = time.monotonic()
    (rec,) = proxy.wait_for(lambda rs: rs[0].finished_at is not None, timeout=2)
    assert rec.client_closed_at is not None and abs(rec.client_closed_at - closed_at) < 0.2
    assert rec.completed_at is None and 20_000 <= rec.bytes_relayed < len(BIG) // 2
    assert BIG.startswith(bytes(got))


def test_client_abort_during_delay_never_reaches_upstream(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    proxy.add_fault(path_filter="/slow", delay_s=5.0)
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(proxy.url + "/slow", timeout=httpx.Timeout(5.0, read=0.3))
    closed_at = time.monotonic()
    (rec,) = proxy.wait_for(lambda rs: rs[0].finished_at is not None, timeout=2)
    assert rec.client_closed_at is not None and abs(rec.client_closed_at - closed_at) < 0.2
    assert rec.headers_at is None and rec.status is None
    assert time.monotonic() - t0 < 2.0
    assert upstream.hits == []
    assert not [r for r in proxy.records() if r.started_at > rec.client_closed_at]


def test_stop_releases_stalled_client(upstream: _Upstream) -> None:
    errors: list[BaseException] = []
    p = FaultProxy(upstream.url).start()
    p.add_fault(Fault(stall_after_bytes=100, path_filter="/fixed"))

    def fetch() -> None:
        try:
            httpx.get(p.url + "/fixed", timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    worker = threading.Thread(target=fetch)
    worker.start()
    p.wait_for(lambda rs: len(rs) == 1 and rs[0].bytes_relayed == 100)
    t0 = time.monotonic()
    p.stop()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - t0 < 2.0
    assert len(errors) == 1 and isinstance(errors[0], httpx.TransportError)


def test_records_clear_and_wait_for_timeout(proxy: FaultProxy) -> None:
    httpx.get(proxy.url + "/a")
    assert len(settled(proxy, 1)) == 1
    proxy.clear()
    assert proxy.records() == []
    with pytest.raises(TimeoutError):
        proxy.wait_for(lambda rs: len(rs) > 0, timeout=0.1)
    with pytest.raises(ValueError):
        Fault(stall_after_bytes=1, status_override=500)
