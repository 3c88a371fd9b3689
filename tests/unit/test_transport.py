"""The bridge's h11 httpx transport (bridge/dicomweb/transport.py) against scripted
loopback HTTP servers: framing, pooling, timeouts, cancel, and errors through the one
mapping table (``map_errors``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from bridge.config import DicomwebConfig
from bridge.dicomweb.client import (
    DicomwebClient,
    environment_proxy,
    http_transport,
    make_client,
)
from bridge.dicomweb.multipart import encode_multipart
from bridge.dicomweb.transport import H11Transport
from bridge.errors import (
    DicomwebHTTPError,
    DicomwebProtocolError,
    DicomwebTimeout,
    DicomwebUnavailable,
)
from bridge.models import InstanceRef

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
REF = InstanceRef("1.2", "1.2.3", "1.2.3.4")
PART10 = b"DICM" + bytes(range(256)) * 40


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Closed whatever the handler did, also when asyncio.run cancels it at the end
        # (Python 3.11's Server.close leaves accepted connections open).
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def _multipart(body: bytes) -> tuple[bytes, bytes]:
    """(Content-Type, body) of a one-part WADO-RS answer holding `body`."""
    content_type, chunks = encode_multipart([("application/dicom", body)], boundary="b0und")
    return content_type.encode(), b"".join(chunks)


def _client(base: str, timeout: float = 5) -> DicomwebClient:
    """The bridge's client for `base`, as the bridge builds it, no retries."""
    return make_client(DicomwebConfig(url=base, max_retries=0, timeout=timeout))


def _transport(max_connections: int = 4) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=H11Transport(max_connections=max_connections), timeout=5)


def test_the_bridge_client_is_built_on_the_h11_transport() -> None:
    async def go() -> tuple[type, type]:
        fast = make_client(DicomwebConfig(), fast_http=True)
        stock = make_client(DicomwebConfig(), fast_http=False)
        try:
            return type(fast.http._transport), type(stock.http._transport)
        finally:
            await fast.aclose()
            await stock.aclose()

    assert asyncio.run(go()) == (H11Transport, httpx.AsyncHTTPTransport)


def test_content_length_bodies_reuse_one_connection() -> None:
    connections: list[int] = []
    body = bytes(range(256)) * 4000

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            try:
                head = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            assert head.startswith(b"GET /a?x=1 HTTP/1.1\r\n")
            assert b"\r\nAccept: x\r\n" in head
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    async def run() -> list[bytes]:
        server, base = await _serve(handler)
        async with _transport() as client:
            got = [
                (await client.get(f"{base}/a?x=1", headers={"Accept": "x"})).content
                for _ in range(3)
            ]
        server.close()
        return got

    assert asyncio.run(run()) == [body] * 3
    assert connections == [1]


def test_chunked_and_close_delimited_bodies() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async def run() -> tuple[bytes, bytes]:
        s1, base1 = await _serve(chunked)
        s2, base2 = await _serve(closing)
        async with _transport() as client:
            result = (
                (await client.get(f"{base1}/c")).content,
                (await client.get(f"{base2}/d")).content,
            )
        s1.close()
        s2.close()
        return result

    assert asyncio.run(run()) == (b"hello world", b"until the end")


def test_a_chunked_trailer_does_not_spoil_the_pooled_connection() -> None:
    # rawget left the trailer in the connection: the next request read it as its status line.
    content_type, body = _multipart(PART10)
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\n"
                b"Transfer-Encoding: chunked\r\nTrailer: X-Digest\r\n\r\n"
                + b"%x\r\n" % len(body)
                + body
                + b"\r\n0\r\nX-Digest: abc\r\n\r\n"
            )
            await writer.drain()

    async def run() -> list[bytes]:
        server, base = await _serve(handler)
        client = _client(base)
        try:
            return [await client.retrieve_instance(REF) for _ in range(3)]
        finally:
            await client.aclose()
            server.close()

    assert asyncio.run(run()) == [PART10] * 3
    assert connections == [1]


def test_the_host_header_leaves_out_the_urls_userinfo() -> None:
    # rawget sent "Host: user:secret@127.0.0.1:port", the password in clear text.
    content_type, body = _multipart(PART10)
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await _read_request(reader))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: "
            + content_type
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        await writer.drain()

    async def run() -> tuple[bytes, str]:
        server, base = await _serve(handler)
        client = _client(base.replace("http://", "http://user:secret@"))
        try:
            return await client.retrieve_instance(REF), base
        finally:
            await client.aclose()
            server.close()

    got, base = asyncio.run(run())
    assert got == PART10
    host_lines = [line for line in heads[0].split(b"\r\n") if line.lower().startswith(b"host:")]
    assert host_lines == [b"Host: " + base.removeprefix("http://").encode()]


@pytest.mark.parametrize(
    ("lengths", "expected"), [((5, 5), b"hello"), ((5, 6), None)], ids=["same", "conflicting"]
)
def test_a_repeated_content_length(lengths: tuple[int, int], expected: bytes | None) -> None:
    # rawget raised a bare ValueError (int("5, 5")) that no table mapped.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        head = "".join(f"Content-Length: {n}\r\n" for n in lengths)
        writer.write(b"HTTP/1.1 200 OK\r\n" + head.encode() + b"\r\nhello")
        await writer.drain()

    async def run() -> bytes:
        server, base = await _serve(handler)
        try:
            async with _transport() as client:
                return (await client.get(base + "/x")).content
        finally:
            server.close()

    if expected is not None:
        assert asyncio.run(run()) == expected
    else:
        with pytest.raises(httpx.RemoteProtocolError, match="Content-Length"):
            asyncio.run(run())


def test_conflicting_content_lengths_are_one_protocol_error_of_the_table() -> None:
    content_type, body = _multipart(PART10)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: "
            + content_type
            + b"\r\nContent-Length: %d\r\nContent-Length: 7\r\n\r\n" % len(body)
            + body
        )
        await writer.drain()

    async def run() -> None:
        server, base = await _serve(handler)
        client = _client(base)
        try:
            await client.retrieve_instance(REF)
        finally:
            await client.aclose()
            server.close()

    with pytest.raises(DicomwebProtocolError, match="Content-Length"):
        asyncio.run(run())


def test_error_status_carries_retry_after() -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy")
        await writer.drain()

    async def run() -> None:
        server, base = await _serve(busy)
        client = _client(base)
        try:
            await client.retrieve_instance(REF)
        finally:
            await client.aclose()
            server.close()

    with pytest.raises(DicomwebHTTPError) as caught:
        asyncio.run(run())
    assert caught.value.status_code == 503
    assert caught.value.retry_after == 7.0


def test_truncated_body_is_a_transient_protocol_error() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: multipart/related; boundary=b0und\r\n"
            b"Content-Length: 100\r\n\r\nonly this"
        )
        await writer.drain()
        writer.close()

    async def run() -> None:
        server, base = await _serve(short)
        client = _client(base)
        try:
            await client.retrieve_instance(REF)
        finally:
            await client.aclose()
            server.close()

    with pytest.raises(DicomwebProtocolError) as caught:
        asyncio.run(run())
    assert caught.value.transient


def test_closed_port_is_unavailable_and_never_sent() -> None:
    async def run() -> None:
        server, base = await _serve(_read_request)  # type: ignore[arg-type]
        server.close()
        await server.wait_closed()
        client = _client(base)
        try:
            await client.retrieve_instance(REF)
        finally:
            await client.aclose()

    with pytest.raises(DicomwebUnavailable) as caught:
        asyncio.run(run())
    assert caught.value.never_sent


def test_a_stalled_answer_is_a_read_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: multipart/related; boundary=b0und\r\n"
            b"Content-Length: 100\r\n\r\n--b0und"
        )
        await writer.drain()
        await reader.read()  # until the client gives up and closes

    async def run() -> None:
        server, base = await _serve(stall)
        client = _client(base, timeout=0.2)
        try:
            await client.retrieve_instance(REF)
        finally:
            await client.aclose()
            server.close()

    with pytest.raises(DicomwebTimeout, match="ReadTimeout"):
        asyncio.run(run())


def test_a_stale_pooled_connection_is_replaced_once() -> None:
    served: list[int] = []

    async def once_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Answers one request with keep-alive, then closes the connection: the next
        # request on the pooled connection fails and must go out on a new one.
        await _read_request(reader)
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def run() -> list[bytes]:
        server, base = await _serve(once_per_connection)
        async with _transport() as client:
            first = (await client.get(f"{base}/1")).content
            await asyncio.sleep(0.05)
            second = (await client.get(f"{base}/2")).content
        server.close()
        return [first, second]

    assert asyncio.run(run()) == [b"ok", b"ok"]
    assert served == [1, 1]


def test_a_streamed_request_body_goes_out_chunked() -> None:
    received: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _read_request(reader)
        assert b"Transfer-Encoding: chunked" in head
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
        received.append(body)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(len(body))), len(body))
        )
        await writer.drain()

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(5):
            yield bytes([i]) * 100_000

    async def run() -> bytes:
        server, base = await _serve(echo)
        async with _transport() as client:
            answer = (await client.post(base + "/studies", content=pieces())).content
        server.close()
        return answer

    assert asyncio.run(run()) == b"500000"
    assert received == [b"".join(bytes([i]) * 100_000 for i in range(5))]


def test_cancelling_a_streamed_answer_closes_the_connection_at_once() -> None:
    closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        # The client reads nothing more: the next read sees its end of the connection.
        if await reader.read(1) == b"":
            closed.set()

    async def run() -> bool:
        server, base = await _serve(endless)
        async with _transport() as client:
            started = asyncio.Event()

            async def fetch() -> None:
                async with client.stream("GET", base + "/big") as response:
                    async for _ in response.aiter_raw():
                        started.set()

            task = asyncio.create_task(fetch())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(closed.wait(), 1.0)
        server.close()
        return closed.is_set()

    assert asyncio.run(run())


def test_connections_are_capped_by_max_connections() -> None:
    open_now = [0]
    most = [0]

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_now[0] += 1
        most[0] = max(most[0], open_now[0])
        try:
            while True:
                try:
                    await _read_request(reader)
                except asyncio.IncompleteReadError:
                    break
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        finally:
            open_now[0] -= 1

    async def run() -> list[bytes]:
        server, base = await _serve(slow)
        async with _transport(max_connections=2) as client:
            answers = await asyncio.gather(*(client.get(f"{base}/{i}") for i in range(6)))
        server.close()
        return [answer.content for answer in answers]

    assert asyncio.run(run()) == [b"ok"] * 6
    assert most[0] == 2


def test_the_environment_proxy_decides_the_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    config = DicomwebConfig(url="http://pacs.example:8042/dicom-web")
    assert environment_proxy(config.url) is None
    assert isinstance(http_transport(config), H11Transport)
    assert isinstance(http_transport(config, fast_http=False), httpx.AsyncHTTPTransport)

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert environment_proxy(config.url) is None  # a proxy for https only
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert environment_proxy(config.url) == "http://proxy.example:3128"
    assert isinstance(http_transport(config), httpx.AsyncHTTPTransport)
    monkeypatch.setenv("NO_PROXY", "pacs.example")
    assert environment_proxy(config.url) is None
    assert isinstance(http_transport(config), H11Transport)
