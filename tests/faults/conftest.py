"""Fixtures shared by the fault modules: a private Orthanc with one generated study, and the
fault proxy in front of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.proxy import FaultProxy
from tests.faults.study import Study, uploaded_study

DEFAULT_STUDY_SIZE = 300


@pytest.fixture(scope="module")
def study(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Study]:
    """A private Orthanc per module holding one generated CT study of small instances.

    As many as the module's STUDY_SIZE (default 300); their UIDs are seeded by the module's
    name (test_get_faults: "get-faults").
    """
    key = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    size = getattr(request.module, "STUDY_SIZE", DEFAULT_STUDY_SIZE)
    with uploaded_study(tmp_path_factory.mktemp(f"orthanc-{key}"), size, key) as uploaded:
        yield uploaded


@pytest.fixture
def proxy(study: Study) -> Iterator[FaultProxy]:
    """A fault proxy in front of the module's Orthanc (no rules: it passes everything)."""
    with FaultProxy(study.server.http_url) as fault_proxy:
        yield fault_proxy
