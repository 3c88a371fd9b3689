"""Fault-injecting HTTP/1.1 reverse proxy (stdlib asyncio, own thread) for the test suite.

Usage::

    with FaultProxy("http://127.0.0.1:8042") as proxy:
        proxy.delay_s = 0.04                                  # WAN latency
        proxy.stall(after_bytes=10_000, path_filter="/instances/1.2.3")
        proxy.fail(503, path_filter="/studies", count=1, headers={"Retry-After": "1"})
        ...  # point the code under test at proxy.url
        rec = proxy.wait_for(lambda rs: any(r.client_closed_at for r in rs), timeout=2)

Design: every client request is forwarded on a *fresh* upstream connection with
``Connection: close`` forced, so upstream framing never leaks into client keep-alive.
The upstream body is streamed to the client in slices (so throttles and stalls happen
mid-body) and re-framed:

* upstream ``Content-Length``  -> same ``Content-Length``, client connection kept alive;
* upstream ``chunked``         -> re-chunked (one chunk per relayed slice), kept alive;
* upstream close-delimited     -> relayed without length, then the client connection is
  closed (``Connection: close``), exactly like Orthanc's study/series WADO-RS answers.

While a response is in progress a watcher task keeps reading the client socket, so a
client that closes or resets the connection is noticed within milliseconds (recorded as
``RequestRecord.client_closed_at``) and the in-flight upstream exchange is dropped.

Byte counts in faults (``stall_after_bytes`` ...) are *body* bytes (after de-chunking),
never header or chunk-framing bytes. A limit that is >= the body length never triggers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import socket
import struct
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

try:  # Linux: bytes still in the kernel send queue (used to flush before an RST).
    import fcntl
    import termios

    _TIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - non-Linux
    _TIOCOUTQ = None

__all__ = ["Fault", "FaultPlan", "FaultProxy", "PathFilter", "RequestRecord"]

log = logging.getLogger(__name__)

PathFilter = str | Callable[[str], bool] | None
"""``None`` matches every request; a ``str`` matches paths containing it (substring of
path + query); a callable receives the path + query and returns whether it matches."""

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_PIECE = 64 * 1024
_MAX_HEAD = 64 * 1024
_FLUSH_TIMEOUT_S = 1.0


# --------------------------------------------------------------------------- public types


@dataclass
class Fault:
    """One rule of the fault plan; the first matching, non-exhausted rule applies.

    Matching: ``path_filter`` (see :data:`PathFilter`), optional ``method``, and optional
    ``body_filter`` (called with the whole request body: e.g. "holds this UID").
    ``count`` limits the rule to the next N matching requests (``hits`` counts uses).

    Effects (at most one of the four *actions* may be set; ``delay_s`` and
    ``throttle_bytes_per_s`` combine with any of them, or may be used alone):

    * ``delay_s``: extra latency before forwarding (added to the plan's global delay).
      The client closing during the delay is recorded and upstream is never contacted.
    * ``throttle_bytes_per_s``: body rate limit for matching requests (overrides global).
    * ``stall_after_bytes``: relay N body bytes, then send nothing more and hold the
      connection open until the client closes it or the proxy stops (0 = after headers).
    * ``truncate_after_bytes``: relay N body bytes, then close the connection (FIN).
    * ``reset_after_bytes``: relay N body bytes, then close with a TCP RST
      (``SO_LINGER`` 0); 0 = reset before any response byte, upstream is not contacted.
    * ``status_override``: answer this status with ``body`` (default: a short text) and
      ``headers`` (e.g. ``{"Retry-After": "1"}``) without contacting upstream.
    """

    path_filter: PathFilter = None
    method: str | None = None
    body_filter: Callable[[bytes], bool] | None = None
    count: int | None = None
    delay_s: float = 0.0
    throttle_bytes_per_s: float | None = None
    stall_after_bytes: int | None = None
    truncate_after_bytes: int | None = None
    reset_after_bytes: int | None = None
    status_override: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    hits: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        actions = [
            name
            for name in (
                "stall_after_bytes",
                "truncate_after_bytes",
                "reset_after_bytes",
                "status_override",
            )
            if getattr(self, name) is not None
        ]
        if len(actions) > 1:
            raise ValueError(f"a Fault takes at most one action, got {actions}")
        for name in ("stall_after_bytes", "truncate_after_bytes", "reset_after_bytes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")

    @property
    def kind(self) -> str:
        """Short name of the action: stall/truncate/reset/status/delay/throttle/pass."""
        if self.stall_after_bytes is not None:
            return "stall"
        if self.truncate_after_bytes is not None:
            return "truncate"
        if self.reset_after_bytes is not None:
            return "reset"
        if self.status_override is not None:
            return f"status:{self.status_override}"
        if self.delay_s:
            return "delay"
        if self.throttle_bytes_per_s:
            return "throttle"
        return "pass"

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.hits >= self.count

    def matches(self, method: str, path: str, body: bytes = b"") -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.body_filter is not None and not self.body_filter(body):
            return False
        flt = self.path_filter
        if flt is None:
            return True
        if isinstance(flt, str):
            return flt in path
        return bool(flt(path))

    def _body_limit(self) -> tuple[int, str] | None:
        for name, kind in (
            ("stall_after_bytes", "stall"),
            ("truncate_after_bytes", "truncate"),
            ("reset_after_bytes", "reset"),
        ):
            value: int | None = getattr(self, name)
            if value is not None:
                return value, kind
        return None


@dataclass
class RequestRecord:
    """What the proxy saw for one client request (times are ``time.monotonic()``)."""

    index: int
    conn_id: int
    method: str
    path: str
    started_at: float
    request_body_bytes: int = 0
    fault: str | None = None
    status: int | None = None
    headers_at: float | None = None
    bytes_relayed: int = 0
    client_closed_at: float | None = None
    completed_at: float | None = None
    finished_at: float | None = None
    upstream_error: str | None = None

    @property
    def in_flight(self) -> bool:
        """True until the proxy is done with the request (any outcome)."""
        return self.finished_at is None


class FaultPlan:
    """Thread-safe mutable fault plan: global delay/throttle plus an ordered rule list."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._delay_s = 0.0
        self._throttle: float | None = None
        self._faults: list[Fault] = []

    @property
    def delay_s(self) -> float:
        with self._lock:
            return self._delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        with self._lock:
            self._delay_s = float(value)

    @property
    def throttle_bytes_per_s(self) -> float | None:
        with self._lock:
            return self._throttle

    @throttle_bytes_per_s.setter
    def throttle_bytes_per_s(self, value: float | None) -> None:
        with self._lock:
            self._throttle = value

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def set(self, faults: Iterable[Fault]) -> None:
        new = list(faults)
        with self._lock:
            self._faults = new

    def remove(self, fault: Fault) -> None:
        with self._lock:
            self._faults = [f for f in self._faults if f is not fault]

    def clear(self) -> None:
        """Remove all rules and reset delay and throttle."""
        with self._lock:
            self._faults = []
            self._delay_s = 0.0
            self._throttle = None

    def match(self, method: str, path: str, body: bytes = b"") -> Fault | None:
        """Return (and count a hit on) the first non-exhausted matching rule."""
        with self._lock:
            for fault in self._faults:
                if not fault.exhausted and fault.matches(method, path, body):
                    fault.hits += 1
                    return fault
        return None


# --------------------------------------------------------------------------- internals


class _BadRequest(Exception):
    pass


class _UpstreamError(Exception):
    pass


class _ClientGone(Exception):
    pass


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return _header(self.headers, name)

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass
class _State:
    proxy_closed: bool = False


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return None


def _parse_headers(lines: list[str]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"malformed header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return headers


def _is_chunked(headers: list[tuple[str, str]]) -> bool:
    return "chunked" in (_header(headers, "transfer-encoding") or "").lower()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Injected"


def _head_bytes(status_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [status_line, *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


class _Inbox:
    """Buffered reader over the client stream that can also watch for the peer closing."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buf = bytearray()

    async def _fill(self) -> bool:
        try:
            data = await self._reader.read(_PIECE)
        except OSError:
            data = b""
        if not data:
            return False
        self._buf += data
        return True

    async def read_head(self) -> bytes | None:
        """Bytes up to the blank line; ``None`` on EOF before the first byte."""
        while True:
            while self._buf[:2] == b"\r\n":
                del self._buf[:2]
            idx = self._buf.find(b"\r\n\r\n")
            if idx >= 0:
                head = bytes(self._buf[: idx + 4])
                del self._buf[: idx + 4]
                return head
            if len(self._buf) > _MAX_HEAD:
                raise _BadRequest("request head too large")
            if not await self._fill():
                if self._buf:
                    raise _BadRequest("connection closed inside request head")
                return None

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not await self._fill():
                raise _BadRequest("connection closed inside request body")
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def read_line(self) -> bytes:
        while (idx := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > _MAX_HEAD or not await self._fill():
                raise _BadRequest("bad chunked request body")
        line = bytes(self._buf[:idx])
        del self._buf[: idx + 2]
        return line

    async def wait_closed(self) -> None:
        """Return once the peer closed/reset; pipelined bytes are kept for later reads."""
        while await self._fill():
            pass


async def _iter_length(reader: asyncio.StreamReader, length: int) -> AsyncGenerator[bytes, None]:
    remaining = length
    while remaining:
        try:
            data = await reader.read(min(_PIECE, remaining))
        except OSError as exc:
            raise _UpstreamError(f"upstream read failed: {exc!r}") from exc
        if not data:
            raise _UpstreamError(
                f"upstream closed after {length - remaining} of {length} body bytes"
            )
        remaining -= len(data)
        yield data


async def _iter_chunked(reader: asyncio.StreamReader) -> AsyncGenerator[bytes, None]:
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers: dropped
                    pass
                return
            async for piece in _iter_length(reader, size):
                yield piece
            if await reader.readexactly(2) != b"\r\n":
                raise _UpstreamError("bad chunk terminator from upstream")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError) as exc:
        raise _UpstreamError(f"bad chunked body from upstream: {exc!r}") from exc


async def _iter_until_close(reader: asyncio.StreamReader) -> AsyncGenerator[bytes, None]:
    while True:
        try:
            data = await reader.read(_PIECE)
        except OSError as exc:
            raise _UpstreamError(f"upstream read failed: {exc!r}") from exc
        if not data:
            return
        yield data


async def _iter_nothing() -> AsyncGenerator[bytes, None]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    if writer.is_closing():
        raise _ClientGone("client transport closed")
    try:
        writer.write(data)
        await writer.drain()
    except OSError as exc:
        raise _ClientGone(repr(exc)) from exc


async def _flush(writer: asyncio.StreamWriter) -> None:
    """Best effort: wait until written bytes left the asyncio buffer and the kernel queue."""
    deadline = time.monotonic() + _FLUSH_TIMEOUT_S
    transport = writer.transport
    while transport.get_write_buffer_size() and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    sock = writer.get_extra_info("socket")
    if sock is None or _TIOCOUTQ is None:
        await asyncio.sleep(0.01)
        return
    while time.monotonic() < deadline:
        try:
            raw = fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return
        if struct.unpack("i", raw)[0] == 0:
            return
        await asyncio.sleep(0.001)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --------------------------------------------------------------------------- the proxy


class FaultProxy:
    """Reverse proxy on ``127.0.0.1:<free port>`` running its own event loop in a thread.

    ``upstream`` is a base URL (``http://host:port[/prefix]``); a path prefix is prepended
    to every forwarded request path. The client's ``Host`` header is forwarded unchanged
    (like a transparent reverse proxy) unless ``preserve_host=False``.
    """

    def __init__(
        self,
        upstream: str,
        *,
        preserve_host: bool = True,
        connect_timeout_s: float = 10.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream = upstream
        self._up_host = parts.hostname
        self._up_port = parts.port or 80
        self._up_netloc = parts.netloc
        self._up_prefix = parts.path.rstrip("/")
        self._preserve_host = preserve_host
        self._connect_timeout_s = connect_timeout_s

        self.plan = FaultPlan()
        self._cond = threading.Condition(threading.RLock())
        self._records: list[RequestRecord] = []
        self._record_ids = itertools.count()
        self._conn_ids = itertools.count(1)

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._port: int | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        self._thread = threading.Thread(target=self._run, name="FaultProxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("FaultProxy did not start within 10 s")
        if self._start_error is not None:
            raise RuntimeError("FaultProxy failed to start") from self._start_error
        return self

    def stop(self) -> None:
        """Close the listener and every client connection (stalls end), join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                fut.result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------- fault plan

    @property
    def delay_s(self) -> float:
        return self.plan.delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self.plan.delay_s = value

    @property
    def throttle_bytes_per_s(self) -> float | None:
        return self.plan.throttle_bytes_per_s

    @throttle_bytes_per_s.setter
    def throttle_bytes_per_s(self, value: float | None) -> None:
        self.plan.throttle_bytes_per_s = value

    def add_fault(self, fault: Fault | None = None, /, **kwargs: object) -> Fault:
        """Append a rule: ``add_fault(Fault(...))`` or ``add_fault(**Fault fields)``."""
        if fault is None:
            fault = Fault(**kwargs)  # type: ignore[arg-type]
        elif kwargs:
            raise TypeError("pass either a Fault or keyword fields, not both")
        return self.plan.add(fault)

    def stall(self, after_bytes: int, path_filter: PathFilter = None, **kw: object) -> Fault:
        return self.add_fault(stall_after_bytes=after_bytes, path_filter=path_filter, **kw)

    def truncate(self, after_bytes: int, path_filter: PathFilter = None, **kw: object) -> Fault:
        return self.add_fault(truncate_after_bytes=after_bytes, path_filter=path_filter, **kw)

    def reset(self, after_bytes: int = 0, path_filter: PathFilter = None, **kw: object) -> Fault:
        return self.add_fault(reset_after_bytes=after_bytes, path_filter=path_filter, **kw)

    def fail(
        self,
        status: int,
        path_filter: PathFilter = None,
        *,
        count: int | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        **kw: object,
    ) -> Fault:
        return self.add_fault(
            status_override=status,
            path_filter=path_filter,
            count=count,
            headers=dict(headers or {}),
            body=body,
            **kw,
        )

    def clear_faults(self) -> None:
        """Drop all rules and reset global delay/throttle (records are kept)."""
        self.plan.clear()

    # ----------------------------------------------------------------- records

    def records(self) -> list[RequestRecord]:
        """Snapshot copies of all request records, in arrival order."""
        with self._cond:
            return [dataclasses.replace(r) for r in self._records]

    def clear(self) -> None:
        """Forget recorded requests (the fault plan is kept)."""
        with self._cond:
            self._records = []

    def wait_for(
        self,
        predicate: Callable[[list[RequestRecord]], bool],
        timeout: float = 5.0,
    ) -> list[RequestRecord]:
        """Block until ``predicate(records())`` is true; return that snapshot.

        Raises ``TimeoutError`` (with the last snapshot in the message) on timeout.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snap = self.records()
                if predicate(snap):
                    return snap
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"FaultProxy.wait_for timed out; records={snap!r}")
                self._cond.wait(min(remaining, 0.05))

    def _new_record(self, conn_id: int, req: _Request) -> RequestRecord:
        rec = RequestRecord(
            index=next(self._record_ids),
            conn_id=conn_id,
            method=req.method,
            path=req.target,
            started_at=time.monotonic(),
            request_body_bytes=len(req.body),
        )
        with self._cond:
            self._records.append(rec)
            self._cond.notify_all()
        return rec

    def _update(self, rec: RequestRecord, **fields: object) -> None:
        with self._cond:
            for name, value in fields.items():
                setattr(rec, name, value)
            self._cond.notify_all()

    def _add_bytes(self, rec: RequestRecord, n: int) -> None:
        with self._cond:
            rec.bytes_relayed += n
            self._cond.notify_all()

    def _mark_client_closed(self, rec: RequestRecord) -> None:
        now = time.monotonic()
        with self._cond:
            if rec.completed_at is None and rec.client_closed_at is None:
                rec.client_closed_at = now
                self._cond.notify_all()

    # ----------------------------------------------------------------- event loop side

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0)
                )
                self._port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # reported by start()
                self._start_error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._conn_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        conn_id = next(self._conn_ids)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        inbox = _Inbox(reader)
        cancelled = False
        try:
            while True:
                try:
                    req = await self._read_request(inbox, writer)
                except _BadRequest as exc:
                    body = f"bad request: {exc}\n".encode()
                    with contextlib.suppress(_ClientGone):
                        await _send(
                            writer,
                            _head_bytes(
                                "HTTP/1.1 400 Bad Request",
                                [("Content-Length", str(len(body))), ("Connection", "close")],
                            )
                            + body,
                        )
                    break
                if req is None or not await self._serve(req, inbox, writer, conn_id):
                    break
        except asyncio.CancelledError:
            # stop(): swallow, asyncio 3.11's start_server callback logs cancelled tasks.
            cancelled = True
        except _ClientGone:
            pass
        except Exception:
            log.exception("FaultProxy connection %d failed", conn_id)
        finally:
            self._conn_tasks.discard(task)
            if cancelled:
                writer.transport.abort()
            elif not writer.is_closing():
                writer.close()

    async def _read_request(self, inbox: _Inbox, writer: asyncio.StreamWriter) -> _Request | None:
        head = await inbox.read_head()
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _BadRequest(f"bad request line {lines[0]!r}")
        method, target, version = parts
        if "://" in target:  # absolute-form
            split = urlsplit(target)
            target = (split.path or "/") + (f"?{split.query}" if split.query else "")
        try:
            headers = _parse_headers(lines[1:])
        except ValueError as exc:
            raise _BadRequest(str(exc)) from exc
        req = _Request(method, target, version, headers)
        if (req.header("expect") or "").lower() == "100-continue":
            await _send(writer, b"HTTP/1.1 100 Continue\r\n\r\n")
        if _is_chunked(headers):
            body = bytearray()
            while True:
                try:
                    size = int((await inbox.read_line()).split(b";", 1)[0].strip() or b"x", 16)
                except ValueError as exc:
                    raise _BadRequest("bad chunk size") from exc
                if size == 0:
                    while await inbox.read_line():
                        pass
                    break
                body += await inbox.read_exactly(size)
                if await inbox.read_exactly(2) != b"\r\n":
                    raise _BadRequest("bad chunk terminator")
            req.body = bytes(body)
        elif (length := req.header("content-length")) is not None:
            try:
                n = int(length)
            except ValueError as exc:
                raise _BadRequest("bad Content-Length") from exc
            req.body = await inbox.read_exactly(n)
        return req

    async def _serve(
        self, req: _Request, inbox: _Inbox, writer: asyncio.StreamWriter, conn_id: int
    ) -> bool:
        """Answer one request; return whether the client connection stays usable."""
        rec = self._new_record(conn_id, req)
        fault = self.plan.match(req.method, req.target, req.body)
        if fault is not None:
            self._update(rec, fault=fault.kind)
        state = _State()
        respond = asyncio.create_task(self._respond(req, rec, fault, writer, state))
        watch = asyncio.create_task(inbox.wait_closed())
        try:
            await asyncio.wait({respond, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not respond.done() and not state.proxy_closed:
                self._mark_client_closed(rec)
                respond.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await respond
                return False
            return await respond
        finally:
            for task in (respond, watch):
                task.cancel()
            await asyncio.gather(respond, watch, return_exceptions=True)
            self._update(rec, finished_at=time.monotonic())

    def _rate(self, fault: Fault | None) -> float | None:
        if fault is not None and fault.throttle_bytes_per_s is not None:
            return fault.throttle_bytes_per_s
        return self.plan.throttle_bytes_per_s

    async def _respond(
        self,
        req: _Request,
        rec: RequestRecord,
        fault: Fault | None,
        writer: asyncio.StreamWriter,
        state: _State,
    ) -> bool:
        try:
            return await self._respond_inner(req, rec, fault, writer, state)
        except _ClientGone:
            if not state.proxy_closed:
                self._mark_client_closed(rec)
            return False

    async def _respond_inner(
        self,
        req: _Request,
        rec: RequestRecord,
        fault: Fault | None,
        writer: asyncio.StreamWriter,
        state: _State,
    ) -> bool:
        delay = self.plan.delay_s + (fault.delay_s if fault is not None else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)

        if fault is not None and fault.reset_after_bytes == 0:
            state.proxy_closed = True
            _abort_with_rst(writer)
            return False

        if fault is not None and fault.status_override is not None:
            return await self._send_override(req, rec, fault, writer)

        try:
            ureader, uwriter = await asyncio.wait_for(
                asyncio.open_connection(self._up_host, self._up_port, limit=1 << 20),
                self._connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            self._update(rec, upstream_error=f"connect failed: {exc!r}")
            return await self._send_simple(req, rec, writer, 502, b"upstream unreachable\n")
        try:
            return await self._relay(req, rec, fault, writer, state, ureader, uwriter)
        finally:
            uwriter.transport.abort()

    async def _send_simple(
        self,
        req: _Request,
        rec: RequestRecord,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        extra: Iterable[tuple[str, str]] = (),
    ) -> bool:
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        for name, value in extra:
            headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
            headers.append((name, value))
        headers = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        if not req.keep_alive:
            headers.append(("Connection", "close"))
        payload = b"" if req.method == "HEAD" else body
        self._update(rec, status=status, headers_at=time.monotonic())
        await _send(writer, _head_bytes(f"HTTP/1.1 {status} {_reason(status)}", headers) + payload)
        self._add_bytes(rec, len(payload))
        self._update(rec, completed_at=time.monotonic())
        return req.keep_alive

    async def _send_override(
        self, req: _Request, rec: RequestRecord, fault: Fault, writer: asyncio.StreamWriter
    ) -> bool:
        status = fault.status_override
        assert status is not None
        body = fault.body
        if body is None:
            body = f"{status} {_reason(status)} (injected by FaultProxy)\n".encode()
        return await self._send_simple(req, rec, writer, status, body, fault.headers.items())

    async def _relay(
        self,
        req: _Request,
        rec: RequestRecord,
        fault: Fault | None,
        writer: asyncio.StreamWriter,
        state: _State,
        ureader: asyncio.StreamReader,
        uwriter: asyncio.StreamWriter,
    ) -> bool:
        # ---- forward the request on a fresh upstream connection
        out_headers = [
            (k, v)
            for k, v in req.headers
            if k.lower() not in _HOP_BY_HOP
            and k.lower() not in {"content-length", "expect"}
            and (self._preserve_host or k.lower() != "host")
        ]
        if not self._preserve_host or req.header("host") is None:
            out_headers.insert(0, ("Host", self._up_netloc))
        if req.body or req.header("content-length") is not None or _is_chunked(req.headers):
            out_headers.append(("Content-Length", str(len(req.body))))
        out_headers.append(("Connection", "close"))
        target = self._up_prefix + req.target if req.target.startswith("/") else req.target
        try:
            uwriter.write(_head_bytes(f"{req.method} {target} HTTP/1.1", out_headers) + req.body)
            await uwriter.drain()
            while True:
                head = await ureader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                version, _, rest = lines[0].partition(" ")
                code_text, _, reason = rest.partition(" ")
                status = int(code_text)
                if not version.startswith("HTTP/"):
                    raise ValueError(f"bad status line {lines[0]!r}")
                up_headers = _parse_headers(lines[1:])
                if status >= 200 or status == 101:
                    break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self._update(rec, upstream_error=f"bad upstream response head: {exc!r}")
            return await self._send_simple(req, rec, writer, 502, b"bad upstream response\n")

        # ---- choose framing towards the client
        length_text = _header(up_headers, "content-length")
        if req.method == "HEAD" or status < 200 or status in (204, 304):
            framing = "none"
            body_iter = _iter_nothing()
        elif _is_chunked(up_headers):
            framing = "chunked" if req.version != "HTTP/1.0" else "close"
            body_iter = _iter_chunked(ureader)
        elif length_text is not None:
            framing = "length"
            body_iter = _iter_length(ureader, int(length_text))
        else:
            framing = "close"
            body_iter = _iter_until_close(ureader)
        keep_alive = req.keep_alive and framing != "close"

        client_headers = [(k, v) for k, v in up_headers if k.lower() not in _HOP_BY_HOP]
        if framing != "none":
            client_headers = [(k, v) for k, v in client_headers if k.lower() != "content-length"]
        if framing == "length":
            client_headers.append(("Content-Length", str(int(length_text or 0))))
        elif framing == "chunked":
            client_headers.append(("Transfer-Encoding", "chunked"))
        if not keep_alive:
            client_headers.append(("Connection", "close"))
        reason = reason or _reason(status)
        self._update(rec, status=status, headers_at=time.monotonic())
        await _send(writer, _head_bytes(f"HTTP/1.1 {status} {reason}", client_headers))

        # ---- stream the body, applying throttle / byte-limit faults
        limit = fault._body_limit() if fault is not None else None
        outcome = "complete"
        next_at = 0.0
        try:
            async with contextlib.aclosing(body_iter) as pieces:
                async for piece in pieces:
                    view = memoryview(piece)
                    while view:
                        if limit is not None and rec.bytes_relayed >= limit[0]:
                            outcome = limit[1]
                            break
                        size = len(view)
                        rate = self._rate(fault)
                        if rate:
                            size = min(size, max(1, int(rate / 20)))
                        if limit is not None:
                            size = min(size, limit[0] - rec.bytes_relayed)
                        if rate:
                            now = time.monotonic()
                            if next_at > now:
                                await asyncio.sleep(next_at - now)
                                now = time.monotonic()
                            next_at = max(next_at, now) + size / rate
                        chunk = bytes(view[:size])
                        view = view[size:]
                        if framing == "chunked":
                            chunk = b"%x\r\n%b\r\n" % (size, chunk)
                        await _send(writer, chunk)
                        self._add_bytes(rec, size)
                    if outcome != "complete":
                        break
        except _UpstreamError as exc:
            self._update(rec, upstream_error=str(exc))
            state.proxy_closed = True
            writer.close()
            return False

        if outcome == "complete":
            if framing == "chunked":
                await _send(writer, b"0\r\n\r\n")
            self._update(rec, completed_at=time.monotonic())
            if not keep_alive:
                state.proxy_closed = True
                writer.close()
            return keep_alive

        uwriter.transport.abort()  # upstream is no longer needed in any fault outcome
        if outcome == "stall":
            await asyncio.get_running_loop().create_future()  # until client close / stop()
        if outcome == "truncate":
            state.proxy_closed = True
            writer.close()  # FIN after the already-written bytes are flushed
            return False
        await _flush(writer)
        state.proxy_closed = True
        _abort_with_rst(writer)
        return False
