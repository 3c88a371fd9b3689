"""Composite Instance Root frame-level retrieve and Retrieve Without Bulk Data, via Orthanc."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import (
    CompositeInstanceRetrieveWithoutBulkDataGet,
    CompositeInstanceRootRetrieveGet,
)

from tests.integration.bridge_runner import BridgeProcess, bridge_config
from tests.integration.dataset import to_bytes
from tests.integration.tools import free_port
from tests.scu import RetrieveOutcome, c_get, scu

MULTIFRAME_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC Image Storage
FRAMES, ROWS, COLUMNS = 5, 8, 8


def _multiframe() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MULTIFRAME_SC
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["frames-test-instance"])
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["frames-test-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["frames-test-series"])
    ds.PatientID, ds.PatientName, ds.Modality = "MF001", "MULTI^FRAME", "OT"
    ds.NumberOfFrames = FRAMES
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    pixels = np.arange(FRAMES * ROWS * COLUMNS, dtype=np.uint16).reshape(FRAMES, ROWS, COLUMNS)
    ds.PixelData = pixels.tobytes()
    return ds


def _get(bridge: BridgeProcess, model: str, identifier: Dataset) -> RetrieveOutcome:
    return c_get(
        scu("PYNETDICOM"),
        ("127.0.0.1", bridge.port, "DIMSE_BRIDGE"),
        identifier,
        model,
        [(MULTIFRAME_SC, [ExplicitVRLittleEndian])],
    )


@pytest.fixture
def setup(
    orthanc_factory: Callable[..., object], bridge_process: Callable[..., BridgeProcess]
) -> tuple[BridgeProcess, Dataset]:
    server = orthanc_factory(with_dataset=False).server  # type: ignore[attr-defined]
    source = _multiframe()
    server.upload(to_bytes(source))
    bridge = bridge_process(bridge_config(server.dicomweb_url, free_port()))
    return bridge, source


def _identifier(source: Dataset, level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.SeriesInstanceUID = source.SeriesInstanceUID
    ds.SOPInstanceUID = source.SOPInstanceUID
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_frames_1_and_3_make_a_new_instance(setup: tuple[BridgeProcess, Dataset]) -> None:
    bridge, source = setup
    outcome = _get(
        bridge,
        CompositeInstanceRootRetrieveGet,
        _identifier(source, "FRAME", SimpleFrameList=[1, 3]),
    )
    assert outcome.final.Status == 0x0000
    assert outcome.final.NumberOfCompletedSuboperations == 1
    assert len(outcome.received) == 1
    new = outcome.received[0].dataset
    assert new.SOPInstanceUID != source.SOPInstanceUID
    assert new.SOPClassUID == MULTIFRAME_SC
    assert int(new.NumberOfFrames) == 2
    assert np.array_equal(new.pixel_array, source.pixel_array[[0, 2]])
    extraction = new.FrameExtractionSequence[0]
    assert extraction.MultiFrameSourceSOPInstanceUID == source.SOPInstanceUID
    assert list(extraction.SimpleFrameList) == [1, 3]
    assert new.PatientID == "MF001"


def test_calculated_frame_list(setup: tuple[BridgeProcess, Dataset]) -> None:
    bridge, source = setup
    outcome = _get(
        bridge,
        CompositeInstanceRootRetrieveGet,
        _identifier(source, "FRAME", CalculatedFrameList=[2, 5, 2]),
    )
    assert outcome.final.Status == 0x0000
    new = outcome.received[0].dataset
    assert int(new.NumberOfFrames) == 2
    assert np.array_equal(new.pixel_array, source.pixel_array[[1, 3]])


def test_frame_past_the_end_is_aa00(setup: tuple[BridgeProcess, Dataset]) -> None:
    bridge, source = setup
    outcome = _get(
        bridge, CompositeInstanceRootRetrieveGet, _identifier(source, "FRAME", SimpleFrameList=[9])
    )
    assert outcome.final.Status == 0xAA00
    assert "frame 9" in outcome.final.ErrorComment
    assert outcome.received == []


def test_time_range_is_aa03_and_no_frame_list_aa04(setup: tuple[BridgeProcess, Dataset]) -> None:
    bridge, source = setup
    timed = _get(
        bridge, CompositeInstanceRootRetrieveGet, _identifier(source, "FRAME", TimeRange=[0.0, 1.0])
    )
    assert timed.final.Status == 0xAA03
    bare = _get(bridge, CompositeInstanceRootRetrieveGet, _identifier(source, "FRAME"))
    assert bare.final.Status == 0xAA04
    assert timed.received == bare.received == []


def test_image_level_composite_instance_root_sends_the_whole_instance(
    setup: tuple[BridgeProcess, Dataset],
) -> None:
    bridge, source = setup
    outcome = _get(bridge, CompositeInstanceRootRetrieveGet, _identifier(source, "IMAGE"))
    assert outcome.final.Status == 0x0000
    assert outcome.received[0].dataset.SOPInstanceUID == source.SOPInstanceUID
    assert outcome.received[0].dataset.PixelData == source.PixelData


def test_retrieve_without_bulk_data(setup: tuple[BridgeProcess, Dataset]) -> None:
    bridge, source = setup
    outcome = _get(
        bridge, CompositeInstanceRetrieveWithoutBulkDataGet, _identifier(source, "IMAGE")
    )
    assert outcome.final.Status == 0x0000
    received = outcome.received[0].dataset
    assert received.SOPInstanceUID == source.SOPInstanceUID
    assert "PixelData" not in received
    assert received.PatientName == "MULTI^FRAME"
    assert int(received.NumberOfFrames) == FRAMES
    assert received.Rows == ROWS
