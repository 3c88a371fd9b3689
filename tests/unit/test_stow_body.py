"""STOW-RS bodies are framed by the one multipart encoder, in memory or streamed from disk."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.dicomweb import stow
from bridge.dicomweb.multipart import (
    MultipartDecoder,
    MultipartEncoder,
    boundary_from_content_type,
    encode_multipart,
)


async def _collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


def body_of(path: Path, encoder: MultipartEncoder) -> tuple[bytes, int]:
    """The whole STOW-RS body for `path` and the number of chunks it came in."""
    body = stow.part10_body(path, encoder)
    if isinstance(body, bytes):
        return body, 1
    chunks = asyncio.run(_collect(body))
    return b"".join(chunks), len(chunks)


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_stow_body_is_the_encoders_framing_around_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    content = random.Random(3).randbytes(700 * 1024)
    path = tmp_path / "instance.dcm"
    path.write_bytes(content)
    if streamed:
        monkeypatch.setattr(stow, "IN_MEMORY_LIMIT", 1024)
    encoder = MultipartEncoder("b0und4ry")
    body, chunks = body_of(path, encoder)
    # The same bytes encode_multipart frames the same part with.
    _, expected = encode_multipart([("application/dicom", content)], "b0und4ry")
    assert body == b"".join(expected)
    assert (chunks > 1) is streamed  # streamed in chunks, never whole in memory
    assert encoder.content_type == 'multipart/related; type="application/dicom"; boundary=b0und4ry'
    decoder = MultipartDecoder(boundary_from_content_type(encoder.content_type))
    parts = decoder.feed(body) + decoder.close()
    assert [(p.content_type, p.content) for p in parts] == [("application/dicom", content)]


def test_encoder_frames_parts_then_closes_once() -> None:
    encoder = MultipartEncoder("abc")
    assert encoder.part("application/dicom") == b"--abc\r\nContent-Type: application/dicom\r\n\r\n"
    assert encoder.part("application/json") == (
        b"\r\n--abc\r\nContent-Type: application/json\r\n\r\n"
    )
    assert encoder.close() == b"\r\n--abc--\r\n"
    with pytest.raises(ValueError, match="closed"):
        encoder.part("application/dicom")


def test_encoder_quotes_a_boundary_that_is_not_a_token_and_checks_bodies() -> None:
    encoder = MultipartEncoder("a b")
    assert encoder.content_type.endswith('boundary="a b"')
    encoder.check_body(b"harmless\r\n-- a b")
    with pytest.raises(ValueError, match="delimiter"):
        encoder.check_body(b"x\r\n--a b")


def test_random_boundaries_differ() -> None:
    assert MultipartEncoder().boundary != MultipartEncoder().boundary
