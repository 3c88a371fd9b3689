"""C-STORE sub-operations of instances held in a temporary file, sent in PDU-sized pieces.

An instance larger than ``retrieve.max_buffer_bytes`` arrives from WADO-RS as a file
(``bridge/dicomweb/largebody.py``). When the peer accepted its stored transfer syntax, its
data set is read from the file one P-DATA fragment at a time and handed to the DUL with
backpressure (``adapter.wait_sent``): memory stays at a few PDUs whatever the size. The
command set and the fragmenting are those of the encoded fast path
(``bridge/dimse/fastsend.py``); instances that must be converted are read whole instead
(``instances.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset

from bridge.dimse import adapter
from bridge.dimse.fastsend import Part10Error, Part10Instance, store_request

# The File Meta group is read from this much of the file's start (it is a few hundred
# bytes; a file whose meta does not fit is not sent from the file).
_HEAD = 64 * 1024
# P-DATA PDUs queued ahead of the DUL: ~1 MB at the usual 16 KB maximum PDU size.
_QUEUED = 64
# Value bytes per P-DATA fragment for a peer that set no maximum PDU length.
_UNLIMITED_PIECE = 1024 * 1024


class SpooledInstance(Part10Instance):
    """An instance that is only a Part 10 file (``path``): its data set starts at
    ``offset`` in the file."""

    def __init__(self, path: Path) -> None:
        with path.open("rb") as handle:
            head = handle.read(_HEAD)
        super().__init__(head)
        if self.offset >= len(head):
            raise Part10Error("File Meta group fills the whole head of the file")
        self.path = path


def _fragments(
    flags: int, read: Callable[[int], bytes], length: int, size: int
) -> Iterator[tuple[int, bytes]]:
    """(message control header, fragment) of one message part, `size` bytes of value
    each, read lazily (adapter.send_pdata makes them P-DATA)."""
    remaining = length
    while True:
        piece = read(min(size, remaining))
        remaining -= len(piece)
        last = remaining <= 0 or not piece
        yield flags | (0x02 if last else 0x00), piece
        if last:
            return


def send_spooled(
    assoc: Any,
    instance: SpooledInstance,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    """``Association.send_c_store`` for an instance in a file, read in PDU-sized pieces;
    the response's status Dataset (empty: no response, the association is aborted)."""
    context, command = store_request(
        assoc, instance, msg_id, priority, originator_aet, originator_id
    )
    with adapter.reactor_paused(assoc) as held:
        if not held:
            return Dataset()
        max_pdu = adapter.peer_max_pdu(assoc)
        with instance.path.open("rb") as handle:
            length = handle.seek(0, 2) - instance.offset
            handle.seek(instance.offset)
            # A peer without a PDU limit still gets pieces, not the file in one PDU.
            size = _UNLIMITED_PIECE if max_pdu == 0 else max_pdu - 6
            cid = context.context_id
            adapter.send_pdata(
                assoc, cid, _fragments(0x01, BytesIO(command).read, len(command), size)
            )
            for pdv in _fragments(0x00, handle.read, length, size):
                if not adapter.wait_sent(assoc, _QUEUED, assoc.dimse_timeout):
                    return adapter.response_status(assoc, None)
                adapter.send_pdata(assoc, cid, [pdv])
        _, rsp = adapter.wait_response(assoc, assoc.dimse_timeout)
    return adapter.response_status(assoc, rsp)
