"""Large instances: WADO-RS answers collected into a temporary file past a limit
(bridge/dicomweb/largebody.py), and sent from the file in P-DATA fragments identical to
pynetdicom's own (bridge/dimse/retrieval/largefile.py)."""

from __future__ import annotations

import asyncio
from io import BytesIO
from pathlib import Path

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

from bridge.config import DicomwebConfig
from bridge.dicomweb import largebody
from bridge.dicomweb.client import make_client
from bridge.dicomweb.multipart import encode_multipart
from bridge.dimse import adapter
from bridge.dimse.fastsend import encode_store_rq
from bridge.dimse.retrieval.largefile import SpooledInstance, _fragments
from bridge.errors import DicomwebProtocolError
from tests.integration.dataset import make_ct_series, to_bytes
from tests.unit.test_transport import REF, _read_request, _serve

BODY = bytes(range(256)) * 4096  # 1 MiB


def _answer(parts: list[bytes], *, chunked: bool, truncate: int = 0) -> bytes:
    content_type, chunks = encode_multipart(
        [("application/dicom", part) for part in parts], boundary="b0und"
    )
    body = b"".join(chunks)
    body = body[: len(body) - truncate]
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
    if chunked:
        framed = b"".join(
            b"%x\r\n" % len(body[i : i + 65536]) + body[i : i + 65536] + b"\r\n"
            for i in range(0, len(body), 65536)
        )
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + framed + b"0\r\n\r\n"
    if truncate:
        return (head + "Connection: close\r\n\r\n").encode() + body
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _fetch(answer: bytes, directory: Path, limit: int) -> bytes | Path:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def run() -> bytes | Path:
        server, base = await _serve(handler)
        client = make_client(DicomwebConfig(url=base, max_retries=0, timeout=5))
        try:
            return await client.retrieve_instance_or_file(REF, directory, limit)
        finally:
            await client.aclose()
            server.close()

    return asyncio.run(run())


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_answer_comes_back_as_a_file(tmp_path: Path, chunked: bool) -> None:
    got = _fetch(_answer([BODY], chunked=chunked), tmp_path, limit=100_000)
    assert isinstance(got, Path) and got.parent == tmp_path
    assert got.read_bytes() == BODY


def test_an_answer_of_unknown_length_spills_sooner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Below the limit either way; only the chunked one, whose length is not known in
    # advance, goes to a file past UNKNOWN_LENGTH_SPILL.
    monkeypatch.setattr(largebody, "UNKNOWN_LENGTH_SPILL", 100_000)
    assert _fetch(_answer([BODY], chunked=False), tmp_path, limit=10 * len(BODY)) == BODY
    got = _fetch(_answer([BODY], chunked=True), tmp_path, limit=10 * len(BODY))
    assert isinstance(got, Path) and got.read_bytes() == BODY


def test_a_small_answer_stays_in_memory(tmp_path: Path) -> None:
    assert _fetch(_answer([BODY], chunked=True), tmp_path, limit=len(BODY)) == BODY
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("parts", "truncate", "error"),
    [([BODY, BODY], 0, "more than 1 part"), ([BODY], 100, "close delimiter|truncated")],
    ids=["two parts", "cut short"],
)
def test_a_bad_answer_leaves_no_file(
    tmp_path: Path, parts: list[bytes], truncate: int, error: str
) -> None:
    with pytest.raises(DicomwebProtocolError, match=error):
        _fetch(_answer(parts, chunked=False, truncate=truncate), tmp_path, limit=1000)
    assert list(tmp_path.iterdir()) == []


# (A peer with no PDU limit, 0, gets 1 MiB pieces from send_spooled, not pynetdicom's one.)
@pytest.mark.parametrize("max_pdu", [16382, 4096])
def test_fragments_from_the_file_match_pynetdicoms(tmp_path: Path, max_pdu: int) -> None:
    (ds,) = make_ct_series(1, rows=64, columns=64, key="largebody-fragments")
    path = tmp_path / "instance.dcm"
    path.write_bytes(to_bytes(ds))
    instance = SpooledInstance(path)
    assert str(instance.SOPInstanceUID) == str(ds.SOPInstanceUID)

    req = C_STORE()
    req.MessageID = 7
    req.Priority = 2
    req.AffectedSOPClassUID = instance.SOPClassUID
    req.AffectedSOPInstanceUID = instance.SOPInstanceUID
    req._dataset_path = (path, instance.offset)
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    theirs = [p.presentation_data_value_list for p in message.encode_msg(3, max_pdu)]

    command = encode_store_rq(7, 2, str(instance.SOPClassUID), str(instance.SOPInstanceUID))
    with path.open("rb") as handle:
        length = handle.seek(0, 2) - instance.offset
        handle.seek(instance.offset)
        size = max_pdu - 6
        pdvs = [
            *_fragments(0x01, BytesIO(command).read, len(command), size),
            *_fragments(0x00, handle.read, length, size),
        ]
        ours = [p.presentation_data_value_list for p in adapter.pdata_primitives(3, pdvs)]
    assert ours == theirs
