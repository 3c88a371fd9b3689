"""C-GET and C-MOVE at every level through the bridge under every server profile.

The stacks of tests/cloud/stack.py in front of the session Orthanc (read only). The
cases and checks are those of tests/integration/test_get.py and test_move.py: exactly the
expected instances, each once, byte-identical to the files uploaded and to what Orthanc
stores, pixel data included. And the profile's conformance emulator refused nothing: no
study-level WADO-RS or root-level QIDO-RS for aws, only the Accept syntaxes each vendor
serves, under the AWS request rate (issue 11, item 4).

Then the pixel check of test_move's explicit-only destination: compressed instances (RLE
lossless, and JPEG 2000, which Orthanc cannot transcode) to a peer that accepts only
Explicit VR LE arrive with the pixels of pydicom's decode of the original.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, RLELossless

from tests.cloud.stack import PROFILES, Stacks
from tests.conftest import OrthancFixture
from tests.integration.dataset import make_ct_series, to_bytes
from tests.integration.test_get import (
    LEVEL_IDS,
    SUCCESS,
    assert_identical_to_originals,
    c_get,
    identifier,
    storage,
)
from tests.integration.test_get import LEVELS as GET_LEVELS
from tests.integration.test_get import target as get_target
from tests.integration.test_move import LEVELS as MOVE_LEVELS
from tests.integration.test_move import Destination, assert_identical_to_orthanc, c_move
from tests.integration.test_move import target as move_target

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("model", "level"), GET_LEVELS, ids=LEVEL_IDS)
@pytest.mark.parametrize("profile", PROFILES)
def test_get_every_level(
    profile: str, model: str, level: str, read_stacks: Stacks, orthanc: OrthancFixture
) -> None:
    stack = read_stacks(profile)
    goal = get_target(orthanc.manifest, model, level)
    outcome = c_get(stack.bridge, identifier(level, **goal.keys), model)
    n = len(goal.expected)
    assert outcome.status == SUCCESS, outcome.summary() + "\n" + stack.refused()
    assert (outcome.completed, outcome.failed, outcome.warning) == (n, 0, 0), stack.refused()
    assert sorted(outcome.received_uids) == sorted(e.SOPInstanceUID for e in goal.expected)
    assert len(set(outcome.received_uids)) == n
    assert_identical_to_originals(outcome, goal.expected)
    stack.emulator.assert_refused_nothing()


@pytest.mark.parametrize("level", MOVE_LEVELS)
@pytest.mark.parametrize("profile", PROFILES)
def test_move_every_level(
    profile: str,
    level: str,
    read_stacks: Stacks,
    orthanc: OrthancFixture,
    cloud_pydest: Destination,
) -> None:
    stack = read_stacks(profile)
    cloud_pydest.reset()
    goal = move_target(orthanc.manifest, level)
    outcome = c_move(
        stack.bridge, identifier(level, **goal.keys), cloud_pydest.ae_title, goal.model
    )
    n = len(goal.expected)
    assert outcome.status == SUCCESS, outcome.summary() + "\n" + stack.refused()
    assert outcome.count("NumberOfCompletedSuboperations") == n, stack.refused()
    assert outcome.count("NumberOfFailedSuboperations") == 0
    assert len(cloud_pydest.stored) == n, "an instance arrived twice"
    assert_identical_to_orthanc(
        orthanc, {u: s.raw for u, s in cloud_pydest.by_uid().items()}, goal.expected
    )
    stack.emulator.assert_refused_nothing()


COMPRESSED = (("SC_rgb_rle.dcm", RLELossless), ("JPEG2000.dcm", JPEG2000))


@pytest.fixture(scope="module")
def compressed(cloud_orthanc: OrthancFixture) -> Iterator[list[Path]]:
    """The compressed pydicom test files, uploaded to the cloud Orthanc for the module."""
    paths = []
    for filename, syntax in COMPRESSED:
        found = get_testdata_file(filename)
        if found is None:
            pytest.skip(f"pydicom test file {filename} is not available")
        path = Path(found)
        assert dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
        paths.append(path)
    cloud_orthanc.server.upload_many(paths)
    try:
        yield paths
    finally:
        for path in paths:
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            cloud_orthanc.server.delete_instance(uid)


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_compressed_to_an_explicit_only_peer_keeps_the_pixels(
    profile: str, write_stacks: Stacks, compressed: list[Path]
) -> None:
    stack = write_stacks(profile)
    for path in compressed:
        original = dcmread(path)
        keys = {
            "StudyInstanceUID": str(original.StudyInstanceUID),
            "SeriesInstanceUID": str(original.SeriesInstanceUID),
            "SOPInstanceUID": str(original.SOPInstanceUID),
        }
        contexts = storage([str(original.SOPClassUID)], [ExplicitVRLittleEndian])
        outcome = c_get(stack.bridge, identifier("IMAGE", **keys), contexts=contexts)
        assert outcome.status == SUCCESS, outcome.summary() + "\n" + stack.refused()
        (item,) = outcome.received
        assert item.transfer_syntax == ExplicitVRLittleEndian, path.name
        received = item.dataset
        assert received.SOPInstanceUID == original.SOPInstanceUID
        assert np.array_equal(received.pixel_array, original.pixel_array), path.name
    stack.emulator.assert_refused_nothing()


RATE_SERIES_SIZE = 150  # more than AWS's burst of 100 instance retrieves
JITTER_429 = 2


@pytest.fixture(scope="module")
def many(cloud_orthanc: OrthancFixture) -> Iterator[list[str]]:
    """A series of RATE_SERIES_SIZE tiny CT instances in the cloud Orthanc (module)."""
    datasets = make_ct_series(RATE_SERIES_SIZE, rows=4, columns=4, key="cloud-rate")
    cloud_orthanc.server.upload_many(to_bytes(ds) for ds in datasets)
    try:
        yield [str(ds.SOPInstanceUID) for ds in datasets]
    finally:
        for ds in datasets:
            cloud_orthanc.server.delete_instance(str(ds.SOPInstanceUID))


@pytest.mark.slow
def test_aws_instance_retrieves_stay_under_the_request_rate(
    write_stacks: Stacks, cloud_orthanc: OrthancFixture, many: list[str]
) -> None:
    """An IMAGE-level C-GET naming 150 instances (AWS takes no UID lists, so one QIDO-RS
    and one WADO-RS per instance, or one per series): all arrive, within the rate.

    The emulator's bucket (50 per second, burst 100) measures arrivals, the bridge's own
    limiter departures: two buckets of the same size in series may refuse a request that
    arrives a few milliseconds early, as AWS would. So the bar is "paced" (at most
    JITTER_429 answers 429, each retried after Retry-After), not "never refused"; a bridge
    that does not pace gets about 50 of them (150 requests against a burst of 100)."""
    stack = write_stacks("aws")
    first = dcmread(BytesIO(cloud_orthanc.server.instance_file(many[0])), stop_before_pixels=True)
    query = identifier(
        "IMAGE",
        StudyInstanceUID=str(first.StudyInstanceUID),
        SeriesInstanceUID=str(first.SeriesInstanceUID),
        SOPInstanceUID="\\".join(many),
    )
    outcome = c_get(stack.bridge, query, contexts=storage([str(first.SOPClassUID)]))
    assert outcome.status == SUCCESS, outcome.summary() + "\n" + stack.refused()
    assert sorted(outcome.received_uids) == sorted(many)
    limited = stack.emulator.refusals("rate")
    assert len(limited) <= JITTER_429, limited
    assert stack.emulator.refusals() == limited  # nothing else refused
