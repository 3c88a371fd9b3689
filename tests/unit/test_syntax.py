"""Unit tests for the pure transfer syntax decisions (bridge.translate.syntax) and the local
conversions (bridge.translate.transcode)."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import ALL_TRANSFER_SYNTAXES

from bridge.translate.syntax import (
    accept_order,
    accept_rank,
    cannot_send,
    is_lossy,
    is_lossy_conversion,
    is_sendable,
    local_syntax,
    server_syntax,
    short_names,
)
from bridge.translate.transcode import (
    convert,
    local_encoders,
    lossy_copy_uid,
    mark_lossy_copy,
)

ELE, ILE, EBE, DEFL = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
ENCODABLE = frozenset({RLELossless, JPEG2000Lossless})
# The bridge's supported order (server.ACCEPT_ORDER): Explicit VR LE first.
SUPPORTED = [ELE, ILE] + [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in (ELE, ILE)]


def first_choice(*proposal: str, encodable: frozenset[str] = ENCODABLE) -> str:
    """What pynetdicom accepts for one context proposing `proposal`: the first syntax of
    the order that the context proposes (presentation.negotiate_as_acceptor)."""
    order = accept_order([list(proposal)], SUPPORTED, encodable)
    return next(ts for ts in order if ts in proposal)


# --------------------------------------------------------------------------- classes


@pytest.mark.parametrize(
    ("syntax", "lossy"),
    [
        (ELE, False),
        (ILE, False),
        (EBE, False),
        (DEFL, False),
        (RLELossless, False),
        (JPEG2000Lossless, False),
        (JPEGLosslessSV1, False),
        (JPEGLSLossless, False),
        (JPEGBaseline8Bit, True),
        (JPEGExtended12Bit, True),
        (JPEG2000, True),  # "lossless or lossy": may be lossy
        (JPEGLSNearLossless, True),
        ("1.2.840.10008.1.2.4.100", True),  # MPEG2
    ],
)
def test_is_lossy(syntax: str, lossy: bool) -> None:
    assert is_lossy(syntax) is lossy


def test_lossy_conversion_is_any_change_into_a_lossy_syntax() -> None:
    assert is_lossy_conversion(RLELossless, JPEGBaseline8Bit)
    assert is_lossy_conversion(JPEGExtended12Bit, JPEGBaseline8Bit)  # compressed again
    assert not is_lossy_conversion(JPEGBaseline8Bit, JPEGBaseline8Bit)  # as stored
    assert not is_lossy_conversion(JPEGBaseline8Bit, ELE)  # decompressing loses nothing
    assert not is_lossy_conversion(ELE, JPEG2000Lossless)


def test_little_endian_uncompressed_syntaxes_are_interchangeable() -> None:
    for stored in (ELE, ILE, DEFL):
        for accepted in (ELE, ILE, DEFL):
            assert is_sendable(stored, {accepted}), (stored, accepted)
    assert not is_sendable(ELE, {EBE})  # pynetdicom does not swap bytes
    assert not is_sendable(EBE, {ELE})
    assert is_sendable(EBE, {EBE})
    assert not is_sendable(RLELossless, {ELE})
    assert is_sendable(JPEG2000, {JPEG2000, ELE})


# --------------------------------------------------------------------------- server


def test_server_is_asked_for_uncompressed_first() -> None:
    assert server_syntax(RLELossless, {ELE, JPEG2000Lossless}, False) == ELE
    assert server_syntax(RLELossless, {ILE}, False) == ELE  # pynetdicom converts
    assert server_syntax(JPEG2000, {DEFL}, False) == ELE  # pynetdicom deflates
    assert server_syntax(JPEG2000, {EBE}, False) == EBE
    assert server_syntax(ELE, {JPEGLosslessSV1}, False) == JPEGLosslessSV1


def test_server_is_never_asked_for_a_lossy_syntax_without_allow_lossy() -> None:
    assert server_syntax(RLELossless, {JPEGBaseline8Bit}, False) is None
    assert server_syntax(RLELossless, {JPEGBaseline8Bit, JPEG2000}, False) is None
    assert server_syntax(RLELossless, {JPEGBaseline8Bit}, True) == JPEGBaseline8Bit
    # Lossless still wins with allow_lossy.
    assert server_syntax(RLELossless, {JPEGBaseline8Bit, JPEGLosslessSV1}, True) == (
        JPEGLosslessSV1
    )


# --------------------------------------------------------------------------- local


def test_local_syntax_is_lossless_and_encodable_only() -> None:
    assert local_syntax({ILE}, ENCODABLE) == ELE
    assert local_syntax({DEFL}, ENCODABLE) == ELE
    assert local_syntax({EBE}, ENCODABLE) == EBE
    assert local_syntax({JPEG2000Lossless, JPEG2000}, ENCODABLE) == JPEG2000Lossless
    assert local_syntax({JPEGLSLossless}, ENCODABLE) is None  # no encoder
    assert local_syntax({JPEGBaseline8Bit, JPEG2000}, ENCODABLE) is None  # never lossy


def test_local_encoders_include_rle_and_openjpeg() -> None:
    # pydicom's own RLE encoder, and pylibjpeg-openjpeg (a dependency of the bridge).
    assert {RLELossless, JPEG2000Lossless} <= local_encoders()
    assert JPEG2000 not in local_encoders() and JPEGBaseline8Bit not in local_encoders()


# --------------------------------------------------------------------------- reasons


def test_failure_reasons_are_short_and_name_the_syntaxes() -> None:
    lossy = cannot_send(RLELossless, {JPEGBaseline8Bit}, False)
    assert lossy == "lossy RLE to JPEG Baseline refused (allow_lossy off)"
    other = cannot_send(JPEG2000, {EBE}, False)
    assert other == "cannot convert JPEG2000 to Explicit VR BE"
    # Deterministic whatever the set's iteration order: identical causes count together.
    assert cannot_send(RLELossless, {JPEGBaseline8Bit, JPEG2000}, False) == cannot_send(
        RLELossless, {JPEG2000, JPEGBaseline8Bit}, False
    )
    assert short_names([JPEG2000Lossless, JPEG2000]) == "JPEG2000/JPEG2000 Lossless"
    for reason in (lossy, other):
        assert len("1 failed: " + reason) <= 64


# --------------------------------------------------------------------------- accepting


def test_requesters_lossless_order_is_accepted() -> None:
    # getscu +xv: [JPEG 2000 lossless, Explicit VR LE, Explicit VR BE, Implicit VR LE].
    assert first_choice(JPEG2000Lossless, ELE, EBE, ILE) == JPEG2000Lossless
    # getscu +xr, +xb, +xd, and the default.
    assert first_choice(RLELossless, ELE, EBE, ILE) == RLELossless
    assert first_choice(EBE, ELE, ILE) == EBE
    assert first_choice(DEFL, ELE, EBE, ILE) == DEFL
    assert first_choice(ELE, EBE, ILE) == ELE
    assert first_choice(ILE, ELE) == ILE


def test_lossy_syntax_comes_after_every_lossless_one() -> None:
    assert first_choice(JPEGBaseline8Bit, ELE, ILE) == ELE
    assert first_choice(JPEG2000, JPEG2000Lossless) == JPEG2000Lossless
    # Offered nothing else, a lossy syntax is accepted: lossy-stored instances go as stored.
    assert first_choice(JPEGBaseline8Bit) == JPEGBaseline8Bit


def test_syntax_without_local_encoder_comes_after_those_the_bridge_can_produce() -> None:
    # JPEG lossless: only the server may produce it; a J2K instance could not be sent.
    assert accept_rank(JPEGLosslessSV1, ENCODABLE) == 1
    assert first_choice(JPEGLosslessSV1, ELE) == ELE
    assert first_choice(JPEGLosslessSV1, JPEGBaseline8Bit) == JPEGLosslessSV1
    # Without openjpeg, JPEG 2000 lossless would not be accepted first either.
    assert first_choice(JPEG2000Lossless, ELE, encodable=frozenset({RLELossless})) == ELE


def test_several_contexts_of_one_sop_class_share_one_order() -> None:
    order = accept_order([[ELE], [JPEG2000Lossless], [RLELossless]], SUPPORTED, ENCODABLE)
    assert order[:3] == [ELE, JPEG2000Lossless, RLELossless]
    assert sorted(order) == sorted(SUPPORTED)  # nothing lost, nothing added
    # Unsupported proposals are ignored.
    assert accept_order([["1.2.3.4"], [ELE]], SUPPORTED, ENCODABLE)[0] == ELE


# --------------------------------------------------------------------------- conversions


def _testdata(name: str) -> Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not available")
    return dcmread(path)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm"])
def test_big_endian_round_trip_keeps_values_and_pixels(name: str) -> None:
    original = _testdata(name)
    pixels = original.pixel_array
    part10 = convert(_testdata(name), EBE)
    got = dcmread(BytesIO(part10))
    assert got.file_meta.TransferSyntaxUID == EBE
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(got.pixel_array, pixels)
    assert got.Rows == original.Rows and got.PixelSpacing == original.get("PixelSpacing")
    back = dcmread(BytesIO(convert(got, ELE)))
    assert back.file_meta.TransferSyntaxUID == ELE
    assert np.array_equal(back.pixel_array, pixels)
    if not original.file_meta.TransferSyntaxUID.is_compressed:
        assert back.PixelData == original.PixelData


@pytest.mark.parametrize("target", [RLELossless, JPEG2000Lossless])
def test_lossless_compression_keeps_uid_and_pixels(target: str) -> None:
    original = _testdata("CT_small.dcm")
    got = dcmread(BytesIO(convert(_testdata("CT_small.dcm"), target)))
    assert got.file_meta.TransferSyntaxUID == target
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_no_lossy_local_conversion() -> None:
    with pytest.raises(ValueError, match="no lossless local encoder"):
        convert(_testdata("CT_small.dcm"), JPEG2000)


def test_lossy_copy_is_marked_as_a_new_instance() -> None:
    ds = _testdata("SC_rgb_jpeg_dcmtk.dcm")  # JPEG Baseline, standing in for a server copy
    original_uid = "1.2.3.4.5"
    ds.SOPInstanceUID = original_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    for keyword in ("LossyImageCompression", "LossyImageCompressionMethod", "SourceImageSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    mark_lossy_copy(ds, original_uid, str(ds.SOPClassUID))
    assert ds.SOPInstanceUID == lossy_copy_uid(original_uid, JPEGBaseline8Bit)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPInstanceUID.startswith("2.25.") and len(ds.SOPInstanceUID) <= 64
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(ds.LossyImageCompressionRatio) > 1
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY"]
    (source,) = ds.SourceImageSequence
    assert source.ReferencedSOPInstanceUID == original_uid
    assert source.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
    # Marking the server's already marked copy again adds nothing but the derived UID.
    mark_lossy_copy(ds, original_uid, str(ds.SOPClassUID))
    assert len(ds.SourceImageSequence) == 1
    assert lossy_copy_uid(original_uid, JPEGBaseline8Bit) != lossy_copy_uid(original_uid, JPEG2000)
