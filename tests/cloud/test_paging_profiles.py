"""QIDO-RS paging edge cases through the bridge under every server profile (issue 11,
item 2), with ``page_size = 4`` (tests/cloud/conftest.py):

* exactly one page: 4 matches. The bridge cannot tell the end from a full page, so it
  asks for the next one, which Azure answers 204 and the others with an empty array; no
  vendor sends a Warning header that the bridge could rely on (Google sends none).
* a row inserted between pages: 6 matches, a new matching study stored while the second
  page is on its way (the emulator holds that request back). Newest-first vendors (Azure,
  AWS) then repeat a row of page 1 on page 2: the answer must list each study once, and
  every study that was there before.

Each with the emulator refusing nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydicom import Dataset

from tests.cloud.conftest import WRITE_PAGE_SIZE
from tests.cloud.stack import PROFILES, ProfileStack, Stacks
from tests.conftest import OrthancFixture
from tests.faults.proxy import RequestRecord
from tests.integration.dataset import make_ct_series, to_bytes
from tests.integration.test_find import SUCCESS, FindResult, pynetdicom_find

pytestmark = pytest.mark.integration

ONE_PAGE = "PAGEONE"
INSERTED = "PAGETWO"
HOLD_S = 1.0  # how long the emulator holds back the second page


@dataclass(frozen=True)
class PagingData:
    one_page: list[str]  # StudyInstanceUIDs of ONE_PAGE's studies
    two_pages: list[str]  # ... of INSERTED's


def _studies(patient_id: str, n: int, tag: str) -> list[Dataset]:
    return [
        make_ct_series(1, rows=4, columns=4, key=f"{tag}-{i}", patient_id=patient_id)[0]
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def paging(cloud_orthanc: OrthancFixture) -> Iterator[PagingData]:
    one = _studies(ONE_PAGE, WRITE_PAGE_SIZE, "paging-one")
    two = _studies(INSERTED, WRITE_PAGE_SIZE + 2, "paging-two")
    cloud_orthanc.server.upload_many(to_bytes(ds) for ds in one + two)
    try:
        yield PagingData(
            [str(ds.StudyInstanceUID) for ds in one], [str(ds.StudyInstanceUID) for ds in two]
        )
    finally:
        for ds in one + two:
            cloud_orthanc.server.delete_instance(str(ds.SOPInstanceUID))


def study_find(stack: ProfileStack, patient_id: str) -> FindResult:
    keys = [("QueryRetrieveLevel", "STUDY"), ("PatientID", patient_id), ("StudyInstanceUID", "")]
    return pynetdicom_find(stack.bridge.port, stack.bridge.ae_title, keys)


def searches(stack: ProfileStack) -> list[RequestRecord]:
    return [r for r in stack.emulator.records() if r.method == "GET" and "/studies" in r.path]


def found_uids(result: FindResult) -> list[str]:
    return [str(ds.StudyInstanceUID) for ds in result.identifiers]


@pytest.mark.parametrize("profile", PROFILES)
def test_exactly_one_page(profile: str, write_stacks: Stacks, paging: PagingData) -> None:
    stack = write_stacks(profile)
    result = study_find(stack, ONE_PAGE)
    assert result.status == SUCCESS, f"{result.status:#06x} {result.comment}\n{stack.refused()}"
    assert sorted(found_uids(result)) == sorted(paging.one_page)
    stack.emulator.assert_refused_nothing()
    asked = searches(stack)
    assert len(asked) >= 2, "a full page cannot be the last one without asking again"
    if stack.emulator.vendor.empty_is_204:
        assert asked[-1].status == 204, asked


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_row_inserted_between_pages(
    profile: str, write_stacks: Stacks, paging: PagingData, cloud_orthanc: OrthancFixture
) -> None:
    stack = write_stacks(profile)
    (new,) = _studies(INSERTED, 1, f"paging-inserted-{profile}")
    # Hold back every search after the first, so that the new study is stored between
    # the first page and the next.
    stack.emulator.add_fault(
        path_filter=lambda p: "/studies" in p and "offset=" in p, method="GET", delay_s=HOLD_S
    )
    outcome: list[FindResult] = []
    worker = threading.Thread(target=lambda: outcome.append(study_find(stack, INSERTED)))
    worker.start()
    try:
        stack.emulator.wait_for(
            lambda rs: any(r.completed_at and "/studies" in r.path for r in rs), timeout=20
        )
        cloud_orthanc.server.upload(to_bytes(new))
    finally:
        worker.join(60)
    try:
        (result,) = outcome
        assert result.status == SUCCESS, f"{result.status:#06x} {result.comment}\n{stack.refused()}"
        got = found_uids(result)
        assert len(got) == len(set(got)), f"a study listed twice: {got}"
        assert set(got) <= {*paging.two_pages, str(new.StudyInstanceUID)}
        if "newest" in stack.emulator.vendor.order.values():
            # Rows move down a page as new ones arrive: none is skipped, one repeats.
            assert set(paging.two_pages) <= set(got)
        assert len(searches(stack)) >= 2
        stack.emulator.assert_refused_nothing()
    finally:
        cloud_orthanc.server.delete_instance(str(new.SOPInstanceUID))
