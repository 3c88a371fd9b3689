"""The fast send path: File Meta parsing, and the same bytes as pynetdicom's own encoder."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom.dsutils import encode

from bridge.dimse.fastsend import EncodedInstance, Part10Error, split_part10

FILES = [
    "CT_small.dcm",  # Explicit VR Little Endian
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
    "JPEG2000.dcm",  # encapsulated
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
]


def _payload(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    with open(path, "rb") as handle:
        return handle.read()


@pytest.mark.parametrize("name", FILES)
def test_encoded_bytes_equal_pynetdicoms_encoding(name: str) -> None:
    payload = _payload(name)
    instance = EncodedInstance(payload)
    ds = dcmread(BytesIO(payload))
    ts = ds.file_meta.TransferSyntaxUID
    assert instance.SOPInstanceUID == ds.SOPInstanceUID
    assert instance.SOPClassUID == ds.SOPClassUID
    assert instance.transfer_syntax == ts
    stock = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    assert stock is not None
    assert bytes(instance.encoded) == stock


def test_split_part10_finds_the_data_set() -> None:
    payload = _payload("CT_small.dcm")
    meta, offset = split_part10(payload)
    assert meta["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    assert payload[offset : offset + 2] == b"\x08\x00"  # the first data set group
    ds = dcmread(BytesIO(payload))
    assert meta["MediaStorageSOPInstanceUID"] == ds.file_meta.MediaStorageSOPInstanceUID


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\0" * 200,
        b"\0" * 128 + b"DICM",
        b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x00",
    ],
)
def test_not_part10_is_refused(payload: bytes) -> None:
    with pytest.raises(Part10Error):
        split_part10(payload)


@pytest.mark.parametrize("max_pdu", [0, 16384, 4096, 1000])
@pytest.mark.parametrize("originator", [(None, None), ("MOVER", 3), ("ODDAE", 65535)])
def test_p_data_equal_pynetdicoms_encode_msg(
    max_pdu: int, originator: tuple[str | None, int | None]
) -> None:
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    from bridge.dimse.adapter import pdata_primitives
    from bridge.dimse.fastsend import encode_store_rq
    from bridge.dimse.pdus import fragments

    payload = _payload("CT_small.dcm")
    instance = EncodedInstance(payload)
    aet, originator_id = originator
    req = C_STORE()
    req.MessageID = 7
    req.Priority = 2
    req.AffectedSOPClassUID = instance.SOPClassUID
    req.AffectedSOPInstanceUID = instance.SOPInstanceUID
    req.MoveOriginatorApplicationEntityTitle = aet
    req.MoveOriginatorMessageID = originator_id
    req.DataSet = BytesIO(bytes(instance.encoded))
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    theirs = [p.presentation_data_value_list for p in message.encode_msg(5, max_pdu)]
    command = encode_store_rq(
        7, 2, str(instance.SOPClassUID), str(instance.SOPInstanceUID), aet, originator_id
    )
    pdvs = fragments(command, instance.encoded, max_pdu)
    ours = [p.presentation_data_value_list for p in pdata_primitives(5, pdvs)]
    assert ours == theirs
