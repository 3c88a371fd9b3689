"""Which transfer syntax to send an instance in, given what the peer accepted for its SOP class.

Order of preference (documented in the README):
1. the stored syntax, fetched with ``transfer-syntax=*`` so the server does not transcode,
   when the peer accepted it (or, for uncompressed little endian, accepted either of the two
   little endian syntaxes: pynetdicom converts between them without loss);
2. otherwise a syntax the peer accepted, transcoded by the server (``transfer-syntax=<UID>``);
3. otherwise the stored syntax decompressed locally by pydicom (and its pylibjpeg plugins)
   into Explicit VR Little Endian, when the peer accepted an uncompressed syntax;
4. otherwise the sub-operation fails and its SOP Instance UID is listed.
"""

from __future__ import annotations

from collections.abc import Collection

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

_LITTLE_ENDIAN_UNCOMPRESSED = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
UNCOMPRESSED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# The compressed syntaxes archives commonly store, most common first (C-MOVE proposals).
COMPRESSED_SYNTAXES = (
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEGExtended12Bit,
    JPEGLossless,
)
# What to ask a server to transcode into, best first: every server can produce these two.
_SERVER_PREFERENCE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def is_sendable(stored: str, accepted: Collection[str]) -> bool:
    """Whether an instance in syntax `stored` can be sent on a context accepting `accepted`."""
    if stored in accepted:
        return True
    return stored in _LITTLE_ENDIAN_UNCOMPRESSED and any(
        ts in _LITTLE_ENDIAN_UNCOMPRESSED for ts in accepted
    )


def server_syntax(accepted: Collection[str]) -> str | None:
    """The syntax to ask the server for when the stored one is not sendable."""
    for ts in _SERVER_PREFERENCE:
        if ts in accepted:
            return ts
    others = sorted(ts for ts in accepted if ts != DeflatedExplicitVRLittleEndian)
    return others[0] if others else None


def can_decompress_locally(stored: str, accepted: Collection[str]) -> bool:
    """Whether a local decompression into Explicit VR Little Endian would be sendable."""
    return UID(stored).is_compressed and is_sendable(ExplicitVRLittleEndian, accepted)
