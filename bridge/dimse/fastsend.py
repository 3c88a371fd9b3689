"""Send a fetched Part 10 instance as a C-STORE sub-operation without decoding it.

The stock path parses every WADO-RS instance with pydicom and lets pynetdicom encode it
again: two full passes over each data set on the one thread that paces the whole C-GET.
When the peer accepted the instance's stored transfer syntax exactly, the encoded data
set after the File Meta group is already the C-STORE payload, so it is sent as is.

The C-STORE-RQ command set is encoded here directly, and its fragmentation and P-DATA-TF
PDUs in ``bridge.dimse.pdus``, byte for byte as pynetdicom's ``encode_msg`` and DUL would
(tests pin both), with no pynetdicom import: every pynetdicom internal is behind
``bridge.dimse.adapter``.

Which path a sub-operation takes (decided in ``send_encoded`` and
``bridge.dimse.retrieval.send.StoreOutcomes``):

- **lean**: an ``EncodedInstance`` (the stored syntax accepted exactly) on a plain TCP
  association (``adapter.lean_unavailable`` is None): its P-DATA-TF PDUs written
  straight to the socket, the C-STORE-RSP read from it (``adapter.exchange``);
- **encoded**: an ``EncodedInstance`` on a DICOM TLS association, or wherever else the
  lean path is unavailable: P-DATA through pynetdicom's DUL queue and state machine,
  the response from its DIMSE queue;
- **stock**: a pydicom ``Dataset`` (converted to another syntax, metadata only, a
  frame-level instance): ``Association.send_c_store``. During a retrieve on a plain TCP
  association its P-DATA, like the pending C-GET responses, is still written straight
  to the socket (``adapter.lean_sending``), and its response read by the DUL.

``[retrieve] fast_send = false`` makes no ``EncodedInstance``: everything takes the stock
path.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID

from bridge.dimse import adapter
from bridge.dimse.pdus import fragments, pdata_pdus

LOGGER = logging.getLogger(__name__)

_PREAMBLE = 128
_MAGIC = b"DICM"
_META_TAGS = {
    (0x0002, 0x0002): "MediaStorageSOPClassUID",
    (0x0002, 0x0003): "MediaStorageSOPInstanceUID",
    (0x0002, 0x0010): "TransferSyntaxUID",
}
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


class Part10Error(ValueError):
    """The bytes are not a Part 10 file with a readable File Meta group."""


def split_part10(payload: bytes) -> tuple[dict[str, str], int]:
    """The File Meta UIDs of a Part 10 file and the offset where its data set starts.

    File Meta is always Explicit VR Little Endian (PS3.10 7.1).
    """
    if len(payload) < _PREAMBLE + 4 or payload[_PREAMBLE : _PREAMBLE + 4] != _MAGIC:
        raise Part10Error("no DICM prefix")
    offset = _PREAMBLE + 4
    meta: dict[str, str] = {}
    while offset + 8 <= len(payload):
        group, element = struct.unpack_from("<HH", payload, offset)
        if group != 0x0002:
            break
        vr = payload[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", payload, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", payload, offset + 6)
            start = offset + 8
        end = start + length
        if end > len(payload):
            raise Part10Error("File Meta element runs past the end")
        keyword = _META_TAGS.get((group, element))
        if keyword:
            meta[keyword] = payload[start:end].rstrip(b"\0 ").decode("ascii", "replace")
        offset = end
    missing = set(_META_TAGS.values()) - set(meta)
    if missing:
        raise Part10Error(f"File Meta lacks {', '.join(sorted(missing))}")
    return meta, offset


class Part10Instance(Dataset):
    """An instance known only by its Part 10 File Meta group: SOP UIDs and syntax for
    pynetdicom's checks, and where its data set starts (``offset``) in `head`, the
    encoding's first bytes. Raises Part10Error when the meta group does not end in them."""

    def __init__(self, head: bytes) -> None:
        super().__init__()
        meta, offset = split_part10(head)
        self.SOPClassUID = meta["MediaStorageSOPClassUID"]
        self.SOPInstanceUID = meta["MediaStorageSOPInstanceUID"]
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(meta["TransferSyntaxUID"])
        self.offset = offset

    @property
    def transfer_syntax(self) -> UID:
        return UID(str(self.file_meta.TransferSyntaxUID))


class EncodedInstance(Part10Instance):
    """A data set that is only its encoding: the bytes to send (``encoded``)."""

    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self._payload = payload

    @property
    def encoded(self) -> memoryview:
        return memoryview(self._payload)[self.offset :]


def _element(group_element: int, value: bytes) -> bytes:
    # Implicit VR Little Endian: tag, 4-byte length, value (PS3.5 7.1.3).
    return struct.pack("<HHI", 0x0000, group_element, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def encode_store_rq(
    msg_id: int,
    priority: int,
    sop_class: str,
    sop_instance: str,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1) with a data set following, encoded the way
    pynetdicom does (Implicit VR Little Endian, group length first); built directly because
    pynetdicom builds and encodes a pydicom Dataset for it, twice, per sub-operation."""
    body = _element(0x0002, _ui(sop_class))
    body += _element(0x0100, struct.pack("<H", 0x0001))  # C-STORE-RQ
    body += _element(0x0110, struct.pack("<H", msg_id))
    body += _element(0x0700, struct.pack("<H", priority))
    body += _element(0x0800, struct.pack("<H", 0x0001))  # a data set follows
    body += _element(0x1000, _ui(sop_instance))
    if originator_aet is not None:
        aet = originator_aet.encode("ascii")
        body += _element(0x1030, aet + b" " if len(aet) % 2 else aet)
    if originator_id is not None:
        body += _element(0x1031, struct.pack("<H", originator_id))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def store_request(
    assoc: Any,
    instance: Any,
    msg_id: int,
    priority: int,
    originator_aet: str | None,
    originator_id: int | None,
) -> tuple[Any, bytes]:
    """The presentation context ``send_c_store`` would choose for `instance` (its
    SOPClassUID, transfer_syntax and SOPInstanceUID; no conversion) and its encoded
    C-STORE-RQ command set: the start of every sub-operation sent without pynetdicom's
    encoder (``send_encoded``, and retrieval/largefile.py's ``send_spooled``)."""
    if not assoc.is_established:
        raise RuntimeError("the association is not established")
    context = adapter.valid_context(
        assoc, instance.SOPClassUID, instance.transfer_syntax, "scu", allow_conversion=False
    )
    command = encode_store_rq(
        msg_id,
        priority,
        str(instance.SOPClassUID),
        str(instance.SOPInstanceUID),
        originator_aet,
        originator_id,
    )
    return context, command


def send_encoded(
    assoc: Any,
    instance: EncodedInstance,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    """``Association.send_c_store`` for an already encoded data set: same context choice,
    same reactor pause, same response handling; no encoding. The PDUs go straight to the
    socket when the lean path applies, else through pynetdicom's DUL."""
    context, command = store_request(
        assoc, instance, msg_id, priority, originator_aet, originator_id
    )
    # The reactor would otherwise take the C-STORE-RSP off the queue. Inside a C-MOVE the
    # sub-association's reactor is already held for the whole move (this costs nothing);
    # inside a C-GET this runs in the reactor's own thread.
    with adapter.reactor_paused(assoc) as held:
        if not held:
            return Dataset()
        # What DIMSEServiceProvider.send_msg does, minus building a pydicom command set
        # (no EVT_DIMSE_SENT for these sub-operation requests: nothing here listens).
        max_pdu = adapter.peer_max_pdu(assoc)
        cx_id = context.context_id
        if adapter.lean_unavailable(assoc) is None:
            pdus = pdata_pdus(cx_id, command, instance.encoded, max_pdu)
            rsp = adapter.exchange(assoc, pdus, assoc.dimse_timeout)
        else:
            adapter.send_pdata(assoc, cx_id, fragments(command, instance.encoded, max_pdu))
            _, rsp = adapter.wait_response(assoc, assoc.dimse_timeout)
    return adapter.response_status(assoc, rsp)
