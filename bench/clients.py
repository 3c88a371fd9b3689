"""The SCU runs: pynetdicom C-GET/C-FIND in this process, dcmtk getscu/storescu, httpx WADO-RS."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydicom import Dataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_role, evt

from bench.common import FINDSCU_AET, GETSCU_AET, HOST, SCU_AET, STORESCU_AET, BenchError
from bench.data import FIND_DATE_RANGE, Study
from tests.integration.tools import dcmtk_path, tool_env

_config.LOG_HANDLER_LEVEL = "none"  # pynetdicom: no per-PDU/per-message logging

# pynetdicom's sop_class attributes are generated at run time (untyped): spell them out.
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.2.3")
SUCCESS = 0x0000
PENDING = (0xFF00, 0xFF01)
DICOM_JSON = "application/dicom+json"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
TOOL_TIMEOUT = 900.0


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
        env=tool_env(),  # TCP_NODELAY=1
        stdin=subprocess.DEVNULL,
    )


def tail(result: subprocess.CompletedProcess[str], chars: int = 2000) -> str:
    return f"--- stdout ---\n{result.stdout[-chars:]}\n--- stderr ---\n{result.stderr[-chars:]}"
