"""Local, lossless transfer syntax conversions with pydicom (and its pylibjpeg plugins), and
the marking a lossy copy needs (PS3.3 C.7.6.1.1.5). Pure: Datasets and bytes in and out.

The bridge never compresses lossily itself; a lossy copy only comes from the server, when
``retrieve.allow_lossy`` is on, and ``mark_lossy_copy`` makes sure it is a new instance.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

from bridge.translate.syntax import LOSSLESS_COMPRESSED, is_compressed

# Bytes per swapped unit of the binary VRs whose values pydicom writes unchanged whatever
# the byte order (filewriter: "must be converted manually"); UN and OB are bytes.
_WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_PIXEL_DATA = 0x7FE00010
# PS3.3 C.7.6.1.1.5 Lossy Image Compression Method defined terms, by transfer syntax.
_LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.93": "ISO_15444_2",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
    "1.2.840.10008.1.2.4.112": "ISO_18181_1",
}
# Namespace of the SOP Instance UIDs the bridge derives for lossy copies (2.25 = UUID).
_LOSSY_UID_NAMESPACE = uuid.UUID("6f1d3e5c-9a2b-4c6d-8e7f-0a1b2c3d4e5f")


class ConversionError(ValueError):
    """The instance cannot be converted locally (no decoder or encoder, unreadable)."""


@lru_cache(maxsize=1)
def local_encoders() -> frozenset[str]:
    """Lossless compressed syntaxes pydicom can encode here (RLE always; JPEG 2000
    lossless with pylibjpeg-openjpeg; JPEG-LS lossless with pyjpegls)."""
    found = set()
    for syntax in LOSSLESS_COMPRESSED:
        try:
            if get_encoder(syntax).is_available:
                found.add(syntax)
        except (NotImplementedError, ValueError):
            continue  # pydicom has no encoder for it at all
    return frozenset(found)


def can_decode(syntax: str) -> bool:
    """Whether pydicom can decompress pixel data in `syntax` here."""
    if not is_compressed(syntax):
        return True
    try:
        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def decompress(ds: Dataset) -> None:
    """Decompress `ds` in place into Explicit VR Little Endian, keeping its SOP Instance UID
    (lossless: the same image; a lossy original keeps Lossy Image Compression "01")."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if not is_compressed(syntax):
        return
    if not can_decode(syntax):
        raise ConversionError(f"no decoder for {UID(syntax).name} here")
    try:
        # pydicom would otherwise give the decompressed copy a new SOP Instance UID.
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:
        raise ConversionError(f"cannot decompress: {exc}") from exc


def convert(ds: Dataset, target: str) -> bytes:
    """`ds` (uncompressed, or decodable here) as a Part 10 file in `target`, losslessly:
    Explicit VR Little or Big Endian, or a lossless compressed syntax with a local encoder.
    The SOP Instance UID stays (the image is the same)."""
    if target not in (ExplicitVRLittleEndian, ExplicitVRBigEndian) and (
        target not in LOSSLESS_COMPRESSED or target not in local_encoders()
    ):
        raise ConversionError(f"no lossless local encoder for {UID(target).name}")
    decompress(ds)
    if str(ds.file_meta.TransferSyntaxUID) == ExplicitVRBigEndian and target != (
        ExplicitVRBigEndian
    ):
        _swap_binary_values(ds, pixel_bits=int(ds.get("BitsAllocated") or 8))
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = _reread(ds)
    if target == ExplicitVRBigEndian:
        return _big_endian(ds)
    if target != ExplicitVRLittleEndian:
        try:
            ds.compress(UID(target), generate_instance_uid=False)
        except Exception as exc:
            raise ConversionError(f"cannot encode {UID(target).name}: {exc}") from exc
    return _part10(ds)


def _big_endian(ds: Dataset) -> bytes:
    """Explicit VR Big Endian: pydicom re-encodes every value with a numeric VR itself,
    but writes OW/OF/OL/OD/OV bytes as they are, so those are swapped here first."""
    _swap_binary_values(ds, pixel_bits=int(ds.get("BitsAllocated") or 8))
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    return _part10(ds)


def _swap_binary_values(ds: Dataset, pixel_bits: int) -> None:
    """Reverse the byte order of every OW/OF/OL/OD/OV value, in sequences too. Pixel Data
    goes by Bits Allocated (pydicom reads a big endian 16-bit image as 16-bit words)."""
    # Read as Implicit VR, Pixel Data and friends are "OB or OW" until resolved.
    correct_ambiguous_vr(ds, ds.original_encoding[1] is not False)
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_binary_values(item, pixel_bits)
            continue
        size = _WORD_SIZE.get(str(elem.VR))
        if size is None or not elem.value:
            continue
        if elem.tag == _PIXEL_DATA and pixel_bits > 8:
            size = pixel_bits // 8
        value = bytes(elem.value)
        if len(value) % size:
            raise ConversionError(f"{elem.tag} length {len(value)} is not a multiple of {size}")
        swapped = bytearray(value)
        for offset in range(size):
            swapped[offset::size] = value[size - 1 - offset :: size]
        ds[elem.tag] = DataElement(elem.tag, elem.VR, bytes(swapped))


def _part10(ds: Dataset) -> bytes:
    # dcmwrite, not save_as: save_as refuses to change the byte order at all; dcmwrite
    # does, given the binary values swapped beforehand (_swap_binary_values).
    out = BytesIO()
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except Exception as exc:
        raise ConversionError(f"cannot encode: {exc}") from exc
    return out.getvalue()


def _reread(ds: Dataset) -> Dataset:
    return dcmread(BytesIO(_part10(ds)))


def lossy_copy_uid(original_uid: str, syntax: str) -> str:
    """The SOP Instance UID of the lossy copy of `original_uid` in `syntax`: derived, so
    retrieving the same copy twice gives the same instance (no duplicates at the peer)."""
    return "2.25." + str(uuid.uuid5(_LOSSY_UID_NAMESPACE, f"{original_uid}|{syntax}").int)


def mark_lossy_copy(ds: Dataset, original_uid: str, sop_class_uid: str) -> None:
    """Make a lossy copy a new instance, as PS3.3 C.7.6.1.1.5 requires of "a compressed
    version of another image": Lossy Image Compression "01" (with method and ratio), Image
    Type value 1 DERIVED, a new SOP Instance UID, and the original in Source Image Sequence
    with purpose (121320, DCM, "Uncompressed predecessor"). What the server already did
    (DCMTK, hence Orthanc, does all of it) is kept; only the UID is always the bridge's,
    derived from the original's."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    ds.LossyImageCompression = "01"
    if "LossyImageCompressionMethod" not in ds and syntax in _LOSSY_METHODS:
        ds.LossyImageCompressionMethod = _LOSSY_METHODS[syntax]
    if "LossyImageCompressionRatio" not in ds:
        ratio = _compression_ratio(ds)
        if ratio is not None:
            ds.LossyImageCompressionRatio = f"{ratio:.3f}"[:16]
    if "ImageType" in ds:
        image_type = list(ds.ImageType) if ds["ImageType"].VM > 1 else [str(ds.ImageType)]
        if image_type and image_type[0] != "DERIVED":
            ds.ImageType = ["DERIVED", *image_type[1:]]
    sources = ds.get("SourceImageSequence") or Sequence()
    if not any(
        str(item.get("ReferencedSOPInstanceUID", "")) == original_uid for item in sources
    ):
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = original_uid
        code = Dataset()
        code.CodeValue = "121320"
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = "Uncompressed predecessor"
        item.PurposeOfReferenceCodeSequence = [code]
        sources.append(item)
        ds.SourceImageSequence = sources
    new_uid = lossy_copy_uid(original_uid, syntax)
    ds.SOPInstanceUID = new_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(new_uid)


def _compression_ratio(ds: Dataset) -> float | None:
    """Uncompressed size over the encapsulated Pixel Data size (PS3.3 C.7.6.1.1.5)."""
    try:
        native = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel") or 1)
            * int(ds.get("NumberOfFrames") or 1)
            * int(ds.BitsAllocated)
            // 8
        )
        return native / len(ds.PixelData)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
