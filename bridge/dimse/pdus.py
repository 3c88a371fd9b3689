"""P-DATA-TF PDUs (PS3.8 9.3.5, Annex E), encoded and split as pynetdicom does: pure bytes.

The lean send path (``bridge.dimse.adapter.exchange``) writes these straight to an
association's socket; ``tests/unit/test_lean_send.py`` pins them byte for byte against
pynetdicom's own ``encode_msg`` and ``P_DATA_TF``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

Buffer = bytes | memoryview

_P_DATA_TF = 0x04  # PDU type (PS3.8 9.3.5)
_COMMAND, _LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)


def fragments(command: Buffer, data: Buffer, max_pdu: int) -> Iterator[tuple[int, Buffer]]:
    """(message control header, fragment) for each PDV of one message, split as
    pynetdicom's ``DIMSEMessage.encode_msg``: fragments of at most ``max_pdu - 6`` bytes (0:
    one fragment each), the command set first, no data PDV for an empty data set."""
    command = memoryview(command)
    data = memoryview(data)
    for flags, payload in ((_COMMAND, command), (0x00, data)):
        if not len(payload) and flags != _COMMAND:
            return
        size = (len(payload) or 1) if max_pdu == 0 else max_pdu - 6
        starts = range(0, len(payload), size) if len(payload) else range(1)
        last = starts[-1]
        for start in starts:
            yield flags | (_LAST if start == last else 0x00), payload[start : start + size]


def pdv_header(context_id: int, control: int, length: int) -> bytes:
    """The P-DATA-TF PDU header and PDV item header before a `length`-byte fragment, for
    a PDU holding that one PDV (as pynetdicom sends each fragment)."""
    return struct.pack(">BBLLBB", _P_DATA_TF, 0, length + 6, length + 2, context_id, control)


def pdata_pdus(context_id: int, command: Buffer, data: Buffer, max_pdu: int) -> list[Buffer]:
    """The P-DATA-TF PDUs of one message as buffers to write in order (a header, then its
    fragment, which is a view of `command` or `data`, never a copy)."""
    buffers: list[Buffer] = []
    for control, fragment in fragments(command, data, max_pdu):
        buffers.append(pdv_header(context_id, control, len(fragment)))
        buffers.append(fragment)
    return buffers


def pdata_pdu(pdvs: Sequence[Sequence[Any]]) -> bytes:
    """One P-DATA-TF PDU holding `pdvs`, pynetdicom's ``presentation_data_value_list``:
    (context ID, control header + fragment) pairs."""
    items = b"".join(
        struct.pack(">LB", len(value) + 1, context_id) + bytes(value) for context_id, value in pdvs
    )
    return struct.pack(">BBL", _P_DATA_TF, 0, len(items)) + items


def parse_pdata(body: Buffer) -> list[tuple[int, bytes]] | None:
    """The PDVs of a received P-DATA-TF PDU (`body`: the bytes after its 6-byte header) as
    pynetdicom's ``P_DATA_TF.to_primitive`` lists them; None when the items do not tile
    the PDU exactly (left to pynetdicom's own decoder)."""
    view = memoryview(body)
    pdvs: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(view):
        if offset + 6 > len(view):
            return None
        (length,) = struct.unpack_from(">L", view, offset)
        end = offset + 4 + length
        if length < 2 or end > len(view):
            return None
        pdvs.append((view[offset + 4], bytes(view[offset + 5 : end])))
        offset = end
    return pdvs or None
