"""Unit tests for bridge.dimse.stored: the bounded map of where the bridge stored instances."""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from bridge.dimse.stored import StoredIndex


def test_locate_what_was_remembered() -> None:
    index = StoredIndex(capacity=3)
    index.remember("1.1", "1.2", "1.3")
    assert index.locate("1.1") == ("1.2", "1.3")
    assert index.locate("9.9") is None


def test_oldest_is_forgotten_first_and_a_repeat_refreshes() -> None:
    index = StoredIndex(capacity=2)
    index.remember("a", "s", "x")
    index.remember("b", "s", "x")
    index.remember("a", "s", "y")  # stored again: now the newest
    index.remember("c", "s", "x")
    assert len(index) == 2
    assert index.locate("b") is None
    assert index.locate("a") == ("s", "y")
    assert index.locate("c") == ("s", "x")


def test_remember_file_reads_study_and_series(tmp_path: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    index = StoredIndex()
    index.remember_file("1.2.3.4", path)
    assert index.locate("1.2.3.4") == ("1.2.3", "1.2.3.1")
