"""Unit tests for the sans-IO multipart/related codec (bridge.dicomweb.multipart)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest

from bridge.dicomweb.multipart import (
    Event,
    MultipartDecoder,
    MultipartError,
    MultipartParser,
    Part,
    PartData,
    PartEnd,
    PartStart,
    boundary_from_content_type,
    encode_multipart,
    parse_content_type,
)
from bridge.errors import DicomwebProtocolError

B = "b0und4ry"
DELIM = b"\r\n--" + B.encode()

# Boundary look-alikes a naive scanner would stop at: every proper prefix of the delimiter,
# the dash-boundary without its CRLF, "--" runs, a lone CR and LF, and a trailing CR.
TRICKY = (
    b"--\r\n--\r\n-\r\n--b0und4r\r\n--b0und4r\r\r\n--b0und\n--b0und4ry"
    b" x--b0und4ry--\r\n\r\n\r\n\r-\r--\r\n-" + b"\x00\xff" * 8 + b"\r\n--b0und4r\r"
)

PREAMBLE = b"This is a preamble; --b0und4ry here is not at a line start.\r\n"
PART1 = (
    b"--b0und4ry \t\r\n"
    b"Content-Type: application/dicom\r\n"
    b"Content-Location:  http://pacs/studies/1.2/series/3.4/instances/5.6 \r\n"
    b"\r\n"
    b"first\r\n"
)
PART2 = (
    b"\r\n--b0und4ry\r\n"
    b"content-type:application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n"
    b"X-Repeated: a\r\n"
    b"x-repeated: b\r\n"
    b"\r\n" + TRICKY
)
PART3 = b"\r\n--b0und4ry\r\n\r\n"  # no headers, empty body
CLOSE = b"\r\n--b0und4ry--"
EPILOGUE = b"\r\nepilogue\r\n--b0und4ry\r\nnot a part\r\n--b0und4ry--\r\n"
RAW = PREAMBLE + PART1 + PART2 + PART3 + CLOSE + EPILOGUE

EXPECTED = [
    Part(
        {
            "content-type": "application/dicom",
            "content-location": "http://pacs/studies/1.2/series/3.4/instances/5.6",
        },
        b"first\r\n",
    ),
    Part(
        {
            "content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
            "x-repeated": "a, b",
        },
        TRICKY,
    ),
    Part({}, b""),
]

# Offsets in RAW at which each part becomes complete: the end of the delimiter after it.
_P1_END = len(PREAMBLE + PART1) + len(DELIM)
_P2_END = len(PREAMBLE + PART1 + PART2) + len(DELIM)
_P3_END = len(PREAMBLE + PART1 + PART2 + PART3) + len(DELIM)
COMPLETIONS = [_P1_END, _P2_END, _P3_END]
CLOSE_END = len(PREAMBLE + PART1 + PART2 + PART3 + CLOSE)


def decode_chunks(chunks: list[bytes], boundary: str = B) -> list[Part]:
    decoder = MultipartDecoder(boundary)
    parts: list[Part] = []
    for chunk in chunks:
        parts += decoder.feed(chunk)
    parts += decoder.close()
    return parts


def parse_chunks(chunks: list[bytes], boundary: str = B) -> list[Event]:
    parser = MultipartParser(boundary)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.close()
    return events


def coalesce(events: list[Event]) -> list[Event]:
    """Merge adjacent PartData events, which depend on how the input was chunked."""
    merged: list[Event] = []
    for event in events:
        if isinstance(event, PartData) and merged and isinstance(merged[-1], PartData):
            merged[-1] = PartData(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def test_sanity_of_the_fixture() -> None:
    assert TRICKY.count(DELIM) == 0
    assert RAW[_P1_END - len(DELIM) : _P1_END] == DELIM
    assert RAW[CLOSE_END - 2 : CLOSE_END] == b"--"


# --------------------------------------------------------------------------- decoding


def test_decode_in_one_chunk() -> None:
    assert decode_chunks([RAW]) == EXPECTED


def test_decode_split_at_every_offset() -> None:
    for cut in range(len(RAW) + 1):
        assert decode_chunks([RAW[:cut], RAW[cut:]]) == EXPECTED, cut


def test_decode_byte_by_byte() -> None:
    assert decode_chunks([RAW[i : i + 1] for i in range(len(RAW))]) == EXPECTED


def test_decode_random_chunkings() -> None:
    rng = random.Random(20240501)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(RAW)), rng.randint(2, 12)))
        chunks = [RAW[a:b] for a, b in zip([0, *cuts], [*cuts, len(RAW)], strict=True)]
        assert decode_chunks(chunks) == EXPECTED, cuts


def test_parts_are_returned_as_soon_as_their_delimiter_is_complete() -> None:
    for cut in range(len(RAW) + 1):
        decoder = MultipartDecoder(B)
        first = decoder.feed(RAW[:cut])
        assert first == EXPECTED[: sum(end <= cut for end in COMPLETIONS)], cut
        assert first + decoder.feed(RAW[cut:]) + decoder.close() == EXPECTED


def test_truncated_body_raises_on_close_at_every_offset() -> None:
    for cut in range(CLOSE_END):
        decoder = MultipartDecoder(B)
        decoder.feed(RAW[:cut])
        assert not decoder.done
        with pytest.raises(MultipartError):
            decoder.close()


def test_truncated_body_raises_when_fed_byte_by_byte() -> None:
    body = RAW[: CLOSE_END - 1]
    decoder = MultipartDecoder(B)
    parts = [part for i in range(len(body)) for part in decoder.feed(body[i : i + 1])]
    assert parts == EXPECTED
    with pytest.raises(MultipartError, match="truncated after a boundary"):
        decoder.close()


def test_close_delimiter_without_trailing_crlf_or_epilogue() -> None:
    decoder = MultipartDecoder(B)
    assert decoder.feed(RAW[:CLOSE_END]) == EXPECTED
    assert decoder.done
    assert decoder.close() == []
    assert decoder.close() == []  # idempotent once complete


def test_truncation_messages() -> None:
    cases = {
        b"": "no boundary",
        PREAMBLE: "no boundary",
        b"--b0und4ry\r\nContent-Type: a": "inside a part's headers",
        b"--b0und4ry\r\n\r\nbody": "inside a part",
        b"--b0und4ry\r\n\r\nbody\r\n--b0und4ry": "after a boundary",
    }
    for body, message in cases.items():
        decoder = MultipartDecoder(B)
        decoder.feed(body)
        with pytest.raises(MultipartError, match=message):
            decoder.close()


def test_errors_are_protocol_errors_and_parser_stays_failed() -> None:
    assert issubclass(MultipartError, DicomwebProtocolError)
    decoder = MultipartDecoder(B)
    decoder.feed(b"--b0und4ry\r\n")
    with pytest.raises(MultipartError):
        decoder.close()
    with pytest.raises(MultipartError, match="already failed"):
        decoder.feed(b"\r\n")


def test_first_boundary_without_preamble_or_crlf() -> None:
    body = b"--b0und4ry\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--b0und4ry--"
    assert decode_chunks([body]) == [Part({"content-type": "application/dicom"}, b"DICM")]


def test_preamble_that_looks_like_the_boundary_start() -> None:
    body = b"--b0und4\r\n--b0und4rX\r\n-\r\n--b0und4ry\r\n\r\nx\r\n--b0und4ry--"
    for cut in range(len(body) + 1):
        assert decode_chunks([body[:cut], body[cut:]]) == [Part({}, b"x")], cut


def test_preamble_beginning_with_crlf() -> None:
    body = b"\r\n--b0und4ry\r\n\r\nx\r\n--b0und4ry--\r\n"
    assert decode_chunks([body]) == [Part({}, b"x")]


def test_epilogue_is_ignored_even_when_fed_after_completion() -> None:
    decoder = MultipartDecoder(B)
    assert decoder.feed(RAW[:CLOSE_END]) == EXPECTED
    assert decoder.feed(b"\r\n--b0und4ry\r\n\r\nghost\r\n--b0und4ry--") == []
    assert decoder.feed(b"garbage without CRLF") == []
    assert decoder.close() == []


def test_zero_parts() -> None:
    assert decode_chunks([b"--b0und4ry--\r\n"]) == []


def test_delimiter_followed_by_other_bytes_is_an_error() -> None:
    body = b"--b0und4ry\r\n\r\nabc\r\n--b0und4ryX\r\n--b0und4ry--"
    decoder = MultipartDecoder(B)
    with pytest.raises(MultipartError, match="after a multipart boundary"):
        decoder.feed(body)
    with pytest.raises(MultipartError, match="malformed multipart boundary line"):
        MultipartDecoder(B).feed(b"--b0und4ry-x")
    with pytest.raises(MultipartError, match="after a multipart boundary"):
        MultipartDecoder(B).feed(b"--b0und4ry  \rx")


def test_malformed_header_line() -> None:
    with pytest.raises(MultipartError, match="malformed multipart part header line"):
        MultipartDecoder(B).feed(b"--b0und4ry\r\nno colon here\r\n\r\n")
    with pytest.raises(MultipartError, match="malformed multipart part header line"):
        MultipartDecoder(B).feed(b"--b0und4ry\r\n: no name\r\n\r\n")


def test_header_values_utf8_and_latin1() -> None:
    utf8 = "caf\u00e9".encode()
    latin1 = "caf\u00e9".encode("latin-1")
    for raw in (utf8, latin1):
        body = b"--b0und4ry\r\nX-Name: " + raw + b"\r\n\r\n\r\n--b0und4ry--"
        assert decode_chunks([body]) == [Part({"x-name": "caf\u00e9"}, b"")]


def test_max_part_bytes() -> None:
    body = b"--b0und4ry\r\n\r\n" + b"x" * 100 + b"\r\n--b0und4ry\r\n\r\nyy\r\n--b0und4ry--"
    decoder = MultipartDecoder(B, max_part_bytes=100)
    assert decoder.feed(body) == [Part({}, b"x" * 100), Part({}, b"yy")]
    assert decoder.close() == []

    decoder = MultipartDecoder(B, max_part_bytes=99)
    with pytest.raises(MultipartError, match="exceeds 99 bytes"):
        decoder.feed(body)

    # Raised while the oversized part is still arriving, not only at its end.
    decoder = MultipartDecoder(B, max_part_bytes=99)
    decoder.feed(body[:60])
    with pytest.raises(MultipartError, match="exceeds 99 bytes"):
        decoder.feed(body[60:120])


def test_max_header_bytes() -> None:
    parser = MultipartParser(B, max_header_bytes=64)
    parser.feed(b"--b0und4ry\r\nX-A: " + b"a" * 40)
    with pytest.raises(MultipartError, match="headers exceed 64 bytes"):
        parser.feed(b"a" * 40)
    ok = MultipartParser(B, max_header_bytes=64)
    header = b"X-A: " + b"a" * 59
    assert ok.feed(b"--b0und4ry\r\n" + header + b"\r\n\r\n")[0] == PartStart({"x-a": "a" * 59})


def test_invalid_boundaries_for_parsing() -> None:
    for boundary in ("", "a\r\nb", "caf\u00e9"):
        with pytest.raises(MultipartError):
            MultipartDecoder(boundary)


def test_part_content_type_property() -> None:
    assert EXPECTED[0].content_type == "application/dicom"
    assert EXPECTED[1].content_type == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert EXPECTED[2].content_type is None


# --------------------------------------------------------------------------- event API


EXPECTED_EVENTS: list[Event] = [
    PartStart(EXPECTED[0].headers),
    PartData(b"first\r\n"),
    PartEnd(),
    PartStart(EXPECTED[1].headers),
    PartData(TRICKY),
    PartEnd(),
    PartStart({}),
    PartEnd(),
]


def test_event_sequence_in_one_chunk() -> None:
    assert parse_chunks([RAW]) == EXPECTED_EVENTS


def test_event_sequence_byte_by_byte() -> None:
    events = parse_chunks([RAW[i : i + 1] for i in range(len(RAW))])
    assert all(not isinstance(e, PartData) or e.data for e in events)
    assert coalesce(events) == EXPECTED_EVENTS


def test_event_sequence_split_at_every_offset() -> None:
    for cut in range(len(RAW) + 1):
        events = parse_chunks([RAW[:cut], RAW[cut:]])
        assert all(not isinstance(e, PartData) or e.data for e in events), cut
        assert coalesce(events) == EXPECTED_EVENTS, cut


def test_event_api_streams_and_holds_back_only_a_partial_delimiter() -> None:
    parser = MultipartParser(B)
    assert parser.feed(b"--b0und4ry\r\n\r\n") == [PartStart({})]
    assert parser.feed(b"abc") == [PartData(b"abc")]
    assert parser.buffered == 0
    assert parser.feed(b"def\r\n--b0un") == [PartData(b"def")]
    assert parser.buffered == len(b"\r\n--b0un")
    assert parser.feed(b"X") == [PartData(b"\r\n--b0unX")]
    assert parser.buffered == 0
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\r") == [PartData(b"\r")]
    assert parser.feed(b"\n--b0und4ry--") == [PartEnd()]
    assert parser.done
    assert parser.close() == []


def test_whole_chunks_are_passed_on_without_copying() -> None:
    parser = MultipartParser(B)
    parser.feed(b"--b0und4ry\r\n\r\n")
    chunk = bytes(range(256)) * 256
    (event,) = parser.feed(chunk)
    assert isinstance(event, PartData)
    assert event.data is chunk


# --------------------------------------------------------------------------- large bodies


def test_large_part_in_64k_chunks() -> None:
    content = random.Random(5).randbytes(5 * 1024 * 1024)
    content_type, chunks = encode_multipart([("application/dicom", content)], B)
    body = b"".join(chunks)
    decoder = MultipartDecoder(boundary_from_content_type(content_type))
    parts: list[Part] = []
    step = 64 * 1024
    for offset in range(0, len(body), step):
        parts += decoder.feed(body[offset : offset + step])
    parts += decoder.close()
    assert len(parts) == 1
    assert parts[0].headers == {"content-type": "application/dicom"}
    assert parts[0].content == content


def test_many_half_megabyte_parts_with_bounded_buffering() -> None:
    rng = random.Random(7)
    contents = [rng.randbytes(512 * 1024 + i) for i in range(12)]
    _, chunks = encode_multipart(("application/dicom", c) for c in contents)
    body = b"".join(chunks)
    boundary = re.search(rb"--([0-9a-f]{32})\r\n", body)
    assert boundary is not None
    parser = MultipartParser(boundary.group(1).decode())
    events: list[Event] = []
    step = 64 * 1024
    for offset in range(0, len(body), step):
        events += parser.feed(body[offset : offset + step])
        if not isinstance(events[-1], PartEnd):
            assert parser.buffered < len(b"\r\n--") + 32
    events += parser.close()
    bodies: list[bytes] = []
    for event in events:
        if isinstance(event, PartStart):
            bodies.append(b"")
        elif isinstance(event, PartData):
            bodies[-1] += event.data
    assert bodies == contents


# --------------------------------------------------------------------------- encoding


def test_encode_exact_bytes() -> None:
    header, chunks = encode_multipart(
        [("application/dicom", b"one"), ("application/dicom+json", b"")], "abc"
    )
    assert header == 'multipart/related; type="application/dicom"; boundary=abc'
    assert b"".join(chunks) == (
        b"--abc\r\nContent-Type: application/dicom\r\n\r\none"
        b"\r\n--abc\r\nContent-Type: application/dicom+json\r\n\r\n"
        b"\r\n--abc--\r\n"
    )


def test_encode_streams_bodies_without_concatenating() -> None:
    bodies = [b"A" * 1000, b"B" * 2000]
    _, chunks = encode_multipart(("application/dicom", b) for b in bodies)
    produced = list(chunks)
    assert any(chunk is bodies[0] for chunk in produced)
    assert any(chunk is bodies[1] for chunk in produced)


def test_encode_consumes_parts_lazily() -> None:
    consumed: list[int] = []

    def parts() -> Iterator[tuple[str, bytes]]:
        for i in range(3):
            consumed.append(i)
            yield ("application/dicom", b"x")

    _, chunks = encode_multipart(parts())
    assert consumed == []
    next(chunks)
    assert consumed == [0]


def test_encode_random_boundary() -> None:
    header1, _ = encode_multipart([])
    header2, _ = encode_multipart([])
    boundary1 = boundary_from_content_type(header1)
    assert re.fullmatch(r"[0-9a-f]{32}", boundary1)
    assert boundary1 != boundary_from_content_type(header2)
    assert header1 == f'multipart/related; type="application/dicom"; boundary={boundary1}'


def test_encode_quotes_boundary_with_specials_and_root_type() -> None:
    header, chunks = encode_multipart(
        [("application/dicom+json", b"[]")], "a b:c=d", root_type="application/dicom+json"
    )
    assert header == 'multipart/related; type="application/dicom+json"; boundary="a b:c=d"'
    assert boundary_from_content_type(header) == "a b:c=d"
    assert decode_chunks(list(chunks), "a b:c=d") == [
        Part({"content-type": "application/dicom+json"}, b"[]")
    ]


def test_encode_rejects_bad_input() -> None:
    for boundary in ("", "a" * 71, "ends with space ", 'quo"te', "caf\u00e9", "a\r\nb"):
        with pytest.raises(ValueError):
            encode_multipart([], boundary)
    with pytest.raises(ValueError, match="contains the boundary delimiter"):
        list(encode_multipart([("application/dicom", b"x\r\n--abc\r\n")], "abc")[1])
    with pytest.raises(ValueError, match="contains the boundary delimiter"):
        list(encode_multipart([("application/dicom", b"--abc--")], "abc")[1])
    with pytest.raises(ValueError, match="invalid multipart header value"):
        list(encode_multipart([("application/dicom\r\nX-Evil: 1", b"x")], "abc")[1])


def test_round_trip() -> None:
    rng = random.Random(11)
    parts = [
        ("application/dicom", b"DICM" + rng.randbytes(3000)),
        ("application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50", b""),
        ("application/octet-stream", TRICKY),
        ("application/dicom", b"\r\n"),
    ]
    header, chunks = encode_multipart(parts)
    body = b"".join(chunks)
    expected = [Part({"content-type": ct}, content) for ct, content in parts]
    boundary = boundary_from_content_type(header)
    assert decode_chunks([body], boundary) == expected
    assert decode_chunks([body[i : i + 7] for i in range(0, len(body), 7)], boundary) == expected


# --------------------------------------------------------------------------- Content-Type


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'multipart/related; type="application/dicom"; boundary="abc"',
            ("multipart/related", {"type": "application/dicom", "boundary": "abc"}),
        ),
        (
            "Multipart/Related;Type=application/dicom;BOUNDARY=abc",
            ("multipart/related", {"type": "application/dicom", "boundary": "abc"}),
        ),
        (
            ' multipart/related ;\tBoundary = abc ; type = "application/dicom" ',
            ("multipart/related", {"boundary": "abc", "type": "application/dicom"}),
        ),
        (
            'multipart/related; boundary="a;b=c"; type="x\\"y"',
            ("multipart/related", {"boundary": "a;b=c", "type": 'x"y'}),
        ),
        (
            'multipart/related; boundary="abc" junk; x=1',
            ("multipart/related", {"boundary": "abc", "x": "1"}),
        ),
        ("application/dicom+json", ("application/dicom+json", {})),
        ("application/dicom;;charset=utf-8;novalue", ("application/dicom", {"charset": "utf-8"})),
        ("", ("", {})),
    ],
)
def test_parse_content_type(header: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(header) == expected


def test_parse_content_type_unterminated_quote() -> None:
    with pytest.raises(MultipartError, match="unterminated"):
        parse_content_type('multipart/related; boundary="abc')


@pytest.mark.parametrize(
    "header",
    [
        'multipart/related; type="application/dicom"; boundary="b0und4ry"',
        "multipart/related; type=application/dicom; boundary=b0und4ry",
        "MULTIPART/RELATED;BOUNDARY=b0und4ry",
        'multipart/related; boundary = "b0und4ry" ; type="application/dicom"',
    ],
)
def test_boundary_from_content_type(header: str) -> None:
    assert boundary_from_content_type(header) == "b0und4ry"
    assert decode_chunks([RAW], boundary_from_content_type(header)) == EXPECTED


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("application/dicom; boundary=abc", "expected a multipart/related answer"),
        ("multipart/mixed; boundary=abc", "expected a multipart/related answer"),
        ("", "no content type"),
        ('multipart/related; type="application/dicom"', "no boundary parameter"),
        ('multipart/related; boundary=""', "no boundary parameter"),
    ],
)
def test_boundary_from_content_type_errors(header: str, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        boundary_from_content_type(header)
