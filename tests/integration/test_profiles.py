"""C-FIND, C-GET and storage commitment through the bridge under each cloud server profile,
in front of the real session Orthanc (through the tests' proxy, which records every request).

Orthanc answers every query, so under every profile the answers must equal the manifest
and Orthanc's own native C-FIND, exactly as with the generic profile, while every QIDO-RS
request the bridge sent uses only what the profile allows (checked here from the URLs,
independently of the planner). Orthanc accepts ``fuzzymatching=true`` and ignores it,
so these bridges run with ``fuzzy_matching = false`` (the fuzzy path is unit-tested, and
the conformance emulator tests it end to end).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from pydicom import dcmread
from pynetdicom import AE

from bridge.profiles import PROFILES, Capabilities
from bridge.translate.query import KEY_LEVEL
from tests.conftest import OrthancFixture
from tests.faults.proxy import FaultProxy
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.test_commitment import (
    ALL_COMMITTED,
    listed,
    refs_of,
    request_commitment,
)
from tests.integration.test_find import (
    BRIDGE_AET,
    CASES,
    OUT_OF_RESOURCES,
    PENDING,
    SUCCESS,
    Case,
    assert_exact_keys,
    manifest_rows,
    pynetdicom_find,
    rows,
)
from tests.integration.test_get import (
    LEVEL_IDS,
    LEVELS,
    assert_identical_to_originals,
    c_get,
    identifier,
    target,
)
from tests.integration.test_move import Destination, assert_identical_to_orthanc, c_move
from tests.integration.test_move import target as move_target
from tests.integration.tools import free_port

pytestmark = pytest.mark.integration

CLOUD_PROFILES = ("google", "azure", "aws")
_QIDO_RESOURCES = ("studies", "series", "instances")
_LEVEL_PREFIX = {"series": "SERIES", "instances": "IMAGE"}
# NumberOfPatient/Study/SeriesRelated* (PS3.4 C.3.4), by tag.
_COUNT_TAGS = frozenset({"00201200", "00201202", "00201204", "00201206", "00201208", "00201209"})


def refusals(path: str, caps: Capabilities) -> list[str]:
    """What in one QIDO-RS request `caps` excludes (empty: the server takes it)."""
    url = urlsplit(path)
    parts = [unquote(p) for p in url.path.split("/dicom-web", 1)[1].strip("/").split("/")]
    if parts[-1] not in _QIDO_RESOURCES or len(parts) % 2 == 0:
        return []  # not a search (WADO-RS)
    resource = parts[-1]
    parents = parts[:-1]
    problems = []
    if caps.hierarchical_only and len(parents) != 2 * _QIDO_RESOURCES.index(resource):
        problems.append(f"no root {resource} resource")
    keys = {
        "studies": caps.study_search_keys,
        "series": caps.series_search_keys,
        "instances": caps.instance_search_keys,
    }[resource]
    for name, value in parse_qsl(url.query, keep_blank_values=True):
        if name == "limit":
            if caps.max_limit and int(value) > caps.max_limit:
                problems.append(f"limit={value}")
        elif name == "offset":
            if caps.max_offset and int(value) > caps.max_offset:
                problems.append(f"offset={value}")
        elif name == "fuzzymatching":
            if not caps.fuzzy_matching:
                problems.append("fuzzymatching")
        elif name == "includefield":
            if not caps.related_counts and ("Related" in value or value in _COUNT_TAGS):
                problems.append(f"includefield={value}")
            if caps.includefield_keys is not None and value not in caps.includefield_keys:
                problems.append(f"includefield={value}")
        else:
            if keys is not None and name not in keys:
                problems.append(f"key {name}")
            if keys is not None and parents:
                own = _LEVEL_PREFIX[resource]
                if KEY_LEVEL.get(name) is not None and KEY_LEVEL[name].name != own:
                    problems.append(f"key {name} below a parent")
            if "," in value and not (caps.uid_lists if name.endswith("UID") else caps.value_lists):
                problems.append(f"list {name}")
            if not name.endswith("UID") and ("*" in value or "?" in value) and not caps.wildcards:
                problems.append(f"wildcard {name}")
            if value == "" and not caps.empty_values:
                problems.append(f"empty {name}")
    return problems


def assert_nothing_refused(proxy: FaultProxy, caps: Capabilities, since: int) -> None:
    sent = [r.path for r in proxy.records()[since:] if r.method == "GET"]
    refused = {path: refusals(path, caps) for path in sent}
    assert not {p: why for p, why in refused.items() if why}, refused


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def proxy(orthanc: OrthancFixture) -> Iterator[FaultProxy]:
    with FaultProxy(orthanc.http_url) as fault_proxy:
        yield fault_proxy


@pytest.fixture(scope="module")
def move_destination() -> Iterator[Destination]:
    dest = Destination("PROFDEST").start()
    try:
        yield dest
    finally:
        dest.stop()


@pytest.fixture(scope="module", params=CLOUD_PROFILES)
def profiled(
    request: pytest.FixtureRequest,
    proxy: FaultProxy,
    move_destination: Destination,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, BridgeProcess]]:
    """A bridge under one cloud profile (fuzzy matching off: Orthanc ignores it), with
    the C-MOVE destination in [[peers]]."""
    profile = str(request.param)
    process = start_bridge(
        bridge_config(
            proxy.url + "/dicom-web",
            free_port(),
            dicomweb={"profile": profile},
            peers=[(move_destination.ae_title, "127.0.0.1", move_destination.port)],
            **{"dicomweb.capabilities": {"fuzzy_matching": False}},
        ),
        tmp_path_factory.mktemp(f"profile-{profile}"),
        name=f"profile-{profile}",
    )
    try:
        yield profile, process
    finally:
        process.stop()


def caps_of(profile: str) -> Capabilities:
    from dataclasses import replace

    return replace(PROFILES[profile], fuzzy_matching=False)  # type: ignore[index]


# --------------------------------------------------------------------------- C-FIND


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_find_under_profile_matches_manifest_and_orthanc(
    case: Case,
    profiled: tuple[str, BridgeProcess],
    proxy: FaultProxy,
    orthanc: OrthancFixture,
) -> None:
    profile, bridge = profiled
    m = orthanc.manifest
    keywords = case.keywords(m)
    since = len(proxy.records())
    got = pynetdicom_find(bridge.port, BRIDGE_AET, case.identifier_keys(m), model=case.model)
    assert got.status == SUCCESS, (profile, got, bridge.log_tail())
    assert got.statuses.count(PENDING) == case.count
    assert rows(got.identifiers, keywords) == manifest_rows(case.matches(m), keywords)
    assert_exact_keys(got.identifiers, keywords, case.level)
    native = pynetdicom_find(orthanc.dicom_port, orthanc.aet, case.identifier_keys(m), case.model)
    assert rows(native.identifiers, keywords) == rows(got.identifiers, keywords)
    assert_nothing_refused(proxy, caps_of(profile), since)


def test_counts_are_computed_when_the_server_has_none(
    profiled: tuple[str, BridgeProcess], proxy: FaultProxy, orthanc: OrthancFixture
) -> None:
    """The three profiles list no NumberOf*Related* counts: the bridge counts the series
    and instances itself (the values equal the manifest's and Orthanc's native ones)."""
    profile, bridge = profiled
    study = orthanc.manifest.studies_of("P004")[1]
    keys = [
        ("QueryRetrieveLevel", "STUDY"),
        ("StudyInstanceUID", study.StudyInstanceUID),
        ("NumberOfStudyRelatedSeries", ""),
        ("NumberOfStudyRelatedInstances", ""),
    ]
    since = len(proxy.records())
    got = pynetdicom_find(bridge.port, BRIDGE_AET, keys)
    assert got.status == SUCCESS and len(got.identifiers) == 1, got
    answer = got.identifiers[0]
    series = orthanc.manifest.series_of(study.StudyInstanceUID)
    assert int(answer.NumberOfStudyRelatedSeries) == len(series) == 3
    assert int(answer.NumberOfStudyRelatedInstances) == len(
        orthanc.manifest.instances_of(study_uid=study.StudyInstanceUID)
    )
    sent = [r.path for r in proxy.records()[since:]]
    assert any(f"/studies/{study.StudyInstanceUID}/series" in p for p in sent), sent
    assert not any("Related" in p for p in sent), sent


def test_broad_query_past_max_results_is_a700_naming_a_key(
    proxy: FaultProxy, orthanc: OrthancFixture, tmp_path: Path
) -> None:
    """AWS cannot match StudyTime: the bridge reads every study to filter them itself,
    and with fewer max_results than that it fails 0xA700 instead of answering a part."""
    bridge = start_bridge(
        bridge_config(
            proxy.url + "/dicom-web", free_port(), dicomweb={"profile": "aws"}, max_results=3
        ),
        tmp_path,
        name="profile-aws-small",
    )
    try:
        keys = [("QueryRetrieveLevel", "STUDY"), ("StudyTime", "080000-"), ("StudyInstanceUID", "")]
        got = pynetdicom_find(bridge.port, BRIDGE_AET, keys)
    finally:
        bridge.stop()
    assert got.status == OUT_OF_RESOURCES, got
    assert got.comment is not None
    assert "StudyTime" in got.comment and "add PatientID" in got.comment, got.comment


def test_server_that_cannot_page_further_is_a700_not_a_short_answer(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    """A server that lists at most 5 records (AWS lists 10,000) holding 8 studies: the
    C-FIND fails 0xA700 saying so, after the 5 it could list, rather than succeed."""
    bridge = start_bridge(
        bridge_config(
            proxy.url + "/dicom-web",
            free_port(),
            page_size=3,
            dicomweb={"profile": "aws"},
            **{"dicomweb.capabilities": {"max_records": 5}},
        ),
        tmp_path,
        name="profile-aws-records",
    )
    try:
        got = pynetdicom_find(
            bridge.port, BRIDGE_AET, [("QueryRetrieveLevel", "STUDY"), ("StudyInstanceUID", "")]
        )
    finally:
        bridge.stop()
    assert got.status == OUT_OF_RESOURCES, got
    assert got.comment == "server cannot page further (5 records max): narrow the query"
    assert got.statuses.count(PENDING) == 5


# --------------------------------------------------------------------------- C-GET


@pytest.mark.parametrize(("model", "level"), LEVELS, ids=LEVEL_IDS)
def test_get_every_level_under_profile(
    profiled: tuple[str, BridgeProcess],
    proxy: FaultProxy,
    orthanc: OrthancFixture,
    model: str,
    level: str,
) -> None:
    profile, bridge = profiled
    goal = target(orthanc.manifest, model, level)
    since = len(proxy.records())
    outcome = c_get(bridge, identifier(level, **goal.keys), model)
    n = len(goal.expected)
    assert outcome.status == SUCCESS, (profile, outcome.summary(), bridge.log_tail())
    assert (outcome.completed, outcome.failed, outcome.warning) == (n, 0, 0), outcome.summary()
    assert sorted(outcome.received_uids) == sorted(e.SOPInstanceUID for e in goal.expected)
    assert_identical_to_originals(outcome, goal.expected)
    assert_nothing_refused(proxy, caps_of(profile), since)


@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
def test_move_every_level_under_profile(
    profiled: tuple[str, BridgeProcess],
    proxy: FaultProxy,
    orthanc: OrthancFixture,
    move_destination: Destination,
    level: str,
) -> None:
    profile, bridge = profiled
    move_destination.reset()
    goal = move_target(orthanc.manifest, level)
    since = len(proxy.records())
    outcome = c_move(bridge, identifier(level, **goal.keys), move_destination.ae_title, goal.model)
    n = len(goal.expected)
    assert outcome.status == SUCCESS, (profile, outcome.summary(), bridge.log_tail())
    assert outcome.count("NumberOfCompletedSuboperations") == n, outcome.summary()
    assert outcome.count("NumberOfFailedSuboperations") == 0, outcome.summary()
    stored = move_destination.by_uid()
    assert len(move_destination.stored) == n, "an instance arrived twice"
    assert_identical_to_orthanc(orthanc, {u: i.raw for u, i in stored.items()}, goal.expected)
    assert_nothing_refused(proxy, caps_of(profile), since)


# --------------------------------------------------------------------------- commitment


def store(bridge: BridgeProcess, path: Path) -> int:
    ds = dcmread(path)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(bridge.host, bridge.port, ae_title=bridge.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status)


@pytest.mark.parametrize("profile", ["aws", "azure"])
def test_commitment_asks_only_what_the_server_answers(
    profile: str, proxy: FaultProxy, orthanc: OrthancFixture, tmp_path: Path
) -> None:
    """Neither server takes SOP Instance UID lists. Each instance the bridge stored is
    looked for in its series, with the study and series it recorded (re-storing an
    instance Orthanc already holds leaves the data unchanged). Another one: Azure is
    asked for it at /instances; AWS has no such resource, so the bridge walks studies →
    series → instances?SOPInstanceUID= until it is found."""
    bridge = start_bridge(
        bridge_config(proxy.url + "/dicom-web", free_port(), dicomweb={"profile": profile}),
        tmp_path,
        name=f"profile-{profile}-commit",
    )
    stored, unknown = orthanc.manifest.instances[0], orthanc.manifest.instances[-1]
    try:
        assert stored.path is not None
        assert store(bridge, stored.path) == SUCCESS, bridge.log_tail()
        since = len(proxy.records())
        result = request_commitment(bridge, refs_of([stored, unknown]))
    finally:
        bridge.stop()
    assert len(result.reports) == 1, bridge.log_tail()
    report = result.reports[0]
    sent = [r.path for r in proxy.records()[since:]]
    limit = {"aws": 500, "azure": 200}[profile]
    by_series = (
        f"/dicom-web/studies/{stored.StudyInstanceUID}/series/{stored.SeriesInstanceUID}"
        f"/instances?limit={limit}"
    )
    assert report.event_type == ALL_COMMITTED
    assert sorted(listed(report.info, "ReferencedSOPSequence")) == sorted(
        refs_of([stored, unknown])
    )
    if profile == "aws":
        assert sent[:2] == [by_series, f"/dicom-web/studies?limit={limit}"], sent
        # The walk ends where the instance is found.
        assert sent[-1] == (
            f"/dicom-web/studies/{unknown.StudyInstanceUID}/series/{unknown.SeriesInstanceUID}"
            f"/instances?SOPInstanceUID={unknown.SOPInstanceUID}&limit={limit}"
        ), sent
    else:
        assert sent == [
            by_series,
            f"/dicom-web/instances?SOPInstanceUID={unknown.SOPInstanceUID}"
            f"&includefield=00080018&limit={limit}",
        ], sent
    assert_nothing_refused(proxy, caps_of(profile), since)


def test_refusals_sees_what_each_profile_excludes() -> None:
    """The URL check above is not vacuous: it names what each profile refuses."""
    aws, azure, google = (caps_of(p) for p in ("aws", "azure", "google"))
    assert refusals("/dicom-web/series?Modality=MR", aws) == ["no root series resource"]
    assert refusals("/dicom-web/studies/1.2/series?Modality=MR&limit=500", aws) == []
    assert refusals("/dicom-web/studies?ModalitiesInStudy=CT,MR&limit=500", azure) == [
        "list ModalitiesInStudy",
        "limit=500",
    ]
    # Azure matches PatientID at /series, not below /studies/{study}.
    assert refusals("/dicom-web/series?PatientID=P1", azure) == []
    assert refusals("/dicom-web/studies/1.2/series?PatientID=P1", azure) == [
        "key PatientID below a parent"
    ]
    assert refusals("/dicom-web/studies?PatientName=DOE*&includefield=00201208", google) == [
        "wildcard PatientName",
        "includefield=00201208",
    ]
    assert refusals("/dicom-web/studies/1.2/series/1.3/instances/1.4", aws) == []
