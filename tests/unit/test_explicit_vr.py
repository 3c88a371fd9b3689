"""Implicit → Explicit VR Little Endian re-encoding before STOW-RS (bridge/dicomweb/explicit_vr.py):
every element of the data set, private, UN and nested ones included, has the same value bytes
after the round trip, and the VR the dictionary gives it (UN where none is known)."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from bridge.dicomweb.explicit_vr import implicit_to_explicit, transfer_syntax_of
from bridge.errors import ReencodeError


def implicit_file(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.9.9999.1")
    meta.ImplementationVersionName = "MODALITY_1"
    ds.file_meta = meta
    out = BytesIO()
    ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def rich_dataset() -> Dataset:
    """Standard, ambiguous, private (known and unknown creators), UN, long and nested
    elements, with pixel data."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "PID-001"
    ds.StudyDate = "20261204"
    ds.SliceThickness = "1.50"  # DS exactly as written
    ds.InstanceNumber = "+007"  # IS with a sign and zeros: never re-formatted
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = 4, 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SmallestImagePixelValue = -5  # "US or SS": SS since Pixel Representation is 1
    ds.LargestImagePixelValue = 2000
    ds.PixelData = np.arange(-6, 6, dtype="<i2").tobytes()
    # A private block pydicom knows (GEMS_IDEN_01) and one nobody knows.
    ds.private_block(0x0009, "GEMS_IDEN_01", create=True).add_new(0x01, "LO", "GE FULL NAME")
    unknown = ds.private_block(0x0011, "ACME 1.0", create=True)
    unknown.add_new(0x01, "LO", "acme text")
    unknown.add_new(0x02, "OB", bytes(range(7)))
    ds.add_new(0x00091001, "LO", "GE FULL NAME")
    ds.add_new(0x00280034, "IS", ["1", "1"])  # PixelAspectRatio
    ds.add_new(0x0040A043, "SQ", Sequence())  # empty sequence
    ds.add_new(0x00081155, "UI", ds.SOPInstanceUID)
    ds.add_new(0x00181310, "US", [0, 4, 3, 0])  # AcquisitionMatrix
    # Nested sequences (defined length items written by pydicom), with private content.
    inner = Dataset()
    inner.CodeValue = "121320"
    inner.CodingSchemeDesignator = "DCM"
    inner.CodeMeaning = "Uncompressed predecessor"
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = generate_uid()
    item.PurposeOfReferenceCodeSequence = [inner]
    item.private_block(0x0011, "ACME 1.0", create=True).add_new(0x10, "UL", 7)
    ds.SourceImageSequence = [item, Dataset()]
    ds.add_new(0x00111003, "UN", b"\x01\x02\x03\x04")
    ds.add_new(0x00111004, "OW", np.arange(40_000, dtype="<u2").tobytes())  # 80,000 bytes
    return ds


def raw_elements(ds: Dataset, prefix: str = "") -> dict[str, tuple[str, bytes]]:
    """Every element, nested ones by path, as (VR, value bytes) read straight off the
    file (the elements are never converted: raw value bytes, not decoded values)."""
    found: dict[str, tuple[str, bytes]] = {}
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.VR not in ("SQ", None)
            and raw.length != 0xFFFFFFFF
        ):
            found[f"{prefix}{tag}"] = (str(raw.VR), bytes(raw.value or b""))
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            found[f"{prefix}{tag}"] = ("SQ", b"")
            for index, item in enumerate(elem.value):
                found.update(raw_elements(item, f"{prefix}{tag}[{index}]."))
        elif isinstance(raw, RawDataElement):
            found[f"{prefix}{tag}"] = (str(elem.VR), bytes(raw.value or b""))
        else:  # pydicom decodes a few on reading (Specific Character Set): their values
            found[f"{prefix}{tag}"] = (
                str(elem.VR),
                b"" if elem.is_empty else repr(elem.value).encode(),
            )
    return found


def test_every_element_keeps_its_value_bytes() -> None:
    original = implicit_file(rich_dataset())
    converted = implicit_to_explicit(original)
    assert transfer_syntax_of(converted) == ExplicitVRLittleEndian
    before = raw_elements(dcmread(BytesIO(original)))
    after = raw_elements(dcmread(BytesIO(converted)))
    assert list(after) == list(before)  # the same elements, nested ones, in order
    for key, (_, value) in before.items():
        assert after[key][1] == value, key
    vrs = {key: vr for key, (vr, _) in after.items()}
    assert vrs["(0010,0010)"] == "PN"
    assert vrs["(0028,0106)"] == "SS"  # Pixel Representation 1
    assert vrs["(0028,0107)"] == "SS"
    assert vrs["(7FE0,0010)"] == "OW"
    assert vrs["(0009,0010)"] == "LO"  # private creator
    assert vrs["(0011,1001)"] == "UN"  # unknown creator: unknown VR
    assert vrs["(0011,1002)"] == "UN"
    assert vrs["(0011,1003)"] == "UN"
    assert vrs["(0008,2112)"] == "SQ"
    assert vrs["(0008,2112)[0].(0040,A170)"] == "SQ"
    assert vrs["(0008,2112)[0].(0040,A170)[0].(0008,0100)"] == "SH"
    assert vrs["(0008,2112)[0].(0011,1010)"] == "UN"


def test_decoded_values_are_equal() -> None:
    ds = rich_dataset()
    converted = dcmread(BytesIO(implicit_to_explicit(implicit_file(ds))))
    assert converted.PatientName == "Müller^Jürgen"
    assert converted.SliceThickness.original_string == "1.50"
    assert converted.SmallestImagePixelValue == -5
    assert np.array_equal(converted.pixel_array, ds.pixel_array)
    assert converted.file_meta.ImplementationVersionName == "MODALITY_1"
    assert converted.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_value_too_long_for_a_16_bit_length_becomes_un() -> None:
    """PS3.5 6.2.2: a value longer than 0xFFFF bytes whose VR has a 16-bit length field is
    encoded as UN (pydicom refuses to write such an LO itself: spliced in by hand)."""
    head = implicit_file(rich_dataset())
    long_lo = b"x" * 70_000  # RequestedProcedureDescription (0032,1060), VR LO
    cut = head.index(struct.pack("<HH", 0x0040, 0xA043))
    original = head[:cut] + struct.pack("<HHI", 0x0032, 0x1060, len(long_lo)) + long_lo
    original += head[cut:]
    converted = dcmread(BytesIO(implicit_to_explicit(original)))
    raw = converted.get_item(0x00321060)
    assert isinstance(raw, RawDataElement) and raw.VR == "UN"
    assert bytes(raw.value) == long_lo
    assert converted.PixelData == dcmread(BytesIO(original)).PixelData


def undefined_length_unknown_sequence() -> bytes:
    """A private element of unknown VR holding an undefined-length sequence (implicit VR),
    spliced in by hand: pydicom writes no such element itself."""
    head = implicit_file(rich_dataset())
    item_body = struct.pack("<HHI", 0x0008, 0x0100, 6) + b"ABC123"
    nested = (
        struct.pack("<HHI", 0x0013, 0x0010, 8)
        + b"OTHER 1 "
        + struct.pack("<HHI", 0x0013, 0x1001, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + item_body
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    # Group 0013 sorts after 0011 and before 0018: put it in place.
    cut = head.index(struct.pack("<HH", 0x0018, 0x0050))
    return head[:cut] + nested + head[cut:]


def test_sequence_of_unknown_vr_stays_un_with_its_content() -> None:
    original = undefined_length_unknown_sequence()
    converted = implicit_to_explicit(original)
    start = converted.index(struct.pack("<HH", 0x0013, 0x1001))
    assert converted[start + 4 : start + 6] == b"UN"
    assert struct.unpack_from("<I", converted, start + 8)[0] == 0xFFFFFFFF
    ds = dcmread(BytesIO(converted))
    seq = ds[0x00131001].value
    assert seq[0].CodeValue == "ABC123"
    assert ds.PatientID == "PID-001"  # everything after it still in place


def test_real_implicit_file_round_trips() -> None:
    path = get_testdata_file("MR_small_implicit.dcm")
    assert path is not None
    original = Path(path).read_bytes()
    converted = implicit_to_explicit(original)
    before = raw_elements(dcmread(BytesIO(original)))
    after = raw_elements(dcmread(BytesIO(converted)))
    assert {k: v for k, (_, v) in after.items()} == {k: v for k, (_, v) in before.items()}


@pytest.mark.parametrize("cut", [140, 400, -7])
def test_truncated_or_foreign_files_are_refused(cut: int) -> None:
    original = implicit_file(rich_dataset())
    with pytest.raises(ReencodeError):
        implicit_to_explicit(original[:cut])
    with pytest.raises(ReencodeError):
        implicit_to_explicit(implicit_to_explicit(original))  # already explicit
