"""Implicit VR Little Endian → Explicit VR Little Endian, losslessly, for servers whose STOW-RS
refuses implicit VR (Azure: "Only transfer syntaxes with explicit Value Representations are
accepted", learn.microsoft.com/azure/healthcare-apis/dicom/dicom-services-conformance-
statement-v2). Pure: Part 10 bytes in, Part 10 bytes out.

Both syntaxes encode every value the same way (little endian); only the element headers
differ. So the data set is rewritten header by header and every value is copied byte for
byte: no value is decoded and encoded again (no character set, number or date round trip).
Each element's VR comes from the data dictionary, as PS3.5 6.2.2 and Annex A.1 say:

- public elements: their dictionary VR; "US or SS" by Pixel Representation, "OB or OW"
  as OW (PS3.5 A.1: implicit VR pixel data is OW) unless of odd length;
- private creators (gggg,0010-00FF) LO; private elements known to pydicom's private
  dictionary for their creator get that VR; group lengths UL;
- anything else is UN, and so is any value longer than a 16-bit length field can hold
  (PS3.5 6.2.2 note); a sequence of unknown VR (undefined length) stays UN with undefined
  length and its content unchanged, which PS3.5 6.2.2 defines as implicit VR inside;
- sequences and items keep defined or undefined length; defined lengths are recomputed.

The File Meta Information (always explicit VR) keeps every element; only the Transfer
Syntax UID and the group length change.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from bridge.errors import ReencodeError

# VRs with a 2-byte reserved field and a 32-bit length in explicit VR (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_PIXEL_REPRESENTATION = 0x00280103
# Palette Color LUT Descriptors: the first value is always US (PS3.3 C.7.6.3.1.5).
_ALWAYS_US = frozenset({0x00281101, 0x00281102, 0x00281103})
_HEADER = struct.Struct("<HHI")


def _file_meta(data: bytes) -> FileMetaDataset:
    """The File Meta Information of a Part 10 file (its data set is not read)."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise ReencodeError("not a DICOM Part 10 file")
    try:
        return dcmread(BytesIO(data[: _meta_end(data)])).file_meta
    except Exception as exc:
        raise ReencodeError(f"unreadable file meta information: {exc}") from exc


def transfer_syntax_of(data: bytes) -> str:
    """The Transfer Syntax UID in a Part 10 file's meta information ("" if none); `data`
    may be just the start of the file, as long as it holds the whole meta group."""
    try:
        return str(_file_meta(data).get("TransferSyntaxUID", ""))
    except (ReencodeError, struct.error):
        return ""


def implicit_to_explicit(data: bytes) -> bytes:
    """The Implicit VR Little Endian Part 10 file `data` as Explicit VR Little Endian."""
    meta = _file_meta(data)
    if str(meta.get("TransferSyntaxUID", "")) != ImplicitVRLittleEndian:
        raise ReencodeError("not Implicit VR Little Endian")
    start = _meta_end(data)
    try:
        body, _ = _dataset(data, start, len(data), pixel_rep=0, nested=False)
    except (struct.error, IndexError) as exc:
        raise ReencodeError(f"data set cut short or malformed: {exc}") from exc
    new_meta = FileMetaDataset(meta)
    new_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta_out = DicomBytesIO()
    write_file_meta_info(meta_out, new_meta, enforce_standard=True)
    return data[:132] + meta_out.getvalue() + body


def _meta_end(data: bytes) -> int:
    """The offset of the first data set element after the (explicit VR) group 0002."""
    pos = 132
    while pos + 8 <= len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6].decode("ascii", "replace")
        if vr in _LONG_VRS:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12 + length
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8 + length
    return pos


def _vr(tag: int, length: int, creators: dict[int, str], pixel_rep: int) -> str:
    """The explicit VR for an element read as implicit VR (see the module docstring)."""
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0x0000:
        return "UL"
    if group & 1:
        if 0x0010 <= element <= 0x00FF:
            return "LO"
        creator = creators.get((group << 16) | (element >> 8))
        if creator is None:
            return "UN"
        try:
            vr = private_dictionary_VR(tag, creator)
        except KeyError:
            return "UN"
    else:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return "UN"
    if " or " in vr:
        options = vr.split(" or ")
        if "OW" in options and length % 2 == 0 and (length > 0xFFFF or "US" not in options):
            vr = "OW"
        elif "OB" in options and "OW" in options:
            vr = "OB"
        elif tag in _ALWAYS_US or "SS" not in options:
            vr = "US" if "US" in options else options[0]
        else:
            vr = "SS" if pixel_rep == 1 else "US"
    if vr in ("", "NONE"):
        return "UN"
    return vr


def _header(tag: int, vr: str, length: int) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", group, element, vr.encode(), 0, length)
    return struct.pack("<HH2sH", group, element, vr.encode(), length)


def _dataset(data: bytes, pos: int, end: int, *, pixel_rep: int, nested: bool) -> tuple[bytes, int]:
    """Convert elements from `pos` up to `end`, or up to an item delimiter when `nested`
    and the item has undefined length (`end` is then the end of the enclosing data)."""
    out = bytearray()
    creators: dict[int, str] = {}
    while pos < end:
        group, element, length = _HEADER.unpack_from(data, pos)
        tag = (group << 16) | element
        pos += 8
        if tag == _ITEM_END:
            if not nested:
                raise ReencodeError("item delimiter outside an item")
            return bytes(out), pos
        vr = _vr(tag, length, creators, pixel_rep)
        if length == _UNDEFINED:
            if vr == "SQ":
                items, pos = _sequence(data, pos, None, pixel_rep)
                out += _header(tag, "SQ", _UNDEFINED) + items
                out += _HEADER.pack(0xFFFE, 0xE0DD, 0)
            else:
                # A sequence of unknown VR: UN of undefined length, content unchanged.
                content_end = _skip_sequence(data, pos)
                out += _header(tag, "UN", _UNDEFINED) + data[pos:content_end]
                pos = content_end
            continue
        value_end = pos + length
        if value_end > len(data):
            raise ReencodeError(f"element ({group:04X},{element:04X}) runs past the end")
        if vr == "SQ":
            items, _ = _sequence(data, pos, value_end, pixel_rep)
            out += _header(tag, "SQ", len(items)) + items
        else:
            if vr not in _LONG_VRS and length > 0xFFFF:
                vr = "UN"
            value = data[pos:value_end]
            out += _header(tag, vr, length) + value
            if group & 1 and 0x0010 <= element <= 0x00FF:
                creators[tag] = value.decode("latin-1").strip(" \0")
            elif tag == _PIXEL_REPRESENTATION and length >= 2:
                pixel_rep = struct.unpack_from("<H", value)[0]
        pos = value_end
    if nested and end == len(data):
        raise ReencodeError("item without its delimiter")
    return bytes(out), pos


def _sequence(data: bytes, pos: int, end: int | None, pixel_rep: int) -> tuple[bytes, int]:
    """The items of a sequence from `pos`: up to `end` (defined length), or through its
    sequence delimiter (end None); returns the converted items and the position after."""
    out = bytearray()
    while end is None or pos < end:
        group, element, length = _HEADER.unpack_from(data, pos)
        tag = (group << 16) | element
        pos += 8
        if tag == _SEQUENCE_END:
            if end is not None:
                raise ReencodeError("sequence delimiter in a sequence of defined length")
            return bytes(out), pos
        if tag != _ITEM:
            raise ReencodeError(f"({group:04X},{element:04X}) where a sequence item was expected")
        if length == _UNDEFINED:
            item, pos = _dataset(data, pos, len(data), pixel_rep=pixel_rep, nested=True)
            out += _HEADER.pack(0xFFFE, 0xE000, _UNDEFINED) + item
            out += _HEADER.pack(0xFFFE, 0xE00D, 0)
        else:
            item, _ = _dataset(data, pos, pos + length, pixel_rep=pixel_rep, nested=False)
            out += _HEADER.pack(0xFFFE, 0xE000, len(item)) + item
            pos += length
    return bytes(out), pos


def _skip_sequence(data: bytes, pos: int) -> int:
    """The position just after the sequence delimiter of an undefined-length sequence
    whose content (implicit VR items) starts at `pos`."""
    depth = 1
    while depth:
        group, element, length = _HEADER.unpack_from(data, pos)
        tag = (group << 16) | element
        pos += 8
        if tag == _SEQUENCE_END:
            depth -= 1
        elif tag == _ITEM_END:
            continue
        elif tag == _ITEM:
            if length != _UNDEFINED:
                pos += length
        elif length == _UNDEFINED:
            depth += 1  # a nested sequence inside an undefined-length item
        else:
            pos += length
    return pos
