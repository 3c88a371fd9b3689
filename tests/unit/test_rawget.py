"""The lean WADO-RS GET client against a scripted loopback HTTP server."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import pytest

from bridge.dicomweb.rawget import RawGetter
from bridge.errors import DicomwebHTTPError, DicomwebProtocolError, DicomwebUnavailable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


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


def _getter() -> RawGetter:
    return RawGetter(timeout=5, ssl_context=ssl.create_default_context(), max_connections=4)


async def _fetch(getter: RawGetter, url: str) -> bytes:
    response = await getter.request(url, {"Accept": "x"})
    try:
        return b"".join([chunk async for chunk in response.chunks()])
    finally:
        response.release()


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
        writer.close()

    async def run() -> list[bytes]:
        server, base = await _serve(handler)
        getter = _getter()
        got = [await _fetch(getter, f"{base}/a?x=1") for _ in range(3)]
        await getter.aclose()
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
        getter = _getter()
        result = (await _fetch(getter, f"{base1}/c"), await _fetch(getter, f"{base2}/d"))
        await getter.aclose()
        s1.close()
        s2.close()
        await s1.wait_closed()
        await s2.wait_closed()
        return result

    assert asyncio.run(run()) == (b"hello world", b"until the end")


def test_error_status_carries_retry_after() -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy")
        await writer.drain()

    async def run() -> None:
        server, base = await _serve(busy)
        getter = _getter()
        try:
            await _fetch(getter, f"{base}/x")
        finally:
            await getter.aclose()
            server.close()
            await server.wait_closed()

    with pytest.raises(DicomwebHTTPError) as caught:
        asyncio.run(run())
    assert caught.value.status_code == 503
    assert caught.value.retry_after == 7.0


def test_truncated_body_is_a_transient_protocol_error() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    async def run() -> None:
        server, base = await _serve(short)
        getter = _getter()
        try:
            await _fetch(getter, f"{base}/x")
        finally:
            await getter.aclose()
            server.close()
            await server.wait_closed()

    with pytest.raises(DicomwebProtocolError) as caught:
        asyncio.run(run())
    assert caught.value.transient


def test_closed_port_is_unavailable_and_never_sent() -> None:
    async def run() -> None:
        server, base = await _serve(_read_request)  # type: ignore[arg-type]
        server.close()
        await server.wait_closed()
        getter = _getter()
        try:
            await _fetch(getter, f"{base}/x")
        finally:
            await getter.aclose()

    with pytest.raises(DicomwebUnavailable) as caught:
        asyncio.run(run())
    assert caught.value.never_sent


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
        getter = _getter()
        first = await _fetch(getter, f"{base}/1")
        await asyncio.sleep(0.05)
        second = await _fetch(getter, f"{base}/2")
        await getter.aclose()
        server.close()
        await server.wait_closed()
        return [first, second]

    assert asyncio.run(run()) == [b"ok", b"ok"]
    assert served == [1, 1]
