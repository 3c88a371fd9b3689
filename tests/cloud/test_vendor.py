"""The vendor models of the conformance emulator, without a network: which requests each
vendor refuses, and how it pages an answer."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cloud.vendor import (
    AWS,
    AZURE,
    DCM4CHEE,
    GENERIC,
    GOOGLE,
    ORTHANC,
    VENDORS,
    Route,
    accept_syntaxes,
    check_qido,
    check_wado,
    fuzzy_match,
    parse_route,
    shape_search,
    split_query,
)

STUDIES = Route("search", "studies")


def refusal_status(vendor: Any, route: Route, query: str) -> int | None:
    refusal = check_qido(vendor, route, split_query(query))
    return None if refusal is None else refusal.status


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/studies", Route("search", "studies")),
        ("GET", "/series", Route("search", "series")),
        ("GET", "/instances", Route("search", "instances")),
        ("GET", "/studies/1.2/series", Route("search", "study-series", "1.2")),
        ("GET", "/studies/1.2/instances", Route("search", "study-instances", "1.2")),
        (
            "GET",
            "/studies/1.2/series/1.3/instances",
            Route("search", "series-instances", "1.2", "1.3"),
        ),
        ("GET", "/studies/1.2", Route("retrieve", "study", "1.2")),
        ("GET", "/studies/1.2/series/1.3", Route("retrieve", "series", "1.2", "1.3")),
        (
            "GET",
            "/studies/1.2/series/1.3/instances/1.4",
            Route("retrieve", "instance", "1.2", "1.3", "1.4"),
        ),
        (
            "GET",
            "/studies/1.2/series/1.3/instances/1.4/frames/1",
            Route("retrieve", "frames", "1.2", "1.3", "1.4"),
        ),
        ("POST", "/studies", Route("store", "studies")),
        ("POST", "/studies/1.2", Route("store", "studies", "1.2")),
    ],
)
def test_parse_route(method: str, path: str, expected: Route) -> None:
    assert parse_route(method, path) == expected


# (vendor, route, query, expected status: None = taken)
QIDO_TABLE: list[tuple[Any, Route, str, int | None]] = [
    # generic / orthanc take every PS3.18 form
    (GENERIC, STUDIES, "PatientName=DOE*&StudyDate=20240101-&ModalitiesInStudy=CT,MR", None),
    (ORTHANC, Route("search", "series"), "StudyInstanceUID=1.2,1.3&Modality=", None),
    (GENERIC, STUDIES, "fuzzymatching=true&PatientName=DOE", None),
    # Google: exact single values on six study keys; StudyDate ranges; fuzzymatching
    (GOOGLE, STUDIES, "PatientName=DOE^JOHN&includefield=StudyDescription", None),
    (GOOGLE, STUDIES, "PatientName=DOE*", 400),
    (GOOGLE, STUDIES, "AccessionNumber=ACC240??", 400),
    (GOOGLE, STUDIES, "StudyInstanceUID=1.2,1.3", 400),
    (GOOGLE, STUDIES, "ModalitiesInStudy=CT", 400),
    (GOOGLE, STUDIES, "StudyDate=20240101-20240630", None),
    (GOOGLE, STUDIES, "StudyTime=080000-110000", 400),
    (GOOGLE, STUDIES, "fuzzymatching=true&PatientName=DOE", None),
    (GOOGLE, STUDIES, "includefield=NumberOfStudyRelatedSeries", 400),
    (GOOGLE, STUDIES, "includefield=00201208", 400),
    (GOOGLE, STUDIES, "includefield=all", None),
    (GOOGLE, STUDIES, "limit=5000&offset=1000000", None),
    (GOOGLE, STUDIES, "limit=5001", 400),
    (GOOGLE, STUDIES, "offset=1000001", 400),
    (GOOGLE, Route("search", "instances"), "limit=50000", None),
    (GOOGLE, Route("search", "instances"), "SOPClassUID=1.2.840.10008.5.1.4.1.1.2", 400),
    (GOOGLE, Route("search", "series"), "Modality=CT&PatientID=P001", None),
    (GOOGLE, STUDIES, "NoSuchKeyword=1", 400),
    # Azure: no wildcards, no lists, no empty values, limit 1..200
    (AZURE, STUDIES, "ModalitiesInStudy=CT&StudyDescription=CT%20THORAX", None),
    (AZURE, STUDIES, "ModalitiesInStudy=CT,MR", 400),
    (AZURE, STUDIES, "PatientName=", 400),
    (AZURE, STUDIES, "PatientBirthDate=19600101-19701231", None),
    (AZURE, STUDIES, "StudyDate=-", 400),
    (AZURE, STUDIES, "StudyTime=080000", 400),
    (AZURE, STUDIES, "limit=200", None),
    (AZURE, STUDIES, "limit=201", 400),
    (AZURE, STUDIES, "limit=0", 400),
    (AZURE, Route("search", "study-series", "1.2"), "Modality=CT", None),
    (AZURE, Route("search", "study-series", "1.2"), "PatientID=P001", 400),
    (AZURE, Route("search", "series-instances", "1.2", "1.3"), "SOPInstanceUID=1.4", None),
    (AZURE, Route("search", "series-instances", "1.2", "1.3"), "Modality=CT", 400),
    (AZURE, STUDIES, "fuzzymatching=true&PatientName=jo%20do", None),
    # AWS: hierarchical only, its own keys per level
    (AWS, STUDIES, "StudyID=1&ModalitiesInStudy=CT", None),
    (AWS, STUDIES, "StudyDescription=CT", 400),
    (AWS, Route("search", "series"), "", 404),
    (AWS, Route("search", "instances"), "", 404),
    (AWS, Route("search", "study-instances", "1.2"), "", 404),
    (AWS, Route("search", "study-series", "1.2"), "Modality=MR", None),
    (AWS, Route("search", "study-series", "1.2"), "SeriesNumber=1", 400),
    (AWS, Route("search", "series-instances", "1.2", "1.3"), "SOPClassUID=1.2.3", None),
    (AWS, STUDIES, "PatientName=DOE*", 400),
    (AWS, STUDIES, "fuzzymatching=true&PatientName=DOE", 400),
    # dcm4chee: everything but fuzzymatching
    (DCM4CHEE, STUDIES, "PatientName=doe*&StudyInstanceUID=1.2,1.3", None),
    (DCM4CHEE, STUDIES, "fuzzymatching=true", 400),
]


@pytest.mark.parametrize(
    ("vendor", "route", "query", "expected"),
    QIDO_TABLE,
    ids=[f"{v.name}-{r.resource}-{q or 'none'}" for v, r, q, _ in QIDO_TABLE],
)
def test_qido_refusals(vendor: Any, route: Route, query: str, expected: int | None) -> None:
    assert refusal_status(vendor, route, query) == expected


def _rows(n: int, *, counts: bool = False) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"0020000D": {"vr": "UI", "Value": [f"1.2.{i}"]}}
        if counts:
            row["00201206"] = {"vr": "IS", "Value": [2]}
            row["00201208"] = {"vr": "IS", "Value": [5]}
        rows.append(row)
    return rows


def _uids(rows: list[dict[str, Any]] | None) -> list[str]:
    assert rows is not None
    return [r["0020000D"]["Value"][0] for r in rows]


def test_azure_default_limit_is_100_and_past_the_end_is_204() -> None:
    rows = _rows(150)
    recency = {f"1.2.{i}": i for i in range(150)}
    first = shape_search(AZURE, STUDIES, [], rows, recency)
    assert first.status == 200 and len(first.rows or []) == 100
    # newest (highest recency) first
    assert _uids(first.rows)[:3] == ["1.2.149", "1.2.148", "1.2.147"]
    last = shape_search(AZURE, STUDIES, [("limit", "200"), ("offset", "100")], rows, recency)
    assert _uids(last.rows) == [f"1.2.{i}" for i in range(49, -1, -1)]
    past = shape_search(AZURE, STUDIES, [("limit", "200"), ("offset", "150")], rows, recency)
    assert past.status == 204 and past.rows is None
    assert shape_search(AZURE, STUDIES, [], [], recency).status == 204


def test_aws_pages_stop_at_10000_records() -> None:
    rows = _rows(10_050)
    page = shape_search(AWS, STUDIES, [("limit", "100"), ("offset", "9950")], rows, {})
    assert page.status == 200 and len(page.rows or []) == 50
    beyond = shape_search(AWS, STUDIES, [("limit", "100"), ("offset", "10000")], rows, {})
    assert beyond.status == 200 and beyond.rows == []


def test_aws_series_in_series_number_order() -> None:
    rows = [
        {"0020000E": {"vr": "UI", "Value": [f"1.3.{n}"]}, "00200011": {"vr": "IS", "Value": [n]}}
        for n in (3, 1, 2)
    ]
    page = shape_search(AWS, Route("search", "study-series", "1.2"), [], rows)
    assert [r["00200011"]["Value"][0] for r in page.rows or []] == [1, 2, 3]


def test_google_strips_related_counts() -> None:
    page = shape_search(GOOGLE, STUDIES, [("limit", "2")], _rows(3, counts=True))
    assert page.status == 200 and len(page.rows or []) == 2
    assert all(set(r) == {"0020000D"} for r in page.rows or [])
    generic = shape_search(GENERIC, STUDIES, [], _rows(1, counts=True))
    assert set((generic.rows or [])[0]) == {"0020000D", "00201206", "00201208"}


def test_google_fuzzy_person_name_is_a_prefix_word_match() -> None:
    rows = [
        {"00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]}}
        for name in ("DOE^JOHN", "DOE^JANE", "SMITH^ANNA", "VAN DEN BERG^PIETER")
    ]
    params = [("fuzzymatching", "true"), ("PatientName", "jo")]
    page = shape_search(GOOGLE, STUDIES, params, rows)
    assert [r["00100010"]["Value"][0]["Alphabetic"] for r in page.rows or []] == ["DOE^JOHN"]
    assert fuzzy_match("jo do", "John^Doe")
    assert fuzzy_match("Doe", "John^Doe")
    assert not fuzzy_match("ohn", "John^Doe")
    assert fuzzy_match("berg", "VAN DEN BERG^PIETER")


def test_accept_header_syntaxes() -> None:
    assert accept_syntaxes(None) == [None]
    assert accept_syntaxes('multipart/related; type="application/dicom"') == [None]
    assert accept_syntaxes(
        'multipart/related; type="application/dicom"; transfer-syntax=*, '
        'multipart/related; type="application/dicom"; transfer-syntax="1.2.840.10008.1.2.1"'
    ) == ["*", "1.2.840.10008.1.2.1"]


@pytest.mark.parametrize(
    ("vendor", "resource", "syntax", "stored", "expected"),
    [
        (AZURE, "series", "1.2.840.10008.1.2.1", None, None),
        (AZURE, "instance", "1.2.840.10008.1.2.4.90", None, None),
        (AZURE, "study", "*", None, None),
        (AZURE, "series", "1.2.840.10008.1.2.4.70", None, 406),
        (AZURE, "instance", "1.2.840.10008.1.2", None, 406),
        (AWS, "study", "*", None, 404),
        (AWS, "series", "1.2.840.10008.1.2.1", None, None),
        (AWS, "instance", "1.2.840.10008.1.2.4.201", {"1.2.840.10008.1.2.4.201"}, None),
        (AWS, "instance", "1.2.840.10008.1.2.4.90", {"1.2.840.10008.1.2.4.201"}, 406),
        (GENERIC, "study", "1.2.840.10008.1.2.4.70", None, None),
    ],
)
def test_wado_refusals(
    vendor: Any, resource: str, syntax: str, stored: set[str] | None, expected: int | None
) -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'
    route = Route("retrieve", resource, "1.2", "1.3", "1.4")
    refusal = check_wado(vendor, route, accept, frozenset(stored) if stored else None)
    assert (None if refusal is None else refusal.status) == expected


def test_every_profile_has_a_vendor_model_with_its_pages() -> None:
    assert set(VENDORS) == {"generic", "orthanc", "google", "azure", "aws", "dcm4chee"}
    for vendor in VENDORS.values():
        assert vendor.pages and all(p.startswith("https://") for p in vendor.pages)


def test_azure_returns_only_its_documented_attributes() -> None:
    row = {
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},  # StudyInstanceUID: default
        "00080030": {"vr": "TM", "Value": ["101500"]},  # StudyTime: "other study tags"
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},  # ModalitiesInStudy: not returned
        "00201206": {"vr": "IS", "Value": [2]},  # NumberOfStudyRelatedSeries: not computed
        "00201208": {"vr": "IS", "Value": [5]},  # NumberOfStudyRelatedInstances: computed
    }
    page = shape_search(AZURE, STUDIES, [], [row])
    assert set((page.rows or [{}])[0]) == {"0020000D", "00080030", "00201208"}
    # ...except that a matched attribute comes back.
    matched = shape_search(AZURE, STUDIES, [("ModalitiesInStudy", "CT")], [row])
    assert "00080061" in (matched.rows or [{}])[0]
    # Root series rows carry the study attributes too.
    series_row = {**row, "0020000E": {"vr": "UI", "Value": ["1.2.3.4"]}}
    series = shape_search(AZURE, Route("search", "series"), [], [series_row])
    assert {"0020000D", "0020000E", "00080030"} <= set((series.rows or [{}])[0])
