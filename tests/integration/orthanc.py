"""A throw-away Orthanc (with the DICOMweb plugin) run as a subprocess on free loopback ports."""

# Orthanc 1.10.1 has no bind-address option: HTTP and DICOM listen on every interface.
# "RemoteAccessAllowed": false makes it refuse HTTP clients that are not on loopback.
# Orthanc links dcmtk, which sets TCP_NODELAY on DICOM sockets only when the environment
# has TCP_NODELAY=1 (without it C-GET/C-STORE run at ~17 instances/s): we always set it.
# How this Orthanc's QIDO-RS matches (commas, backslashes, carets, non-ASCII): see the
# comment at the top of dataset.py and the tests in test_orthanc_fixture.py.

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import httpx

from tests.integration.tools import free_ports

DEFAULT_AET = "ORTHANC"
# AE titles the tests use as SCUs; Orthanc answers C-FIND/C-GET/C-MOVE only for known
# modalities (or with the DicomAlwaysAllow* options, which this version has too).
SCU_AE_TITLES: tuple[str, ...] = (
    "FINDSCU",
    "GETSCU",
    "MOVESCU",
    "STORESCU",
    "PYNETDICOM",
    "ECHOSCU",
)
# A second Orthanc acting as a workstation (tests/integration/test_clients.py): the AE
# title it moves to and is known as in the bridge's [[peers]].
WORKSTATION_AET = "WORKSTATION"
PLUGIN_CANDIDATES: tuple[str, ...] = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
)
START_TIMEOUT = 30.0


class OrthancError(RuntimeError):
    """Orthanc did not start, or answered an HTTP call with an unexpected status."""

    def __init__(self, message: str, *, exited: bool = False) -> None:
        super().__init__(message)
        self.exited = exited  # the process died while starting (e.g. a port was taken)


def orthanc_binary() -> str | None:
    """The Orthanc executable (Debian installs /usr/sbin/Orthanc), or None."""
    for candidate in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("Orthanc")


def dicomweb_plugin() -> str | None:
    """Path of the DICOMweb plugin shared library, or None when it is not installed."""
    for candidate in PLUGIN_CANDIDATES:
        if os.path.isfile(candidate):
            return candidate
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing.splitlines():
        if line.endswith(".so") and os.path.isfile(line):
            return line
    return None


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file (empty string if it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class OrthancServer:
    """One Orthanc process whose storage, index, config and log all live in `workdir`."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        aet: str = DEFAULT_AET,
        scu_ae_titles: Sequence[str] = SCU_AE_TITLES,
        extra_modalities: dict[str, tuple[str, str, int]] | None = None,
        extra_config: dict[str, Any] | None = None,
        verbose: bool = False,
    ) -> None:
        """`extra_modalities`: name -> (AE title, host, port), e.g. a C-MOVE destination."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._aet = aet
        self.scu_ae_titles = tuple(scu_ae_titles)
        self.extra_modalities = dict(extra_modalities or {})
        self.extra_config = dict(extra_config or {})
        self.verbose = verbose
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self.http_port = 0
        self.dicom_port_number = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    # ------------------------------------------------------------------ properties

    @property
    def aet(self) -> str:
        return self._aet

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def dicom_port(self) -> int:
        return self.dicom_port_number

    @property
    def client(self) -> httpx.Client:
        """An httpx client on `http_url` (no gzip: Orthanc would compress every answer)."""
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.http_url,
                timeout=60.0,
                headers={"Accept-Encoding": "identity"},
            )
        return self._client

    # ------------------------------------------------------------------ config

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration for the current ports."""
        plugin = dicomweb_plugin()
        if plugin is None:
            raise OrthancError(
                "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
            )
        modalities: dict[str, Any] = {
            title.lower(): [title, "127.0.0.1", 104] for title in self.scu_ae_titles
        }
        for name, (title, host, port) in self.extra_modalities.items():
            modalities[name] = [title, host, port]
        config: dict[str, Any] = {
            "Name": "dimse-bridge-tests",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port_number,
            "DicomAet": self._aet,
            "DicomCheckCalledAet": False,
            "AuthenticationEnabled": False,
            "RemoteAccessAllowed": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": modalities,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "StableAge": 1,
            "SaveJobs": False,
            "HttpTimeout": 60,
            "DicomScpTimeout": 60,
        }
        config.update(self.extra_config)
        return config

    def write_config(self) -> Path:
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        return self.config_path

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Start Orthanc and wait until ``GET /system`` answers 200 (raises OrthancError)."""
        if self.process is not None and self.process.poll() is None:
            return self
        binary = orthanc_binary()
        if binary is None:
            raise OrthancError("Orthanc is not installed (apt-get install orthanc)")
        keep_ports = self.http_port != 0  # restart(): the same ports, the same URLs
        last_error: OrthancError | None = None
        for _attempt in range(3):
            if not keep_ports:
                self.http_port, self.dicom_port_number = free_ports(2, host="")
            self.write_config()
            try:
                self._launch(binary, timeout)
                return self
            except OrthancError as exc:
                last_error = exc
                self._terminate()
                if not exc.exited:
                    break  # hung rather than died: trying again would not help
                time.sleep(0.5)
        assert last_error is not None
        raise last_error

    def _launch(self, binary: str, timeout: float) -> None:
        env = dict(os.environ, TCP_NODELAY="1")
        args = [binary, *(["--verbose"] if self.verbose else []), str(self.config_path)]
        with self.log_path.open("ab") as log:
            log.write(f"\n===== {' '.join(args)} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                args,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise OrthancError(
                    f"Orthanc exited with status {code} while starting; log tail:\n"
                    f"{log_tail(self.log_path)}",
                    exited=True,
                )
            try:
                response = httpx.get(f"{self.http_url}/system", timeout=2.0)
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise OrthancError(
                    f"Orthanc did not answer GET /system within {timeout:.0f} s; log tail:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def _terminate(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)

    def stop(self) -> None:
        """Terminate Orthanc (SIGTERM, then SIGKILL after 15 s). Storage is kept."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self._terminate()

    def restart(self) -> OrthancServer:
        """Stop and start again on the same ports with the same storage."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ REST helpers

    def _check(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code != 200:
            raise OrthancError(f"{what}: HTTP {response.status_code} {response.text[:500]!r}")
        return response

    def upload(self, data: str | os.PathLike[str] | bytes) -> dict[str, Any]:
        """Store one DICOM file (a path or its bytes) via ``POST /instances``."""
        body = data if isinstance(data, bytes) else Path(data).read_bytes()
        response = self._check(
            self.client.post(
                "/instances", content=body, headers={"Content-Type": "application/dicom"}
            ),
            "POST /instances",
        )
        result: dict[str, Any] = response.json()
        return result

    def upload_many(self, items: Iterable[str | os.PathLike[str] | bytes]) -> int:
        """Upload every item; returns how many were sent."""
        count = 0
        for item in items:
            self.upload(item)
            count += 1
        return count

    def orthanc_id(self, sop_instance_uid: str) -> str:
        """Orthanc's own ID of the instance with this SOPInstanceUID (``POST /tools/lookup``)."""
        response = self._check(
            self.client.post("/tools/lookup", content=sop_instance_uid.encode()),
            "POST /tools/lookup",
        )
        for match in response.json():
            if match.get("Type") == "Instance":
                return str(match["ID"])
        raise OrthancError(f"no instance with SOPInstanceUID {sop_instance_uid} in Orthanc")

    def delete_instance(self, sop_instance_uid: str) -> None:
        """Delete one instance (found by SOPInstanceUID)."""
        orthanc_id = self.orthanc_id(sop_instance_uid)
        self._check(self.client.delete(f"/instances/{orthanc_id}"), "DELETE /instances")

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The stored DICOM file of one instance, byte for byte."""
        orthanc_id = self.orthanc_id(sop_instance_uid)
        response = self._check(
            self.client.get(f"/instances/{orthanc_id}/file"), "GET /instances/{id}/file"
        )
        return response.content

    def statistics(self) -> dict[str, Any]:
        """``GET /statistics`` (CountPatients, CountStudies, CountSeries, CountInstances...)."""
        result: dict[str, Any] = self._check(
            self.client.get("/statistics"), "GET /statistics"
        ).json()
        return result

    def delete_all(self) -> None:
        """Remove every patient (and so everything) from Orthanc."""
        patients = self._check(self.client.get("/patients"), "GET /patients").json()
        for patient_id in patients:
            self._check(self.client.delete(f"/patients/{patient_id}"), "DELETE /patients")

    # ------------------------------------------------------------------ as a DICOM client
    # Orthanc's REST API drives its SCU side: C-FIND and C-MOVE to a modality of its
    # DicomModalities (the bridge), with the instances moved to TargetAet (itself).

    def move(
        self,
        modality: str,
        level: str,
        resources: list[dict[str, str]],
        target_aet: str | None = None,
    ) -> httpx.Response:
        """``POST /modalities/{modality}/move``: one synchronous C-MOVE per resource at
        `level` (Patient, Study, Series, Instance) to `target_aet` (default: this Orthanc)."""
        body = {
            "Level": level,
            "Resources": resources,
            "TargetAet": target_aet or self.aet,
            "Synchronous": True,
            "Timeout": 60,
        }
        return self.client.post(f"/modalities/{modality}/move", json=body)

    def query(self, modality: str, level: str, keys: dict[str, str]) -> str:
        """``POST /modalities/{modality}/query`` (a C-FIND); the query's ID in Orthanc."""
        response = self._check(
            self.client.post(f"/modalities/{modality}/query", json={"Level": level, "Query": keys}),
            "POST /modalities/{id}/query",
        )
        return str(response.json()["ID"])

    def query_answers(self, query_id: str) -> list[dict[str, Any]]:
        """The answers of a query, as Orthanc's simplified tags (``?expand&simplify``)."""
        response = self._check(
            self.client.get(f"/queries/{query_id}/answers", params={"expand": "", "simplify": ""}),
            "GET /queries/{id}/answers",
        )
        answers: list[dict[str, Any]] = response.json()
        return answers

    def retrieve_query(self, query_id: str, target_aet: str | None = None) -> httpx.Response:
        """``POST /queries/{id}/retrieve``: a synchronous C-MOVE of every answer."""
        body = {"TargetAet": target_aet or self.aet, "Synchronous": True, "Timeout": 60}
        return self.client.post(f"/queries/{query_id}/retrieve", json=body)

    def sop_instance_uids(self) -> list[str]:
        """The SOP Instance UID of every instance stored, sorted."""
        response = self._check(
            self.client.get("/instances", params={"expand": ""}), "GET /instances?expand"
        )
        return sorted(str(i["MainDicomTags"]["SOPInstanceUID"]) for i in response.json())


def workstation(
    workdir: str | os.PathLike[str], modalities: dict[str, tuple[str, str, int]]
) -> OrthancServer:
    """An Orthanc acting as a radiology workstation (not started): AE title
    WORKSTATION, empty, with the servers it queries and retrieves from as `modalities`
    (name -> (AE title, host, port)); whatever is moved to it is stored."""
    return OrthancServer(
        workdir, aet=WORKSTATION_AET, scu_ae_titles=(), extra_modalities=modalities
    )
