"""Frame-level retrieve (PS3.4 C.4.3.3): a new instance holding only the requested frames.

Also the metadata-only instances of Composite Instance Retrieve Without Bulk Data.
Both start from WADO-RS metadata (DICOM JSON): elements given by BulkDataURI are left
out, and for frames the pixel data is the uncompressed frames WADO-RS ``/frames`` sent.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from bridge.errors import InvalidIdentifier
from bridge.translate.status import NO_FRAMES_FOUND, UNABLE_TO_CREATE_OBJECT


class FrameError(InvalidIdentifier):
    """A frame-level retrieve that cannot be answered, with its PS3.4 status (0xAA0x)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def strip_bulk_data(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A DICOM JSON object without the elements the server gave only as BulkDataURI."""
    out: dict[str, Any] = {}
    for tag, element in obj.items():
        if not isinstance(element, Mapping) or "BulkDataURI" in element:
            continue
        if element.get("vr") == "SQ" and isinstance(element.get("Value"), list):
            element = {
                **element,
                "Value": [strip_bulk_data(item) for item in element["Value"]],
            }
        out[tag] = element
    return out


def metadata_dataset(obj: Mapping[str, Any]) -> Dataset:
    """A Dataset from WADO-RS metadata, with file meta for sending it uncompressed."""
    ds = Dataset.from_json(strip_bulk_data(obj))
    ds.file_meta = _file_meta(UID(str(ds.SOPClassUID)), UID(str(ds.SOPInstanceUID)))
    return ds


def _file_meta(sop_class: UID, sop_instance: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def check_frames(wanted: Sequence[int], number_of_frames: int | None) -> None:
    """0xAA00 when a requested frame is not in the instance (frames are 1-based)."""
    available = number_of_frames or 1
    missing = [frame for frame in wanted if frame > available]
    if missing:
        raise FrameError(
            NO_FRAMES_FOUND,
            f"frame {missing[0]} requested, the instance has {available}",
        )


def frame_instance(
    metadata: Mapping[str, Any],
    frames: Sequence[bytes],
    frame_numbers: Sequence[int],
    identifier: Dataset,
    new_uid: str | None = None,
) -> Dataset:
    """The new instance: source attributes, only the requested frames, new SOP Instance UID,
    and a Frame Extraction Sequence (0008,1164) saying where the frames came from."""
    if len(frames) != len(frame_numbers):
        raise FrameError(
            UNABLE_TO_CREATE_OBJECT,
            f"WADO-RS sent {len(frames)} frames for {len(frame_numbers)} requested",
        )
    ds = Dataset.from_json(strip_bulk_data(metadata))
    source_uid = str(ds.SOPInstanceUID)
    ds.SOPInstanceUID = new_uid or generate_uid()
    ds.NumberOfFrames = len(frames)
    ds.PixelData = b"".join(frames)
    ds["PixelData"].VR = "OW" if int(ds.get("BitsAllocated", 8)) > 8 else "OB"
    if "PerFrameFunctionalGroupsSequence" in ds:
        items = ds.PerFrameFunctionalGroupsSequence
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(
            [copy.deepcopy(items[n - 1]) for n in frame_numbers if n <= len(items)]
        )
    extraction = Dataset()
    extraction.MultiFrameSourceSOPInstanceUID = source_uid
    for keyword in ("SimpleFrameList", "CalculatedFrameList"):
        if keyword in identifier:
            extraction[keyword] = identifier[keyword]
    ds.FrameExtractionSequence = DicomSequence([extraction])
    ds.file_meta = _file_meta(UID(str(ds.SOPClassUID)), UID(str(ds.SOPInstanceUID)))
    return ds
