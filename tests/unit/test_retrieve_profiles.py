"""Retrieve per server profile: which transfer syntax the bridge asks WADO-RS for, and when it
converts locally instead (bridge.translate.syntax with Capabilities.retrieve_syntaxes)."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    JPEG2000,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)

from bridge.profiles import PROFILES
from bridge.translate.syntax import local_syntax, server_syntax
from bridge.translate.transcode import local_encoders

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"

# profile, stored syntax, syntaxes the peer accepted, allow_lossy
#   → syntax asked of the server (None: not asked), syntax made locally (None: none)
CASES = [
    # A peer taking only Implicit VR LE: Explicit VR LE from any server (pynetdicom
    # re-encodes it), since every profile can produce it.
    *[
        (p, JPEG2000Lossless, {ImplicitVRLittleEndian}, False, ExplicitVRLittleEndian, None)
        for p in PROFILES
    ],
    # JPEG 2000 lossless wanted from an uncompressed original: Orthanc's profile asks the
    # server; Azure and Google make it; AWS cannot, so the bridge encodes it itself.
    ("generic", ExplicitVRLittleEndian, {JPEG2000Lossless}, False, JPEG2000Lossless, None),
    ("azure", ExplicitVRLittleEndian, {JPEG2000Lossless}, False, JPEG2000Lossless, None),
    ("google", ExplicitVRLittleEndian, {JPEG2000Lossless}, False, JPEG2000Lossless, None),
    ("aws", ExplicitVRLittleEndian, {JPEG2000Lossless}, False, None, JPEG2000Lossless),
    # AWS stores HTJ2K lossless: a JPEG 2000-only peer gets a local re-encoding of it.
    ("aws", HTJ2K_LOSSLESS, {JPEG2000Lossless}, False, None, JPEG2000Lossless),
    ("aws", HTJ2K_LOSSLESS, {RLELossless}, False, None, RLELossless),
    # RLE: no cloud server makes it; the bridge does.
    ("azure", JPEG2000Lossless, {RLELossless}, False, None, RLELossless),
    ("google", JPEG2000Lossless, {RLELossless}, False, None, RLELossless),
    ("orthanc", JPEG2000Lossless, {RLELossless}, False, RLELossless, RLELossless),
    # Big endian: asked of a conformant server, made locally for the cloud ones.
    ("generic", ExplicitVRLittleEndian, {ExplicitVRBigEndian}, False, ExplicitVRBigEndian, None),
    ("azure", JPEG2000Lossless, {ExplicitVRBigEndian}, False, None, ExplicitVRBigEndian),
    # Lossy only with allow_lossy, and only from a server that makes it: Google makes JPEG
    # Baseline, Azure does not, and the bridge never compresses lossily.
    ("google", ExplicitVRLittleEndian, {JPEGBaseline8Bit}, True, JPEGBaseline8Bit, None),
    ("google", ExplicitVRLittleEndian, {JPEGBaseline8Bit}, False, None, None),
    ("azure", ExplicitVRLittleEndian, {JPEGBaseline8Bit}, True, None, None),
    ("google", ExplicitVRLittleEndian, {JPEG2000}, True, JPEG2000, None),
    # JPEG lossless SV1: only a server that makes it can serve such a peer (no encoder here).
    ("generic", ExplicitVRLittleEndian, {JPEGLosslessSV1}, False, JPEGLosslessSV1, None),
    ("azure", ExplicitVRLittleEndian, {JPEGLosslessSV1}, False, None, None),
    ("aws", ExplicitVRLittleEndian, {JPEGLosslessSV1}, False, None, None),
]


@pytest.mark.parametrize(("profile", "stored", "accepted", "lossy", "asked", "local"), CASES)
def test_server_is_asked_only_for_what_it_can_produce(
    profile: str,
    stored: str,
    accepted: set[str],
    lossy: bool,
    asked: str | None,
    local: str | None,
) -> None:
    producible = PROFILES[profile].retrieve_syntaxes  # type: ignore[index]
    assert server_syntax(stored, accepted, lossy, producible) == asked
    if asked is None:
        # What the instance source does next: a local, lossless conversion (if any).
        assert local_syntax(accepted, local_encoders()) == local
    if producible is not None and asked is not None:
        assert asked in producible


@pytest.mark.parametrize("profile", ["azure", "aws", "google"])
def test_cloud_profiles_never_ask_for_a_syntax_outside_their_list(profile: str) -> None:
    producible = PROFILES[profile].retrieve_syntaxes  # type: ignore[index]
    assert producible is not None
    every = {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        JPEG2000Lossless,
        JPEG2000,
        JPEGBaseline8Bit,
        JPEGLosslessSV1,
        RLELossless,
        HTJ2K_LOSSLESS,
    }
    for stored in every:
        for accepted in every:
            for lossy in (False, True):
                asked = server_syntax(stored, {accepted}, lossy, producible)
                assert asked is None or asked in producible, (stored, accepted, asked)


def test_documented_retrieve_syntaxes_per_profile() -> None:
    assert PROFILES["azure"].retrieve_syntaxes == frozenset(
        {ExplicitVRLittleEndian, JPEG2000Lossless}
    )
    assert PROFILES["aws"].retrieve_syntaxes == frozenset({ExplicitVRLittleEndian})
    assert PROFILES["aws"].study_retrieve is False
    assert PROFILES["generic"].retrieve_syntaxes is None
