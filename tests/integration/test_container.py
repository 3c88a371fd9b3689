"""The container image, built and run: C-ECHO, C-FIND, C-GET and C-STORE through it.

    echoscu / pynetdicom / getscu / storescu --DIMSE--> [container: dimse-bridge]
        --QIDO/WADO/STOW-RS--> Orthanc (on the host)

The image is built the way deploy/container/build-offline.sh builds it where there is no
registry (a Debian base made by mmdebstrap, cached in /var/tmp; a wheelhouse from this
host; ``podman build --format docker``), tagged ``localhost/dimse-bridge:test`` and removed
at the end. The container runs with ``--network=host`` and the test's config mounted over
the image's own /etc/dimse-bridge/bridge.toml ($DIMSE_BRIDGE_CONFIG), in front of a private
Orthanc seeded over REST. Every container is named and ``podman rm -f``-ed in a finally.

Needs root (rootful podman) and podman, runc and mmdebstrap (tests/run.sh installs them);
the podman flags that work on these machines are the build script's default
(``--runtime runc --cgroup-manager=cgroupfs``; $PODMAN_FLAGS overrides both).
"""

from __future__ import annotations

import http.server
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from tests.conftest import require_orthanc
from tests.integration.bridge_runner import REPO_ROOT, bridge_config
from tests.integration.dataset import make_ct_series, to_bytes, write_datasets
from tests.integration.orthanc import OrthancServer
from tests.integration.tools import (
    describe,
    free_port,
    missing_prerequisite,
    port_listening,
    run_dcmtk,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BUILD_SCRIPT = REPO_ROOT / "deploy" / "container" / "build-offline.sh"
IMAGE = "localhost/dimse-bridge:test"
IMAGE_FROM_INDEX = "localhost/dimse-bridge:test-index"
BASE_IMAGE = "localhost/dimse-bridge-base:bookworm"  # build-offline.sh's, SUITE=bookworm
WHEELHOUSE = REPO_ROOT / "deploy" / "container" / "wheelhouse"
CONTAINER = f"dimse-bridge-test-{os.getpid()}"
DEFAULT_PODMAN_FLAGS = "--runtime runc --cgroup-manager=cgroupfs"
# podman's default rlimits cannot be set under runc on these machines.
ULIMITS = ["--ulimit", "nofile=1024:20000", "--ulimit", "nproc=4096:4096"]
START_TIMEOUT = 60.0
UID = "10001"  # the Containerfile's user
SERIES_SIZE = 4


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    flags = shlex.split(os.environ.get("PODMAN_FLAGS", DEFAULT_PODMAN_FLAGS))
    command = ["podman", *flags, *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise AssertionError(describe(command, result))
    return result


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The image, built from this checkout (base cached across runs); removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the container test needs root: it runs rootful podman")
    for tool in ("podman", "runc", "mmdebstrap"):
        if shutil.which(tool) is None:
            missing_prerequisite(
                f"{tool} is not installed (apt-get install --no-install-recommends "
                "podman runc mmdebstrap; tests/run.sh does it)"
            )
    env = dict(os.environ, IMAGE=IMAGE, PYTHON=sys.executable)
    started = time.monotonic()
    result = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, env=env, timeout=840
    )
    assert result.returncode == 0, describe([str(BUILD_SCRIPT)], result)
    # The script's own timings (base, wheelhouse, build), for the test log.
    timings = [line for line in result.stderr.splitlines() if " in " in line and " s" in line]
    print(f"image built in {time.monotonic() - started:.1f} s: {timings}")
    try:
        yield IMAGE
    finally:
        podman("rmi", "-f", IMAGE, check=False)


@dataclass(frozen=True)
class Served:
    """A running container in front of `orthanc`, and the seeded series."""

    name: str
    port: int
    ops_port: int
    orthanc: OrthancServer
    series: list[Dataset]
    workdir: Path

    @property
    def study_uid(self) -> str:
        return str(self.series[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.series[0].SeriesInstanceUID)


def start_container(image: str, name: str, config: Path, port: int) -> None:
    """``podman run -d --name NAME --network=host`` with `config` mounted over the image's
    own; returns once the DIMSE `port` listens (fails with the container's log if not)."""
    podman("rm", "-f", name, check=False)
    podman(
        "run", "-d", "--name", name, "--network=host", *ULIMITS,
        "-v", f"{config}:/etc/dimse-bridge/bridge.toml:ro",
        image,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while not port_listening(port):
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state != "running" or time.monotonic() > deadline:
            logs = podman("logs", name, check=False)
            pytest.fail(
                f"container {state}, DIMSE port {port} not open:\n{logs.stdout}{logs.stderr}"
            )
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_orthanc()
    workdir = tmp_path_factory.mktemp("container")
    orthanc = OrthancServer(workdir / "orthanc").start()
    try:
        series = make_ct_series(SERIES_SIZE, key="container")
        orthanc.upload_many(to_bytes(ds) for ds in series)
        port, ops_port = free_port(), free_port()
        # ops on a port of its own, not the image's 9090: the HEALTHCHECK must follow the
        # config it is given, and 9090 may be taken on the host (--network=host).
        config = workdir / "bridge.toml"
        config.write_text(
            bridge_config(orthanc.dicomweb_url, port, ops={"listen": f"127.0.0.1:{ops_port}"})
        )
        config.chmod(0o644)  # read by uid 10001 in the container
        try:
            start_container(image, CONTAINER, config, port)
            yield Served(CONTAINER, port, ops_port, orthanc, series, workdir)
        finally:
            podman("rm", "-f", "--time", "5", CONTAINER, check=False)
    finally:
        orthanc.stop()


def exec_in(served: Served, *command: str) -> subprocess.CompletedProcess[str]:
    return podman("exec", served.name, *command, check=False)


# --------------------------------------------------------------------------- the image


def test_image_runs_as_non_root_with_dimse_bridge_run_and_no_compiler(
    image: str, served: Served
) -> None:
    inspect = podman(
        "image", "inspect", "--format",
        "{{json .Config.User}} {{json .Config.Entrypoint}} {{json .Config.Healthcheck.Test}}",
        image,
    ).stdout.strip()  # fmt: skip
    user, entrypoint, healthcheck = inspect.split(" ", 2)
    assert user == f'"{UID}:{UID}"'
    assert entrypoint == '["dimse-bridge","run"]'
    assert "healthcheck.py" in healthcheck  # kept by --format docker
    # The bridge itself (PID 1) and a command run beside it are uid 10001, not root.
    assert exec_in(served, "id", "-u").stdout.strip() == UID
    status = exec_in(served, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == [UID] * 4
    assert "dimse-bridge" in exec_in(served, "cat", "/proc/1/cmdline").stdout
    # No compiler in the final stage.
    found = exec_in(
        served, "sh", "-c",
        "for c in cc gcc c++ g++ clang x86_64-linux-gnu-gcc; do command -v $c; done; "
        "ls /usr/bin | grep -E '^(gcc|g\\+\\+|clang|x86_64-linux-gnu-gcc)' || true",
    )  # fmt: skip
    assert (found.returncode, found.stdout.strip()) == (0, "")


def test_healthcheck_passes_and_fails_when_healthz_does_not_answer(served: Served) -> None:
    result = podman("healthcheck", "run", served.name, check=False)
    assert result.returncode == 0, describe(["podman", "healthcheck", "run"], result)
    state = podman("inspect", "--format", "{{.State.Health.Status}}", served.name).stdout
    assert state.strip() == "healthy"
    # The same check against a config whose ops listener nobody serves: it must fail.
    unhealthy = exec_in(
        served, "sh", "-c",
        "printf '[ops]\\nlisten = \"127.0.0.1:1\"\\n' > /tmp/closed.toml && "
        "DIMSE_BRIDGE_CONFIG=/tmp/closed.toml /opt/dimse-bridge/bin/python "
        "/opt/dimse-bridge/healthcheck.py",
    )  # fmt: skip
    assert unhealthy.returncode == 1 and "unhealthy" in unhealthy.stdout, unhealthy


# --------------------------------------------------------------------------- DIMSE through it


def test_c_echo(served: Served) -> None:
    result = run_dcmtk(
        "echoscu", "-v", "-aet", "ECHOSCU", "-aec", "DIMSE_BRIDGE", "127.0.0.1", str(served.port)
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "Received Echo Response (Success)" in log, log


def test_c_find(served: Served) -> None:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", served.port, ae_title="DIMSE_BRIDGE")
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = served.study_uid
        query.PatientID = ""
        query.NumberOfStudyRelatedInstances = ""
        matches: list[Dataset] = []
        statuses: list[int] = []
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            statuses.append(int(status.Status))
            if status.Status == 0xFF00:
                assert identifier is not None  # a pending response carries its match
                matches.append(identifier)
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    assert [m.StudyInstanceUID for m in matches] == [served.study_uid]
    assert matches[0].PatientID == served.series[0].PatientID
    assert int(matches[0].NumberOfStudyRelatedInstances) == SERIES_SIZE


def test_c_get(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "received"
    out.mkdir()
    result = run_dcmtk(
        "getscu", "-v", "-S", "-aet", "GETSCU", "-aec", "DIMSE_BRIDGE", "-od", str(out),
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={served.study_uid}",
        "-k", f"SeriesInstanceUID={served.series_uid}",
        "127.0.0.1", str(served.port), timeout=120,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    finals = [line for line in log.splitlines() if "Received C-GET Response" in line]
    assert finals and "Success" in finals[-1], log
    received = {ds.SOPInstanceUID: ds for ds in map(dcmread, sorted(out.iterdir()))}
    expected = {ds.SOPInstanceUID: ds for ds in served.series}
    assert set(received) == set(expected)
    for uid, ds in received.items():
        assert ds.PixelData == expected[uid].PixelData, uid


def test_c_store(served: Served, tmp_path: Path) -> None:
    [instance] = make_ct_series(1, key="container-store", patient_id="STORE001")
    [path] = write_datasets([instance], tmp_path)
    before = served.orthanc.statistics()["CountInstances"]
    result = run_dcmtk(
        "storescu", "-v", "-aet", "STORESCU", "-aec", "DIMSE_BRIDGE",
        "127.0.0.1", str(served.port), str(path),
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "Received Store Response (Success)" in log, log
    assert served.orthanc.statistics()["CountInstances"] == before + 1
    stored = dcmread(io.BytesIO(served.orthanc.instance_file(instance.SOPInstanceUID)))
    assert stored.SOPInstanceUID == instance.SOPInstanceUID
    assert stored.PatientID == "STORE001"
    assert stored.PixelData == instance.PixelData


def test_podman_stop_is_a_graceful_shutdown(image: str, served: Served) -> None:
    """SIGTERM reaches the bridge (PID 1 through the exec-form entry point), which drains
    and exits 0 well within the grace time: not SIGKILLed (137) at its end."""
    name = f"{CONTAINER}-stop"
    port = free_port()
    config = served.workdir / "stop.toml"
    config.write_text(bridge_config(served.orthanc.dicomweb_url, port))
    config.chmod(0o644)
    try:
        start_container(image, name, config, port)
        podman("stop", "--time", "20", name, timeout=60)
        exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        log = podman("logs", name).stderr
        assert exit_code == "0", log
        assert "received SIGTERM" in log and "stopped" in log, log
    finally:
        podman("rm", "-f", name, check=False)


# --------------------------------------------------------------------------- PIP_SOURCE=index


class _IndexHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory (a PEP 503 simple index of folders) and records every path."""

    requested: list[str]

    def log_message(self, format: str, *args: object) -> None:
        self.requested.append(self.path)


def simple_index(root: Path, wheels: list[Path]) -> Path:
    """``root/simple/<normalized project name>/<wheel>``: what pip's --index-url reads (the
    server's directory listings are the project pages)."""
    for wheel in wheels:
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-", 1)[0]).lower()
        folder = root / "simple" / project
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, folder / wheel.name)
    return root


def test_index_build_installs_from_a_package_index(image: str, tmp_path: Path) -> None:
    """PIP_SOURCE=index, the Containerfile's default (for builds where pip reaches PyPI or a
    mirror), set to a package index by PIP_INDEX_URL: here a simple index on loopback
    holding the wheelhouse's dependencies and setuptools (the build backend; the project
    itself is built from the context), reached with ``--network=host``."""
    setuptools_dir = tmp_path / "setuptools"
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--only-binary=:all:", "--no-deps", "-d", str(setuptools_dir), "setuptools>=68"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert download.returncode == 0, download.stderr
    dependencies = [w for w in WHEELHOUSE.glob("*.whl") if not w.name.startswith("dimse_bridge-")]
    root = simple_index(tmp_path / "index", [*dependencies, *setuptools_dir.glob("*.whl")])

    class Handler(_IndexHandler):
        requested: list[str] = []  # one list per test, read after the build

    handler = Handler
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
        result = subprocess.run(
            ["podman", *shlex.split(os.environ.get("PODMAN_FLAGS", DEFAULT_PODMAN_FLAGS)),
             "build", "--format", "docker", "--layers=false", "--network=host", *ULIMITS,
             "-f", "deploy/container/Containerfile", "--build-arg", f"BASE={BASE_IMAGE}",
             "--build-arg", f"PIP_INDEX_URL={url}", "-t", IMAGE_FROM_INDEX, "."],
            capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        )  # fmt: skip
        assert result.returncode == 0, describe(["podman", "build"], result)
        requested = set(handler.requested)
        assert {"/simple/pynetdicom/", "/simple/setuptools/"} <= requested, sorted(requested)
        version = podman(
            "run", "--rm", "--name", f"{CONTAINER}-index", "--network=none", *ULIMITS,
            "--entrypoint", "dimse-bridge", IMAGE_FROM_INDEX, "--version",
        )  # fmt: skip
        # The first line is the package; the second names the libraries it runs on.
        first, libraries = version.stdout.strip().splitlines()
        assert first == "dimse-bridge 0.1.0"
        assert libraries.startswith("pynetdicom 3.0."), libraries
        user = podman("image", "inspect", "--format", "{{.Config.User}}", IMAGE_FROM_INDEX)
        assert user.stdout.strip() == f"{UID}:{UID}"
    finally:
        server.shutdown()
        server.server_close()
        podman("rm", "-f", f"{CONTAINER}-index", check=False)
        podman("rmi", "-f", IMAGE_FROM_INDEX, check=False)
