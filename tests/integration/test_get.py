"""C-GET through the bridge: dcmtk getscu and pynetdicom SCUs against a real Orthanc.

Acceptance: an SCU pulls any patient, study, series or instance (both information models)
with exactly the expected instances and identical content, and each failure status of the
README's C-GET table is produced by a test that shows it.

The SCU helpers at the top (``c_get``, ``storage``, ``after_meta``...) are reused by
``test_get_syntax.py``.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    UltrasoundImageStorage,
)

from tests.conftest import OrthancFixture
from tests.faults.proxy import FaultProxy
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.dataset import InstanceEntry, Manifest, make_ct_series, to_bytes
from tests.integration.tools import (
    assert_released_cleanly,
    describe,
    final_response_dump,
    free_port,
    run_dcmtk,
)
from tests.scu import Received, RetrieveOutcome, scu
from tests.scu import c_echo as scu_c_echo
from tests.scu import c_get as scu_c_get

pytestmark = pytest.mark.integration

SUCCESS = 0x0000
PENDING = 0xFF00
WARNING_SUBOPS = 0xB000
OUT_OF_RESOURCES_MATCHES = 0xA701
OUT_OF_RESOURCES_SUBOPS = 0xA702
IDENTIFIER_MISMATCH = 0xA900
REFUSED_OUT_OF_RESOURCES = 0xA700  # a C-STORE failure status the peer may answer
NO_DATA_SET = 0x0101  # CommandDataSetType

GET_MODELS = {
    "PATIENT_ROOT": PatientRootQueryRetrieveInformationModelGet,
    "STUDY_ROOT": StudyRootQueryRetrieveInformationModelGet,
}
# The SOP classes of the standard data set (tests/integration/dataset.py).
STORAGE_CLASSES = (
    CTImageStorage,
    MRImageStorage,
    UltrasoundImageStorage,
    SecondaryCaptureImageStorage,
)


# --------------------------------------------------------------------------- SCU helpers


StorageSpec = Sequence[tuple[str, Sequence[str]]]


def storage(
    sop_classes: Sequence[str] = STORAGE_CLASSES,
    syntaxes: Sequence[str] = (ExplicitVRLittleEndian,),
    *,
    one_context_per_syntax: bool = False,
) -> list[tuple[str, list[str]]]:
    """Storage presentation contexts the SCU proposes (SCP role) for the sub-operations.

    The bridge accepts one transfer syntax per context (the proposer's first lossless
    choice that it can produce, see README "C-GET"): to have several syntaxes accepted for
    a SOP class, each must be proposed in a context of its own.
    """
    if one_context_per_syntax:
        return [(str(cls), [str(ts)]) for cls in sop_classes for ts in syntaxes]
    return [(str(cls), [str(ts) for ts in syntaxes]) for cls in sop_classes]


def c_get(
    bridge: BridgeProcess,
    identifier: Dataset,
    model: str = "STUDY_ROOT",
    *,
    contexts: StorageSpec | None = None,
    store_status: Callable[[str], int] | None = None,
    on_store: Callable[[Received], None] | None = None,
) -> RetrieveOutcome:
    """One C-GET on a fresh association with the bridge, as a pynetdicom SCU.

    `contexts`: storage contexts proposed with the SCP role (default: the data set's four
    SOP classes in Explicit VR Little Endian only). `store_status(uid)` is the status the
    SCU answers each C-STORE with (default 0x0000); `on_store` runs inside the C-STORE
    handler before it answers (sub-operations are strictly sequential, so it runs while
    the bridge waits for that answer).
    """
    ae = scu("PYNETDICOM", timeouts=(30, 60, 60))
    outcome = scu_c_get(
        ae,
        (bridge.host, bridge.port, bridge.ae_title),
        identifier,
        GET_MODELS[model],
        list(contexts) if contexts is not None else storage(),
        store_status=None if store_status is None else lambda i: store_status(i.sop_instance_uid),
        on_store=None if on_store is None else lambda item, _n: on_store(item),
    )
    assert outcome.responses and "Status" in outcome.final, (
        f"no final C-GET status (timeout or abort); bridge log:\n{bridge.log_tail()}"
    )
    assert all(int(s.Status) == PENDING for s, _ in outcome.responses[:-1]), outcome.summary()
    return outcome


def c_echo(bridge: BridgeProcess) -> int:
    return scu_c_echo((bridge.host, bridge.port, bridge.ae_title), "PYNETDICOM")


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def after_meta(part10: bytes) -> bytes:
    """The encoded data set of a Part 10 file: everything after preamble and File Meta.

    The File Meta group starts at byte 132 with (0002,0000) UL File Meta Information Group
    Length (Explicit VR LE: tag 4, VR 2, length 2, value 4), which counts the rest of it.
    """
    assert part10[128:132] == b"DICM", "not a Part 10 file"
    group, element, vr, length, value = struct.unpack("<HH2sHI", part10[132:144])
    assert (group, element, vr, length) == (2, 0, b"UL", 4), "no File Meta group length"
    return part10[144 + value :]


def element_differences(expected: Dataset, actual: Dataset) -> list[str]:
    """Tags whose presence or value differ between two data sets (File Meta excluded).

    Values are compared decoded, so Implicit vs Explicit VR encodings of the same data
    compare equal; sequences are compared item by item.
    """
    diffs: list[str] = []
    exp_tags = {e.tag for e in expected if e.tag.group != 2}
    act_tags = {e.tag for e in actual if e.tag.group != 2}
    diffs += [f"missing {tag}" for tag in sorted(exp_tags - act_tags)]
    diffs += [f"extra {tag}" for tag in sorted(act_tags - exp_tags)]
    for tag in sorted(exp_tags & act_tags):
        a, b = expected[tag], actual[tag]
        if a.VR == "SQ":
            if len(a.value) != len(b.value):
                diffs.append(f"{tag} sequence length {len(a.value)} != {len(b.value)}")
            for index, (x, y) in enumerate(zip(a.value, b.value, strict=False)):
                diffs += [f"{tag}[{index}] {d}" for d in element_differences(x, y)]
        elif a.value != b.value:
            diffs.append(f"{tag} {a.keyword}: {str(a.value)[:60]!r} != {str(b.value)[:60]!r}")
    return diffs


def sending_order(manifest: Manifest, entries: Sequence[InstanceEntry]) -> list[str]:
    """The README's C-GET order: study, series number, instance number."""

    def key(entry: InstanceEntry) -> tuple[str, int, int]:
        series = manifest.one_series(entry.SeriesInstanceUID)
        return (entry.StudyInstanceUID, series.SeriesNumber, entry.InstanceNumber)

    return [e.SOPInstanceUID for e in sorted(entries, key=key)]


def assert_counters_exact(outcome: RetrieveOutcome, total: int, failed: int) -> None:
    """One pending response per sub-operation, Remaining counting down to 0, and final
    counters that add up: Failed == the failed count, Completed == the rest."""
    pending = outcome.responses[:-1]
    remaining = [int(s.NumberOfRemainingSuboperations) for s, _ in pending]
    assert remaining == list(range(total - 1, -1, -1)), outcome.summary()
    assert (outcome.completed, outcome.failed) == (total - failed, failed), outcome.summary()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bridge(
    orthanc: OrthancFixture, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BridgeProcess]:
    """One bridge for the module, fronting the session Orthanc (read only)."""
    process = start_bridge(
        bridge_config(orthanc.dicomweb_url, free_port()),
        tmp_path_factory.mktemp("get-bridge"),
        name="get-bridge",
    )
    try:
        yield process
    finally:
        process.stop()


@dataclass(frozen=True)
class Target:
    """What one retrieve names, and the instances it must bring."""

    model: str
    level: str
    keys: dict[str, str]
    expected: list[InstanceEntry]


def target(manifest: Manifest, model: str, level: str) -> Target:
    """A representative retrieve at `level`, with its expected instances.

    PATIENT: P004 (two studies, CT/MR/Secondary Capture); STUDY: P003's first study
    (UTF-8 names, ISO_IR 192); SERIES: P004's three-CT series; IMAGE: one MR of P002.
    """
    if level == "PATIENT":
        expected = [i for i in manifest.instances if i.PatientID == "P004"]
        return Target(model, level, {"PatientID": "P004"}, expected)
    if level == "STUDY":
        study = manifest.studies_of("P003")[0]
        expected = manifest.instances_of(study_uid=study.StudyInstanceUID)
        keys = {"StudyInstanceUID": study.StudyInstanceUID}
    elif level == "SERIES":
        study = next(s for s in manifest.studies_of("P004") if s.NumberOfStudyRelatedSeries == 3)
        series = manifest.series_of(study.StudyInstanceUID)[0]
        expected = manifest.instances_of(series_uid=series.SeriesInstanceUID)
        keys = {
            "StudyInstanceUID": study.StudyInstanceUID,
            "SeriesInstanceUID": series.SeriesInstanceUID,
        }
    else:
        instance = [i for i in manifest.instances if i.PatientID == "P002"][1]
        expected = [instance]
        keys = {
            "StudyInstanceUID": instance.StudyInstanceUID,
            "SeriesInstanceUID": instance.SeriesInstanceUID,
            "SOPInstanceUID": instance.SOPInstanceUID,
        }
    if model == "PATIENT_ROOT":
        keys = {"PatientID": expected[0].PatientID, **keys}
    return Target(model, level, keys, expected)


LEVELS = [
    ("PATIENT_ROOT", "PATIENT"),
    ("PATIENT_ROOT", "STUDY"),
    ("PATIENT_ROOT", "SERIES"),
    ("PATIENT_ROOT", "IMAGE"),
    # Not in the standard's Study Root model: served as Patient Root (Orthanc sends it).
    ("STUDY_ROOT", "PATIENT"),
    ("STUDY_ROOT", "STUDY"),
    ("STUDY_ROOT", "SERIES"),
    ("STUDY_ROOT", "IMAGE"),
]
LEVEL_IDS = [f"{m.split('_')[0].lower()}-{lvl.lower()}" for m, lvl in LEVELS]


# --------------------------------------------------------------------------- dcmtk getscu


def getscu_final(stdout_and_err: str) -> tuple[str, dict[str, int]]:
    """getscu -v: the text of the last "Received C-GET Response (...)" and the final counts.

    getscu exits 0 whatever the C-GET status, so its log is what tells.
    """
    responses = [
        line.split("Received C-GET Response", 1)[1].strip().strip("()")
        for line in stdout_and_err.splitlines()
        if "Received C-GET Response" in line
    ]
    counts: dict[str, int] = {}
    for line in stdout_and_err.splitlines():
        for name in ("Remaining", "Completed", "Failed", "Warning"):
            marker = f"Number of {name} Suboperations"
            if marker in line:
                counts[name] = int(line.rsplit(":", 1)[1])
    assert responses, "getscu printed no C-GET response"
    return responses[-1], counts


@pytest.mark.parametrize(("model", "level"), LEVELS, ids=LEVEL_IDS)
def test_getscu_retrieves_every_level(
    bridge: BridgeProcess, orthanc: OrthancFixture, tmp_path: Path, model: str, level: str
) -> None:
    goal = target(orthanc.manifest, model, level)
    out = tmp_path / "received"
    out.mkdir()
    args: list[str] = ["-v", "-P" if model == "PATIENT_ROOT" else "-S"]
    args += ["-aet", "GETSCU", "-aec", bridge.ae_title, "-od", str(out)]
    args += ["-k", f"QueryRetrieveLevel={level}"]
    for keyword, value in goal.keys.items():
        args += ["-k", f"{keyword}={value}"]
    result = run_dcmtk("getscu", *args, bridge.host, str(bridge.port), timeout=60)
    log = result.stdout + result.stderr
    assert result.returncode == 0, describe(["getscu", *args], result)
    final, counts = getscu_final(log)
    n = len(goal.expected)
    assert final == "Success", log
    assert counts == {"Remaining": 0, "Completed": n, "Failed": 0, "Warning": 0}, log

    files = sorted(out.iterdir())
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    assert len(files) == n, [p.name for p in files]
    assert set(received) == {e.SOPInstanceUID for e in goal.expected}

    for uid, path in received.items():
        # getscu proposes Explicit VR LE, Big Endian and Implicit VR LE in one context; the
        # instance arrives re-encoded by pynetdicom from Orthanc's Explicit VR LE file and
        # getscu writes it as received, with its own File Meta. So "identical" is checked
        # on content: the same set of elements with equal decoded
        # values (VRs come from the dictionary on the implicit side, exact for this
        # standard-only data set), and the PixelData bytes equal to Orthanc's stored file.
        stored = dcmread(BytesIO(orthanc.server.instance_file(uid)))
        got = dcmread(path)
        assert got.PixelData == stored.PixelData, uid
        assert element_differences(stored, got) == [], uid
        assert got.SOPClassUID == stored.SOPClassUID == got.file_meta.MediaStorageSOPClassUID


def test_getscu_zero_matches_is_success(bridge: BridgeProcess, tmp_path: Path) -> None:
    args = ["-v", "-S", "-aec", bridge.ae_title, "-od", str(tmp_path)]
    args += ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3.4.5.6.7.8.9"]
    result = run_dcmtk("getscu", *args, bridge.host, str(bridge.port), timeout=60)
    final, counts = getscu_final(result.stdout + result.stderr)
    assert final == "Success", describe(["getscu", *args], result)
    assert counts == {"Remaining": 0, "Completed": 0, "Failed": 0, "Warning": 0}
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def dead_backend_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    """A bridge whose DICOMweb server refuses connections (a port bound, not listening)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/dicom-web"
        process = start_bridge(
            bridge_config(url, free_port(), timeout=5),
            tmp_path_factory.mktemp("dead-backend-bridge"),
            name="dead-backend-bridge",
        )
        try:
            yield process
        finally:
            process.stop()


GETSCU_REFUSALS = [
    pytest.param(
        ["QueryRetrieveLevel=STUDY", "PatientName=DOE*"],
        IDENTIFIER_MISMATCH,
        "PatientName is not a unique key of a STUDY-level retrieve",
        id="non-unique-key",
    ),
    pytest.param(
        ["QueryRetrieveLevel=FOO", "StudyInstanceUID=1.2.3.4"],
        IDENTIFIER_MISMATCH,
        "QueryRetrieveLevel 'FOO' is not one of",
        id="unknown-level",
    ),
    pytest.param(
        ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.3.4"],
        OUT_OF_RESOURCES_MATCHES,
        "DICOMweb server unreachable",
        id="qido-fails",
    ),
]


@pytest.mark.parametrize(("keys", "status", "comment"), GETSCU_REFUSALS)
def test_getscu_refusal_releases_cleanly(
    request: pytest.FixtureRequest, keys: list[str], status: int, comment: str
) -> None:
    """A refused C-GET carries its status and ErrorComment and no data set, which getscu
    never reads: with one, getscu's A-RELEASE met that P-DATA and it aborted."""
    fixture = "dead_backend_bridge" if status == OUT_OF_RESOURCES_MATCHES else "bridge"
    own: BridgeProcess = request.getfixturevalue(fixture)
    args = ["-d", "-S", "-aet", "GETSCU", "-aec", own.ae_title]
    for key in keys:
        args += ["-k", key]
    result = run_dcmtk("getscu", *args, own.host, str(own.port), timeout=60)
    assert_released_cleanly(result)
    final = final_response_dump(result.stdout + result.stderr, "Received C-GET Response")
    assert (final.status, final.has_data_set) == (status, False), final
    assert final.comment.startswith(comment), final
    assert final.counts == {"Completed": 0, "Failed": 0, "Warning": 0}, final
    assert own.running


# --------------------------------------------------------------------------- pynetdicom SCU


def assert_identical_to_originals(
    outcome: RetrieveOutcome, expected: Sequence[InstanceEntry]
) -> None:
    """Each received instance is byte-identical to the file write_dataset() wrote.

    The SCU accepts only Explicit VR LE (the stored syntax), so the bridge sends the data
    set as Orthanc stored it and pynetdicom re-encodes it unchanged: the bytes on the wire
    must equal the original file's bytes after its File Meta, PixelData included.
    """
    by_uid = outcome.by_uid()
    for entry in expected:
        assert entry.path is not None
        original = entry.path.read_bytes()
        got = by_uid[entry.SOPInstanceUID]
        assert got.transfer_syntax == ExplicitVRLittleEndian
        assert got.dataset.PixelData == dcmread(entry.path).PixelData, entry.SOPInstanceUID
        assert got.raw == after_meta(original), entry.SOPInstanceUID


@pytest.mark.parametrize(("model", "level"), LEVELS, ids=LEVEL_IDS)
def test_pynetdicom_get_every_level(
    bridge: BridgeProcess, orthanc: OrthancFixture, model: str, level: str
) -> None:
    goal = target(orthanc.manifest, model, level)
    outcome = c_get(bridge, identifier(level, **goal.keys), model)
    n = len(goal.expected)
    assert outcome.status == SUCCESS, outcome.summary()
    assert (outcome.completed, outcome.failed, outcome.warning) == (n, 0, 0), outcome.summary()
    assert outcome.failed_uids == []
    assert sorted(outcome.received_uids) == sorted(e.SOPInstanceUID for e in goal.expected)
    assert len(set(outcome.received_uids)) == n  # each exactly once
    # Pending responses: one per sub-operation, counting down.
    remaining = [int(s.NumberOfRemainingSuboperations) for s, _ in outcome.responses[:-1]]
    assert remaining == list(range(n - 1, -1, -1)), outcome.summary()
    assert_identical_to_originals(outcome, goal.expected)


def test_image_level_uid_list(bridge: BridgeProcess, orthanc: OrthancFixture) -> None:
    manifest = orthanc.manifest
    study = next(s for s in manifest.studies_of("P004") if s.NumberOfStudyRelatedSeries == 3)
    series = manifest.series_of(study.StudyInstanceUID)[2]  # MR x5
    members = manifest.instances_of(series_uid=series.SeriesInstanceUID)
    wanted = [members[3], members[0]]
    ident = identifier(
        "IMAGE",
        StudyInstanceUID=study.StudyInstanceUID,
        SeriesInstanceUID=series.SeriesInstanceUID,
        SOPInstanceUID="\\".join(e.SOPInstanceUID for e in wanted),
    )
    assert len(ident.SOPInstanceUID) == 2  # really a two-valued UID list
    outcome = c_get(bridge, ident)
    assert outcome.status == SUCCESS, outcome.summary()
    assert (outcome.completed, outcome.failed) == (2, 0)
    # Sent in instance-number order, whatever the order of the list.
    assert outcome.received_uids == [members[0].SOPInstanceUID, members[3].SOPInstanceUID]
    assert_identical_to_originals(outcome, wanted)


@pytest.mark.parametrize("model", ["PATIENT_ROOT", "STUDY_ROOT"])
def test_zero_matches_is_success_with_no_suboperations(bridge: BridgeProcess, model: str) -> None:
    outcome = c_get(bridge, identifier("STUDY", StudyInstanceUID="1.2.3.4.5.6.7.8.9"), model)
    assert outcome.status == SUCCESS, outcome.summary()
    assert outcome.completed in (0, None) and outcome.failed in (0, None), outcome.summary()
    assert outcome.received == [] and outcome.failed_uids == []
    assert len(outcome.responses) == 1  # no pending response: nothing to send


def test_suboperations_in_series_then_instance_number_order(
    bridge: BridgeProcess, orthanc: OrthancFixture
) -> None:
    manifest = orthanc.manifest
    # PATIENT level over two studies: study UID, then series number, then instance number.
    entries = [i for i in manifest.instances if i.PatientID == "P004"]
    expected = sending_order(manifest, entries)
    # The test means something only if that order is not an accident of UID order.
    assert expected != sorted(expected)
    outcome = c_get(bridge, identifier("PATIENT", PatientID="P004"), "PATIENT_ROOT")
    assert outcome.status == SUCCESS, outcome.summary()
    assert outcome.received_uids == expected

    study = next(s for s in manifest.studies_of("P004") if s.NumberOfStudyRelatedSeries == 3)
    entries = manifest.instances_of(study_uid=study.StudyInstanceUID)
    outcome = c_get(bridge, identifier("STUDY", StudyInstanceUID=study.StudyInstanceUID))
    assert outcome.status == SUCCESS, outcome.summary()
    assert outcome.received_uids == sending_order(manifest, entries)
    arrived = [
        (int(r.dataset.SeriesNumber), int(r.dataset.InstanceNumber)) for r in outcome.received
    ]
    assert arrived == sorted(arrived) and len(arrived) == 10


def _some_study(manifest: Manifest) -> str:
    return manifest.studies_of("P002")[0].StudyInstanceUID


@pytest.mark.parametrize(
    ("keys", "model", "comment_has"),
    [
        pytest.param(
            {"StudyInstanceUID": "@study"}, "STUDY_ROOT", "QueryRetrieveLevel", id="no-level"
        ),
        pytest.param(
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "@study", "PatientName": "DOE^*"},
            "STUDY_ROOT",
            "PatientName",
            id="non-unique-key",
        ),
        pytest.param(
            {"QueryRetrieveLevel": "STUDY", "PatientID": "P002"},
            "PATIENT_ROOT",
            "StudyInstanceUID",
            id="study-without-study-uid",
        ),
        pytest.param(
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.826.0.1.*"},
            "STUDY_ROOT",
            "wildcard",
            id="wildcard-uid",
            marks=pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),
        ),
    ],
)
def test_invalid_identifier_is_a900_with_comment(
    bridge: BridgeProcess,
    orthanc: OrthancFixture,
    keys: dict[str, str],
    model: str,
    comment_has: str,
) -> None:
    ident = Dataset()
    for keyword, value in keys.items():
        setattr(ident, keyword, _some_study(orthanc.manifest) if value == "@study" else value)
    outcome = c_get(bridge, ident, model)
    assert outcome.status == IDENTIFIER_MISMATCH, outcome.summary()
    assert comment_has.lower() in outcome.comment.lower(), outcome.summary()
    assert_refusal(outcome)


def assert_refusal(outcome: RetrieveOutcome) -> None:
    """A C-GET refused before any sub-operation, as Orthanc answers it: one response, no
    identifier (not even an empty Failed SOP Instance UID List), zero counters."""
    assert len(outcome.responses) == 1, outcome.summary()
    assert outcome.data_set_types == [NO_DATA_SET], outcome.summary()
    assert (outcome.completed, outcome.failed, outcome.warning) == (0, 0, 0), outcome.summary()
    assert "NumberOfRemainingSuboperations" not in outcome.final, outcome.summary()
    assert outcome.received == []


def _study_with_ct_and_mr(manifest: Manifest) -> tuple[str, list[InstanceEntry]]:
    study = next(s for s in manifest.studies if s.ModalitiesInStudy == ("CT", "MR"))
    return study.StudyInstanceUID, manifest.instances_of(study_uid=study.StudyInstanceUID)


def test_peer_refusing_one_store_gives_b000(bridge: BridgeProcess, orthanc: OrthancFixture) -> None:
    study_uid, entries = _study_with_ct_and_mr(orthanc.manifest)
    refused = entries[1].SOPInstanceUID
    outcome = c_get(
        bridge,
        identifier("STUDY", StudyInstanceUID=study_uid),
        store_status=lambda uid: REFUSED_OUT_OF_RESOURCES if uid == refused else SUCCESS,
    )
    n = len(entries)
    assert outcome.status == WARNING_SUBOPS, outcome.summary()
    assert outcome.failed_uids == [refused], outcome.summary()
    assert (outcome.completed, outcome.failed, outcome.warning) == (n - 1, 1, 0)
    assert sorted(outcome.received_uids) == sorted(e.SOPInstanceUID for e in entries)
    assert_counters_exact(outcome, n, 1)  # a refused C-STORE is counted right


def test_peer_refusing_every_store_gives_a702(
    bridge: BridgeProcess, orthanc: OrthancFixture
) -> None:
    study_uid, entries = _study_with_ct_and_mr(orthanc.manifest)
    outcome = c_get(
        bridge,
        identifier("STUDY", StudyInstanceUID=study_uid),
        store_status=lambda uid: REFUSED_OUT_OF_RESOURCES,
    )
    assert outcome.status == OUT_OF_RESOURCES_SUBOPS, outcome.summary()
    assert sorted(outcome.failed_uids) == sorted(e.SOPInstanceUID for e in entries)
    assert (outcome.completed, outcome.failed) == (0, len(entries)), outcome.summary()


def test_no_acceptable_context_fails_only_those_instances(
    bridge: BridgeProcess, orthanc: OrthancFixture
) -> None:
    study_uid, entries = _study_with_ct_and_mr(orthanc.manifest)
    ct = [e.SOPInstanceUID for e in entries if e.SOPClassUID == CTImageStorage]
    mr = [e.SOPInstanceUID for e in entries if e.SOPClassUID == MRImageStorage]
    assert ct and mr and len(ct) + len(mr) == len(entries)
    outcome = c_get(
        bridge,
        identifier("STUDY", StudyInstanceUID=study_uid),
        contexts=storage([MRImageStorage], [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    )
    assert outcome.status == WARNING_SUBOPS, outcome.summary()
    assert sorted(outcome.failed_uids) == sorted(ct) and len(outcome.failed_uids) == len(ct)
    assert sorted(outcome.received_uids) == sorted(mr)
    assert outcome.completed == len(mr), outcome.summary()
    # NumberOfFailedSuboperations: see test_counters_exact_when_no_acceptable_context.


def test_server_down_gives_a701_and_echo_still_works(
    orthanc_factory: Callable[..., OrthancFixture],
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    private = orthanc_factory(with_dataset=False)
    own = bridge_process(bridge_config(private.dicomweb_url, free_port(), timeout=5))
    private.server.stop()
    outcome = c_get(own, identifier("STUDY", StudyInstanceUID="1.2.3.4"))
    assert outcome.status == OUT_OF_RESOURCES_MATCHES, outcome.summary()
    assert "unreachable" in outcome.comment.lower(), outcome.summary()
    assert_refusal(outcome)
    assert c_echo(own) == SUCCESS
    assert own.running


def test_wado_404_for_one_instance_gives_b000(
    orthanc: OrthancFixture, bridge_process: Callable[..., BridgeProcess]
) -> None:
    manifest = orthanc.manifest
    study = next(s for s in manifest.studies_of("P004") if s.NumberOfStudyRelatedSeries == 3)
    entries = manifest.instances_of(study_uid=study.StudyInstanceUID)
    gone = entries[4].SOPInstanceUID
    with FaultProxy(orthanc.http_url) as proxy:
        # "/instances/<uid>" only appears in WADO-RS paths: the QIDO-RS search is
        # /studies/<uid>/instances?..., so the count still includes the instance.
        proxy.fail(404, path_filter=f"/instances/{gone}")
        own = bridge_process(bridge_config(f"{proxy.url}/dicom-web", free_port()))
        outcome = c_get(own, identifier("STUDY", StudyInstanceUID=study.StudyInstanceUID))
        hits = [r for r in proxy.records() if gone in r.path]
    assert hits and all(r.status == 404 for r in hits), hits
    assert outcome.status == WARNING_SUBOPS, outcome.summary()
    assert outcome.failed_uids == [gone]
    assert outcome.completed == len(entries) - 1, outcome.summary()
    # NumberOfFailedSuboperations: see test_counters_exact_when_a_fetch_fails.
    assert sorted(outcome.received_uids) == sorted(
        e.SOPInstanceUID for e in entries if e.SOPInstanceUID != gone
    )


def test_instance_deleted_between_listing_and_fetch_gives_b000(
    orthanc_factory: Callable[..., OrthancFixture],
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    """The real thing: Orthanc loses an instance after the QIDO-RS listing.

    Determinism: one fetch at a time, and a 1 MiB fetch-ahead budget (the smallest the
    config allows) with a first instance larger than that. The pipeline then holds the
    first instance and starts no other fetch until its C-STORE has been answered; the
    SCU deletes the last instance of the series inside that C-STORE handler, so its
    WADO-RS request, made later, gets 404.
    """
    private = orthanc_factory(with_dataset=False)
    series = make_ct_series(30, key="get-delete")
    big = series[0]
    big.Rows, big.Columns = 725, 725  # 1,051,250 bytes of pixels > 1 MiB budget
    big.PixelData = bytes(range(256)) * (725 * 725 * 2 // 256) + bytes(725 * 725 * 2 % 256)
    private.server.upload_many(to_bytes(ds) for ds in series)
    assert private.server.statistics()["CountInstances"] == 30
    own = bridge_process(
        bridge_config(
            private.dicomweb_url,
            free_port(),
            retrieve__max_concurrent_fetches=1,
            retrieve__max_buffer_bytes=1024 * 1024,
        )
    )
    last = str(series[-1].SOPInstanceUID)
    deleted = threading.Event()

    def delete_last_on_first_store(item: Received) -> None:
        if not deleted.is_set():
            private.server.delete_instance(last)
            deleted.set()

    outcome = c_get(
        own,
        identifier(
            "SERIES",
            StudyInstanceUID=str(series[0].StudyInstanceUID),
            SeriesInstanceUID=str(series[0].SeriesInstanceUID),
        ),
        on_store=delete_last_on_first_store,
    )
    assert deleted.is_set()
    assert private.server.statistics()["CountInstances"] == 29
    assert outcome.status == WARNING_SUBOPS, outcome.summary()
    assert outcome.failed_uids == [last], outcome.summary()
    assert outcome.completed == 29, outcome.summary()
    assert outcome.received_uids == [str(ds.SOPInstanceUID) for ds in series[:-1]]
    assert outcome.received[0].dataset.PixelData == big.PixelData


# pynetdicom counts a Pending yield that is not a Dataset as failed without lowering
# Remaining; the bridge yields a marker Dataset instead (FailedSubOp) so every counter of
# every response stays exact when an instance cannot be fetched or sent.


def test_counters_exact_when_no_acceptable_context(
    bridge: BridgeProcess, orthanc: OrthancFixture
) -> None:
    study_uid, entries = _study_with_ct_and_mr(orthanc.manifest)
    ct = [e for e in entries if e.SOPClassUID == CTImageStorage]
    outcome = c_get(
        bridge,
        identifier("STUDY", StudyInstanceUID=study_uid),
        contexts=storage([MRImageStorage]),
    )
    assert outcome.status == WARNING_SUBOPS, outcome.summary()
    assert_counters_exact(outcome, len(entries), len(ct))


def test_counters_exact_when_a_fetch_fails(
    orthanc: OrthancFixture, bridge_process: Callable[..., BridgeProcess]
) -> None:
    manifest = orthanc.manifest
    study = manifest.studies_of("P002")[0]
    entries = manifest.instances_of(study_uid=study.StudyInstanceUID)
    gone = entries[0].SOPInstanceUID
    with FaultProxy(orthanc.http_url) as proxy:
        proxy.fail(404, path_filter=f"/instances/{gone}")
        own = bridge_process(bridge_config(f"{proxy.url}/dicom-web", free_port()))
        outcome = c_get(own, identifier("STUDY", StudyInstanceUID=study.StudyInstanceUID))
    assert outcome.status == WARNING_SUBOPS, outcome.summary()
    assert outcome.failed_uids == [gone]
    assert_counters_exact(outcome, len(entries), 1)
