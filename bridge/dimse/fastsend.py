"""Send a fetched Part 10 instance as a C-STORE sub-operation without decoding it.

The stock path parses every WADO-RS instance with pydicom and lets pynetdicom encode it
again: two full passes over each data set on the one thread that paces the whole C-GET.
When the peer accepted the instance's stored transfer syntax exactly, the encoded data
set after the File Meta group is already the C-STORE payload, so it is sent as is.

It relies on pynetdicom internals that ``send_c_store`` itself uses (pinned to
pynetdicom 3.0 in pyproject.toml): ``_get_valid_context``, ``_reactor_checkpoint``,
``_is_paused``, ``_check_received_status``, ``_handle_no_response``, and the C_STORE
primitive's ``DataSet``. ``[retrieve] fast_send = false`` turns it off; the stock path is
also used whenever the instance needs converting, and for metadata-only instances.
"""

from __future__ import annotations

import logging
import struct
import time
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE

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


class EncodedInstance(Dataset):
    """A data set that is only its encoding: SOP UIDs and syntax for pynetdicom's checks,
    and the bytes to send (``encoded``)."""

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        meta, offset = split_part10(payload)
        self.SOPClassUID = meta["MediaStorageSOPClassUID"]
        self.SOPInstanceUID = meta["MediaStorageSOPInstanceUID"]
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(meta["TransferSyntaxUID"])
        self._payload = payload
        self._offset = offset

    @property
    def transfer_syntax(self) -> UID:
        return UID(str(self.file_meta.TransferSyntaxUID))

    @property
    def encoded(self) -> memoryview:
        return memoryview(self._payload)[self._offset :]


def accepts_exactly(assoc: Any, instance: EncodedInstance) -> bool:
    """Whether an accepted context takes the instance's syntax as is (no conversion)."""
    try:
        assoc._get_valid_context(
            instance.SOPClassUID, instance.transfer_syntax, "scu", allow_conversion=False
        )
    except ValueError:
        return False
    return True


def send_encoded(
    assoc: Any,
    instance: EncodedInstance,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    """``Association.send_c_store`` for an already encoded data set: same context choice,
    same reactor pause, same response handling; no encoding."""
    if not assoc.is_established:
        raise RuntimeError("the association is not established")
    context = assoc._get_valid_context(
        instance.SOPClassUID, instance.transfer_syntax, "scu", allow_conversion=False
    )
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = priority
    req.MoveOriginatorApplicationEntityTitle = originator_aet
    req.MoveOriginatorMessageID = originator_id
    req.AffectedSOPClassUID = instance.SOPClassUID
    req.AffectedSOPInstanceUID = instance.SOPInstanceUID
    req.DataSet = BytesIO(instance.encoded)
    # The reactor would otherwise take the C-STORE-RSP off the queue (as send_c_store).
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    status: Dataset = assoc._check_received_status(rsp)
    return status
