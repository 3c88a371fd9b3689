"""Sans-IO codec for DICOMweb multipart/related bodies (RFC 2046 5.1, PS3.18 8.6.1.2)."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeAlias

from bridge.errors import DicomwebProtocolError

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "Event",
    "MultipartDecoder",
    "MultipartEncoder",
    "MultipartError",
    "MultipartParser",
    "Part",
    "PartData",
    "PartEnd",
    "PartStart",
    "boundary_from_content_type",
    "encode_multipart",
    "parse_content_type",
]

DEFAULT_MAX_HEADER_BYTES = 64 * 1024

_CRLF = b"\r\n"
# RFC 2046 5.1.1: 1-70 bchars, the last one not a space.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# A boundary made of RFC 2045 token characters may go into the header unquoted.
_TOKEN_RE = re.compile(r"[0-9A-Za-z'+_\-.]+")


class MultipartError(DicomwebProtocolError):
    """A multipart/related body or its Content-Type header is malformed or truncated."""

    # A body cut short by a dropped connection looks like one the server broke: retry.
    transient = True


# --------------------------------------------------------------------------- Content-Type


def parse_content_type(header: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into its lower-cased media type and its parameters.

    Parameter names are lower-cased and stripped; values keep their case, quoted values are
    unquoted (backslash escapes honoured, ``;`` allowed inside the quotes). A parameter
    without ``=`` is dropped. An unterminated quoted value raises MultipartError.
    """
    media_type, _, rest = header.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        if i >= n:
            break
        j = i
        while j < n and rest[j] not in "=;":
            j += 1
        name = rest[i:j].strip().lower()
        if j >= n or rest[j] == ";":
            i = j
            continue
        j += 1
        while j < n and rest[j] in " \t":
            j += 1
        if j < n and rest[j] == '"':
            value, j = _read_quoted(rest, j + 1, header)
            # Anything between the closing quote and the next ';' is not part of the value.
            semicolon = rest.find(";", j)
            j = n if semicolon < 0 else semicolon
        else:
            semicolon = rest.find(";", j)
            end = n if semicolon < 0 else semicolon
            value = rest[j:end].strip()
            j = end
        if name:
            params[name] = value
        i = j
    return media_type.strip().lower(), params


def _read_quoted(text: str, start: int, header: str) -> tuple[str, int]:
    """The unescaped quoted-string starting after its opening quote, and the index past it."""
    chars: list[str] = []
    i, n = start, len(text)
    while i < n:
        char = text[i]
        if char == "\\" and i + 1 < n:
            chars.append(text[i + 1])
            i += 2
        elif char == '"':
            return "".join(chars), i + 1
        else:
            chars.append(char)
            i += 1
    raise MultipartError(f"unterminated quoted parameter in Content-Type {header!r}")


def boundary_from_content_type(header: str) -> str:
    """The boundary of a ``multipart/related`` Content-Type; MultipartError otherwise."""
    media_type, params = parse_content_type(header)
    if media_type != "multipart/related":
        raise MultipartError(
            f"expected a multipart/related answer, got {media_type or 'no content type'}"
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise MultipartError("multipart/related Content-Type has no boundary parameter")
    _check_parse_boundary(boundary)
    return boundary


def _check_parse_boundary(boundary: str) -> bytes:
    # Deliberately laxer than RFC 2046 (servers exceed 70 characters or use other
    # punctuation), but CR/LF must be excluded: the scanner relies on CR appearing only as
    # the first byte of the delimiter.
    if not boundary:
        raise MultipartError("empty multipart boundary")
    try:
        encoded = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MultipartError(f"non-ASCII multipart boundary {boundary!r}") from None
    if b"\r" in encoded or b"\n" in encoded:
        raise MultipartError(f"multipart boundary {boundary!r} contains CR or LF")
    return encoded


# --------------------------------------------------------------------------- events / parts


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part's header block is complete; names are lower-cased, values stripped."""

    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    """A piece of the current part's body; never empty."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part's body is complete (its closing delimiter was seen)."""


Event: TypeAlias = PartStart | PartData | PartEnd


@dataclass(frozen=True, slots=True)
class Part:
    """One whole body part."""

    headers: dict[str, str]
    content: bytes

    @property
    def content_type(self) -> str | None:
        """The part's Content-Type header value as sent, or None when it has none."""
        return self.headers.get("content-type")


# --------------------------------------------------------------------------- parser


class _State(enum.Enum):
    START = enum.auto()  # nothing consumed yet: the first boundary may lack its CRLF
    PREAMBLE = enum.auto()
    AFTER_DELIMITER = enum.auto()  # just past "--boundary": "--" closes, else padding+CRLF
    PADDING = enum.auto()
    HEADERS = enum.auto()
    BODY = enum.auto()
    EPILOGUE = enum.auto()


_Buffer: TypeAlias = bytes | bytearray


def _take(buf: _Buffer, start: int, end: int) -> bytes:
    if isinstance(buf, bytes):
        # A full-length slice of bytes is the object itself: whole chunks are not copied.
        return buf[start:end]
    with memoryview(buf) as view:
        return view[start:end].tobytes()


class MultipartParser:
    """Incremental multipart/related parser producing PartStart / PartData / PartEnd events.

    ``feed`` returns the events a chunk completes; ``close`` raises MultipartError unless the
    close delimiter was seen. Part bodies are passed on as they arrive: apart from a part's
    header block, at most ``len("\\r\\n--" + boundary) - 1`` bytes are held back (a possible
    partial delimiter at the end of a chunk). A delimiter followed by anything other than
    ``--``, transport padding or CRLF is an error, since RFC 2046 forbids the delimiter
    inside a part. Once an error was raised, the parser refuses further input.
    """

    def __init__(
        self,
        boundary: str,
        max_part_bytes: int | None = None,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        encoded = _check_parse_boundary(boundary)
        self.boundary = boundary
        self.max_part_bytes = max_part_bytes
        self.max_header_bytes = max_header_bytes
        self._dash_boundary = b"--" + encoded
        self._delimiter = _CRLF + self._dash_boundary
        self._state = _State.START
        self._buf = bytearray()
        self._part_bytes = 0
        self._header_scanned = 0
        self._failed = False
        self._closed = False

    @property
    def done(self) -> bool:
        """True once the close delimiter has been seen."""
        return self._state is _State.EPILOGUE

    @property
    def buffered(self) -> int:
        """How many received bytes are held back waiting for more input."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Consume one chunk; the events it completes, in order."""
        self._check_usable()
        if self._state is _State.EPILOGUE:
            return []
        buf: _Buffer
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            # Scanning the caller's chunk in place lets body data leave without a copy.
            buf = data if isinstance(data, bytes) else bytes(data)
        events: list[Event] = []
        try:
            pos = self._run(buf, events)
        except MultipartError:
            self._failed = True
            self._buf = bytearray()
            raise
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < len(buf):
            with memoryview(buf) as view:
                self._buf = bytearray(view[pos:])
        return events

    def close(self) -> list[Event]:
        """Signal the end of the body; MultipartError if it was truncated. Idempotent."""
        if self._failed:
            raise MultipartError("multipart parser already failed")
        self._closed = True
        self._buf = bytearray()
        if self._state is _State.EPILOGUE:
            return []
        self._failed = True
        if self._state in (_State.START, _State.PREAMBLE):
            raise MultipartError(f"multipart body has no boundary {self.boundary!r}")
        if self._state is _State.HEADERS:
            raise MultipartError("multipart body truncated inside a part's headers")
        if self._state is _State.BODY:
            raise MultipartError("multipart body truncated inside a part (no close delimiter)")
        raise MultipartError("multipart body truncated after a boundary (no close delimiter)")

    def _check_usable(self) -> None:
        if self._failed:
            raise MultipartError("multipart parser already failed")
        if self._closed:
            raise MultipartError("multipart parser already closed")

    def _run(self, buf: _Buffer, events: list[Event]) -> int:
        """Advance through `buf` as far as it allows; the number of bytes consumed."""
        pos = 0
        while True:
            state = self._state
            if state is _State.BODY or state is _State.PREAMBLE:
                pos, more = self._scan(buf, pos, events)
            elif state is _State.HEADERS:
                pos, more = self._headers(buf, pos, events)
            elif state is _State.AFTER_DELIMITER:
                pos, more = self._after_delimiter(buf, pos)
            elif state is _State.PADDING:
                pos, more = self._padding(buf, pos)
            elif state is _State.START:
                pos, more = self._start(buf, pos)
            else:
                return len(buf)
            if not more:
                return pos

    def _start(self, buf: _Buffer, pos: int) -> tuple[int, bool]:
        dash = self._dash_boundary
        available = len(buf) - pos
        seen = min(available, len(dash))
        if buf[pos : pos + seen] != dash[:seen]:
            self._state = _State.PREAMBLE
            return pos, True
        if available < len(dash):
            return pos, False
        self._state = _State.AFTER_DELIMITER
        return pos + len(dash), True

    def _scan(self, buf: _Buffer, pos: int, events: list[Event]) -> tuple[int, bool]:
        in_body = self._state is _State.BODY
        delimiter = self._delimiter
        found = buf.find(delimiter, pos)
        if found >= 0:
            if in_body:
                self._emit(buf, pos, found, events)
                events.append(PartEnd())
            self._state = _State.AFTER_DELIMITER
            return found + len(delimiter), True
        # Hold back only a suffix that could still grow into the delimiter. CR occurs in
        # the delimiter only as its first byte, so the last CR in the window is the only
        # candidate start.
        end = len(buf)
        cut = end
        cr = buf.rfind(b"\r", max(pos, end - len(delimiter) + 1), end)
        if cr >= 0 and delimiter.startswith(buf[cr:end]):
            cut = cr
        if in_body:
            self._emit(buf, pos, cut, events)
        return cut, False

    def _emit(self, buf: _Buffer, start: int, end: int, events: list[Event]) -> None:
        if end <= start:
            return
        self._part_bytes += end - start
        if self.max_part_bytes is not None and self._part_bytes > self.max_part_bytes:
            raise MultipartError(f"multipart part exceeds {self.max_part_bytes} bytes")
        events.append(PartData(_take(buf, start, end)))

    def _after_delimiter(self, buf: _Buffer, pos: int) -> tuple[int, bool]:
        if pos >= len(buf):
            return pos, False
        if buf[pos] != 0x2D:  # '-'
            self._state = _State.PADDING
            return pos, True
        if pos + 1 >= len(buf):
            return pos, False
        if buf[pos + 1] != 0x2D:
            raise MultipartError("malformed multipart boundary line")
        self._state = _State.EPILOGUE
        return len(buf), False

    def _padding(self, buf: _Buffer, pos: int) -> tuple[int, bool]:
        end = len(buf)
        while pos < end and buf[pos] in (0x20, 0x09):
            pos += 1
        if pos >= end:
            return pos, False
        if buf[pos] != 0x0D:
            raise MultipartError("unexpected bytes after a multipart boundary")
        if pos + 1 >= end:
            return pos, False
        if buf[pos + 1] != 0x0A:
            raise MultipartError("unexpected bytes after a multipart boundary")
        self._state = _State.HEADERS
        self._header_scanned = 0
        return pos + 2, True

    def _headers(self, buf: _Buffer, pos: int, events: list[Event]) -> tuple[int, bool]:
        if len(buf) - pos < 2:
            return pos, False
        if buf.startswith(_CRLF, pos):
            headers: dict[str, str] = {}
            body_start = pos + 2
        else:
            # Resume where the previous chunk's search stopped, less a possible partial match,
            # so a header block arriving byte by byte is not re-scanned from its start.
            found = buf.find(b"\r\n\r\n", pos + max(0, self._header_scanned - 3))
            scanned = (len(buf) if found < 0 else found) - pos
            if scanned > self.max_header_bytes:
                raise MultipartError(f"multipart part headers exceed {self.max_header_bytes} bytes")
            if found < 0:
                self._header_scanned = scanned
                return pos, False
            headers = _parse_headers(buf[pos:found])
            body_start = found + 4
        events.append(PartStart(headers))
        self._state = _State.BODY
        self._part_bytes = 0
        return body_start, True


def _parse_headers(block: _Buffer) -> dict[str, str]:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        # Latin-1 maps every byte, so an odd server cannot make the headers unreadable.
        text = block.decode("latin-1")
    headers: dict[str, str] = {}
    for line in text.split("\r\n"):
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise MultipartError(f"malformed multipart part header line {line!r}")
        value = value.strip()
        # RFC 9110 5.3: repeated fields are equivalent to one comma-separated field.
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


# --------------------------------------------------------------------------- decoder


class MultipartDecoder:
    """Whole-part convenience over MultipartParser: ``feed`` returns the parts it completes."""

    def __init__(self, boundary: str, max_part_bytes: int | None = None) -> None:
        self._parser = MultipartParser(boundary, max_part_bytes)
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []

    @property
    def done(self) -> bool:
        """True once the close delimiter has been seen."""
        return self._parser.done

    def feed(self, data: bytes) -> list[Part]:
        """Consume one chunk; the parts it completes, in order."""
        return self._assemble(self._parser.feed(data))

    def close(self) -> list[Part]:
        """Signal the end of the body; MultipartError if it was truncated."""
        return self._assemble(self._parser.close())

    def _assemble(self, events: list[Event]) -> list[Part]:
        parts: list[Part] = []
        for event in events:
            if isinstance(event, PartData):
                self._chunks.append(event.data)
            elif isinstance(event, PartStart):
                self._headers = event.headers
                self._chunks = []
            else:
                # join() of a single bytes object returns it as is, so a part that arrived
                # in one chunk is not copied at all.
                parts.append(Part(self._headers, b"".join(self._chunks)))
                self._chunks = []
        return parts


# --------------------------------------------------------------------------- encoder


class MultipartEncoder:
    """Sans-IO multipart/related framing: the bytes that go around each part's body.

    ``content_type`` is the message's Content-Type header value; ``part(content_type)``
    returns the delimiter and header block that go before a part's body, ``close()`` the
    close delimiter. Bodies are not passed through the encoder, so they can stream from
    anywhere (STOW-RS sends a Part 10 file in chunks); ``check_body`` refuses a body
    holding the delimiter, for callers that have it in memory. The boundary defaults to
    a random uuid4 hex string, which no DICOM body holds by chance. ValueError for an
    invalid boundary or a content type containing CR/LF.
    """

    def __init__(self, boundary: str | None = None, *, root_type: str = "application/dicom"):
        if boundary is None:
            boundary = uuid.uuid4().hex
        elif not _BOUNDARY_RE.fullmatch(boundary):
            raise ValueError(f"invalid multipart boundary {boundary!r} (RFC 2046 5.1.1)")
        _check_header_value(root_type)
        self.boundary = boundary
        shown = boundary if _TOKEN_RE.fullmatch(boundary) else f'"{boundary}"'
        self.content_type = f'multipart/related; type="{root_type}"; boundary={shown}'
        self._dash_boundary = b"--" + boundary.encode("ascii")
        self._delimiter = _CRLF + self._dash_boundary
        # The first part's delimiter has no CRLF before it (no preamble).
        self._lead = self._dash_boundary
        self._closed = False

    def part(self, content_type: str) -> bytes:
        """The delimiter and header block before the next part's body."""
        if self._closed:
            raise ValueError("multipart message already closed")
        _check_header_value(content_type)
        head = b"%s\r\nContent-Type: %s\r\n\r\n" % (self._lead, content_type.encode("ascii"))
        self._lead = self._delimiter
        return head

    def check_body(self, body: bytes) -> None:
        """ValueError when `body` holds the delimiter (it would end its part early)."""
        # Also catches a body that starts with the delimiter minus its CRLF: it would follow
        # the part's header block, whose blank line supplies the CRLF.
        if self._delimiter in body or body.startswith(self._dash_boundary):
            raise ValueError("multipart part body contains the boundary delimiter")

    def close(self) -> bytes:
        """The close delimiter: the end of the message."""
        self._closed = True
        return self._lead + b"--\r\n"


def encode_multipart(
    parts: Iterable[tuple[str, bytes]],
    boundary: str | None = None,
    *,
    root_type: str = "application/dicom",
) -> tuple[str, Iterator[bytes]]:
    """The Content-Type header value and the body chunks of a multipart/related message.

    Each part is ``(content_type, body)``. Bodies are yielded as given, never concatenated,
    and `parts` is only iterated as the chunks are consumed. The boundary defaults to a
    random uuid4 hex string. ValueError for an invalid boundary, a content type
    containing CR/LF, or (while iterating) a body containing the delimiter.
    """
    encoder = MultipartEncoder(boundary, root_type=root_type)
    return encoder.content_type, _encode_body(parts, encoder)


def _encode_body(parts: Iterable[tuple[str, bytes]], encoder: MultipartEncoder) -> Iterator[bytes]:
    for content_type, body in parts:
        head = encoder.part(content_type)
        encoder.check_body(body)
        yield head
        if body:
            yield body
    yield encoder.close()


def _check_header_value(value: str) -> None:
    if "\r" in value or "\n" in value or not value.isascii():
        raise ValueError(f"invalid multipart header value {value!r}")
