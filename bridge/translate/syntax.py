"""Transfer syntax decisions: which syntax to accept for a proposed context, and which one to
send an instance in, given what the peer accepted for its SOP class. Pure: UIDs in, UIDs out.

Accepting (``accept_order``, used for the storage contexts of C-GET sub-operations, see
``bridge.dimse.negotiation``): the requester's order, as PS3.8 has the
proposer list its transfer syntaxes, except that a lossless syntax the bridge can always
produce itself comes before any other, and a lossy one comes last. So ``getscu +xv``
([JPEG 2000 lossless, Explicit VR LE, ...]) gets JPEG 2000 lossless, a peer listing JPEG
Baseline before Explicit VR LE gets Explicit VR LE (never a lossy copy of a lossless
original when it can take the original), and JPEG lossless (no local encoder) is accepted
first only when the context offers nothing the bridge can produce.

Sending (documented in the README, C-GET transfer syntaxes):
1. the stored syntax, fetched with ``transfer-syntax=*`` so the server does not transcode,
   when the peer accepted it (the little endian uncompressed syntaxes, deflated included,
   are interchangeable: pynetdicom converts between them without loss);
2. otherwise a syntax the peer accepted, transcoded by the server (``server_syntax``), only
   one the server can produce (``Capabilities.retrieve_syntaxes``: Azure makes Explicit VR LE
   and JPEG 2000 lossless, AWS only Explicit VR LE);
3. otherwise a local conversion (``local_syntax``): decompression with pydicom and its
   pylibjpeg plugins, then, if the peer needs it, Explicit VR Big Endian or a lossless
   compression the installed plugins can encode (RLE, JPEG 2000 lossless);
4. otherwise the sub-operation fails, with a reason naming the syntaxes (``cannot_send``).

A conversion into a lossy syntax (other than sending an instance stored in that very
syntax) happens only with ``retrieve.allow_lossy``, and only by the server: the bridge
never compresses lossily itself.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
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

# Uncompressed little endian: pynetdicom re-encodes a data set into any of them on send.
_LITTLE_ENDIAN_NATIVE = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)
NATIVE_SYNTAXES = _LITTLE_ENDIAN_NATIVE | {ExplicitVRBigEndian}
UNCOMPRESSED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Uncompressed too, but few peers take only these (C-MOVE proposes them last).
RARE_NATIVE_SYNTAXES = (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
# Encapsulated syntaxes that are lossless by definition (PS3.5 Annex A / 8.2). Every other
# encapsulated syntax may be lossy (JPEG Baseline/Extended, JPEG-LS near-lossless, JPEG 2000
# and HTJ2K "lossless or lossy", JPEG XL, MPEG/HEVC, JPIP): treated as lossy.
LOSSLESS_COMPRESSED = frozenset(
    {
        JPEGLossless,  # .4.57
        JPEGLosslessSV1,  # .4.70
        JPEGLSLossless,  # .4.80
        JPEG2000Lossless,  # .4.90
        "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 multi-component, lossless only
        "1.2.840.10008.1.2.4.110",  # JPEG XL lossless
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
        RLELossless,  # .5
        "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
        "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
    }
)
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
# What to ask a server to transcode into, best first: uncompressed (every server can), then
# the lossless compressed ones, then (allow_lossy only) the lossy ones.
_SERVER_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)

# Short names for ErrorComments (cut at 64 characters); other syntaxes go by UID.
_SHORT_NAMES = {
    ImplicitVRLittleEndian: "Implicit VR LE",
    ExplicitVRLittleEndian: "Explicit VR LE",
    ExplicitVRBigEndian: "Explicit VR BE",
    DeflatedExplicitVRLittleEndian: "Deflated",
    JPEGBaseline8Bit: "JPEG Baseline",
    JPEGExtended12Bit: "JPEG Extended",
    JPEGLossless: "JPEG Lossless",
    JPEGLosslessSV1: "JPEG Lossless SV1",
    JPEGLSLossless: "JPEG-LS",
    JPEGLSNearLossless: "JPEG-LS Near",
    JPEG2000Lossless: "JPEG2000 Lossless",
    JPEG2000: "JPEG2000",
    RLELossless: "RLE",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}


def short_name(syntax: str) -> str:
    """A transfer syntax's name short enough for an ErrorComment (the UID if unknown)."""
    return _SHORT_NAMES.get(syntax, syntax)


def short_names(syntaxes: Iterable[str]) -> str:
    """Several syntaxes, sorted by name and joined with "/" (deterministic, so identical
    causes give identical reasons that count together)."""
    return "/".join(sorted({short_name(ts) for ts in syntaxes}))


def is_lossy(syntax: str) -> bool:
    """Whether encoding into `syntax` may lose information."""
    return syntax not in NATIVE_SYNTAXES and syntax not in LOSSLESS_COMPRESSED


def is_lossy_conversion(stored: str, target: str) -> bool:
    """Whether sending an instance stored in `stored` as `target` would compress it lossily
    (again): any change into a lossy syntax. Sending a lossy-stored instance as stored, or
    decompressing it, loses nothing more."""
    return target != stored and is_lossy(target)


def is_sendable(stored: str, accepted: Collection[str]) -> bool:
    """Whether an instance in syntax `stored` can be sent on a context accepting `accepted`
    without conversion by the bridge (pynetdicom re-encodes between the little endian
    uncompressed syntaxes, deflating or inflating)."""
    if stored in accepted:
        return True
    return stored in _LITTLE_ENDIAN_NATIVE and any(ts in _LITTLE_ENDIAN_NATIVE for ts in accepted)


def server_syntax(
    stored: str,
    accepted: Collection[str],
    allow_lossy: bool,
    producible: Collection[str] | None = None,
) -> str | None:
    """The syntax to ask the server for when `stored` is not sendable: uncompressed first
    (Explicit VR LE also serves a deflate-only peer: pynetdicom deflates), then lossless
    compressed, then lossy only when `allow_lossy`. Never a lossy conversion otherwise.

    `producible` is what the server can transcode to (``Capabilities.retrieve_syntaxes``;
    None = anything): a syntax outside it is never asked for, since such a server answers
    406 (Azure) or worse, and the caller converts locally instead."""
    lossless = sorted(ts for ts in accepted if ts in LOSSLESS_COMPRESSED)
    lossy = sorted(ts for ts in accepted if is_lossy(ts)) if allow_lossy else []
    for ts in (*_SERVER_NATIVE, *lossless, *lossy):
        if producible is not None and ts not in producible:
            continue
        if ts != stored and is_sendable(ts, accepted):
            return ts
    return None


def can_produce(syntax: str, producible: Collection[str] | None) -> bool:
    """Whether a server that transcodes to `producible` (None = anything) can send `syntax`."""
    return producible is None or syntax in producible


def local_syntax(accepted: Collection[str], encodable: Collection[str]) -> str | None:
    """The syntax a local, lossless conversion should produce for a peer accepting
    `accepted`: Explicit VR LE (pynetdicom converts it to Implicit VR or deflates it),
    Explicit VR BE, or a lossless compressed syntax in `encodable` (the local encoders)."""
    if is_sendable(ExplicitVRLittleEndian, accepted):
        return ExplicitVRLittleEndian
    if ExplicitVRBigEndian in accepted:
        return ExplicitVRBigEndian
    compressed = sorted(ts for ts in accepted if ts in LOSSLESS_COMPRESSED and ts in encodable)
    return compressed[0] if compressed else None


def cannot_send(stored: str, accepted: Collection[str], allow_lossy: bool) -> str:
    """Why an instance stored in `stored` could not be sent to a peer accepting `accepted`
    (a sub-operation's failure reason, for the final ErrorComment: short, and the same text
    for the same cause)."""
    if not allow_lossy and all(is_lossy_conversion(stored, ts) for ts in accepted):
        return f"lossy {short_name(stored)} to {short_names(accepted)} refused (allow_lossy off)"
    return f"cannot convert {short_name(stored)} to {short_names(accepted)}"


def no_context(sop_class: str) -> str:
    """Why an instance could not be sent: the peer accepted no context for its SOP class."""
    return f"no context accepted for {sop_class}"


def accept_rank(syntax: str, encodable: Collection[str]) -> int:
    """0: lossless and producible by the bridge from any instance (uncompressed, or a
    lossless syntax with a local encoder); 1: other lossless (only a server may produce it);
    2: lossy."""
    if syntax in NATIVE_SYNTAXES or (syntax in LOSSLESS_COMPRESSED and syntax in encodable):
        return 0
    return 1 if syntax in LOSSLESS_COMPRESSED else 2


def accept_order(
    proposals: Iterable[Sequence[str]], supported: Sequence[str], encodable: Collection[str]
) -> list[str]:
    """The order to accept `supported` syntaxes in for one storage SOP class, given the
    transfer syntax lists the requester proposed for it (one per presentation context).

    pynetdicom's acceptor takes, for each context, the first syntax of this order that the
    context proposes; it holds one order per SOP class, so with several contexts for one
    class the first appearance across them counts. Within a rank (``accept_rank``) the
    requester's order wins; syntaxes nobody proposed follow in `supported` order."""
    proposed: list[str] = []
    for syntaxes in proposals:
        proposed.extend(str(ts) for ts in syntaxes if str(ts) not in proposed)
    known = set(supported)
    ranked = sorted(
        (ts for ts in proposed if ts in known), key=lambda ts: accept_rank(ts, encodable)
    )
    return ranked + [ts for ts in supported if ts not in ranked]


def is_compressed(syntax: str) -> bool:
    """Whether the pixel data of an instance in `syntax` is encapsulated (compressed)."""
    return bool(UID(syntax).is_compressed)
