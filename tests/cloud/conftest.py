"""Fixtures of the cloud tests: a private Orthanc per module holding the standard data set,
and a conformance emulator per vendor in front of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.cloud.emulator import ConformanceEmulator
from tests.cloud.stack import Stacks
from tests.conftest import OrthancFixture, _start_orthanc
from tests.integration.test_move import Destination


@pytest.fixture(scope="session")
def cloud_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancFixture]:
    """An Orthanc of the cloud tests, with the standard data set, that they may add to
    (each test deletes what it added; the session Orthanc stays untouched)."""
    fixture = _start_orthanc(tmp_path_factory.mktemp("orthanc-cloud"), with_dataset=True)
    try:
        yield fixture
    finally:
        fixture.server.stop()


@pytest.fixture(scope="module")
def emulators(
    cloud_orthanc: OrthancFixture,
) -> Iterator[Callable[[str], ConformanceEmulator]]:
    """``emulators("azure")``: the module's emulator of that vendor (started once), its
    records, refusals and faults cleared and its rate bucket refilled for each caller."""
    started: dict[str, ConformanceEmulator] = {}

    def get(vendor: str) -> ConformanceEmulator:
        emu = started.get(vendor)
        if emu is None:
            emu = started[vendor] = ConformanceEmulator(cloud_orthanc.http_url, vendor).start()
        emu.clear()
        emu.clear_faults()
        emu.reset_rate()
        return emu

    yield get
    for emu in started.values():
        emu.stop()


@pytest.fixture(scope="session")
def cloud_pydest() -> Iterator[Destination]:
    """A pynetdicom storage SCP (PYDEST) that every read-only stack lists as a C-MOVE
    destination."""
    dest = Destination("PYDEST").start()
    try:
        yield dest
    finally:
        dest.stop()


@pytest.fixture(scope="session")
def read_stacks(
    orthanc: OrthancFixture,
    cloud_pydest: Destination,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stacks]:
    """One stack per profile in front of the session Orthanc (read only: C-FIND, C-GET,
    C-MOVE), shared by the cloud modules that only read."""
    stacks = Stacks(
        orthanc,
        tmp_path_factory.mktemp("cloud-read"),
        peers=[(cloud_pydest.ae_title, "127.0.0.1", cloud_pydest.port)],
    )
    try:
        yield stacks
    finally:
        stacks.close()


# Small pages, so that the standard data set pages: the paging cases need several.
WRITE_PAGE_SIZE = 4


@pytest.fixture(scope="session")
def write_stacks(
    cloud_orthanc: OrthancFixture, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stacks]:
    """One stack per profile in front of `cloud_orthanc`, for C-STORE and paging, with
    ``page_size = WRITE_PAGE_SIZE``."""
    stacks = Stacks(
        cloud_orthanc, tmp_path_factory.mktemp("cloud-write"), page_size=WRITE_PAGE_SIZE
    )
    try:
        yield stacks
    finally:
        stacks.close()
