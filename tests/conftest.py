"""Shared pytest fixtures: dcmtk tools, free ports, a real Orthanc and the bridge subprocess."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.bridge_runner import BridgeProcess, start_bridge
from tests.integration.dataset import Manifest, write_dataset
from tests.integration.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary
from tests.integration.tools import dcmtk as dcmtk_tool
from tests.integration.tools import free_port as free_tcp_port
from tests.integration.tools import missing_prerequisite


@dataclass
class OrthancFixture:
    """A running Orthanc holding the standard data set, and that data set's manifest."""

    server: OrthancServer
    manifest: Manifest

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def dicomweb_url(self) -> str:
        return self.server.dicomweb_url

    @property
    def dicom_port(self) -> int:
        return self.server.dicom_port

    @property
    def aet(self) -> str:
        return self.server.aet


def require_orthanc() -> None:
    """Skip (locally) or fail (CI) when Orthanc or its DICOMweb plugin is not installed."""
    if orthanc_binary() is None:
        missing_prerequisite("Orthanc is not installed (apt-get install orthanc)")
    if dicomweb_plugin() is None:
        missing_prerequisite(
            "the Orthanc DICOMweb plugin is missing (apt-get install orthanc-dicomweb)"
        )


def _start_orthanc(workdir: Path, with_dataset: bool, **kwargs: Any) -> OrthancFixture:
    require_orthanc()
    # The data set is written outside Orthanc's folder: tests read its files as references.
    manifest = write_dataset(workdir / "dataset") if with_dataset else Manifest((), (), (), ())
    server = OrthancServer(workdir / "orthanc", **kwargs).start()
    try:
        server.upload_many(manifest.paths)
        stats = server.statistics()
        assert stats["CountInstances"] == len(manifest.instances), stats
    except BaseException:
        server.stop()
        raise
    return OrthancFixture(server=server, manifest=manifest)


@pytest.fixture
def dcmtk() -> Callable[[str], str]:
    """``dcmtk("findscu") -> "/usr/bin/findscu"``; skips/fails the test if it is absent."""
    return dcmtk_tool


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port() -> int``: a TCP port free on 127.0.0.1 right now."""
    return free_tcp_port


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancFixture]:
    """One Orthanc for the whole session, with the standard data set uploaded once.

    Shared: tests must not change its content. Use `orthanc_factory` to get a private one.
    """
    fixture = _start_orthanc(tmp_path_factory.mktemp("orthanc-session"), with_dataset=True)
    try:
        yield fixture
    finally:
        fixture.server.stop()


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., OrthancFixture]]:
    """``orthanc_factory(with_dataset=True, **OrthancServer kwargs)``: a private Orthanc.

    For tests that delete, add, stop or restart; every one started is stopped afterwards.
    """
    started: list[OrthancFixture] = []
    counter = itertools.count(1)

    def make(with_dataset: bool = True, **kwargs: Any) -> OrthancFixture:
        workdir = Path(tempfile.mkdtemp(prefix=f"orthanc{next(counter)}-", dir=tmp_path))
        fixture = _start_orthanc(workdir, with_dataset, **kwargs)
        started.append(fixture)
        return fixture

    yield make
    for fixture in reversed(started):
        fixture.server.stop()


@pytest.fixture
def bridge_process(tmp_path: Path) -> Iterator[Callable[..., BridgeProcess]]:
    """``bridge_process(config_text, **start_bridge kwargs) -> BridgeProcess``.

    Writes the TOML, runs ``sys.executable -m bridge run --config FILE`` (log in tmp_path),
    waits (<= 20 s) for the DIMSE port to accept connections; on teardown every bridge
    started is sent SIGTERM and waited for (SIGKILL after 15 s).
    """
    started: list[BridgeProcess] = []
    counter = itertools.count(1)

    def start(config_text: str, **kwargs: Any) -> BridgeProcess:
        kwargs.setdefault("name", f"bridge{next(counter)}")
        bridge = start_bridge(config_text, tmp_path, **kwargs)
        started.append(bridge)
        return bridge

    yield start
    for bridge in reversed(started):
        bridge.stop()
