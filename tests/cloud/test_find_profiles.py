"""C-FIND through the bridge under every server profile, cross-checked with Orthanc's own
C-FIND: the cases of tests/integration/test_find.py (every level, wildcards, ranges, UID
lists, ModalitiesInStudy, PATIENT level), each asked of the bridge in front of the
profile's conformance emulator and of Orthanc's native C-FIND SCP on the same data.

The answers must be identical, with exactly the requested keys, and the emulator must
have refused nothing: the bridge has to plan every request into what the vendor takes and
match the rest itself (issue 11, items 1-3).
"""

from __future__ import annotations

import pytest

from tests.cloud.stack import PROFILES, Stacks
from tests.conftest import OrthancFixture
from tests.integration.test_find import (
    CASES,
    PENDING,
    SUCCESS,
    Case,
    assert_exact_keys,
    manifest_rows,
    pynetdicom_find,
    rows,
)

pytestmark = pytest.mark.integration


Rows = list[tuple[tuple[str, str], ...]]
_NATIVE: dict[str, Rows] = {}


def native(case: Case, orthanc: OrthancFixture) -> Rows:
    """Orthanc's native answer to a case, asked once per session whatever the profile."""
    if case.id not in _NATIVE:
        m = orthanc.manifest
        got = pynetdicom_find(
            orthanc.dicom_port, orthanc.aet, case.identifier_keys(m), model=case.model
        )
        assert got.status == SUCCESS, got
        _NATIVE[case.id] = rows(got.identifiers, case.keywords(m))
    return _NATIVE[case.id]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("profile", PROFILES)
def test_find_identical_to_orthanc_native(
    profile: str, case: Case, read_stacks: Stacks, orthanc: OrthancFixture
) -> None:
    m = orthanc.manifest
    keywords = case.keywords(m)
    expected = manifest_rows(case.matches(m), keywords)
    assert len(expected) == case.count

    stack = read_stacks(profile)
    got = pynetdicom_find(
        stack.bridge.port, stack.bridge.ae_title, case.identifier_keys(m), model=case.model
    )
    assert got.status == SUCCESS, f"{got.status:#06x} {got.comment}\n{stack.refused()}"
    sent = "\n".join(f"{r.status} {r.path}" for r in stack.emulator.records())
    assert got.statuses.count(PENDING) == case.count, stack.refused() + "\nsent:\n" + sent
    assert rows(got.identifiers, keywords) == expected, stack.refused()
    assert_exact_keys(got.identifiers, keywords, case.level)
    assert rows(got.identifiers, keywords) == native(case, orthanc)
    stack.emulator.assert_refused_nothing()
