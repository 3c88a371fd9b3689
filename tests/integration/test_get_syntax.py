"""C-GET (and C-MOVE) transfer syntaxes: stored syntax, server transcoding, local
conversion (decompression, big endian, lossless compression), lossy rules, failure reasons,
and which syntax the bridge accepts for a proposed context.

A private Orthanc 1.10 holds nine of pydicom's bundled test files in eight transfer
syntaxes. What this Orthanc can transcode (measured with WADO-RS ``transfer-syntax=<UID>``;
test_orthanc_transcoding_premise pins the part the tests rely on):

* uncompressed, RLE, JPEG baseline/extended/lossless -> Explicit VR LE or JPEG lossless:
  yes (DCMTK codecs);
* JPEG 2000 (.4.90/.4.91) -> anything else: HTTP 500, and nothing -> JPEG 2000: HTTP 500.

So a peer that accepts only Explicit VR LE gets the JPEG 2000 instances through the
bridge's local decompression (pydicom + pylibjpeg-openjpeg) and the others through
Orthanc's transcoding; a JPEG-2000-only peer gets the others compressed by the bridge.
This Orthanc also produces Explicit VR BE, Deflated and JPEG-LS lossless, and JPEG
Baseline (lossy, with a new SOP Instance UID) from 8-bit images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
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
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, build_role
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage

from tests.conftest import require_orthanc
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.orthanc import OrthancServer
from tests.integration.test_get import (
    OUT_OF_RESOURCES_SUBOPS,
    SUCCESS,
    after_meta,
    c_get,
    element_differences,
    identifier,
    storage,
)
from tests.integration.test_move import Destination, Stored, c_move
from tests.integration.tools import describe, free_port, run_dcmtk
from tests.scu import Received, RetrieveOutcome

pytestmark = pytest.mark.integration

SOP_CLASSES = (CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage)
ALL_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEG2000,
)
JPEG_FAMILY = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1)

# The main study: one series per file. name -> (pydicom test file, stored syntax).
SOURCES: dict[str, tuple[str, str]] = {
    "explicit": ("CT_small.dcm", ExplicitVRLittleEndian),
    "implicit": ("MR_small_implicit.dcm", ImplicitVRLittleEndian),
    "rle": ("MR_small_RLE.dcm", RLELossless),
    "j2k-lossless": ("MR_small_jp2klossless.dcm", JPEG2000Lossless),
    "rle-rgb": ("SC_rgb_rle.dcm", RLELossless),
    "j2k": ("JPEG2000.dcm", JPEG2000),
    "jpeg-baseline": ("SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit),
    "jpeg-extended": ("JPEG-lossy.dcm", JPEGExtended12Bit),
    "jpeg-lossless": ("SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1),
}
NAMES = list(SOURCES)
LOCALLY_DECOMPRESSED = ("j2k", "j2k-lossless")  # Orthanc cannot transcode JPEG 2000
# A second study with one mixed-syntax MR series: a big RLE instance (> 1 MiB, generated)
# then a JPEG 2000 lossless one.
MIXED = ("mixed-rle", "mixed-j2k")


@dataclass(frozen=True)
class Item:
    """One stored instance: its UIDs, stored syntax and the exact file uploaded."""

    name: str
    sop_class: str
    study_uid: str
    series_uid: str
    sop_uid: str
    syntax: str
    path: Path

    @property
    def part10(self) -> bytes:
        return self.path.read_bytes()


@dataclass(frozen=True)
class SyntaxSet:
    server: OrthancServer
    bridge: BridgeProcess
    items: dict[str, Item]  # the main study
    mixed: dict[str, Item]  # the mixed-syntax series, in its own study
    workdir: Path

    @property
    def study_uid(self) -> str:
        return self.items["explicit"].study_uid


def _source(filename: str) -> Dataset:
    path = get_testdata_file(filename)
    if path is None:
        pytest.skip(f"pydicom test file {filename} is not available")
    return dcmread(path)


def _save(ds: Dataset, name: str, study: str, series_number: int, number: int, out: Path) -> Item:
    """Give `ds` fresh deterministic UIDs, write it in its own syntax, describe it.

    Several of pydicom's files share a SOP Instance UID (MR_small in four syntaxes, the
    SC_rgb family): Orthanc would keep only the first, hence new UIDs everywhere. pydicom
    re-saves the data set as read, so the syntax and the PixelData bytes are untouched.
    """
    sop_uid = generate_uid(entropy_srcs=["get-syntax", name])
    ds.PatientID = "SYNTAX001"
    ds.PatientName = "SYNTAX^TEST"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["get-syntax", study])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["get-syntax", study, str(series_number)])
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    path = out / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    assert dcmread(path).PixelData == ds.PixelData
    return Item(
        name, str(ds.SOPClassUID), ds.StudyInstanceUID, ds.SeriesInstanceUID, sop_uid, syntax, path
    )


def _build_items(out: Path) -> tuple[dict[str, Item], dict[str, Item]]:
    out.mkdir(parents=True, exist_ok=True)
    items: dict[str, Item] = {}
    for number, (name, (filename, syntax)) in enumerate(SOURCES.items(), start=1):
        ds = _source(filename)
        assert ds.file_meta.TransferSyntaxUID == syntax, filename
        items[name] = _save(ds, name, "main", number, 1, out)

    big = _source("MR_small_implicit.dcm")  # 16-bit signed MR
    big.Rows = big.Columns = 768
    noise = np.random.default_rng(7).integers(0, 4096, (768, 768)).astype(np.int16)
    big.compress(RLELossless, noise, generate_instance_uid=False)  # ~1.2 MB: noise
    assert len(big.PixelData) > 1024 * 1024
    mixed = {
        "mixed-rle": _save(big, "mixed-rle", "mixed", 1, 1, out),
        "mixed-j2k": _save(_source("MR_small_jp2klossless.dcm"), "mixed-j2k", "mixed", 1, 2, out),
    }
    return items, mixed


@pytest.fixture(scope="module")
def syntax_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntaxSet]:
    """A private Orthanc (as ``orthanc_factory(with_dataset=False)`` makes, but shared by
    this module's tests, which do not change it) loaded with the nine files, and a bridge."""
    require_orthanc()
    workdir = tmp_path_factory.mktemp("get-syntax")
    items, mixed = _build_items(workdir / "files")
    server = OrthancServer(workdir / "orthanc").start()
    bridge: BridgeProcess | None = None
    try:
        for item in [*items.values(), *mixed.values()]:
            assert server.upload(item.path)["Status"] == "Success", item.name
        bridge = start_bridge(
            bridge_config(server.dicomweb_url, free_port()), workdir, name="syntax-bridge"
        )
        yield SyntaxSet(server, bridge, items, mixed, workdir)
    finally:
        if bridge is not None:
            bridge.stop()
        server.stop()


def get_image(syntax_set: SyntaxSet, item: Item, contexts: Any) -> RetrieveOutcome:
    """IMAGE-level C-GET of one instance on a fresh association."""
    return c_get(
        syntax_set.bridge,
        identifier(
            "IMAGE",
            StudyInstanceUID=item.study_uid,
            SeriesInstanceUID=item.series_uid,
            SOPInstanceUID=item.sop_uid,
        ),
        contexts=contexts,
    )


def dcmtk_decoded(path: Path, out: Path) -> np.ndarray:
    """Pixels of a JPEG-family file as DCMTK decodes them (the library Orthanc links)."""
    run_dcmtk("dcmdjpeg", path, out, check=True, timeout=60)
    return dcmread(out).pixel_array


def received_file(item: Received, directory: Path) -> Path:
    """Write a received instance as a Part 10 file (for dcmtk)."""
    path = directory / f"{item.sop_instance_uid}.dcm"
    item.dataset.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- (a)


def test_peer_accepting_everything_gets_the_stored_syntax_byte_identical(
    syntax_set: SyntaxSet,
) -> None:
    contexts = storage(SOP_CLASSES, ALL_SYNTAXES, one_context_per_syntax=True)
    assert len(contexts) == 24  # one per (SOP class, syntax): all can be accepted at once
    outcome = c_get(
        syntax_set.bridge,
        identifier("STUDY", StudyInstanceUID=syntax_set.study_uid),
        contexts=contexts,
    )
    items = syntax_set.items
    assert outcome.status == SUCCESS, outcome.summary()
    assert (outcome.completed, outcome.failed) == (len(items), 0)
    assert sorted(outcome.received_uids) == sorted(i.sop_uid for i in items.values())
    got = outcome.by_uid()
    for item in items.values():
        received = got[item.sop_uid]
        # No transcoding anywhere: the syntax is the stored one and the encoded data set
        # (PixelData fragments included) is the very bytes Orthanc was given.
        assert received.transfer_syntax == item.syntax, item.name
        assert received.dataset.PixelData == dcmread(item.path).PixelData, item.name
        assert received.raw == after_meta(item.part10), item.name


# --------------------------------------------------------------------------- (b)


def reference_pixels(item: Item, scratch: Path) -> np.ndarray:
    """The decompressed original an uncompressed copy must equal, exactly.

    * uncompressed, RLE, JPEG 2000: pydicom's decode of the original file (RLE and JPEG
      2000 lossless are exact; for lossy JPEG 2000 the bridge decodes locally with the
      same pydicom + openjpeg, so the result is the same to the bit);
    * JPEG baseline / extended / lossless: Orthanc transcodes these with DCMTK, and a
      lossy JPEG decode is not bit-exact between libraries (IDCT, upsampling, colour
      conversion), so the exact reference is dcmtk's dcmdjpeg of the same file (the same
      codec). pydicom cannot decode JPEG lossless here (no pylibjpeg-libjpeg).
    """
    if item.syntax in JPEG_FAMILY:
        return dcmtk_decoded(item.path, scratch / f"ref-{item.name}.dcm")
    return dcmread(item.path).pixel_array


EXPLICIT_ONLY_CASES = list(NAMES)


@pytest.mark.parametrize("name", EXPLICIT_ONLY_CASES)
def test_peer_accepting_only_explicit_le_gets_every_instance_uncompressed(
    syntax_set: SyntaxSet, tmp_path: Path, name: str
) -> None:
    item = syntax_set.items[name]
    outcome = get_image(syntax_set, item, storage(SOP_CLASSES, [ExplicitVRLittleEndian]))
    assert outcome.status == SUCCESS, f"{name}: {outcome.summary()}"
    assert (outcome.completed, outcome.failed) == (1, 0)
    assert len(outcome.received) == 1
    received = outcome.received[0]
    assert received.transfer_syntax == ExplicitVRLittleEndian
    ds = received.dataset
    assert not UID(ds.file_meta.TransferSyntaxUID).is_compressed
    pixels = ds.pixel_array
    expected = reference_pixels(item, tmp_path)
    assert pixels.shape == expected.shape, name
    assert np.array_equal(pixels, expected), name
    if item.syntax == JPEGBaseline8Bit:
        # And close to pydicom's own (Pillow) decode: the same image up to lossy-decoder
        # noise. (Pillow cannot decode the 12-bit JPEG extended file.)
        ours = dcmread(item.path).pixel_array.astype(np.int32)
        assert np.abs(pixels.astype(np.int32) - ours).max() <= 8, name
    # Last, as the local-decompression case fails only here: it is the instance asked for.
    assert received.sop_instance_uid == item.sop_uid, name
    assert ds.SOPInstanceUID == item.sop_uid, name


def test_mixed_syntax_series_falls_back_to_local_decompression(
    syntax_set: SyntaxSet, bridge_process: Callable[..., BridgeProcess]
) -> None:
    """A series whose instances are in different syntaxes, for an Explicit-VR-LE-only peer.

    The bridge learns "ask the server for Explicit VR LE" from the first (RLE) instance.
    To have the second instance fetched after that, deterministically, this bridge fetches
    one at a time with the smallest fetch-ahead budget (1 MiB) and the RLE instance is
    bigger than that: the pipeline starts the next fetch only once it has been sent.
    """
    rle, j2k = syntax_set.mixed["mixed-rle"], syntax_set.mixed["mixed-j2k"]
    assert rle.series_uid == j2k.series_uid and rle.sop_class == j2k.sop_class
    bridge = bridge_process(
        bridge_config(
            syntax_set.server.dicomweb_url,
            free_port(),
            retrieve__max_concurrent_fetches=1,
            retrieve__max_buffer_bytes=1024 * 1024,
        )
    )
    outcome = c_get(
        bridge,
        identifier("SERIES", StudyInstanceUID=rle.study_uid, SeriesInstanceUID=rle.series_uid),
        contexts=storage(SOP_CLASSES, [ExplicitVRLittleEndian]),
    )
    assert outcome.failed_uids == [], outcome.summary()
    assert outcome.status == SUCCESS, outcome.summary()
    assert len(outcome.received) == 2
    for received, item in zip(outcome.received, (rle, j2k), strict=True):
        assert received.transfer_syntax == ExplicitVRLittleEndian
        assert np.array_equal(received.dataset.pixel_array, dcmread(item.path).pixel_array)
    assert outcome.received_uids == [rle.sop_uid, j2k.sop_uid]


# --------------------------------------------------------------------------- (c)


def test_peer_accepting_only_jpeg_lossless_gets_a_server_transcode(
    syntax_set: SyntaxSet, tmp_path: Path
) -> None:
    item = syntax_set.items["explicit"]  # CT, Explicit VR LE
    outcome = get_image(syntax_set, item, storage([CTImageStorage], [JPEGLosslessSV1]))
    assert outcome.status == SUCCESS, outcome.summary()
    assert (outcome.completed, outcome.failed) == (1, 0)
    received = outcome.received[0]
    assert received.sop_instance_uid == item.sop_uid
    assert received.transfer_syntax == JPEGLosslessSV1
    assert received.dataset.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    assert received.dataset.PixelData != dcmread(item.path).PixelData  # really encoded
    # pydicom cannot decode JPEG lossless here: dcmtk decodes what arrived, and lossless
    # means exactly the original pixels.
    decoded = dcmtk_decoded(received_file(received, tmp_path), tmp_path / "decoded.dcm")
    assert np.array_equal(decoded, dcmread(item.path).pixel_array)


# --------------------------------------------------------------------------- (d)


J2K_ONLY = storage(SOP_CLASSES, [JPEG2000Lossless, JPEG2000], one_context_per_syntax=True)


def test_uncompressed_instance_for_a_jpeg2000_only_peer_is_compressed_losslessly(
    syntax_set: SyntaxSet,
) -> None:
    # Orthanc cannot encode JPEG 2000 (500): the bridge compresses it itself, losslessly
    # (pydicom + pylibjpeg-openjpeg), keeping the SOP Instance UID. This failed (0xA702)
    # when the bridge could only decompress.
    item = syntax_set.items["explicit"]
    outcome = get_image(syntax_set, item, J2K_ONLY)
    assert outcome.status == SUCCESS, outcome.summary()
    assert (outcome.completed, outcome.failed) == (1, 0)
    received = outcome.received[0]
    assert received.transfer_syntax == JPEG2000Lossless
    assert received.sop_instance_uid == item.sop_uid == received.dataset.SOPInstanceUID
    assert received.dataset.PixelData != dcmread(item.path).PixelData  # really encoded
    assert np.array_equal(received.dataset.pixel_array, dcmread(item.path).pixel_array)
    assert received.dataset.get("LossyImageCompression") in (None, "00")


def test_jpeg2000_only_peer_gets_every_instance(syntax_set: SyntaxSet, tmp_path: Path) -> None:
    """JPEG 2000 stored: as stored. The rest in JPEG 2000 lossless: decompressed locally
    (RLE, JPEG Baseline) or by Orthanc (JPEG extended and lossless: no decoder here), then
    compressed here. Before the bridge could compress, 7 of the 9 failed."""
    items = syntax_set.items
    outcome = c_get(
        syntax_set.bridge,
        identifier("STUDY", StudyInstanceUID=syntax_set.study_uid),
        contexts=J2K_ONLY,
    )
    assert outcome.status == SUCCESS, outcome.summary()
    assert (outcome.completed, outcome.failed) == (len(items), 0), outcome.summary()
    by_uid = outcome.by_uid()
    assert set(by_uid) == {i.sop_uid for i in items.values()}
    for item in items.values():
        received = by_uid[item.sop_uid]
        if item.syntax in (JPEG2000Lossless, JPEG2000):
            assert received.transfer_syntax == item.syntax, item.name
            assert received.raw == after_meta(item.part10), item.name
            continue
        assert received.transfer_syntax == JPEG2000Lossless, item.name
        pixels = received.dataset.pixel_array
        if item.syntax == JPEGBaseline8Bit:
            # Decoded here by Pillow, not by DCMTK: the same image up to decoder noise.
            ours = dcmread(item.path).pixel_array.astype(np.int32)
            assert np.abs(pixels.astype(np.int32) - ours).max() <= 8, item.name
        else:
            assert np.array_equal(pixels, reference_pixels(item, tmp_path)), item.name


def test_no_possible_conversion_is_named_in_the_error_comment(syntax_set: SyntaxSet) -> None:
    """JPEG 2000 to a JPEG-LS-only peer: Orthanc cannot decode JPEG 2000 and the bridge has
    no JPEG-LS encoder. Before, the reason was only in the bridge log."""
    item = syntax_set.items["j2k-lossless"]
    outcome = get_image(syntax_set, item, storage(SOP_CLASSES, [JPEGLSLossless]))
    assert outcome.status == OUT_OF_RESOURCES_SUBOPS, outcome.summary()
    assert outcome.failed_uids == [item.sop_uid]
    assert outcome.received == []
    assert outcome.comment == "1 failed: cannot convert JPEG2000 Lossless to JPEG-LS"


# --------------------------------------------------------------------------- (e)


@pytest.mark.parametrize(
    ("option", "name", "syntax"),
    [("+xv", "j2k-lossless", JPEG2000Lossless), ("+xr", "rle", RLELossless)],
)
def test_getscu_preferring_a_compressed_syntax_gets_it_as_stored(
    syntax_set: SyntaxSet, tmp_path: Path, option: str, name: str, syntax: str
) -> None:
    """getscu +xv proposes [JPEG 2000 lossless, Explicit VR LE, Big Endian, Implicit VR LE]
    in one context per SOP class. The bridge used to pick Explicit VR LE (its own order)
    and decompress; it now takes the requester's first lossless choice."""
    item = syntax_set.items[name]
    out = tmp_path / "received"
    out.mkdir()
    args = ["-v", "-S", option, "-aet", "GETSCU", "-aec", syntax_set.bridge.ae_title]
    args += ["-od", str(out), "-k", "QueryRetrieveLevel=IMAGE"]
    args += ["-k", f"StudyInstanceUID={item.study_uid}"]
    args += ["-k", f"SeriesInstanceUID={item.series_uid}", "-k", f"SOPInstanceUID={item.sop_uid}"]
    bridge = syntax_set.bridge
    result = run_dcmtk("getscu", *args, bridge.host, str(bridge.port), timeout=60)
    assert result.returncode == 0, describe(["getscu", *args], result)
    files = list(out.iterdir())
    assert len(files) == 1, describe(["getscu", *args], result)
    got = dcmread(files[0])
    assert got.SOPInstanceUID == item.sop_uid
    assert got.file_meta.TransferSyntaxUID == syntax
    stored = dcmread(BytesIO(syntax_set.server.instance_file(item.sop_uid)))
    assert got.PixelData == stored.PixelData  # Orthanc's very bytes, not re-encoded


def test_getscu_preferring_jpeg2000_gets_uncompressed_instances_compressed_losslessly(
    syntax_set: SyntaxSet, tmp_path: Path
) -> None:
    """The consequence of accepting JPEG 2000 lossless for the context: an uncompressed
    instance of that SOP class must go in JPEG 2000 lossless too (compressed here)."""
    item = syntax_set.items["explicit"]
    out = tmp_path / "received"
    out.mkdir()
    args = ["-v", "-S", "+xv", "-aec", syntax_set.bridge.ae_title, "-od", str(out)]
    args += ["-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={item.study_uid}"]
    args += ["-k", f"SeriesInstanceUID={item.series_uid}", "-k", f"SOPInstanceUID={item.sop_uid}"]
    bridge = syntax_set.bridge
    result = run_dcmtk("getscu", *args, bridge.host, str(bridge.port), timeout=60)
    assert result.returncode == 0, describe(["getscu", *args], result)
    files = list(out.iterdir())
    assert len(files) == 1, describe(["getscu", *args], result)
    got = dcmread(files[0])
    assert got.SOPInstanceUID == item.sop_uid
    assert got.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert np.array_equal(got.pixel_array, dcmread(item.path).pixel_array)


def test_a_lossy_choice_is_not_accepted_before_a_lossless_one(syntax_set: SyntaxSet) -> None:
    """One context proposing [JPEG Baseline, Explicit VR LE]: Explicit VR LE is accepted,
    so an uncompressed instance arrives as stored, not as a lossy copy."""
    item = syntax_set.items["explicit"]
    contexts = storage(SOP_CLASSES, [JPEGBaseline8Bit, ExplicitVRLittleEndian])
    outcome = get_image(syntax_set, item, contexts)
    assert outcome.status == SUCCESS, outcome.summary()
    received = outcome.received[0]
    assert received.transfer_syntax == ExplicitVRLittleEndian
    assert received.sop_instance_uid == item.sop_uid
    assert received.raw == after_meta(item.part10)


# --------------------------------------------------------------------------- (f)


JPEG_BASELINE_ONLY = storage(SOP_CLASSES, [JPEGBaseline8Bit])


def test_lossless_instance_to_a_jpeg_baseline_only_peer_fails_without_allow_lossy(
    syntax_set: SyntaxSet,
) -> None:
    """Orthanc would transcode this RLE colour image to JPEG Baseline (a lossy copy with a
    new SOP Instance UID); without retrieve.allow_lossy the bridge must not ask it to."""
    item = syntax_set.items["rle-rgb"]
    outcome = get_image(syntax_set, item, JPEG_BASELINE_ONLY)
    assert outcome.received == [], [r.sop_instance_uid for r in outcome.received]
    assert outcome.status == OUT_OF_RESOURCES_SUBOPS, outcome.summary()
    assert outcome.failed_uids == [item.sop_uid]
    assert outcome.comment == "1 failed: lossy RLE to JPEG Baseline refused (allow_lossy off)"


def test_lossy_stored_instance_goes_as_stored_without_allow_lossy(syntax_set: SyntaxSet) -> None:
    item = syntax_set.items["jpeg-baseline"]
    outcome = get_image(syntax_set, item, JPEG_BASELINE_ONLY)
    assert outcome.status == SUCCESS, outcome.summary()
    received = outcome.received[0]
    assert received.sop_instance_uid == item.sop_uid
    assert received.raw == after_meta(item.part10)


def test_allow_lossy_sends_a_new_lossy_instance(
    syntax_set: SyntaxSet, bridge_process: Callable[..., BridgeProcess]
) -> None:
    """With retrieve.allow_lossy the server's JPEG Baseline copy is sent, as the new
    instance PS3.3 C.7.6.1.1.5 requires: new SOP Instance UID (derived from the original's,
    so the same on every retrieve), Lossy Image Compression 01, Image Type DERIVED, and the
    original in Source Image Sequence."""
    item = syntax_set.items["rle-rgb"]
    bridge = bridge_process(
        bridge_config(syntax_set.server.dicomweb_url, free_port(), retrieve__allow_lossy=True)
    )
    ident = identifier(
        "IMAGE",
        StudyInstanceUID=item.study_uid,
        SeriesInstanceUID=item.series_uid,
        SOPInstanceUID=item.sop_uid,
    )
    uids = []
    for _ in range(2):
        outcome = c_get(bridge, ident, contexts=JPEG_BASELINE_ONLY)
        assert outcome.status == SUCCESS, outcome.summary()
        assert (outcome.completed, outcome.failed) == (1, 0)
        received = outcome.received[0]
        ds = received.dataset
        assert received.transfer_syntax == JPEGBaseline8Bit
        assert received.sop_instance_uid == ds.SOPInstanceUID != item.sop_uid
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_10918_1"
        assert float(ds.LossyImageCompressionRatio) > 1
        assert ds.ImageType[0] == "DERIVED"
        assert item.sop_uid in [s.ReferencedSOPInstanceUID for s in ds.SourceImageSequence]
        original = dcmread(item.path).pixel_array.astype(np.int32)
        assert np.abs(ds.pixel_array.astype(np.int32) - original).mean() < 4  # same image
        uids.append(received.sop_instance_uid)
    assert uids[0] == uids[1]


# --------------------------------------------------------------------------- (g)


@pytest.mark.parametrize("syntax", [DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("name", ["explicit", "implicit", "rle", "j2k-lossless"])
def test_deflate_or_big_endian_only_peer_gets_the_instance(
    syntax_set: SyntaxSet, name: str, syntax: str
) -> None:
    """Deflated: pynetdicom deflates an Explicit VR LE data set (from the server, or
    decompressed here). Big endian: the server transcodes what it can decode, the bridge
    converts the rest (JPEG 2000) itself. Both used to fail (0xA702)."""
    item = syntax_set.items[name]
    outcome = get_image(syntax_set, item, storage(SOP_CLASSES, [syntax]))
    assert outcome.status == SUCCESS, f"{name}: {outcome.summary()}"
    assert (outcome.completed, outcome.failed) == (1, 0)
    received = outcome.received[0]
    assert received.transfer_syntax == syntax
    assert received.sop_instance_uid == item.sop_uid
    original = dcmread(item.path)
    got = received.dataset
    diffs = [d for d in element_differences(original, got) if "(7FE0,0010)" not in d]
    assert diffs == [], name
    assert np.array_equal(got.pixel_array, original.pixel_array), name
    if not UID(item.syntax).is_compressed:
        assert got.PixelData == original.PixelData or syntax == ExplicitVRBigEndian


def test_orthanc_transcoding_premise(syntax_set: SyntaxSet) -> None:
    """What this Orthanc does when asked for Explicit VR LE, so the tests above know which
    path each instance takes: JPEG 2000 cannot be transcoded (500: the bridge decompresses
    locally), everything else can (RLE included, on this Orthanc 1.10.1)."""
    accept = (
        'multipart/related; type="application/dicom"; transfer-syntax=' + ExplicitVRLittleEndian
    )
    client = syntax_set.server.client
    statuses = {}
    for item in syntax_set.items.values():
        url = (
            f"/dicom-web/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_uid}"
        )
        statuses[item.name] = client.get(url, headers={"Accept": accept}).status_code
    j2k = set(LOCALLY_DECOMPRESSED)
    assert {n: s for n, s in statuses.items() if n in j2k} == dict.fromkeys(j2k, 500)
    assert {n: s for n, s in statuses.items() if n not in j2k} == {
        n: 200 for n in statuses if n not in j2k
    }


# --------------------------------------------------------------------------- (h) C-MOVE


def _decoded(stored: Stored) -> Dataset:
    """A destination's received data set, decoded in its context's syntax (deflated and
    big endian included), with File Meta naming that syntax."""
    syntax = UID(stored.transfer_syntax)
    ds = decode(
        BytesIO(stored.raw), syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_move_to_a_destination_taking_only_big_endian_or_deflated(
    syntax_set: SyntaxSet,
    bridge_process: Callable[..., BridgeProcess],
    tmp_path: Path,
    syntax: str,
) -> None:
    """The sub-association proposes Explicit VR BE and Deflated contexts too (after the
    others), and every stored syntax is brought into them: by Orthanc where it can, by the
    bridge for JPEG 2000. Before, such a destination accepted no context at all."""
    dest = Destination("ONLYONE", SOP_CLASSES, (syntax,)).start()
    try:
        bridge = bridge_process(
            bridge_config(
                syntax_set.server.dicomweb_url,
                free_port(),
                peers=[(dest.ae_title, "127.0.0.1", dest.port)],
            )
        )
        outcome = c_move(
            bridge, identifier("STUDY", StudyInstanceUID=syntax_set.study_uid), dest.ae_title
        )
        items = syntax_set.items
        assert outcome.status == SUCCESS, outcome.summary()
        assert outcome.count("NumberOfCompletedSuboperations") == len(items)
        got = dest.by_uid()
        assert sorted(got) == sorted(i.sop_uid for i in items.values())
        for item in items.values():
            stored = got[item.sop_uid]
            assert stored.transfer_syntax == syntax, item.name
            ds = _decoded(stored)
            assert ds.SOPInstanceUID == item.sop_uid
            pixels = ds.pixel_array
            assert np.array_equal(pixels, reference_pixels(item, tmp_path)), item.name
    finally:
        dest.stop()


# --------------------------------------------------------------------------- (i) negotiation


@pytest.mark.parametrize(
    ("scp_role", "expected"), [(True, JPEG2000Lossless), (False, ExplicitVRLittleEndian)]
)
def test_requester_order_counts_for_c_get_contexts_only(
    syntax_set: SyntaxSet, scp_role: bool, expected: str
) -> None:
    """One CT context proposing [JPEG 2000 lossless, Explicit VR LE]: with the SCP role
    (C-GET sub-operations) the requester's first lossless choice; without (the peer will
    C-STORE) the bridge's own order, uncompressed first, as the archive stores what it is
    sent."""
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, [JPEG2000Lossless, ExplicitVRLittleEndian])
    roles = [build_role(CTImageStorage, scp_role=True)] if scp_role else []
    bridge = syntax_set.bridge
    assoc = ae.associate(bridge.host, bridge.port, ae_title=bridge.ae_title, ext_neg=[*roles])
    assert assoc.is_established
    try:
        (context,) = assoc.accepted_contexts
        assert context.transfer_syntax[0] == expected
    finally:
        assoc.release()


def test_no_context_for_the_sop_class_is_named_in_the_error_comment(
    syntax_set: SyntaxSet,
) -> None:
    item = syntax_set.items["rle"]  # MR
    outcome = get_image(syntax_set, item, storage([CTImageStorage], [ExplicitVRLittleEndian]))
    assert outcome.status == OUT_OF_RESOURCES_SUBOPS, outcome.summary()
    assert outcome.failed_uids == [item.sop_uid]
    assert outcome.comment == f"1 failed: no context accepted for {MRImageStorage}"


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, JPEG2000Lossless])
def test_local_conversion_without_fast_send(
    syntax_set: SyntaxSet, bridge_process: Callable[..., BridgeProcess], syntax: str
) -> None:
    """retrieve.fast_send = false: the locally converted file goes through pydicom and
    pynetdicom's encoder instead of being sent as encoded; the same instance arrives."""
    item = syntax_set.items["j2k-lossless" if syntax == ExplicitVRBigEndian else "explicit"]
    bridge = bridge_process(
        bridge_config(syntax_set.server.dicomweb_url, free_port(), retrieve__fast_send=False)
    )
    outcome = c_get(
        bridge,
        identifier(
            "IMAGE",
            StudyInstanceUID=item.study_uid,
            SeriesInstanceUID=item.series_uid,
            SOPInstanceUID=item.sop_uid,
        ),
        contexts=storage(SOP_CLASSES, [syntax]),
    )
    assert outcome.status == SUCCESS, outcome.summary()
    received = outcome.received[0]
    assert received.transfer_syntax == syntax
    assert received.sop_instance_uid == item.sop_uid
    assert np.array_equal(received.dataset.pixel_array, dcmread(item.path).pixel_array)
