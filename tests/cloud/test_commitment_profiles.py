"""Storage commitment through the bridge under every server profile: the bridge checks
each referenced instance with queries the server can answer (hierarchical ones for aws),
and the emulator refuses none of them (issue 11, item 6). Helpers and checks are those
of tests/integration/test_commitment.py. Against the session Orthanc for instances the
bridge did not store, and against the cloud Orthanc for instances stored through it.
"""

from __future__ import annotations

import re

import pytest

from tests.cloud.stack import PROFILES, Stacks
from tests.conftest import OrthancFixture
from tests.integration.dataset import InstanceEntry, make_ct_series
from tests.integration.test_commitment import (
    ALL_COMMITTED,
    NO_SUCH_OBJECT_INSTANCE,
    SOME_FAILED,
    SUCCESS,
    listed,
    missing_ref,
    present_entries,
    refs_of,
    request_commitment,
)
from tests.integration.test_store import c_store, orthanc_has

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("profile", PROFILES)
def test_all_present_then_one_missing(
    profile: str, read_stacks: Stacks, orthanc: OrthancFixture
) -> None:
    stack = read_stacks(profile)
    refs = refs_of(present_entries(orthanc))
    result = request_commitment(stack.bridge, refs, then="wait")
    assert result.action_status == SUCCESS, stack.refused()
    assert len(result.reports) == 1, stack.refused()
    report = result.reports[0]
    assert report.event_type == ALL_COMMITTED, stack.refused()
    assert sorted(listed(report.info, "ReferencedSOPSequence")) == sorted(refs)
    assert "FailedSOPSequence" not in report.info
    stack.emulator.assert_refused_nothing()

    missing = missing_ref(orthanc)
    result = request_commitment(stack.bridge, [*refs, missing], then="wait")
    assert result.action_status == SUCCESS
    assert len(result.reports) == 1, stack.refused()
    report = result.reports[0]
    assert report.event_type == SOME_FAILED, stack.refused()
    assert listed(report.info, "FailedSOPSequence") == [missing]
    assert sorted(listed(report.info, "ReferencedSOPSequence")) == sorted(refs)
    stack.emulator.assert_refused_nothing()


@pytest.mark.parametrize("profile", PROFILES)
def test_stored_through_the_bridge_then_committed(
    profile: str, write_stacks: Stacks, cloud_orthanc: OrthancFixture
) -> None:
    """The everyday flow: a modality stores through the bridge, then asks for commitment
    of what it sent. Every profile commits all of it."""
    stack = write_stacks(profile)
    datasets = make_ct_series(3, rows=4, columns=4, key=f"commit-{profile}")
    try:
        results = c_store(stack.bridge, datasets)
        assert [r.status for r in results] == [SUCCESS] * 3, stack.refused()
        refs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]
        result = request_commitment(stack.bridge, refs, then="wait")
        assert result.action_status == SUCCESS
        assert len(result.reports) == 1, stack.refused()
        report = result.reports[0]
        assert report.event_type == ALL_COMMITTED, stack.refused()
        assert sorted(listed(report.info, "ReferencedSOPSequence")) == sorted(refs)
        stack.emulator.assert_refused_nothing()
    finally:
        for ds in datasets:
            if orthanc_has(cloud_orthanc.server, str(ds.SOPInstanceUID)):
                cloud_orthanc.server.delete_instance(str(ds.SOPInstanceUID))


def test_walk_for_unknown_instances_is_bounded_by_max_results(
    orthanc: OrthancFixture, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """aws, instances the bridge did not store: the walk studies → series → instances reads
    at most dicomweb.max_results studies (here 1); an instance of any other study is
    reported failed (0x0112, safe), and the log says why."""
    stacks = Stacks(orthanc, tmp_path_factory.mktemp("cloud-commit-bound"), max_results=1)
    try:
        stack = stacks("aws")
        first: dict[str, InstanceEntry] = {}
        for entry in orthanc.manifest.instances:
            first.setdefault(entry.StudyInstanceUID, entry)
        assert len(first) > 1
        refs = refs_of(list(first.values()))
        result = request_commitment(stack.bridge, refs, then="wait")
        assert result.action_status == SUCCESS
        assert len(result.reports) == 1, stack.refused()
        report = result.reports[0]
        assert report.event_type == SOME_FAILED, stack.refused()
        walked = {
            m.group(1)
            for r in stack.emulator.records()
            if (m := re.search(r"/studies/([0-9.]+)/series", r.path))
        }
        assert len(walked) == 1, walked
        (study,) = walked
        committed = listed(report.info, "ReferencedSOPSequence")
        assert committed == refs_of([first[study]])
        failed = report.info.FailedSOPSequence
        assert sorted(listed(report.info, "FailedSOPSequence")) == sorted(
            set(refs) - set(committed)
        )
        assert {int(item.FailureReason) for item in failed} == {NO_SUCH_OBJECT_INSTANCE}
        assert "in the first 1 studies (dicomweb.max_results" in stack.bridge.log_text()
        stack.emulator.assert_refused_nothing()
    finally:
        stacks.close()
