"""The bridge's httpx transport: HTTP/1.1 with h11 over asyncio streams, pooled per origin.

httpx's extension point is the transport (``httpx.AsyncBaseTransport``), so everything
above it stays httpx's: auth flows, redirects policy, the timeout configuration, the
``Response`` API and ``MockTransport`` in tests. What this replaces is httpcore and anyio,
whose layers cost ~3 ms of CPU per 0.5 MB WADO-RS answer (bench/http_cpu.py measures it).

- Connections: ``asyncio.open_connection`` (TLS from the backend's ``ssl.SSLContext``), at
  most `max_connections` in use at once over all origins, idle ones kept per origin
  (scheme, host, port) for `keepalive_expiry` seconds. A request that finds its pooled
  connection closed by the server before any byte of the answer came back goes out once
  more on a new connection when it carries no body (GET, HEAD...).
- Timeouts: from the request's ``timeout`` extension, which httpx fills from the client's
  ``httpx.Timeout``: ``connect``, ``write`` (each drain), ``read`` (each read), ``pool``
  (waiting for a connection slot; None = wait).
- Bodies: request bodies are streamed from httpx's byte stream (bytes or an async
  iterator, e.g. a STOW-RS file); answers are streamed too, so a multipart WADO-RS body
  is decoded as it arrives. Closing an answer before its end (a cancel, an error)
  aborts the connection at once; an answer read to the end returns it to the pool.
- Framing is h11's: Content-Length, chunked (trailers read, so the connection stays
  usable), close-delimited; repeated Content-Length headers must agree.
- Errors are httpx's own exception types (``httpx.ConnectError``, ``ReadTimeout``,
  ``RemoteProtocolError``...), so ``bridge/dicomweb/client.py``'s ``map_errors`` is the
  one table that turns them into the bridge's errors, whichever transport is in use.

Proxies are not handled here: ``make_http_client`` (client.py) uses httpx's default
transport for a backend whose URL the environment routes through a proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import h11
import httpx

# Bytes asked of the stream per read, and its buffer before it pauses the socket
# (asyncio reads at most 256 KB per recv; a 0.5 MB answer takes two or three reads).
_READ = 1024 * 1024
# Orthanc drops idle keep-alive connections after 1 s: expire ours sooner, so a request
# rarely lands on a connection the server is closing.
KEEPALIVE_EXPIRY = 0.8
# The largest response head accepted (h11's default is 16 KB; httpcore allows 100 KB).
_MAX_HEAD = 100 * 1024
# Methods whose request may be sent again when a pooled connection turns out dead.
_REPEATABLE = frozenset({b"GET", b"HEAD", b"OPTIONS"})

Origin = tuple[bytes, bytes, int]


class _StaleConnection(Exception):
    """A pooled connection was closed by the server before answering anything."""


class _Connection:
    """One HTTP/1.1 connection: the asyncio stream pair and its h11 state machine."""

    def __init__(
        self, origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.origin = origin
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
        self.idle_since = time.monotonic()
        self.reused = False
        # Whether any byte of the current answer has arrived (a dead pooled connection
        # fails before one does).
        self.answered = False

    def abort(self) -> None:
        """Close the socket now, without a TLS close_notify or waiting for anything."""
        transport = self.writer.transport
        if transport is not None:
            transport.abort()

    def usable(self, now: float, expiry: float) -> bool:
        return (
            now - self.idle_since < expiry
            and not self.reader.at_eof()
            and not self.writer.is_closing()
            and self.h11.our_state is h11.IDLE
        )

    async def send(self, event: h11.Event, timeout: float | None) -> None:
        data = self.h11.send(event)
        if data:
            self.writer.write(data)
            async with _deadline(timeout, httpx.WriteTimeout):
                await self.writer.drain()

    async def next_event(self, timeout: float | None) -> object:
        """The next h11 event (Response, Data, EndOfMessage...), reading as needed."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            # Inline, not _deadline: this runs for every piece of every body.
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(_READ)
            except TimeoutError as exc:
                raise httpx.ReadTimeout(f"timed out after {timeout:g} s") from exc
            if data:
                self.answered = True
            # b"" is the end of the stream: h11 decides whether that ends the body
            # (close-delimited) or cuts it short (RemoteProtocolError).
            self.h11.receive_data(data)


@contextlib.asynccontextmanager
async def _deadline(
    seconds: float | None, error: type[httpx.TimeoutException]
) -> AsyncIterator[None]:
    if seconds is None:
        yield
        return
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise error(f"timed out after {seconds:g} s") from exc


@contextlib.contextmanager
def _mapped(request: httpx.Request, *, reading: bool) -> Iterator[None]:
    """Socket and h11 failures as httpx's exception types (what httpcore would raise)."""
    try:
        yield
    except httpx.HTTPError:
        raise
    except h11.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc), request=request) from exc
    except (OSError, EOFError) as exc:
        kind = httpx.ReadError if reading else httpx.WriteError
        raise kind(_describe(exc), request=request) from exc


def _describe(exc: BaseException) -> str:
    """A socket error as one short line: "[Errno 111] Connection refused", not asyncio's
    "Connect call failed ('127.0.0.1', 8042)" (the caller names the URL)."""
    errno = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and errno:
        return f"[Errno {errno}] {os.strerror(errno)}"
    return str(exc) or type(exc).__name__


class H11Transport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncClient`` transport: HTTP/1.1 on h11, a keep-alive pool per origin."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 10,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        self.ssl_context = ssl_context
        self.keepalive_expiry = keepalive_expiry
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        if url.raw_scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(
                f"unsupported URL scheme {url.scheme!r}", request=request
            )
        origin: Origin = (
            url.raw_scheme,
            url.raw_host,
            url.port or (443 if url.raw_scheme == b"https" else 80),
        )
        async with _deadline(timeouts.get("pool"), httpx.PoolTimeout):
            await self._slots.acquire()
        try:
            connection = await self._checkout(origin, request, timeouts)
            try:
                head = await self._exchange(connection, request, timeouts)
            except _StaleConnection:
                connection.abort()
                connection = await self._connect(origin, request, timeouts)
                head = await self._exchange(connection, request, timeouts)
        except BaseException:
            self._slots.release()
            raise
        stream = _ResponseStream(self, connection, request, timeouts.get("read"))
        return httpx.Response(
            head.status_code,
            headers=head.headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.abort()
        self._idle.clear()

    async def _checkout(
        self, origin: Origin, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.usable(now, self.keepalive_expiry):
                connection.reused = True
                return connection
            connection.abort()
        return await self._connect(origin, request, timeouts)

    async def _connect(
        self, origin: Origin, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> _Connection:
        scheme, host, port = origin
        tls = self.ssl_context if scheme == b"https" else None
        if scheme == b"https" and tls is None:
            tls = ssl.create_default_context()
        name = host.decode("ascii")
        try:
            async with _deadline(timeouts.get("connect"), httpx.ConnectTimeout):
                reader, writer = await asyncio.open_connection(name, port, ssl=tls, limit=_READ)
        except OSError as exc:
            # ssl.SSLError is an OSError: map_errors finds it in the cause chain.
            raise httpx.ConnectError(_describe(exc)) from exc
        return _Connection(origin, reader, writer)

    async def _exchange(
        self,
        connection: _Connection,
        request: httpx.Request,
        timeouts: dict[str, float | None],
    ) -> h11.Response:
        """Send the request (head and body) and read the answer's head."""
        target = request.url.raw_path
        # httpx has put Host (from the URL's host and port, never its userinfo) first.
        head = h11.Request(method=request.method, target=target, headers=request.headers.raw)
        write_timeout = timeouts.get("write")
        repeatable = connection.reused and request.method.encode() in _REPEATABLE
        try:
            with _mapped(request, reading=False):
                await connection.send(head, write_timeout)
                async for chunk in _body(request):
                    await connection.send(h11.Data(data=chunk), write_timeout)
                await connection.send(h11.EndOfMessage(), write_timeout)
            with _mapped(request, reading=True):
                while True:
                    event = await connection.next_event(timeouts.get("read"))
                    if isinstance(event, h11.Response):
                        return event
                    if not isinstance(event, h11.InformationalResponse):
                        raise httpx.RemoteProtocolError(
                            f"unexpected HTTP event {type(event).__name__}", request=request
                        )
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
            if repeatable and not connection.answered:
                raise _StaleConnection() from None
            connection.abort()
            raise
        except BaseException:
            connection.abort()
            raise

    def _release(self, connection: _Connection, *, complete: bool) -> None:
        """The answer is done with: pool the connection if it can carry another request."""
        self._slots.release()
        h11_state = connection.h11
        if (
            complete
            and not self._closed
            and h11_state.our_state is h11.DONE
            and h11_state.their_state is h11.DONE
        ):
            h11_state.start_next_cycle()
            connection.answered = False
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.origin, []).append(connection)
        else:
            connection.abort()


async def _body(request: httpx.Request) -> AsyncIterator[bytes]:
    stream: Any = request.stream
    if isinstance(stream, httpx.ByteStream):
        # In-memory content (httpx keeps it for auth flows that resend the request).
        async for chunk in stream:
            if chunk:
                yield chunk
        return
    async for chunk in stream:
        if chunk:
            yield bytes(chunk)


class _ResponseStream(httpx.AsyncByteStream):
    """The body of one answer, as h11 delimits it; the connection goes back when done."""

    def __init__(
        self,
        transport: H11Transport,
        connection: _Connection,
        request: httpx.Request,
        read_timeout: float | None,
    ) -> None:
        self._transport = transport
        self._connection = connection
        self._request = request
        self._read_timeout = read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._released:
            raise httpx.StreamClosed()
        connection = self._connection
        complete = False
        try:
            with _mapped(self._request, reading=True):
                while True:
                    event = await connection.next_event(self._read_timeout)
                    if isinstance(event, h11.Data):
                        yield bytes(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        # Trailers (event.headers) are consumed with it, and unused.
                        complete = True
                        break
                    else:
                        raise httpx.RemoteProtocolError(
                            f"unexpected HTTP event {type(event).__name__}",
                            request=self._request,
                        )
        finally:
            self._release(complete)

    async def aclose(self) -> None:
        self._release(False)

    def _release(self, complete: bool) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._connection, complete=complete)
