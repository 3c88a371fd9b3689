"""The test studies: generated CT instances, loaded into Orthanc or written as files."""

from __future__ import annotations

import io
import time
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import httpx
import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from bench.common import MB, BenchError, log
from tests.integration.orthanc import OrthancServer

UID_PREFIX = "1.2.826.0.1.3680043.8.498."
ENTROPY_ROOT = "dimse-bridge-bench"
FIND_DATE_RANGE = "20200101-20201231"  # the tiny C-FIND studies, and nothing else


@dataclass(frozen=True)
class Study:
    """One generated study: a single CT series of `count` instances, rows x columns."""

    key: str
    count: int
    rows: int = 512
    columns: int = 512
    patient_id: str = "BENCH"
    patient_name: str = "BENCH^PATIENT"
    study_date: str = "20240401"
    description: str = "BENCH CT"
    total_bytes: int = 0  # Part 10 bytes of all instances, filled in once generated

    @property
    def study_uid(self) -> str:
        return _uid("study", self.key)

    @property
    def series_uid(self) -> str:
        return _uid("series", self.key)

    def instance_uid(self, number: int) -> str:
        return _uid("instance", self.key, str(number))

    @property
    def megabytes(self) -> float:
        return self.total_bytes / MB


def _uid(*parts: str) -> str:
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=[ENTROPY_ROOT, *parts]))


class PixelPool:
    """Deterministic pseudo-random 12-bit pixels, cheap per instance.

    One pool of random words is drawn once (fixed seed); instance `n` takes a window at an
    offset derived from `n`, so every instance differs and none compresses trivially.
    """

    def __init__(self, seed: int = 20240401, words: int = 4 * 1024 * 1024) -> None:
        rng = np.random.default_rng(seed)
        self.pool = rng.integers(0, 4096, size=words, dtype="<u2")

    def frame(self, number: int, rows: int, columns: int) -> bytes:
        size = rows * columns
        span = len(self.pool) - size
        start = (number * 104_729) % span
        return bytes(self.pool[start : start + size].tobytes())


class InstanceFactory:
    """Encodes the instances of one study as Part 10 bytes (one template data set)."""

    def __init__(self, study: Study, pool: PixelPool, seq: int) -> None:
        self.study = study
        self.pool = pool
        self.seq = seq  # distinguishes the pixel windows of different studies
        ds = Dataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "DIMSEBRIDGEBENCH"
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = f"A{zlib.crc32(study.key.encode()) % 10**8:08d}"
        ds.Modality = "CT"
        ds.Manufacturer = "DIMSE-BRIDGE BENCH"
        ds.InstitutionName = "BENCH HOSPITAL"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = study.description
        ds.SeriesDescription = f"BENCH {study.rows}x{study.columns}"
        ds.PatientName = study.patient_name
        ds.PatientID = study.patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study.study_uid
        ds.SeriesInstanceUID = study.series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.FrameOfReferenceUID = _uid("frame", study.key)
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1.0
        ds.KVP = 120
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = study.rows
        ds.Columns = study.columns
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        self.ds = ds

    def encode(self, number: int) -> bytes:
        """Instance `number` (1-based) as a Part 10 file."""
        ds = self.ds
        uid = UID(self.study.instance_uid(number))
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPInstanceUID = uid
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [-128.0, -128.0, 1.0 * number]
        ds.SliceLocation = 1.0 * number
        ds.PixelData = self.pool.frame(
            self.seq * 7919 + number, self.study.rows, self.study.columns
        )
        ds["PixelData"].VR = "OW"
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()

    def __iter__(self) -> Iterator[bytes]:
        for number in range(1, self.study.count + 1):
            yield self.encode(number)


def large_instance(study: Study, pool: PixelPool, frames: int) -> bytes:
    """One multi-frame instance of `frames` rows x columns frames (the large-instance row:
    40 frames of 1024 x 1024 x 16-bit are 80 MiB of pixel data)."""
    factory = InstanceFactory(study, pool, 90)
    ds = factory.ds
    uid = UID(study.instance_uid(1))
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPInstanceUID = uid
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    ds.PixelData = b"".join(pool.frame(n, study.rows, study.columns) for n in range(frames))
    ds["PixelData"].VR = "OW"
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def upload(orthanc: OrthancServer, payloads: Iterator[bytes], workers: int = 4) -> tuple[int, int]:
    """POST every payload to Orthanc's /instances, `workers` at a time; (count, bytes)."""
    count = 0
    total = 0
    client = httpx.Client(
        base_url=orthanc.http_url,
        timeout=120.0,
        headers={"Accept-Encoding": "identity", "Content-Type": "application/dicom"},
        limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
    )

    def post(body: bytes) -> None:
        for attempt in range(2):
            try:
                response = client.post("/instances", content=body)
            except httpx.TransportError:
                if attempt:
                    raise
                continue
            if response.status_code != 200:
                raise BenchError(f"POST /instances: HTTP {response.status_code} {response.text}")
            return

    pending: deque[Future[None]] = deque()
    with client, ThreadPoolExecutor(max_workers=workers) as pool:
        for body in payloads:
            while len(pending) >= workers * 2:
                pending.popleft().result()
            pending.append(pool.submit(post, body))
            count += 1
            total += len(body)
        while pending:
            pending.popleft().result()
    return count, total


def upload_large(orthanc: OrthancServer, payload: bytes, piece: int = 1024 * 1024) -> None:
    """POST one large file to /instances in 1 MiB pieces (with its Content-Length): httpx
    sending one bytes object re-slices what is left after every socket send, quadratic
    in the size (a 2 GB body never finished)."""
    view = memoryview(payload)
    pieces = (bytes(view[i : i + piece]) for i in range(0, len(view), piece))
    response = httpx.post(
        f"{orthanc.http_url}/instances",
        content=pieces,
        headers={"Content-Type": "application/dicom", "Content-Length": str(len(payload))},
        timeout=600.0,
    )
    if response.status_code != 200:
        raise BenchError(f"POST /instances: HTTP {response.status_code} {response.text}")


def load_study(orthanc: OrthancServer, study: Study, pool: PixelPool, seq: int) -> Study:
    started = time.perf_counter()
    count, total = upload(orthanc, iter(InstanceFactory(study, pool, seq)))
    seconds = time.perf_counter() - started
    log(
        f"loaded study {study.key}: {count} instances, {total / MB:.0f} MB in {seconds:.1f} s "
        f"({count / seconds:.0f} inst/s, {total / MB / seconds:.0f} MB/s)"
    )
    return Study(**{**study.__dict__, "total_bytes": total})


def write_study(
    study: Study, pool: PixelPool, seq: int, directory: Path
) -> tuple[Study, list[Path]]:
    """Write the study as Part 10 files (the C-STORE input); not loaded into Orthanc."""
    directory.mkdir(parents=True, exist_ok=True)
    factory = InstanceFactory(study, pool, seq)
    paths: list[Path] = []
    total = 0
    for number in range(1, study.count + 1):
        data = factory.encode(number)
        path = directory / f"{number:05d}.dcm"
        path.write_bytes(data)
        paths.append(path)
        total += len(data)
    return Study(**{**study.__dict__, "total_bytes": total}), paths


def find_study_payloads(count: int, pool: PixelPool) -> Iterator[bytes]:
    """`count` tiny single-instance studies, one patient each, all dated in 2020."""
    first = date(2020, 1, 1)
    for index in range(count):
        study = Study(
            key=f"find-{index}",
            count=1,
            rows=16,
            columns=16,
            patient_id=f"FIND{index:05d}",
            patient_name=f"FIND^PATIENT{index:05d}",
            study_date=(first + timedelta(days=index % 366)).strftime("%Y%m%d"),
            description=f"FIND BENCH {index}",
        )
        yield InstanceFactory(study, pool, 10_000 + index).encode(1)


def delete_study(orthanc: OrthancServer, study: Study) -> None:
    for orthanc_id in lookup_study(orthanc, study):
        response = orthanc.client.delete(f"/studies/{orthanc_id}")
        if response.status_code != 200:
            raise BenchError(f"DELETE /studies/{orthanc_id}: HTTP {response.status_code}")


def lookup_study(orthanc: OrthancServer, study: Study) -> list[str]:
    response = orthanc.client.post("/tools/lookup", content=study.study_uid.encode())
    if response.status_code != 200:
        raise BenchError(f"POST /tools/lookup: HTTP {response.status_code}")
    return [str(m["ID"]) for m in response.json() if m.get("Type") == "Study"]


def study_instance_count(orthanc: OrthancServer, study: Study) -> int:
    total = 0
    for orthanc_id in lookup_study(orthanc, study):
        response = orthanc.client.get(f"/studies/{orthanc_id}/instances")
        total += len(response.json())
    return total
