"""Unit tests for bridge.translate.plan: identifier → (QIDO-RS queries sent, local filter),
per server profile, and the local matching of the keys a server is not sent."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydicom import Dataset

from bridge.dicomweb.client import build_qido_url
from bridge.errors import QueryTooBroad
from bridge.models import InformationModel, QidoQuery, QidoResource, QueryLevel
from bridge.profiles import GENERIC, PROFILES, Capabilities
from bridge.translate.plan import FANOUT_MAX, QueryPlan, ValueCheck, child_query, plan_search
from bridge.translate.query import build_find_plan
from bridge.translate.retrieve import build_retrieve_plan

STUDY_ROOT = InformationModel.STUDY_ROOT
PATIENT_ROOT = InformationModel.PATIENT_ROOT


def ident(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def render(plan: QueryPlan) -> tuple[list[str], list[str]]:
    """The plan as URLs (a walk's lower steps with {study}/{series} placeholders) and the
    keywords the bridge matches itself."""
    urls = []
    for index, step in enumerate(plan.steps):
        for query in step.queries:
            if index:
                query = child_query(
                    query, "{study}", "{series}" if step.level is QueryLevel.IMAGE else None
                )
            urls.append(build_qido_url("", query))
    local = sorted({c.keyword for s in plan.steps for c in s.checks if isinstance(c, ValueCheck)})
    return urls, local


def find_plan(identifier: Dataset, profile: str, model: InformationModel = STUDY_ROOT) -> QueryPlan:
    fp = build_find_plan(identifier, model)
    return plan_search(fp.level, fp.query, PROFILES[profile], extra_checks=fp.checks)  # type: ignore[index]


G, A, W = "google", "azure", "aws"
# (identifier, model, {profile: (urls, local keys)}); "generic" is today's single query,
# and dcm4chee/orthanc share it.
TABLE: list[Any] = [
    pytest.param(
        ident("STUDY", PatientName="DOE^*", StudyInstanceUID=""),
        STUDY_ROOT,
        {
            "generic": (["/studies?PatientName=DOE^*&includefield=StudyInstanceUID"], []),
            G: (
                ["/studies?PatientName=DOE&includefield=StudyInstanceUID&fuzzymatching=true"],
                ["PatientName"],
            ),
            A: (
                ["/studies?PatientName=DOE&includefield=StudyInstanceUID&fuzzymatching=true"],
                ["PatientName"],
            ),
            W: (
                ["/studies?includefield=PatientName&includefield=StudyInstanceUID"],
                ["PatientName"],
            ),
        },
        id="person-name-prefix",
    ),
    pytest.param(
        ident("STUDY", ModalitiesInStudy=["CT", "MR"], StudyInstanceUID=""),
        STUDY_ROOT,
        {
            "generic": (["/studies?ModalitiesInStudy=CT,MR&includefield=StudyInstanceUID"], []),
            G: (
                ["/studies?includefield=ModalitiesInStudy&includefield=StudyInstanceUID"],
                ["ModalitiesInStudy"],
            ),
            # Azure matches ModalitiesInStudy but returns it only when matched on: "any
            # of" is one search per modality (the C-FIND side computes the value).
            A: (
                [
                    "/studies?ModalitiesInStudy=CT&includefield=StudyInstanceUID",
                    "/studies?ModalitiesInStudy=MR&includefield=StudyInstanceUID",
                ],
                [],
            ),
            W: (
                ["/studies?includefield=ModalitiesInStudy&includefield=StudyInstanceUID"],
                ["ModalitiesInStudy"],
            ),
        },
        id="modalities-in-study-list",
    ),
    pytest.param(
        ident("STUDY", ModalitiesInStudy="", StudyInstanceUID=""),
        STUDY_ROOT,
        {
            "generic": (
                ["/studies?includefield=ModalitiesInStudy&includefield=StudyInstanceUID"],
                [],
            ),
            G: (
                ["/studies?includefield=ModalitiesInStudy&includefield=StudyInstanceUID"],
                [],
            ),
            # Not asked of Azure, which would not return it: computed from the series.
            A: (["/studies?includefield=StudyInstanceUID"], []),
            W: (
                ["/studies?includefield=ModalitiesInStudy&includefield=StudyInstanceUID"],
                [],
            ),
        },
        id="modalities-in-study-return-key",
    ),
    pytest.param(
        ident("STUDY", ModalitiesInStudy="CT", StudyInstanceUID=""),
        STUDY_ROOT,
        {
            "generic": (["/studies?ModalitiesInStudy=CT&includefield=StudyInstanceUID"], []),
            G: (
                ["/studies?includefield=ModalitiesInStudy&includefield=StudyInstanceUID"],
                ["ModalitiesInStudy"],
            ),
            A: (["/studies?ModalitiesInStudy=CT&includefield=StudyInstanceUID"], []),
            W: (["/studies?ModalitiesInStudy=CT&includefield=StudyInstanceUID"], []),
        },
        id="modalities-in-study-single",
    ),
    pytest.param(
        ident("STUDY", StudyInstanceUID=["1.2", "1.3"], PatientID=""),
        STUDY_ROOT,
        {
            "generic": (["/studies?StudyInstanceUID=1.2,1.3&includefield=PatientID"], []),
            **{
                p: (
                    [
                        "/studies?StudyInstanceUID=1.2&includefield=PatientID",
                        "/studies?StudyInstanceUID=1.3&includefield=PatientID",
                    ],
                    [],
                )
                for p in (G, A, W)
            },
        },
        id="uid-list-fans-out",
    ),
    pytest.param(
        ident("STUDY", StudyTime="080000-110000", StudyDate="20240101-", StudyInstanceUID=""),
        STUDY_ROOT,
        {
            "generic": (
                [
                    "/studies?StudyDate=20240101-&StudyTime=080000-110000"
                    "&includefield=StudyInstanceUID"
                ],
                [],
            ),
            **{
                p: (
                    [
                        "/studies?StudyDate=20240101-&includefield=StudyInstanceUID"
                        "&includefield=StudyTime"
                    ],
                    ["StudyTime"],
                )
                for p in (G, A, W)
            },
        },
        id="date-range-sent-time-range-local",
    ),
    pytest.param(
        ident("SERIES", StudyInstanceUID="", SeriesInstanceUID="", Modality="MR"),
        STUDY_ROOT,
        {
            "generic": (
                [
                    "/series?Modality=MR&includefield=SeriesInstanceUID&includefield=StudyInstanceUID"
                ],
                [],
            ),
            G: (
                [
                    "/series?Modality=MR&includefield=SeriesInstanceUID&includefield=StudyInstanceUID"
                ],
                [],
            ),
            W: (
                [
                    "/studies?includefield=StudyInstanceUID",
                    "/studies/{study}/series?Modality=MR&includefield=SeriesInstanceUID",
                ],
                [],
            ),
        },
        id="series-at-root-walks-on-aws",
    ),
    pytest.param(
        ident("SERIES", PatientID="P004", StudyInstanceUID="1.2", SeriesInstanceUID=""),
        PATIENT_ROOT,
        {
            "generic": (["/studies/1.2/series?PatientID=P004&includefield=SeriesInstanceUID"], []),
            # Below /studies/{uid} only the series level is matched: the study step checks
            # the patient.
            A: (
                [
                    "/studies?PatientID=P004&StudyInstanceUID=1.2",
                    "/studies/{study}/series?includefield=SeriesInstanceUID",
                ],
                [],
            ),
            W: (
                [
                    "/studies?PatientID=P004&StudyInstanceUID=1.2",
                    "/studies/{study}/series?includefield=SeriesInstanceUID",
                ],
                [],
            ),
        },
        id="patient-key-above-a-parent",
    ),
    pytest.param(
        ident(
            "IMAGE",
            StudyInstanceUID="1.2",
            SeriesInstanceUID="1.2.3",
            SOPInstanceUID="",
            SOPClassUID="1.2.840.10008.5.1.4.1.1.4",
        ),
        STUDY_ROOT,
        {
            "generic": (
                [
                    "/studies/1.2/series/1.2.3/instances?SOPClassUID=1.2.840.10008.5.1.4.1.1.4"
                    "&includefield=SOPInstanceUID"
                ],
                [],
            ),
            **{
                p: (
                    [
                        "/studies/1.2/series/1.2.3/instances?includefield=SOPClassUID"
                        "&includefield=SOPInstanceUID"
                    ],
                    ["SOPClassUID"],
                )
                for p in (G, A, W)
            },
        },
        id="sop-class-filter-local",
    ),
    pytest.param(
        ident("IMAGE", SOPInstanceUID="1.2.3.4", StudyInstanceUID="", SeriesInstanceUID=""),
        STUDY_ROOT,
        {
            "generic": (
                [
                    "/instances?SOPInstanceUID=1.2.3.4&includefield=SeriesInstanceUID"
                    "&includefield=StudyInstanceUID"
                ],
                [],
            ),
            W: (
                [
                    "/studies?includefield=StudyInstanceUID",
                    "/studies/{study}/series?includefield=SeriesInstanceUID",
                    "/studies/{study}/series/{series}/instances?SOPInstanceUID=1.2.3.4",
                ],
                [],
            ),
        },
        id="instance-at-root-walks-on-aws",
    ),
    pytest.param(
        ident("PATIENT", PatientID="", NumberOfPatientRelatedInstances=""),
        PATIENT_ROOT,
        {
            "generic": (
                [
                    "/studies?includefield=NumberOfStudyRelatedInstances"
                    "&includefield=NumberOfStudyRelatedSeries&includefield=PatientID"
                    "&includefield=PatientName"
                ],
                [],
            ),
            # No counts asked of servers without them: the bridge counts.
            **{
                p: (["/studies?includefield=PatientID&includefield=PatientName"], [])
                for p in (G, A, W)
            },
        },
        id="patient-counts-not-asked",
    ),
]


@pytest.mark.parametrize(("identifier", "model", "expected"), TABLE)
def test_query_planning_table(
    identifier: Dataset, model: InformationModel, expected: dict[str, Any]
) -> None:
    for profile, (urls, local) in expected.items():
        assert render(find_plan(identifier, profile, model)) == (urls, local), profile
    # Profiles that are PS3.18-conformant send exactly today's query.
    for profile in ("orthanc", "dcm4chee"):
        assert render(find_plan(identifier, profile, model)) == expected["generic"], profile


def test_planned_queries_never_use_what_the_capabilities_exclude() -> None:
    """Every query of every table row, under every profile, uses only keys, value forms,
    resources and includefields the profile allows (checked independently of the planner)."""
    for param in TABLE:
        identifier, model, _ = param.values
        for name, caps in PROFILES.items():
            for index, step in enumerate(find_plan(identifier, name, model).steps):
                for query in step.queries:
                    if index:  # a walk's lower step, as sent below one parent
                        series = "1.9.1" if step.level is QueryLevel.IMAGE else None
                        query = child_query(query, "1.9", series)
                    assert_allowed(query, caps)


def assert_allowed(query: QidoQuery, caps: Capabilities) -> None:
    keys = {
        QidoResource.STUDIES: caps.study_search_keys,
        QidoResource.SERIES: caps.series_search_keys,
        QidoResource.INSTANCES: caps.instance_search_keys,
    }[query.resource]
    for name, value in query.match:
        assert keys is None or name in keys, (name, query)
        if "," in value:
            assert caps.uid_lists if name.endswith("UID") else caps.value_lists, query
        if not name.endswith("UID"):
            assert caps.wildcards or not ({"*", "?"} & set(value)), query
    if query.fuzzymatching:
        assert caps.fuzzy_matching, query
    if caps.includefield_keys is not None:
        assert set(query.includefield) <= caps.includefield_keys, query
    if not caps.related_counts:
        assert not any("Related" in name for name in query.includefield), query
    if caps.hierarchical_only:
        parents = (query.study_uid is not None, query.series_uid is not None)
        assert (
            parents
            == {
                QidoResource.STUDIES: (False, False),
                QidoResource.SERIES: (True, False),
                QidoResource.INSTANCES: (True, True),
            }[query.resource]
        ), query
    if keys is not None and query.study_uid is not None:
        # Below a parent, a server that lists its keys matches only the resource's level.
        level = {QidoResource.SERIES: "Series", QidoResource.INSTANCES: "SOP"}[query.resource]
        assert all(name.startswith(level) or name == "Modality" for name, _ in query.match), query


# --- local matching of what the server was not sent -------------------------------------


def result(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("keyword", "value", "vr", "got", "accepted"),
    [
        ("PatientName", "DOE^*", "PN", "doe^jane", True),  # PN: case-insensitive
        ("PatientName", "DOE^*", "PN", "DOEX^JANE", False),
        ("PatientName", "DOE^JA?E", "PN", "DOE^JANE", True),
        ("AccessionNumber", "acc*", "SH", "ACC24001", False),  # others: case-sensitive
        ("ModalitiesInStudy", "CT,MR", "CS", ["OT", "MR"], True),
        ("ModalitiesInStudy", "CT,MR", "CS", ["OT"], False),
        ("StudyTime", "080000-110000", "TM", "093012.5", True),
        ("StudyTime", "080000-110000", "TM", "110000.9", True),
        ("StudyTime", "080000-110000", "TM", "110001", False),
        ("StudyDate", "-20230721", "DA", "20230721", True),
        ("StudyDate", "20240601-", "DA", "20240531", False),
        ("SOPClassUID", "1.2.3", "UI", "1.2.3", True),
        ("SOPClassUID", "1.2.3", "UI", "1.2.34", False),
    ],
)
def test_value_check(keyword: str, value: str, vr: str, got: Any, accepted: bool) -> None:
    check = ValueCheck(keyword, value, vr)
    assert check.accepts(result(**{keyword: got})) is accepted


def test_value_check_refuses_a_result_without_the_attribute() -> None:
    assert not ValueCheck("StudyTime", "080000-110000", "TM").accepts(result(PatientID="P1"))


def test_key_neither_matched_nor_returned_is_too_broad() -> None:
    caps = replace(GENERIC, study_search_keys=frozenset(), includefield_keys=frozenset())
    fp = build_find_plan(ident("STUDY", StudyDescription="BRAIN*"), STUDY_ROOT)
    with pytest.raises(QueryTooBroad, match="StudyDescription"):
        plan_search(fp.level, fp.query, caps)


def test_modalities_wildcard_on_azure_is_too_broad() -> None:
    """Azure neither takes the wildcard nor returns ModalitiesInStudy to match it on."""
    with pytest.warns(UserWarning, match="VR CS"):  # pydicom: * is not a CS character
        identifier = ident("STUDY", ModalitiesInStudy="C*")
    fp = build_find_plan(identifier, STUDY_ROOT)
    with pytest.raises(QueryTooBroad, match="ModalitiesInStudy"):
        plan_search(fp.level, fp.query, PROFILES["azure"])


def test_too_broad_comment_names_a_key_the_server_matches() -> None:
    plan = find_plan(ident("STUDY", StudyTime="080000-", StudyInstanceUID=""), "aws")
    assert plan.broad
    comment = str(plan.too_broad(10000))
    assert "StudyTime" in comment and "add PatientID" in comment and len(comment) <= 64


def test_generic_plans_are_not_broad() -> None:
    assert not find_plan(ident("STUDY", PatientName="DOE^*"), "generic").broad


# --- the retrieve listing ----------------------------------------------------------------


def retrieve_urls(identifier: Dataset, profile: str) -> list[str]:
    rp = build_retrieve_plan(identifier, STUDY_ROOT)
    return render(plan_search(QueryLevel.IMAGE, rp.query, PROFILES[profile]))[0]  # type: ignore[index]


FIELDS = (
    "includefield=00080016&includefield=00080018&includefield=0020000D&includefield=0020000E"
    "&includefield=00200011&includefield=00200013&includefield=00280008"
)


def test_retrieve_listing_study_level_on_aws_walks_series() -> None:
    urls = retrieve_urls(ident("STUDY", StudyInstanceUID="1.2"), "aws")
    assert urls == [
        "/studies/1.2/series?includefield=0020000E&includefield=00200011",
        "/studies/{study}/series/{series}/instances?includefield=00080016&includefield=00080018"
        "&includefield=00200013&includefield=00280008",
    ]


def test_retrieve_listing_study_level_generic_is_one_query() -> None:
    urls = retrieve_urls(ident("STUDY", StudyInstanceUID="1.2"), "generic")
    assert urls == [f"/studies/1.2/instances?{FIELDS}"]


def test_retrieve_listing_uid_list_fans_out_on_google() -> None:
    urls = retrieve_urls(ident("IMAGE", SOPInstanceUID=["1.1", "1.2"]), "google")
    assert urls == [
        f"/instances?SOPInstanceUID=1.1&{FIELDS}",
        f"/instances?SOPInstanceUID=1.2&{FIELDS}",
    ]


def test_long_uid_list_below_a_parent_lists_the_parent_once() -> None:
    uids = [f"1.2.3.{i}" for i in range(FANOUT_MAX + 1)]
    keys = {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": uids}
    urls = retrieve_urls(ident("IMAGE", **keys), "google")
    assert urls == [f"/studies/1.2/series/1.2.3/instances?{FIELDS}"]
    short = retrieve_urls(ident("IMAGE", **{**keys, "SOPInstanceUID": uids[:2]}), "google")
    assert len(short) == 2 and all("SOPInstanceUID=1.2.3." in u for u in short)
    # At the root there is no parent to list: one query per UID however many.
    flat = retrieve_urls(ident("IMAGE", SOPInstanceUID=uids), "google")
    assert len(flat) == FANOUT_MAX + 1
