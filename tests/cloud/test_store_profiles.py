"""C-STORE through the bridge under every server profile: storescu sends Implicit VR LE,
Explicit VR LE and a compressed (RLE lossless) file, each on a context of its own syntax.

Every element sent must be stored with the same value (Orthanc's file, read over REST,
compared element by element with the file sent: an Implicit VR data set re-encoded as
Explicit VR LE for a server that takes no implicit VR keeps every element and value), the
pixel data unchanged, and the emulator must have refused nothing. A second store of the
same instance is answered as the vendor's duplicate answer maps (issue 11, item 5).
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from tests.cloud.stack import PROFILES, ProfileStack, Stacks
from tests.conftest import OrthancFixture
from tests.integration.test_get import element_differences
from tests.integration.test_store import (
    COERCION_WARNING,
    DATASET_TRAILING_PADDING,
    SUCCESS,
    c_store,
    orthanc_has,
    store_responses,
    storescu,
    syntax_of,
)

pytestmark = pytest.mark.integration

# pydicom test file, its transfer syntax, the storescu option that proposes it alone.
SOURCES = (
    ("MR_small_implicit.dcm", ImplicitVRLittleEndian, "-xi"),
    ("CT_small.dcm", ExplicitVRLittleEndian, None),
    ("SC_rgb_rle.dcm", RLELossless, "-xr"),
)


def source(filename: str) -> Path:
    found = get_testdata_file(filename)
    if found is None:
        pytest.skip(f"pydicom test file {filename} is not available")
    return Path(found)


@pytest.fixture
def cleanup(cloud_orthanc: OrthancFixture) -> Iterator[list[str]]:
    """SOP Instance UIDs to delete from the shared cloud Orthanc after the test."""
    added: list[str] = []
    yield added
    for uid in added:
        if orthanc_has(cloud_orthanc.server, uid):
            cloud_orthanc.server.delete_instance(uid)


def _expected_syntax(stack: ProfileStack, sent: str) -> str:
    if sent == ImplicitVRLittleEndian and not stack.emulator.vendor.stow_implicit_vr:
        return ExplicitVRLittleEndian  # re-encoded by the bridge, losslessly
    return sent


@pytest.mark.parametrize(
    ("filename", "syntax", "flag"), SOURCES, ids=["implicit-le", "explicit-le", "rle"]
)
@pytest.mark.parametrize("profile", PROFILES)
def test_storescu_every_element_stored_with_the_same_value(
    profile: str,
    filename: str,
    syntax: str,
    flag: str | None,
    write_stacks: Stacks,
    cloud_orthanc: OrthancFixture,
    cleanup: list[str],
) -> None:
    stack = write_stacks(profile)
    path = source(filename)
    original = dcmread(path)
    assert original.file_meta.TransferSyntaxUID == syntax
    uid = str(original.SOPInstanceUID)
    cleanup.append(uid)
    assert not orthanc_has(cloud_orthanc.server, uid)

    code, log = storescu(stack.bridge, [path], flag)
    assert code == 0, log[-3000:]
    assert store_responses(log) == ["Success"], log[-2000:] + "\n" + stack.refused()
    assert orthanc_has(cloud_orthanc.server, uid)
    stored_file = cloud_orthanc.server.instance_file(uid)
    assert syntax_of(stored_file) == _expected_syntax(stack, syntax)
    stored = dcmread(BytesIO(stored_file))
    assert stored.PixelData == original.PixelData
    differences = [d for d in element_differences(original, stored) if "(FFFC,FFFC)" not in d]
    assert DATASET_TRAILING_PADDING  # storescu drops CT_small's trailing padding
    assert not differences, differences
    stack.emulator.assert_refused_nothing()


@pytest.mark.parametrize("profile", PROFILES)
def test_duplicate_store_answer(
    profile: str, write_stacks: Stacks, cloud_orthanc: OrthancFixture, cleanup: list[str]
) -> None:
    """The same instance twice: stored once; the second C-STORE is Success where the
    vendor answers a duplicate as stored (Orthanc, AWS), else the "already present"
    warning (Google's 409 ALREADY_EXISTS, Azure's failure 45070)."""
    stack = write_stacks(profile)
    ds = dcmread(source("CT_small.dcm"))
    uid = str(ds.SOPInstanceUID)
    cleanup.append(uid)
    (first,) = c_store(stack.bridge, [ds])
    assert first.status == SUCCESS, first.comment + "\n" + stack.refused()
    before = cloud_orthanc.server.instance_file(uid)
    stack.emulator.assert_refused_nothing()

    (second,) = c_store(stack.bridge, [ds])
    duplicates = stack.emulator.refusals("duplicate")
    if stack.emulator.vendor.duplicates in ("google", "azure"):
        assert len(duplicates) == 1
        assert second.status == COERCION_WARNING, second.comment
        assert "already present" in second.comment, second.comment
    else:
        assert second.status == SUCCESS, second.comment
    assert cloud_orthanc.server.instance_file(uid) == before
    assert stack.emulator.refusals() == duplicates  # nothing else refused


def test_aws_conflicting_instance_is_not_reported_as_stored(
    write_stacks: Stacks, cloud_orthanc: OrthancFixture, cleanup: list[str]
) -> None:
    """AWS files an instance whose study attributes conflict with the stored one into a
    non-primary image set that QIDO-RS does not show, and still lists it as stored (the
    emulator does the same). The bridge must not answer that C-STORE 0x0000."""
    stack = write_stacks("aws")
    ds = dcmread(source("CT_small.dcm"))
    uid = str(ds.SOPInstanceUID)
    cleanup.append(uid)
    (first,) = c_store(stack.bridge, [ds])
    assert first.status == SUCCESS, first.comment + "\n" + stack.refused()
    conflicting = dcmread(source("CT_small.dcm"))
    conflicting.PatientID = "CONFLICT-ID"
    (second,) = c_store(stack.bridge, [conflicting])
    assert [r.kind for r in stack.emulator.refusals()] == ["duplicate"]
    assert second.status == COERCION_WARNING, f"{second.status:#06x} {second.comment}"
    assert second.comment, "no ErrorComment"
    stored = dcmread(BytesIO(cloud_orthanc.server.instance_file(uid)), stop_before_pixels=True)
    assert stored.PatientID == ds.PatientID
