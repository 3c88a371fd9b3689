"""Deterministic small but varied DICOM test data (pydicom only) and its answer manifest."""

# Every UID comes from generate_uid(entropy_srcs=[...]), so each call of build_dataset()
# yields byte-identical datasets. write_dataset() writes them as DICOM Part 10 files and
# returns a Manifest from which tests compute the answers a C-FIND / QIDO-RS / C-GET should
# give. Manifest entry fields are named by DICOM keyword on purpose (study.StudyDate,
# series.Modality) so parametrised tests can getattr() them.
#
# The data set: 5 patients, 8 studies, 14 series, 37 instances.
#
#   PatientID  PatientName           StudyDate  series (modality x instances)
#   P001       DOE^JOHN              20230214   CT x3, CT x2
#   P001       DOE^JOHN              20240603   CT x2, MR x3
#   P002       DOE^JANE              20230721   MR x4, MR x2
#   P003       MÜLLER^HANS (UTF-8)   20231130   MR x3, MR x2      (ISO_IR 192)
#   P003       MÜLLER^HANS (UTF-8)   20240109   US x2             (ISO_IR 192)
#   P004       SMITH^ANNA            20240318   OT x2 (Secondary Capture)
#   P004       SMITH^ANNA            20240927   CT x3, CT x2, MR x5
#   P005       VAN DEN BERG^PIETER   20241205   CT x2
#
# QIDO-RS facts measured against Orthanc 1.10.1 + DICOMweb plugin 1.7 with this data set;
# test_orthanc_fixture.py asserts them, so a change of server behaviour shows up there:
# * /dicom-web/studies?ModalitiesInStudy=CT,MR (literal comma) matches studies having a CT
#   OR an MR series (6 of 8: not the US-only and OT-only ones). A comma list is the only
#   multi-value form that works.
# * ?ModalitiesInStudy=CT%5CMR and a literal backslash CT\MR both match NOTHING (0 studies).
# * ?PatientName=DOE^* (literal caret and star) matches DOE^JOHN and DOE^JANE (3 studies);
#   the percent-encoded DOE%5E%2A matches nothing (Orthanc does not percent-decode values).
# * Non-ASCII characters cannot be matched: M%C3%9CLLER* and MULLER* match nothing, raw UTF-8
#   bytes in the request line get HTTP 400; M*LLER^HANS matches. Matching is case-insensitive.
# * Every QIDO result carries SpecificCharacterSet (0008,0005) "ISO_IR 100", whatever the
#   stored instances say (P003 is ISO_IR 192); the JSON strings themselves are right Unicode.

from __future__ import annotations

import io
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's; entropy_srcs makes the rest fixed
ENTROPY_ROOT = "dimse-bridge-tests"

SOP_CLASS_FOR_MODALITY: dict[str, UID] = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "US": UltrasoundImageStorage,
    "OT": SecondaryCaptureImageStorage,
}


# --------------------------------------------------------------------------- specification


@dataclass(frozen=True)
class _SeriesSpec:
    modality: str
    count: int
    description: str


@dataclass(frozen=True)
class _StudySpec:
    date: str
    time: str
    accession: str
    description: str
    referring: str
    study_id: str
    series: tuple[_SeriesSpec, ...]


@dataclass(frozen=True)
class _PatientSpec:
    patient_id: str
    name: str
    birth_date: str
    sex: str
    charset: str | None
    studies: tuple[_StudySpec, ...]


def _s(modality: str, count: int, description: str) -> _SeriesSpec:
    return _SeriesSpec(modality, count, description)


PATIENTS: tuple[_PatientSpec, ...] = (
    _PatientSpec(
        "P001",
        "DOE^JOHN",
        "19600312",
        "M",
        None,
        (
            _StudySpec(
                "20230214",
                "081530",
                "ACC23001",
                "CT THORAX",
                "HOUSE^GREGORY",
                "1",
                (_s("CT", 3, "AXIAL 5MM"), _s("CT", 2, "CORONAL")),
            ),
            _StudySpec(
                "20240603",
                "141005",
                "ACC24017",
                "CT MR ABDOMEN",
                "HOUSE^GREGORY",
                "2",
                (_s("CT", 2, "ABD PORTAL"), _s("MR", 3, "T2 AX")),
            ),
        ),
    ),
    _PatientSpec(
        "P002",
        "DOE^JANE",
        "19750921",
        "F",
        None,
        (
            _StudySpec(
                "20230721",
                "093000",
                "ACC23044",
                "MR KNEE LEFT",
                "WILSON^JAMES",
                "1",
                (_s("MR", 4, "PD SAG"), _s("MR", 2, "T1 COR")),
            ),
        ),
    ),
    _PatientSpec(
        "P003",
        "MÜLLER^HANS",
        "19821105",
        "M",
        "ISO_IR 192",
        (
            _StudySpec(
                "20231130",
                "101500",
                "ACC23090",
                "Schädel MRT",
                "WEIß^JÜRGEN",
                "1",
                (_s("MR", 3, "T1 AX"), _s("MR", 2, "FLAIR")),
            ),
            _StudySpec(
                "20240109",
                "160045",
                "ACC24002",
                "US ABDOMEN",
                "WEIß^JÜRGEN",
                "2",
                (_s("US", 2, "LIVER"),),
            ),
        ),
    ),
    _PatientSpec(
        "P004",
        "SMITH^ANNA",
        "19901230",
        "F",
        None,
        (
            _StudySpec(
                "20240318",
                "110000",
                "ACC24031",
                "SCREEN CAPTURE",
                "CUDDY^LISA",
                "1",
                (_s("OT", 2, "REPORT PAGES"),),
            ),
            _StudySpec(
                "20240927",
                "073045",
                "ACC24077",
                "CT MR HEAD",
                "CUDDY^LISA",
                "2",
                (_s("CT", 3, "HEAD AX"), _s("CT", 2, "HEAD BONE"), _s("MR", 5, "DWI")),
            ),
        ),
    ),
    _PatientSpec(
        "P005",
        "VAN DEN BERG^PIETER",
        "19451201",
        "M",
        None,
        (
            _StudySpec(
                "20241205", "235959", "ACC24100", "CT SINUS", "", "1", (_s("CT", 2, "SINUS"),)
            ),
        ),
    ),
)


def _uid(*parts: str) -> UID:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[ENTROPY_ROOT, *parts])


# --------------------------------------------------------------------------- pixel data


@lru_cache(maxsize=8)
def _base_image(rows: int, columns: int, bits: int) -> bytes:
    """A smooth diagonal gradient, cached per shape (large images are built once)."""
    top = 4000 if bits == 16 else 250
    row_values = [(x * 37) % top for x in range(columns)]
    values = array("H" if bits == 16 else "B")
    for y in range(rows):
        shift = (y * 91) % top
        values.extend((v + shift) % top for v in row_values)
    if bits == 16 and sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def _pixels(rows: int, columns: int, bits: int, seed: int) -> bytes:
    """The base gradient with the first row overwritten by seed-derived values (unique data)."""
    data = bytearray(_base_image(rows, columns, bits))
    top = 4000 if bits == 16 else 250
    first = array("H" if bits == 16 else "B", ((seed * 131 + x * 7) % top for x in range(columns)))
    if bits == 16 and sys.byteorder == "big":
        first.byteswap()
    raw = first.tobytes()
    data[: len(raw)] = raw
    return bytes(data)


# --------------------------------------------------------------------------- dataset building


def _file_meta(sop_class: UID, sop_instance: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DIMSEBRIDGE_TEST"
    return meta


def make_instance(
    *,
    patient_id: str,
    patient_name: str,
    birth_date: str,
    sex: str,
    charset: str | None,
    study_uid: UID,
    study_date: str,
    study_time: str,
    accession: str,
    study_description: str,
    referring: str,
    study_id: str,
    series_uid: UID,
    series_number: int,
    series_description: str,
    modality: str,
    frame_of_reference_uid: UID,
    sop_instance_uid: UID,
    instance_number: int,
    rows: int = 16,
    columns: int = 16,
) -> Dataset:
    """One image instance (CT/MR 16-bit, US/OT 8-bit MONOCHROME2) with valid file meta."""
    sop_class = SOP_CLASS_FOR_MODALITY[modality]
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_instance_uid)
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY", "AXIAL"]
        if modality in ("CT", "MR")
        else ["DERIVED" if modality == "OT" else "ORIGINAL", "PRIMARY"]
    )
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = study_time
    ds.SeriesTime = study_time
    ds.ContentTime = study_time
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "DIMSE-BRIDGE TESTS"
    ds.InstitutionName = "TEST HOSPITAL"
    ds.ReferringPhysicianName = referring
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    if modality == "OT":
        ds.ConversionType = "WSD"
    else:
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
    if modality in ("CT", "MR"):
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [-120.0, -120.0, 5.0 * instance_number]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 5.0
        ds.SliceLocation = 5.0 * instance_number
    if modality == "CT":
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
    if modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = 20.0
        ds.RepetitionTime = 500.0
        ds.MagneticFieldStrength = 1.5
    bits = 16 if modality in ("CT", "MR") else 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    seed = int(str(sop_instance_uid).replace(".", "")[-6:])
    ds.PixelData = _pixels(rows, columns, bits, seed)
    ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    return ds


def build_dataset() -> list[Dataset]:
    """The whole fixed data set, ordered patient, study, series, instance (37 datasets)."""
    out: list[Dataset] = []
    for patient in PATIENTS:
        for s_index, study in enumerate(patient.studies, start=1):
            study_key = f"{patient.patient_id}.{s_index}"
            study_uid = _uid("study", study_key)
            for r_index, series in enumerate(study.series, start=1):
                series_key = f"{study_key}.{r_index}"
                series_uid = _uid("series", series_key)
                frame_uid = _uid("frame", series_key)
                for i_number in range(1, series.count + 1):
                    out.append(
                        make_instance(
                            patient_id=patient.patient_id,
                            patient_name=patient.name,
                            birth_date=patient.birth_date,
                            sex=patient.sex,
                            charset=patient.charset,
                            study_uid=study_uid,
                            study_date=study.date,
                            study_time=study.time,
                            accession=study.accession,
                            study_description=study.description,
                            referring=study.referring,
                            study_id=study.study_id,
                            series_uid=series_uid,
                            series_number=r_index,
                            series_description=series.description,
                            modality=series.modality,
                            frame_of_reference_uid=frame_uid,
                            sop_instance_uid=_uid("instance", f"{series_key}.{i_number}"),
                            instance_number=i_number,
                        )
                    )
    return out


def make_ct_series(
    n: int,
    *,
    rows: int = 16,
    columns: int = 16,
    key: str = "bulk",
    patient_id: str = "BULK001",
    patient_name: str = "BULK^SERIES",
    study_date: str = "20240401",
    study_description: str = "BULK CT",
    accession: str = "ACCBULK1",
) -> list[Dataset]:
    """`n` CT instances of one new study/series (deterministic per `key`), rows x columns.

    512 x 512 gives ~0.5 MB per instance, the size the retrieve benchmarks use. Different
    `key` values give disjoint UIDs, so several bulk series can live in one server.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    study_uid = _uid("bulk-study", key)
    series_uid = _uid("bulk-series", key)
    frame_uid = _uid("bulk-frame", key)
    return [
        make_instance(
            patient_id=patient_id,
            patient_name=patient_name,
            birth_date="19700101",
            sex="O",
            charset=None,
            study_uid=study_uid,
            study_date=study_date,
            study_time="120000",
            accession=accession,
            study_description=study_description,
            referring="",
            study_id="1",
            series_uid=series_uid,
            series_number=1,
            series_description=f"BULK {rows}x{columns}",
            modality="CT",
            frame_of_reference_uid=frame_uid,
            sop_instance_uid=_uid("bulk-instance", key, str(i)),
            instance_number=i,
            rows=rows,
            columns=columns,
        )
        for i in range(1, n + 1)
    ]


def to_bytes(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (preamble, File Meta, Explicit VR Little Endian)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_datasets(datasets: Iterable[Dataset], directory: str | Path) -> list[Path]:
    """Write each dataset to ``directory/<SOPInstanceUID>.dcm``; returns the paths in order."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = root / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(to_bytes(ds))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class InstanceEntry:
    PatientID: str
    StudyInstanceUID: str
    SeriesInstanceUID: str
    SOPInstanceUID: str
    SOPClassUID: str
    InstanceNumber: int
    Rows: int
    Columns: int
    path: Path | None


@dataclass(frozen=True)
class SeriesEntry:
    PatientID: str
    StudyInstanceUID: str
    SeriesInstanceUID: str
    Modality: str
    SeriesNumber: int
    SeriesDescription: str
    NumberOfSeriesRelatedInstances: int


@dataclass(frozen=True)
class StudyEntry:
    PatientID: str
    PatientName: str
    PatientBirthDate: str
    PatientSex: str
    SpecificCharacterSet: str
    StudyInstanceUID: str
    StudyDate: str
    StudyTime: str
    AccessionNumber: str
    StudyDescription: str
    ReferringPhysicianName: str
    StudyID: str
    ModalitiesInStudy: tuple[str, ...]  # sorted, unique
    NumberOfStudyRelatedSeries: int
    NumberOfStudyRelatedInstances: int


@dataclass(frozen=True)
class PatientEntry:
    PatientID: str
    PatientName: str
    PatientBirthDate: str
    PatientSex: str
    SpecificCharacterSet: str
    NumberOfPatientRelatedStudies: int
    NumberOfPatientRelatedSeries: int
    NumberOfPatientRelatedInstances: int


@dataclass(frozen=True)
class Manifest:
    """What the data set contains, for computing expected query/retrieve answers."""

    patients: tuple[PatientEntry, ...]
    studies: tuple[StudyEntry, ...]
    series: tuple[SeriesEntry, ...]
    instances: tuple[InstanceEntry, ...]
    directory: Path | None = None

    def patient(self, patient_id: str) -> PatientEntry:
        return next(p for p in self.patients if p.PatientID == patient_id)

    def study(self, study_uid: str) -> StudyEntry:
        return next(s for s in self.studies if s.StudyInstanceUID == study_uid)

    def one_series(self, series_uid: str) -> SeriesEntry:
        return next(s for s in self.series if s.SeriesInstanceUID == series_uid)

    def instance(self, sop_instance_uid: str) -> InstanceEntry:
        return next(i for i in self.instances if i.SOPInstanceUID == sop_instance_uid)

    def studies_of(self, patient_id: str) -> list[StudyEntry]:
        return [s for s in self.studies if s.PatientID == patient_id]

    def series_of(self, study_uid: str) -> list[SeriesEntry]:
        return [s for s in self.series if s.StudyInstanceUID == study_uid]

    def instances_of(
        self, *, study_uid: str | None = None, series_uid: str | None = None
    ) -> list[InstanceEntry]:
        return [
            i
            for i in self.instances
            if (study_uid is None or i.StudyInstanceUID == study_uid)
            and (series_uid is None or i.SeriesInstanceUID == series_uid)
        ]

    @property
    def study_uids(self) -> set[str]:
        return {s.StudyInstanceUID for s in self.studies}

    @property
    def paths(self) -> list[Path]:
        return [i.path for i in self.instances if i.path is not None]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


def manifest_from_datasets(
    datasets: Sequence[Dataset],
    paths: Sequence[Path] | None = None,
    directory: Path | None = None,
) -> Manifest:
    """Build the manifest from datasets (and their file paths, same order, if written)."""
    if paths is not None and len(paths) != len(datasets):
        raise ValueError("paths must match datasets one to one")
    instances: list[InstanceEntry] = []
    series_rows: dict[str, list[Dataset]] = {}
    study_rows: dict[str, list[Dataset]] = {}
    patient_rows: dict[str, list[Dataset]] = {}
    for index, ds in enumerate(datasets):
        instances.append(
            InstanceEntry(
                PatientID=ds.PatientID,
                StudyInstanceUID=ds.StudyInstanceUID,
                SeriesInstanceUID=ds.SeriesInstanceUID,
                SOPInstanceUID=ds.SOPInstanceUID,
                SOPClassUID=ds.SOPClassUID,
                InstanceNumber=int(ds.InstanceNumber),
                Rows=int(ds.Rows),
                Columns=int(ds.Columns),
                path=None if paths is None else Path(paths[index]),
            )
        )
        series_rows.setdefault(ds.SeriesInstanceUID, []).append(ds)
        study_rows.setdefault(ds.StudyInstanceUID, []).append(ds)
        patient_rows.setdefault(ds.PatientID, []).append(ds)

    series = tuple(
        SeriesEntry(
            PatientID=rows[0].PatientID,
            StudyInstanceUID=rows[0].StudyInstanceUID,
            SeriesInstanceUID=uid,
            Modality=rows[0].Modality,
            SeriesNumber=int(rows[0].SeriesNumber),
            SeriesDescription=_text(rows[0], "SeriesDescription"),
            NumberOfSeriesRelatedInstances=len(rows),
        )
        for uid, rows in series_rows.items()
    )
    studies = tuple(
        StudyEntry(
            PatientID=rows[0].PatientID,
            PatientName=_text(rows[0], "PatientName"),
            PatientBirthDate=_text(rows[0], "PatientBirthDate"),
            PatientSex=_text(rows[0], "PatientSex"),
            SpecificCharacterSet=_text(rows[0], "SpecificCharacterSet"),
            StudyInstanceUID=uid,
            StudyDate=_text(rows[0], "StudyDate"),
            StudyTime=_text(rows[0], "StudyTime"),
            AccessionNumber=_text(rows[0], "AccessionNumber"),
            StudyDescription=_text(rows[0], "StudyDescription"),
            ReferringPhysicianName=_text(rows[0], "ReferringPhysicianName"),
            StudyID=_text(rows[0], "StudyID"),
            ModalitiesInStudy=tuple(sorted({r.Modality for r in rows})),
            NumberOfStudyRelatedSeries=len({r.SeriesInstanceUID for r in rows}),
            NumberOfStudyRelatedInstances=len(rows),
        )
        for uid, rows in study_rows.items()
    )
    patients = tuple(
        PatientEntry(
            PatientID=pid,
            PatientName=_text(rows[0], "PatientName"),
            PatientBirthDate=_text(rows[0], "PatientBirthDate"),
            PatientSex=_text(rows[0], "PatientSex"),
            SpecificCharacterSet=_text(rows[0], "SpecificCharacterSet"),
            NumberOfPatientRelatedStudies=len({r.StudyInstanceUID for r in rows}),
            NumberOfPatientRelatedSeries=len({r.SeriesInstanceUID for r in rows}),
            NumberOfPatientRelatedInstances=len(rows),
        )
        for pid, rows in patient_rows.items()
    )
    return Manifest(
        patients=patients,
        studies=studies,
        series=series,
        instances=tuple(instances),
        directory=directory,
    )


def write_dataset(directory: str | Path) -> Manifest:
    """Write :func:`build_dataset` into `directory` and return its manifest."""
    datasets = build_dataset()
    paths = write_datasets(datasets, directory)
    return manifest_from_datasets(datasets, paths, Path(directory))
