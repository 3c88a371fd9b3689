#!/usr/bin/env python3
"""dimse-bridge benchmark: the bridge against Orthanc's own DIMSE services, on loopback.

Run from the repository root (Orthanc, orthanc-dicomweb, dcmtk and the package with its
test extras installed)::

    python bench/run.py                 # full run: 300 and 1,000 instance studies, ~1 GB study
    python bench/run.py --quick         # smoke run: 60/120 instances, 200 big, 1 repetition

One Orthanc (DICOMweb plugin, TCP_NODELAY=1) is started in a temporary directory and loaded
with generated CT studies (512x512x16-bit, ~0.5 MB per instance, pseudo-random pixels so
nothing compresses trivially). Every figure is the median of ``--reps`` runs; clients
discard what they receive. See bench/README.md for what each row measures and the targets.
"""

# ruff: noqa: E402 - the repository root must be on sys.path before the project imports

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

try:
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
        ImplicitVRLittleEndian,
        generate_uid,
    )
    from pynetdicom import AE, _config, build_role, evt

    from bridge.translate.retrieve import INSTANCE_FIELDS
    from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
    from tests.integration.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary
    from tests.integration.tools import dcmtk_path, free_port
except ImportError as _exc:  # pragma: no cover - depends on the machine
    sys.exit(
        f"bench/run.py: missing prerequisite: {_exc}\n"
        "Install the package with its test extras from the repository root "
        "(python -m pip install -e '.[test]') and run this from there."
    )

_config.LOG_HANDLER_LEVEL = "none"  # pynetdicom: no per-PDU/per-message logging

UID_PREFIX = "1.2.826.0.1.3680043.8.498."
ENTROPY_ROOT = "dimse-bridge-bench"
SCU_AET = "BENCHSCU"  # the pynetdicom SCU
GETSCU_AET = "GETSCU"
STORESCU_AET = "STORESCU"
FINDSCU_AET = "FINDSCU"
BRIDGE_AET = "DIMSE_BRIDGE"
HOST = "127.0.0.1"
MB = 1e6
# pynetdicom's sop_class attributes are generated at run time (untyped): spell them out.
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.2.3")
SUCCESS = 0x0000
PENDING = (0xFF00, 0xFF01)
FIND_DATE_RANGE = "20200101-20201231"  # the tiny C-FIND studies, and nothing else
DICOM_JSON = "application/dicom+json"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
TOOL_TIMEOUT = 900.0

TARGETS: dict[str, str] = {
    "cget_pynetdicom": ">= 1.0x Orthanc-native -> pynetdicom",
    "cget_getscu": ">= 0.25x Orthanc-native -> getscu (goal 0.6x)",
    "latency": ">= 5x the fetch-ahead-disabled bridge",
    "rss_big": "<= 250 MB",
    "rss_growth": "<= 1.5x the small-study figure",
    "first_store": "<= QIDO + one WADO-RS + 50 ms",
    "store": ">= 0.8x storescu straight to Orthanc",
    "find": "<= 1.5x Orthanc-native time",
}


class BenchError(RuntimeError):
    """A benchmark step failed (a client saw an error, a count did not add up...)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# =========================================================================== data


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


# =========================================================================== clients


def _nodelay(event: Any) -> None:
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class GetRun:
    seconds: float  # C-GET request sent -> final response received
    first_store: float  # C-GET request sent -> first C-STORE sub-operation received


def cget_pynetdicom(port: int, called: str, study: Study, timeout: float = 600.0) -> GetRun:
    """C-GET the study with a pynetdicom SCU that discards each instance (0x0000)."""
    first: list[float] = []
    stored = [0]

    def on_store(event: Any) -> int:
        if not first:
            first.append(time.perf_counter())
        stored[0] += 1
        return SUCCESS

    ae = AE(ae_title=SCU_AET)
    ae.acse_timeout = 30
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(
        HOST,
        port,
        ae_title=called,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, _nodelay)],
    )
    if not assoc.is_established:
        raise BenchError(f"pynetdicom C-GET: association with {called} on port {port} failed")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study.study_uid
    final: Dataset | None = None
    try:
        started = time.perf_counter()
        for status, _identifier in assoc.send_c_get(
            identifier, StudyRootQueryRetrieveInformationModelGet
        ):
            if status is None or "Status" not in status:
                raise BenchError("pynetdicom C-GET: no response (timeout or abort)")
            if int(status.Status) not in PENDING:
                final = status
        ended = time.perf_counter()
    finally:
        close_association(assoc, ended=final is not None)
    if final is None or int(final.Status) != SUCCESS or stored[0] != study.count:
        state = "none" if final is None else f"0x{int(final.Status):04X}"
        raise BenchError(
            f"pynetdicom C-GET from {called}: final status {state}, "
            f"{stored[0]}/{study.count} instances received"
        )
    return GetRun(ended - started, first[0] - started)


def close_association(assoc: Any, *, ended: bool) -> None:
    """Release after a final response; abort (at once) when interrupted or failed midway."""
    if assoc.is_established:
        if ended:
            assoc.release()
        else:
            assoc.abort()


_COMPLETED = re.compile(r"Number of Completed Suboperations\s*:\s*(\d+)")


def cget_getscu(port: int, called: str, study: Study, workdir: Path) -> float:
    """C-GET the study with dcmtk's getscu --ignore (TCP_NODELAY=1); wall-clock seconds."""
    command = [
        tool("getscu"),
        "-v",  # for the final counts; a few short lines per instance
        "-aet",
        GETSCU_AET,
        "-aec",
        called,
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study.study_uid}",
        "--ignore",
        HOST,
        str(port),
    ]
    started = time.perf_counter()
    result = run_tool(command, workdir)
    seconds = time.perf_counter() - started
    counts = _COMPLETED.findall(result.stderr + result.stdout)
    if result.returncode != 0 or not counts or int(counts[-1]) != study.count:
        raise BenchError(
            f"getscu from {called}: exit {result.returncode}, completed "
            f"{counts[-1] if counts else '?'}/{study.count}\n{tail(result)}"
        )
    return seconds


def storescu(port: int, called: str, files: Sequence[Path], workdir: Path) -> float:
    """Send the files on one association with dcmtk's storescu (TCP_NODELAY=1)."""
    command = [tool("storescu"), "-aet", STORESCU_AET, "-aec", called, HOST, str(port)]
    command += [str(path) for path in files]
    started = time.perf_counter()
    result = run_tool(command, workdir)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"storescu to {called}: exit {result.returncode}\n{tail(result)}")
    return seconds


def cfind_pynetdicom(port: int, called: str, expected: int) -> float:
    """STUDY-level C-FIND matching the tiny studies' date range; seconds to the final response."""
    ae = AE(ae_title=FINDSCU_AET)
    ae.acse_timeout = 30
    ae.dimse_timeout = 300
    ae.network_timeout = 300
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(HOST, port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    if not assoc.is_established:
        raise BenchError(f"C-FIND: association with {called} on port {port} failed")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyDate = FIND_DATE_RANGE
    for keyword in (
        "PatientName",
        "PatientID",
        "StudyTime",
        "AccessionNumber",
        "StudyDescription",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    ):
        setattr(query, keyword, "")
    matches = 0
    final = None
    try:
        started = time.perf_counter()
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            if status is None or "Status" not in status:
                raise BenchError("C-FIND: no response (timeout or abort)")
            if int(status.Status) in PENDING:
                if identifier is not None:
                    matches += 1
            else:
                final = int(status.Status)
        seconds = time.perf_counter() - started
    finally:
        close_association(assoc, ended=final is not None)
    if final != SUCCESS or matches != expected:
        raise BenchError(
            f"C-FIND to {called}: final status {final}, {matches} matches, expected {expected}"
        )
    return seconds


def wado_all(base_url: str, study: Study, concurrency: int) -> float:
    """WADO-RS every instance of the study (as stored, no gzip), `concurrency` at a time."""
    urls = [
        f"{base_url}/studies/{study.study_uid}/series/{study.series_uid}"
        f"/instances/{study.instance_uid(number)}"
        for number in range(1, study.count + 1)
    ]
    client = httpx.Client(
        timeout=60.0,
        headers={"Accept-Encoding": "identity", "Accept": WADO_ACCEPT},
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )

    def fetch(url: str) -> int:
        for attempt in range(2):  # Orthanc drops idle keep-alive connections after 1 s
            try:
                size = 0
                with client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise BenchError(f"WADO-RS {url}: HTTP {response.status_code}")
                    for chunk in response.iter_raw(256 * 1024):
                        size += len(chunk)
                return size
            except httpx.TransportError:
                if attempt:
                    raise
        return 0

    with client, ThreadPoolExecutor(max_workers=concurrency) as pool:
        started = time.perf_counter()
        sizes = list(pool.map(fetch, urls))
        seconds = time.perf_counter() - started
    if min(sizes) < study.total_bytes / study.count:
        raise BenchError("WADO-RS: an answer was shorter than its instance")
    return seconds


def tool(name: str) -> str:
    path = dcmtk_path(name)
    if path is None:
        raise BenchError(f"dcmtk's {name} is missing (apt-get install dcmtk)")
    return str(path)


def run_tool(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TOOL_TIMEOUT,
        cwd=cwd,
        env=dict(os.environ, TCP_NODELAY="1"),
        stdin=subprocess.DEVNULL,
    )


def tail(result: subprocess.CompletedProcess[str], chars: int = 2000) -> str:
    return f"--- stdout ---\n{result.stdout[-chars:]}\n--- stderr ---\n{result.stderr[-chars:]}"


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a process (VmHWM), in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


# =========================================================================== processes


class ProxyProcess:
    """tests/faults/proxy.py's FaultProxy in a child process (its own GIL), fixed delay."""

    def __init__(self, upstream: str, delay_s: float, log_path: Path) -> None:
        self.delay_s = delay_s
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--proxy-child",
                upstream,
                str(delay_s),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO_ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.isdigit():
            self.stop()
            raise BenchError(f"the delaying proxy did not start (see {log_path})")
        self.port = int(line)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def proxy_child(upstream: str, delay_s: float) -> int:
    """Entry point of the proxy process: print the port, relay until stdin closes."""
    from tests.faults.proxy import FaultProxy

    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    proxy = FaultProxy(upstream)
    proxy.delay_s = delay_s
    proxy.start()
    try:
        print(proxy.port, flush=True)
        with contextlib.suppress(Exception):
            while sys.stdin.buffer.read(4096):
                pass
    finally:
        proxy.stop()
    return 0


class Lab:
    """Everything started by the benchmark; `close()` stops it all (reverse order)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._stack = contextlib.ExitStack()
        self.orthanc: OrthancServer | None = None

    def start_orthanc(self) -> OrthancServer:
        orthanc = OrthancServer(
            self.workdir / "orthanc",
            scu_ae_titles=(SCU_AET, GETSCU_AET, STORESCU_AET, FINDSCU_AET),
        )
        self._stack.callback(orthanc.stop)
        orthanc.start()  # TCP_NODELAY=1 in its environment
        self.orthanc = orthanc
        return orthanc

    def start_bridge(self, name: str, dicomweb_url: str, fetches: int) -> BridgeProcess:
        text = bridge_config(
            dicomweb_url,
            free_port(),
            timeout=60,
            network_timeout=300,
            shutdown_timeout=5,
            logging={"level": "WARNING"},
            retrieve={"max_concurrent_fetches": fetches},
        )
        bridge = start_bridge(text, self.workdir / "bridges", name=name)
        self._stack.callback(bridge.stop, timeout=10.0)
        return bridge

    def stop_bridge(self, bridge: BridgeProcess) -> None:
        code = bridge.stop()
        if code not in (0, -signal.SIGTERM):
            log(f"warning: bridge {bridge.config_path.stem} exited with status {code}")
        problems = [
            line
            for line in bridge.log_text().splitlines()
            if " ERROR " in line or "Traceback" in line
        ]
        if problems:
            log(f"warning: bridge {bridge.config_path.stem} logged errors, e.g. {problems[0]}")

    def start_proxy(self, delay_s: float) -> ProxyProcess:
        assert self.orthanc is not None
        proxy = ProxyProcess(
            self.orthanc.http_url, delay_s, self.workdir / f"proxy-{delay_s * 1000:.0f}ms.log"
        )
        self._stack.callback(proxy.stop)
        return proxy

    def print_log_tails(self, lines: int = 15) -> None:
        """The end of every log (Orthanc, bridges, proxies), to diagnose a failure."""
        for path in sorted(self.workdir.rglob("*.log")):
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            print(f"--- {path.relative_to(self.workdir)} (last {lines} lines) ---", file=sys.stderr)
            print("\n".join(text), file=sys.stderr)

    def close(self) -> None:
        self._stack.close()


# =========================================================================== results


@dataclass
class Row:
    """One throughput measurement: the same operation repeated, median reported."""

    key: str
    label: str
    instances: int
    megabytes: float
    runs: list[float] = field(default_factory=list)
    # CPU seconds per run of each process involved: bridge, orthanc, proxy, client.
    cpu: dict[str, list[float]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.seconds if self.runs else float("nan")

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds if self.runs else float("nan")

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "instances": self.instances,
            "megabytes": round(self.megabytes, 3),
            "seconds": _round(self.seconds),
            "instances_per_s": _round(self.inst_per_s, 1),
            "mb_per_s": _round(self.mb_per_s, 1),
            "runs": [_round(r) for r in self.runs],
            "cpu_ms_per_instance": self.cpu_ms_per_instance(),
        }

    def cpu_ms_per_instance(self) -> dict[str, float]:
        """Median CPU time per instance (per match for C-FIND) of each process, in ms."""
        return {
            name: round(statistics.median(values) * 1000 / self.instances, 2)
            for name, values in self.cpu.items()
            if values
        }


@dataclass
class Check:
    """A figure compared with its target."""

    key: str
    label: str
    value: float
    unit: str
    target: str
    ok: bool | None  # None: informative only
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "value": _round(self.value),
            "unit": self.unit,
            "target": self.target,
            "met": self.ok,
            "detail": self.detail,
        }


def _round(value: float, digits: int = 4) -> float | None:
    return None if value != value else round(value, digits)  # NaN -> null


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.checks: list[Check] = []
        self.figures: dict[str, Any] = {}
        self.loads: list[dict[str, Any]] = []

    def row(self, key: str, label: str, study: Study) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, label, study.count, study.megabytes)
        return self.rows[key]

    def ratio(
        self, key: str, label: str, num: str, den: str, target: float | None, tgt: str
    ) -> None:
        """Throughput ratio rows[num] / rows[den], at least `target` (None: informative)."""
        a, b = self.rows.get(num), self.rows.get(den)
        if a is None or b is None or not a.runs or not b.runs:
            return
        value = a.inst_per_s / b.inst_per_s
        ok = None if target is None else value >= target
        detail = f"{a.inst_per_s:.1f} / {b.inst_per_s:.1f} inst/s"
        self.checks.append(Check(key, label, value, "x", tgt, ok, detail))


# =========================================================================== the run


@dataclass
class Options:
    sizes: list[int]
    big: int
    reps: int
    find_studies: int
    store: int
    latency_ms: float
    latency_size: int
    json_path: Path
    keep: bool
    quick: bool


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Benchmark dimse-bridge against Orthanc's own DIMSE services (loopback).",
    )
    parser.add_argument("--sizes", help="C-GET study sizes in instances (default 300,1000)")
    parser.add_argument("--big", type=int, help="instances of the ~1 GB study (default 2000)")
    parser.add_argument("--reps", type=int, help="repetitions per figure, median (default 3)")
    parser.add_argument("--find-studies", type=int, help="tiny studies for C-FIND (default 1000)")
    parser.add_argument("--store", type=int, help="instances for C-STORE (default: first size)")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="added per HTTP request")
    parser.add_argument(
        "--latency-size", type=int, help="study size of the latency rows (default: first size)"
    )
    parser.add_argument(
        "--json", default=str(REPO_ROOT / "bench" / "results" / "latest.json"), help="output"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 60,120 / big 200 / 1 rep")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--proxy-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.proxy_child:
        sys.exit(proxy_child(args.proxy_child[0], float(args.proxy_child[1])))
    quick = bool(args.quick)
    try:
        sizes = [int(s) for s in (args.sizes or ("60,120" if quick else "300,1000")).split(",")]
    except ValueError:
        parser.error("--sizes: expected comma-separated integers, e.g. 300,1000")
    big = args.big if args.big is not None else (200 if quick else 2000)
    reps = args.reps if args.reps is not None else (1 if quick else 3)
    finds = args.find_studies if args.find_studies is not None else (200 if quick else 1000)
    store = args.store if args.store is not None else sizes[0]
    latency_size = args.latency_size if args.latency_size is not None else sizes[0]
    if min([*sizes, big, reps, finds, store, latency_size]) < 1:
        parser.error("sizes, --big, --reps, --find-studies, --store must be at least 1")
    if latency_size not in sizes:
        parser.error("--latency-size must be one of --sizes")
    return Options(
        sizes=sizes,
        big=big,
        reps=reps,
        find_studies=finds,
        store=store,
        latency_ms=args.latency_ms,
        latency_size=latency_size,
        json_path=Path(args.json),
        keep=bool(args.keep),
        quick=quick,
    )


def check_prerequisites() -> list[str]:
    missing = []
    if orthanc_binary() is None:
        missing.append("Orthanc (apt-get install orthanc)")
    if dicomweb_plugin() is None:
        missing.append("the Orthanc DICOMweb plugin (apt-get install orthanc-dicomweb)")
    for name in ("getscu", "storescu"):
        if dcmtk_path(name) is None:
            where = os.environ.get("DCMTK_BINDIR") or "/usr/bin"
            missing.append(f"dcmtk's {name} as a native binary in {where} (apt-get install dcmtk)")
    if not Path("/proc/self/status").exists():
        missing.append("/proc (Linux) for the bridge's peak RSS")
    return missing


@dataclass(frozen=True)
class Target:
    """A DIMSE server under test and the processes whose CPU time is charged to a run."""

    name: str  # key part: native, bridge, nofetch, proxy0, latency, latency-nofetch...
    label: str  # "Orthanc", "bridge", "bridge fetches=1"...
    port: int
    called: str
    pids: dict[str, int]  # bridge / orthanc / proxy


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu_seconds() -> float:
    """CPU of this process (the pynetdicom SCUs) plus its finished children (dcmtk tools)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Bench:
    def __init__(self, options: Options, lab: Lab) -> None:
        self.o = options
        self.lab = lab
        self.results = Results()
        self.scratch = lab.workdir / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.studies: list[Study] = []
        self.orthanc_pid = 0

    # ------------------------------------------------------------------ helpers

    def measure(
        self, key: str, label: str, study: Study, pids: dict[str, int], action: Callable[[], float]
    ) -> float:
        """Run `action` (returns its seconds) and record it with the CPU each process used."""
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client_before = client_cpu_seconds()
        seconds = action()
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        cpu["client"] = client_cpu_seconds() - client_before
        row = self.results.row(key, label, study)
        row.runs.append(seconds)
        for name, used in cpu.items():
            row.cpu.setdefault(name, []).append(used)
        return seconds

    def rounds(self, scenarios: list[tuple[str, Callable[[], None]]], reps: int) -> None:
        """Run every scenario once per round, `reps` rounds (interleaved: fair under noise)."""
        for rep in range(reps):
            for _name, scenario in scenarios:
                scenario()
            log(f"  round {rep + 1}/{reps} done ({', '.join(n for n, _ in scenarios)})")

    def cget_scenarios(
        self, targets: Sequence[Target], study: Study
    ) -> list[tuple[str, Callable[[], None]]]:
        """C-GET of `study` from each target by a pynetdicom SCU and by getscu."""
        n = study.count
        scenarios: list[tuple[str, Callable[[], None]]] = []
        for t in targets:

            def pyn(t: Target = t) -> None:
                key = f"cget.{t.name}.pynetdicom.{n}"

                def once() -> float:
                    got = cget_pynetdicom(t.port, t.called, study)
                    self.results.figures.setdefault(f"first_store.{key}", []).append(
                        got.first_store
                    )
                    return got.seconds

                self.measure(key, f"C-GET {n}: {t.label} -> pynetdicom", study, t.pids, once)

            def dcmtk(t: Target = t) -> None:
                self.measure(
                    f"cget.{t.name}.getscu.{n}",
                    f"C-GET {n}: {t.label} -> getscu",
                    study,
                    t.pids,
                    lambda: cget_getscu(t.port, t.called, study, self.scratch),
                )

            scenarios += [(f"{t.name}/pynetdicom", pyn), (f"{t.name}/getscu", dcmtk)]
        return scenarios

    def bridge_target(self, name: str, label: str, bridge: BridgeProcess, **pids: int) -> Target:
        return Target(
            name,
            label,
            bridge.port,
            BRIDGE_AET,
            {"bridge": bridge.pid, "orthanc": self.orthanc_pid, **pids},
        )

    def warm_up(self, target: Target, study: Study) -> None:
        """One untimed C-GET (first association, lazy imports, HTTP connections, caches)."""
        cget_getscu(target.port, target.called, study, self.scratch)

    # ------------------------------------------------------------------ phases

    def run(self) -> Results:
        o = self.o
        orthanc = self.lab.start_orthanc()
        assert orthanc.process is not None
        self.orthanc_pid = orthanc.process.pid
        system = orthanc.client.get("/system").json()
        plugin = orthanc.client.get("/plugins/dicom-web").json()
        self.results.figures["orthanc_version"] = system.get("Version")
        self.results.figures["dicomweb_plugin_version"] = plugin.get("Version")
        log(
            f"Orthanc {system.get('Version')} (DICOMweb {plugin.get('Version')}) on "
            f"HTTP {orthanc.http_port}, DICOM {orthanc.dicom_port}; workdir {self.lab.workdir}"
        )

        pool = PixelPool()
        studies = [
            load_study(orthanc, Study(key=f"cget-{n}", count=n, description=f"CGET {n}"), pool, i)
            for i, n in enumerate(o.sizes, start=1)
        ]
        big = load_study(
            orthanc, Study(key=f"big-{o.big}", count=o.big, description="BIG"), pool, 50
        )
        started = time.perf_counter()
        count, _ = upload(orthanc, find_study_payloads(o.find_studies, pool))
        seconds = time.perf_counter() - started
        log(f"loaded {count} tiny studies for C-FIND in {seconds:.1f} s ({count / seconds:.0f}/s)")
        store_study, store_files = write_study(
            Study(key=f"store-{o.store}", count=o.store, description="STORE"),
            pool,
            60,
            self.lab.workdir / "store",
        )
        log(f"wrote {o.store} files ({store_study.megabytes:.0f} MB) for C-STORE")
        self.studies = studies

        self.phase_direct(orthanc, studies)
        self.phase_find(orthanc)
        self.phase_store(orthanc, store_study, store_files)
        self.phase_latency(orthanc, next(s for s in studies if s.count == o.latency_size))
        self.phase_memory(orthanc, studies[0], big)
        self.summarize()
        return self.results

    def phase_direct(self, orthanc: OrthancServer, studies: list[Study]) -> None:
        log("C-GET: Orthanc native vs bridge vs bridge without fetch-ahead")
        fast = self.lab.start_bridge("bridge", orthanc.dicomweb_url, 8)
        slow = self.lab.start_bridge("bridge-nofetch", orthanc.dicomweb_url, 1)
        targets = [
            Target(
                "native", "Orthanc", orthanc.dicom_port, orthanc.aet, {"orthanc": self.orthanc_pid}
            ),
            self.bridge_target("bridge", "bridge", fast),
            self.bridge_target("nofetch", "bridge fetches=1", slow),
        ]
        for study in studies:
            log(f"C-GET {study.count} instances ({study.megabytes:.0f} MB)")
            for target in targets:
                self.warm_up(target, study)
            self.rounds(self.cget_scenarios(targets, study), self.o.reps)
            self.reference_latency(orthanc, study)
        self.lab.stop_bridge(slow)
        self.lab.stop_bridge(fast)

    def reference_latency(self, orthanc: OrthancServer, study: Study) -> None:
        """QIDO-RS listing of the study + WADO-RS of its first instance, straight to Orthanc."""
        base = orthanc.dicomweb_url
        qido_url = (
            f"{base}/studies/{study.study_uid}/instances?includefield="
            + "&includefield=".join(INSTANCE_FIELDS)
        )
        wado_url = (
            f"{base}/studies/{study.study_uid}/series/{study.series_uid}"
            f"/instances/{study.instance_uid(1)}"
        )
        qido: list[float] = []
        wado: list[float] = []
        with httpx.Client(timeout=60.0, headers={"Accept-Encoding": "identity"}) as client:
            for attempt in range(max(5, self.o.reps) + 1):
                started = time.perf_counter()
                response = client.get(qido_url, headers={"Accept": DICOM_JSON})
                middle = time.perf_counter()
                if response.status_code != 200 or len(response.json()) != study.count:
                    raise BenchError(f"reference QIDO-RS: HTTP {response.status_code}")
                body = client.get(wado_url, headers={"Accept": WADO_ACCEPT})
                ended = time.perf_counter()
                if body.status_code != 200 or len(body.content) < study.total_bytes / study.count:
                    raise BenchError(f"reference WADO-RS: HTTP {body.status_code}")
                if attempt:  # the first round opens the connection: not counted
                    qido.append(middle - started)
                    wado.append(ended - middle)
        self.results.figures[f"reference.qido.{study.count}"] = statistics.median(qido)
        self.results.figures[f"reference.wado.{study.count}"] = statistics.median(wado)

    def phase_find(self, orthanc: OrthancServer) -> None:
        n = self.o.find_studies
        log(f"C-FIND: STUDY level, {n} matches, Orthanc native vs bridge")
        bridge = self.lab.start_bridge("bridge-find", orthanc.dicomweb_url, 8)
        targets = [
            Target(
                "native", "Orthanc", orthanc.dicom_port, orthanc.aet, {"orthanc": self.orthanc_pid}
            ),
            self.bridge_target("bridge", "bridge", bridge),
        ]
        matches = Study(key="find", count=n)
        for t in targets:
            cfind_pynetdicom(t.port, t.called, n)  # warm-up
        scenarios: list[tuple[str, Callable[[], None]]] = []
        for t in targets:

            def run(t: Target = t) -> None:
                self.measure(
                    f"cfind.{t.name}.{n}",
                    f"C-FIND {n} studies: {t.label} -> pynetdicom",
                    matches,
                    t.pids,
                    lambda: cfind_pynetdicom(t.port, t.called, n),
                )

            scenarios.append((t.name, run))
        self.rounds(scenarios, self.o.reps)
        self.lab.stop_bridge(bridge)

    def phase_store(self, orthanc: OrthancServer, study: Study, files: list[Path]) -> None:
        n = study.count
        log(f"C-STORE: storescu with {n} files, straight to Orthanc vs through the bridge")
        bridge = self.lab.start_bridge("bridge-store", orthanc.dicomweb_url, 8)
        targets = {
            "native": Target(
                "native",
                "storescu -> Orthanc",
                orthanc.dicom_port,
                orthanc.aet,
                {"orthanc": self.orthanc_pid},
            ),
            "bridge": self.bridge_target("bridge", "storescu -> bridge -> STOW-RS", bridge),
        }

        def one(t: Target, record: bool) -> None:
            delete_study(orthanc, study)  # both paths start from the study being absent
            action = partial(storescu, t.port, t.called, files, self.scratch)
            if record:
                self.measure(
                    f"cstore.{t.name}.{n}", f"C-STORE {n}: {t.label}", study, t.pids, action
                )
            else:
                action()
            stored = study_instance_count(orthanc, study)
            if stored != n:
                raise BenchError(f"C-STORE via {t.name}: {stored}/{n} instances in Orthanc")

        for t in targets.values():  # warm-up: page cache for the files, first stores
            one(t, record=False)
        for rep in range(self.o.reps):
            # Alternate which path goes first.
            order = ["native", "bridge"] if rep % 2 == 0 else ["bridge", "native"]
            for name in order:
                one(targets[name], record=True)
            log(f"  round {rep + 1}/{self.o.reps} done ({', '.join(order)})")
        delete_study(orthanc, study)
        self.lab.stop_bridge(bridge)

    def phase_latency(self, orthanc: OrthancServer, study: Study) -> None:
        n = study.count
        ms = self.o.latency_ms
        log(f"C-GET {n} with {ms:.0f} ms added to every HTTP request (FaultProxy in a child)")
        zero = self.lab.start_proxy(0.0)
        delayed = self.lab.start_proxy(ms / 1000.0)
        self.proxy_capacity(orthanc, zero, study)
        via0 = self.lab.start_bridge("bridge-proxy0", f"{zero.url}/dicom-web", 8)
        fast = self.lab.start_bridge("bridge-latency", f"{delayed.url}/dicom-web", 8)
        slow = self.lab.start_bridge("bridge-latency-nofetch", f"{delayed.url}/dicom-web", 1)
        targets = [
            self.bridge_target("proxy0", "bridge via proxy 0 ms", via0, proxy=zero.pid),
            self.bridge_target("latency", f"bridge +{ms:.0f} ms", fast, proxy=delayed.pid),
            self.bridge_target(
                "latency-nofetch", f"bridge fetches=1 +{ms:.0f} ms", slow, proxy=delayed.pid
            ),
        ]
        for target in targets:
            self.warm_up(target, study)
        self.rounds(self.cget_scenarios(targets, study), self.o.reps)
        for bridge in (slow, fast, via0):
            self.lab.stop_bridge(bridge)
        delayed.stop()
        zero.stop()

    def proxy_capacity(self, orthanc: OrthancServer, proxy: ProxyProcess, study: Study) -> None:
        """WADO-RS of every instance, 8 at a time with httpx: Orthanc direct vs via the proxy."""
        for name, base, pids in (
            ("direct", orthanc.dicomweb_url, {"orthanc": self.orthanc_pid}),
            ("proxy0", f"{proxy.url}/dicom-web", {"orthanc": self.orthanc_pid, "proxy": proxy.pid}),
        ):
            for record in (False, *([True] * self.o.reps)):
                action = partial(wado_all, base, study, 8)
                if record:
                    self.measure(
                        f"wado.{name}.{study.count}",
                        f"WADO-RS {study.count} x8 httpx: "
                        + ("Orthanc direct" if name == "direct" else "via proxy 0 ms"),
                        study,
                        pids,
                        action,
                    )
                else:
                    action()

    def phase_memory(self, orthanc: OrthancServer, small: Study, big: Study) -> None:
        log("peak RSS of a fresh bridge during one C-GET (pynetdicom SCU)")
        for label, study in (("small", small), ("big", big)):
            bridge = self.lab.start_bridge(f"bridge-rss-{label}", orthanc.dicomweb_url, 8)
            before = vm_hwm_mb(bridge.pid)
            target = self.bridge_target("rss", "fresh bridge (RSS run)", bridge)

            def once(t: Target = target, st: Study = study) -> float:
                return cget_pynetdicom(t.port, t.called, st).seconds

            seconds = self.measure(
                f"cget.rss.pynetdicom.{study.count}",
                f"C-GET {study.count}: fresh bridge (RSS run) -> pynetdicom",
                study,
                target.pids,
                once,
            )
            peak = vm_hwm_mb(bridge.pid)
            self.lab.stop_bridge(bridge)
            self.results.figures[f"rss.{label}"] = {
                "instances": study.count,
                "megabytes_retrieved": round(study.megabytes, 1),
                "vmhwm_mb_idle": round(before, 1),
                "vmhwm_mb": round(peak, 1),
                "seconds": round(seconds, 3),
            }
            log(
                f"  {study.count} instances ({study.megabytes:.0f} MB): VmHWM {peak:.0f} MB "
                f"(idle {before:.0f} MB), {seconds:.1f} s"
            )

    # ------------------------------------------------------------------ summary

    def summarize(self) -> None:
        r = self.results
        studies = self.studies
        for study in studies:
            n = study.count
            r.ratio(
                f"cget_pynetdicom.{n}",
                f"C-GET {n} bridge/native, pynetdicom SCU",
                f"cget.bridge.pynetdicom.{n}",
                f"cget.native.pynetdicom.{n}",
                1.0,
                TARGETS["cget_pynetdicom"],
            )
            r.ratio(
                f"cget_getscu.{n}",
                f"C-GET {n} bridge/native, getscu",
                f"cget.bridge.getscu.{n}",
                f"cget.native.getscu.{n}",
                0.25,
                TARGETS["cget_getscu"],
            )
            for client in ("pynetdicom", "getscu"):
                r.ratio(
                    f"nofetch.{client}.{n}",
                    f"C-GET {n} fetches=1/fetches=8, {client}",
                    f"cget.nofetch.{client}.{n}",
                    f"cget.bridge.{client}.{n}",
                    None,
                    "informative: fetch-ahead without latency",
                )
        n = self.o.latency_size
        for client in ("pynetdicom", "getscu"):
            r.ratio(
                f"latency.{client}.{n}",
                f"C-GET {n} +{self.o.latency_ms:.0f} ms: fetch-ahead/fetches=1, {client}",
                f"cget.latency.{client}.{n}",
                f"cget.latency-nofetch.{client}.{n}",
                5.0,
                TARGETS["latency"],
            )
            r.ratio(
                f"proxy_overhead.{client}.{n}",
                f"C-GET {n} bridge via proxy 0 ms / direct, {client}",
                f"cget.proxy0.{client}.{n}",
                f"cget.bridge.{client}.{n}",
                None,
                "informative: cost of the proxy itself",
            )
        r.ratio(
            f"proxy_capacity.{n}",
            f"WADO-RS {n} x8: via proxy 0 ms / direct",
            f"wado.proxy0.{n}",
            f"wado.direct.{n}",
            None,
            "informative: the proxy's own throughput",
        )
        rss = r.figures.get("rss.big"), r.figures.get("rss.small")
        if rss[0] is not None and rss[1] is not None:
            big, small = rss[0]["vmhwm_mb"], rss[1]["vmhwm_mb"]
            r.checks.append(
                Check(
                    "rss_big",
                    f"peak RSS, C-GET of {rss[0]['megabytes_retrieved']:.0f} MB",
                    big,
                    "MB",
                    TARGETS["rss_big"],
                    big <= 250.0,
                    f"idle {rss[0]['vmhwm_mb_idle']} MB",
                )
            )
            r.checks.append(
                Check(
                    "rss_growth",
                    f"peak RSS {rss[0]['instances']} / {rss[1]['instances']} instances",
                    big / small,
                    "x",
                    TARGETS["rss_growth"],
                    big / small <= 1.5,
                    f"{big:.0f} MB / {small:.0f} MB",
                )
            )
        for study in studies:
            n = study.count
            runs = r.figures.get(f"first_store.cget.bridge.pynetdicom.{n}")
            qido = r.figures.get(f"reference.qido.{n}")
            wado = r.figures.get(f"reference.wado.{n}")
            native = r.figures.get(f"first_store.cget.native.pynetdicom.{n}")
            if runs and qido is not None and wado is not None:
                first = statistics.median(runs)
                bound = qido + wado + 0.050
                r.figures[f"first_store.median.bridge.{n}"] = first
                if native:
                    r.figures[f"first_store.median.native.{n}"] = statistics.median(native)
                r.checks.append(
                    Check(
                        f"first_store.{n}",
                        f"C-GET {n}: request -> first C-STORE, bridge",
                        first * 1000,
                        "ms",
                        TARGETS["first_store"],
                        first <= bound,
                        f"QIDO {qido * 1000:.1f} + WADO {wado * 1000:.1f} + 50"
                        f" = {bound * 1000:.1f} ms"
                        + (
                            f"; Orthanc native {statistics.median(native) * 1000:.1f} ms"
                            if native
                            else ""
                        ),
                    )
                )
        n = self.o.store
        r.ratio(
            f"store.{n}",
            f"C-STORE {n}: bridge/native throughput",
            f"cstore.bridge.{n}",
            f"cstore.native.{n}",
            0.8,
            TARGETS["store"],
        )
        n = self.o.find_studies
        a, b = r.rows.get(f"cfind.bridge.{n}"), r.rows.get(f"cfind.native.{n}")
        if a is not None and b is not None and a.runs and b.runs:
            value = a.seconds / b.seconds
            r.checks.append(
                Check(
                    f"find.{n}",
                    f"C-FIND {n} studies: bridge/native time",
                    value,
                    "x",
                    TARGETS["find"],
                    value <= 1.5,
                    f"{a.seconds:.3f} s / {b.seconds:.3f} s",
                )
            )


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


# =========================================================================== report


def _cpu_text(row: Row) -> str:
    short = {"bridge": "b", "orthanc": "o", "proxy": "p", "client": "c"}
    cpu = row.cpu_ms_per_instance()
    return " ".join(f"{short.get(k, k)}{v:.1f}" for k, v in cpu.items())


def report(results: Results, options: Options, started: float, environment: dict[str, Any]) -> str:
    lines: list[str] = []
    width = max([len(row.label) for row in results.rows.values()] + [20])
    lines.append("")
    lines.append(
        f"{'measurement':<{width}}  {'inst':>5}  {'MB':>6}  {'s median':>8}  "
        f"{'inst/s':>7}  {'MB/s':>6}  {'CPU ms/inst':<22}  runs (s)"
    )
    lines.append("-" * (width + 80))
    for row in results.rows.values():
        runs = " ".join(f"{r:.3f}" for r in row.runs)
        mb = f"{row.megabytes:>6.1f}" if row.megabytes else f"{'-':>6}"
        mbs = f"{row.mb_per_s:>6.1f}" if row.megabytes else f"{'-':>6}"
        lines.append(
            f"{row.label:<{width}}  {row.instances:>5}  {mb}  {row.seconds:>8.3f}  "
            f"{row.inst_per_s:>7.1f}  {mbs}  {_cpu_text(row):<22}  {runs}"
        )
    lines.append(
        "CPU ms/inst: CPU time per instance (per match for C-FIND), median over runs, of "
        "b=bridge o=Orthanc p=proxy c=client (pynetdicom SCU in this process, or the dcmtk tool)"
    )
    lines.append("")
    cwidth = max([len(c.label) for c in results.checks] + [20])
    lines.append(f"{'ratio / figure':<{cwidth}}  {'value':>9}  {'met':>4}  target; detail")
    lines.append("-" * (cwidth + 60))
    for check in results.checks:
        met = "-" if check.ok is None else ("yes" if check.ok else "NO")
        value = (
            f"{check.value:.2f}{check.unit}"
            if check.unit == "x"
            else (f"{check.value:.1f} {check.unit}")
        )
        lines.append(
            f"{check.label:<{cwidth}}  {value:>9}  {met:>4}  {check.target}; {check.detail}"
        )
    lines.append("")
    lines.append(
        f"total {time.perf_counter() - started:.0f} s; reps {options.reps}; load average "
        f"{environment['loadavg_start']} at start, "
        f"{tuple(round(x, 2) for x in os.getloadavg())} at the end"
    )
    return "\n".join(lines)


def write_json(results: Results, options: Options, environment: dict[str, Any]) -> Path:
    checks = [c.as_json() for c in results.checks]
    data = {
        "environment": environment,
        "options": {
            "sizes": options.sizes,
            "big": options.big,
            "reps": options.reps,
            "find_studies": options.find_studies,
            "store": options.store,
            "latency_ms": options.latency_ms,
            "latency_size": options.latency_size,
            "quick": options.quick,
        },
        "rows": [row.as_json() for row in results.rows.values()],
        "checks": checks,
        "figures": results.figures,
    }
    path = options.json_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def environment_info() -> dict[str, Any]:
    import pydicom
    import pynetdicom

    dcmtk_version = ""
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [tool("getscu"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        dcmtk_version = out.splitlines()[0].strip() if out else ""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": tuple(round(x, 2) for x in os.getloadavg()),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "httpx": httpx.__version__,
        "dcmtk": dcmtk_version,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    missing = check_prerequisites()
    if missing:
        print("bench/run.py: missing prerequisites:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = time.perf_counter()
    environment = environment_info()
    workdir = Path(tempfile.mkdtemp(prefix="dimse-bridge-bench-"))
    lab = Lab(workdir)
    results: Results | None = None
    failed = False
    try:
        bench = Bench(options, lab)
        try:
            results = bench.run()
        except Exception as exc:  # report what was measured, then fail
            failed = True
            results = bench.results
            if not isinstance(exc, BenchError):
                traceback.print_exc()
            print(f"\nbench/run.py: FAILED: {exc}", file=sys.stderr)
            lab.print_log_tails()
            bench.summarize()
    finally:
        lab.close()
        if options.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    environment["orthanc"] = results.figures.get("orthanc_version") if results else None
    if results is not None:
        print(report(results, options, started, environment))
        path = write_json(results, options, environment)
        log(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
