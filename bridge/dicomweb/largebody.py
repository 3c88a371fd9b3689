"""One WADO-RS instance collected from the multipart stream: in memory, or in a temporary
file when it is large, so that a large instance is never held whole.

The answer is written to a file from its first byte when its Content-Length says it is
larger than the limit. When the length is not known in advance (chunked or
close-delimited answers, common behind cloud front ends), it goes to a file once it
grows past the limit or ``UNKNOWN_LENGTH_SPILL``, whichever is smaller, so the
in-memory part of a large answer stays small either way. The caller owns the file (and
deletes it); on any failure the partial file is deleted here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from bridge.dicomweb.multipart import Event, PartData, PartStart
from bridge.errors import DicomwebProtocolError

# Bytes of an answer of unknown length held in memory before it goes to a file.
UNKNOWN_LENGTH_SPILL = 16 * 1024 * 1024


class InstanceSink:
    """Consumes the multipart events of a one-part answer; ``result()`` is its body as
    bytes, or as the Path of a temporary file in `directory` once past `limit` bytes
    (`expected`: the answer's Content-Length, when it has one)."""

    def __init__(self, directory: Path, limit: int, *, expected: int | None = None) -> None:
        self.directory = directory
        self.limit = limit if expected is not None else min(limit, UNKNOWN_LENGTH_SPILL)
        self.parts = 0
        self.size = 0
        self._chunks: list[bytes] = []
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        if expected is not None and expected > limit:
            self._spill()

    def feed(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, PartData):
                self._write(event.data)
            elif isinstance(event, PartStart):
                self.parts += 1
                if self.parts > 1:
                    raise DicomwebProtocolError("WADO-RS instance answer has more than 1 part")

    def _write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is None and self.size > self.limit:
            self._spill()
        if self._file is not None:
            # Buffered writes into the page cache: short enough for the event loop.
            self._file.write(data)
        else:
            self._chunks.append(data)

    def _spill(self) -> None:
        fd, name = tempfile.mkstemp(prefix="wado-", suffix=".dcm", dir=self.directory)
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb")
        for chunk in self._chunks:
            self._file.write(chunk)
        self._chunks = []

    @property
    def spilled(self) -> bool:
        return self._path is not None

    def result(self) -> bytes | Path:
        """The instance: bytes, or the closed temporary file (DicomwebProtocolError when
        the answer held no part)."""
        if self.parts != 1:
            self.discard()
            raise DicomwebProtocolError(
                f"WADO-RS instance answer has {self.parts} parts instead of 1"
            )
        if self._file is None:
            return b"".join(self._chunks)
        self._file.close()
        assert self._path is not None
        return self._path

    def discard(self) -> None:
        """Drop what was received (the temporary file included). Idempotent."""
        self._chunks = []
        if self._file is not None:
            self._file.close()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            self._path = None
        self._file = None
