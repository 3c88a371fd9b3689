"""C-FIND through the bridge fronting the session Orthanc, with dcmtk findscu and pynetdicom.

Every matching case is asked twice with the same tool: of the bridge and of Orthanc's own
DIMSE C-FIND SCP. The answers must agree with each other (UIDs and requested key values,
trailing spaces ignored; Orthanc adds SpecificCharacterSet, so only requested keys are
compared) and with the Manifest of the data set. Bridge responses must carry exactly the
requested keys plus QueryRetrieveLevel and RetrieveAETitle (and SpecificCharacterSet
``ISO_IR 192`` exactly when a value is not ASCII).

Then paging (small pages, the result limit: 0xA700), C-CANCEL (0xFE00) and the failures:
bad identifiers (0xA900), a dead, stopped or hanging DICOMweb server (0xA700), HTTP error
statuses (0xA700 / 0xC001) and answers that are not DICOM JSON, e.g. HTML (0xC002); after
each the bridge still answers.
"""

from __future__ import annotations

import fnmatch
import http.server
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from tests.conftest import OrthancFixture
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.dataset import Manifest
from tests.integration.tools import describe, free_port, run_dcmtk

pytestmark = pytest.mark.integration

BRIDGE_AET = "DIMSE_BRIDGE"
MODELS = {
    "S": StudyRootQueryRetrieveInformationModelFind,
    "P": PatientRootQueryRetrieveInformationModelFind,
}
SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
OUT_OF_RESOURCES, IDENTIFIER_MISMATCH = 0xA700, 0xA900
DICOMWEB_REJECTED, DICOMWEB_UNREADABLE = 0xC001, 0xC002

Keys = list[tuple[str, str]]


# --------------------------------------------------------------------------- SCU helpers


@dataclass
class FindResult:
    """Everything one C-FIND returned: the identifiers of the pending responses, the final
    status and its ErrorComment."""

    status: int
    comment: str | None
    identifiers: Sequence[Dataset] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


def build_identifier(keys: Keys) -> Dataset:
    ds = Dataset()
    for keyword, value in keys:
        setattr(ds, keyword, value.split("\\") if "\\" in value else value)
    return ds


def pynetdicom_find(
    port: int,
    called: str,
    query: Dataset | Keys,
    model: str = "S",
    calling: str = "PYNETDICOM",
) -> FindResult:
    """One C-FIND on a fresh pynetdicom association (released afterwards)."""
    identifier = query if isinstance(query, Dataset) else build_identifier(query)
    ae = AE(ae_title=calling)
    ae.add_requested_context(MODELS[model])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, f"association with {called} on port {port} failed"
    try:
        return collect(assoc.send_c_find(identifier, MODELS[model]))
    finally:
        assoc.release()


def collect(responses: Iterator[tuple[Dataset, Dataset | None]]) -> FindResult:
    idents: list[Dataset] = []
    statuses: list[int] = []
    for status, identifier in responses:
        assert status is not None and "Status" in status, "no response (timeout or abort)"
        statuses.append(int(status.Status))
        if status.Status in (PENDING, 0xFF01):
            assert identifier is not None
            idents.append(identifier)
        else:
            return FindResult(int(status.Status), status.get("ErrorComment"), idents, statuses)
    raise AssertionError(f"C-FIND ended without a final status after {statuses}")


_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")
_COMMENT = re.compile(r"\(0000,0902\) LO \[(.*?)\]\s+#")


def findscu(
    port: int,
    called: str,
    keys: Keys,
    out_dir: Path,
    model: str = "S",
    calling: str = "FINDSCU",
) -> FindResult:
    """dcmtk findscu (debug log for the statuses, -X for the answers, read with pydicom)."""
    out_dir.mkdir(parents=True, exist_ok=False)
    args: list[str] = ["-d", f"-{model}", "-aet", calling, "-aec", called]
    for keyword, value in keys:
        args += ["-k", f"{keyword}={value}" if value else keyword]
    args += ["-X", "-od", str(out_dir), "127.0.0.1", str(port)]
    result = run_dcmtk("findscu", *args, timeout=60)
    log = result.stdout + result.stderr
    assert result.returncode == 0, describe(["findscu", *args], result)
    statuses = [int(code, 16) for code in _STATUS.findall(log)]
    assert statuses, describe(["findscu", *args], result)
    final = statuses[-1]
    comments = _COMMENT.findall(log.rsplit("DIMSE Status", 1)[-1])
    idents = [pydicom.dcmread(path) for path in sorted(out_dir.glob("rsp*.dcm"))]
    assert len(idents) == statuses.count(PENDING), describe(["findscu", *args], result)
    return FindResult(final, comments[0].strip() if comments else None, idents, statuses)


def echo(port: int) -> int:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=BRIDGE_AET)
    assert assoc.is_established
    try:
        status = assoc.send_c_echo()
        return int(status.Status)
    finally:
        assoc.release()


# --------------------------------------------------------------------------- comparing


def norm(value: Any) -> str:
    """A value as comparable text: trailing/leading spaces dropped, multi-values sorted."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(sorted(str(v).strip() for v in value))
    return str(value).strip()


Row = tuple[tuple[str, str], ...]


def rows(identifiers: Sequence[Dataset], keywords: Sequence[str]) -> list[Row]:
    return sorted(tuple((k, norm(ds.get(k))) for k in keywords) for ds in identifiers)


def manifest_rows(entries: Sequence[Any], keywords: Sequence[str]) -> list[Row]:
    return sorted(tuple((k, norm(getattr(e, k))) for k in keywords) for e in entries)


def _non_ascii(ds: Dataset) -> bool:
    return any(
        not norm(elem.value).isascii()
        for elem in ds
        if elem.VR != "SQ" and elem.keyword != "SpecificCharacterSet"
    )


def assert_exact_keys(identifiers: Sequence[Dataset], keywords: Sequence[str], level: str) -> None:
    """Bridge responses: the requested keys, QueryRetrieveLevel, RetrieveAETitle, nothing
    else, except SpecificCharacterSet ISO_IR 192 exactly when a value is not ASCII."""
    for ds in identifiers:
        wanted = {*keywords, "QueryRetrieveLevel", "RetrieveAETitle"}
        if _non_ascii(ds):
            wanted.add("SpecificCharacterSet")
            assert ds.SpecificCharacterSet == "ISO_IR 192", ds
        assert {elem.keyword for elem in ds} == wanted, ds
        assert ds.QueryRetrieveLevel == level
        assert ds.RetrieveAETitle == BRIDGE_AET


# --------------------------------------------------------------------------- the cases


def _study(m: Manifest, patient_id: str, index: int) -> Any:
    return m.studies_of(patient_id)[index]


def _series(m: Manifest, patient_id: str, study: int, series: int) -> Any:
    return m.series_of(_study(m, patient_id, study).StudyInstanceUID)[series]


@dataclass(frozen=True)
class Case:
    """One C-FIND: model, level, keys (with matching values) computed from the manifest,
    the manifest entries that must match, and how many that is (an anchor)."""

    id: str
    model: str
    level: str
    keys: Callable[[Manifest], Keys]
    matches: Callable[[Manifest], Sequence[Any]]
    count: int

    def identifier_keys(self, m: Manifest) -> Keys:
        return [("QueryRetrieveLevel", self.level), *self.keys(m)]

    def keywords(self, m: Manifest) -> list[str]:
        return [k for k, _ in self.keys(m)]


STUDY_KEYS = [
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "StudyID",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
]


def _pn_match(pattern: str) -> Callable[[Manifest], list[Any]]:
    return lambda m: [
        s for s in m.studies if fnmatch.fnmatchcase(s.PatientName.upper(), pattern.upper())
    ]


def _dates(lo: str, hi: str) -> Callable[[Manifest], list[Any]]:
    return lambda m: [s for s in m.studies if (lo or "0") <= s.StudyDate <= (hi or "99999999")]


CASES: list[Case] = [
    # ---- Study Root, every level
    Case(
        "study-universal",
        "S",
        "STUDY",
        lambda m: [(k, "") for k in STUDY_KEYS],
        lambda m: m.studies,
        8,
    ),
    Case(
        "series-in-study",
        "S",
        "SERIES",
        lambda m: [
            ("StudyInstanceUID", _study(m, "P001", 1).StudyInstanceUID),
            ("SeriesInstanceUID", ""),
            ("Modality", ""),
            ("SeriesNumber", ""),
            ("SeriesDescription", ""),
            ("NumberOfSeriesRelatedInstances", ""),
        ],
        lambda m: m.series_of(_study(m, "P001", 1).StudyInstanceUID),
        2,
    ),
    Case(
        "series-without-study-uid",
        "S",
        "SERIES",
        lambda m: [
            ("StudyInstanceUID", ""),
            ("SeriesInstanceUID", ""),
            ("Modality", ""),
            ("SeriesNumber", ""),
            ("NumberOfSeriesRelatedInstances", ""),
        ],
        lambda m: m.series,
        14,
    ),
    Case(
        "series-modality-without-study-uid",
        "S",
        "SERIES",
        lambda m: [("StudyInstanceUID", ""), ("SeriesInstanceUID", ""), ("Modality", "MR")],
        lambda m: [s for s in m.series if s.Modality == "MR"],
        6,
    ),
    Case(
        "image-in-series",
        "S",
        "IMAGE",
        lambda m: [
            ("StudyInstanceUID", _study(m, "P004", 1).StudyInstanceUID),
            ("SeriesInstanceUID", _series(m, "P004", 1, 2).SeriesInstanceUID),
            ("SOPInstanceUID", ""),
            ("SOPClassUID", ""),
            ("InstanceNumber", ""),
        ],
        lambda m: m.instances_of(series_uid=_series(m, "P004", 1, 2).SeriesInstanceUID),
        5,
    ),
    Case(
        "image-flat-by-sop-instance-uid",
        "S",
        "IMAGE",
        lambda m: [
            (
                "SOPInstanceUID",
                m.instances_of(series_uid=_series(m, "P002", 0, 0).SeriesInstanceUID)[
                    2
                ].SOPInstanceUID,
            ),
            ("StudyInstanceUID", ""),
            ("SeriesInstanceUID", ""),
            ("SOPClassUID", ""),
            ("InstanceNumber", ""),
        ],
        lambda m: [m.instances_of(series_uid=_series(m, "P002", 0, 0).SeriesInstanceUID)[2]],
        1,
    ),
    # ---- Patient Root, every level
    Case(
        "patient-all-with-counts",
        "P",
        "PATIENT",
        lambda m: [
            ("PatientID", ""),
            ("PatientName", ""),
            ("PatientBirthDate", ""),
            ("PatientSex", ""),
            ("NumberOfPatientRelatedStudies", ""),
            ("NumberOfPatientRelatedSeries", ""),
            ("NumberOfPatientRelatedInstances", ""),
        ],
        lambda m: m.patients,
        5,
    ),
    Case(
        "patient-wildcard-with-study-count",
        "P",
        "PATIENT",
        lambda m: [
            ("PatientName", "DOE*"),
            ("PatientID", ""),
            ("NumberOfPatientRelatedStudies", ""),
        ],
        lambda m: [p for p in m.patients if p.PatientName.startswith("DOE")],
        2,
    ),
    Case(
        "patient-root-study-under-patient",
        "P",
        "STUDY",
        lambda m: [
            ("PatientID", "P004"),
            ("StudyInstanceUID", ""),
            ("StudyDate", ""),
            ("StudyDescription", ""),
            ("ModalitiesInStudy", ""),
        ],
        lambda m: m.studies_of("P004"),
        2,
    ),
    Case(
        "patient-root-series",
        "P",
        "SERIES",
        lambda m: [
            ("PatientID", "P004"),
            ("StudyInstanceUID", _study(m, "P004", 1).StudyInstanceUID),
            ("SeriesInstanceUID", ""),
            ("Modality", ""),
            ("SeriesNumber", ""),
        ],
        lambda m: m.series_of(_study(m, "P004", 1).StudyInstanceUID),
        3,
    ),
    Case(
        "patient-root-image",
        "P",
        "IMAGE",
        lambda m: [
            ("PatientID", "P001"),
            ("StudyInstanceUID", _study(m, "P001", 0).StudyInstanceUID),
            ("SeriesInstanceUID", _series(m, "P001", 0, 0).SeriesInstanceUID),
            ("SOPInstanceUID", ""),
            ("InstanceNumber", ""),
        ],
        lambda m: m.instances_of(series_uid=_series(m, "P001", 0, 0).SeriesInstanceUID),
        3,
    ),
    # ---- matching
    Case(
        "wildcard-star",
        "S",
        "STUDY",
        lambda m: [("PatientName", "DOE^*"), ("StudyInstanceUID", ""), ("PatientID", "")],
        _pn_match("DOE^*"),
        3,
    ),
    Case(
        "wildcard-question-mark",
        "S",
        "STUDY",
        lambda m: [("PatientName", "DOE^JA?E"), ("StudyInstanceUID", ""), ("PatientID", "")],
        _pn_match("DOE^JA?E"),
        1,
    ),
    Case(
        "wildcard-question-marks-accession",
        "S",
        "STUDY",
        lambda m: [("AccessionNumber", "ACC240??"), ("StudyInstanceUID", "")],
        lambda m: [s for s in m.studies if fnmatch.fnmatchcase(s.AccessionNumber, "ACC240??")],
        4,
    ),
    Case(
        "date-range-closed",
        "S",
        "STUDY",
        lambda m: [("StudyDate", "20240101-20240630"), ("StudyInstanceUID", "")],
        _dates("20240101", "20240630"),
        3,
    ),
    Case(
        "date-range-from",
        "S",
        "STUDY",
        lambda m: [("StudyDate", "20240601-"), ("StudyInstanceUID", "")],
        _dates("20240601", ""),
        3,
    ),
    Case(
        "date-range-until",
        "S",
        "STUDY",
        lambda m: [("StudyDate", "-20230721"), ("StudyInstanceUID", "")],
        _dates("", "20230721"),
        2,
    ),
    Case(
        "time-range",
        "S",
        "STUDY",
        lambda m: [("StudyTime", "080000-110000"), ("StudyInstanceUID", "")],
        lambda m: [s for s in m.studies if "080000" <= s.StudyTime <= "110000"],
        4,
    ),
    Case(
        "uid-list",
        "S",
        "STUDY",
        lambda m: [
            (
                "StudyInstanceUID",
                f"{_study(m, 'P002', 0).StudyInstanceUID}\\{_study(m, 'P005', 0).StudyInstanceUID}",
            ),
            ("PatientID", ""),
            ("StudyDate", ""),
        ],
        lambda m: [_study(m, "P002", 0), _study(m, "P005", 0)],
        2,
    ),
    Case(
        "modalities-in-study-any-of",
        "S",
        "STUDY",
        lambda m: [("ModalitiesInStudy", "CT\\MR"), ("StudyInstanceUID", "")],
        lambda m: [s for s in m.studies if {"CT", "MR"} & set(s.ModalitiesInStudy)],
        6,
    ),
    Case(
        "case-insensitive-person-name",
        "S",
        "STUDY",
        lambda m: [("PatientName", "doe^john"), ("StudyInstanceUID", ""), ("PatientID", "")],
        lambda m: m.studies_of("P001"),
        2,
    ),
    Case(
        "non-ascii-patient",
        "S",
        "STUDY",
        lambda m: [("PatientName", "M*LLER*"), ("StudyInstanceUID", ""), ("PatientID", "")],
        lambda m: m.studies_of("P003"),
        2,
    ),
    Case(
        "no-match",
        "S",
        "STUDY",
        lambda m: [("StudyInstanceUID", "1.2.3.4.5.6.7.8.9"), ("PatientID", "")],
        lambda m: [],
        0,
    ),
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bridge(
    orthanc: OrthancFixture, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BridgeProcess]:
    """One bridge for the module, fronting the session Orthanc with the default settings."""
    process = start_bridge(
        bridge_config(orthanc.dicomweb_url, free_port()),
        tmp_path_factory.mktemp("find-bridge"),
        name="find",
    )
    yield process
    process.stop()


def run_case(
    tool: str, port: int, called: str, case: Case, m: Manifest, out_dir: Path
) -> FindResult:
    keys = case.identifier_keys(m)
    if tool == "findscu":
        return findscu(port, called, keys, out_dir, model=case.model, calling="FINDSCU")
    return pynetdicom_find(port, called, keys, model=case.model, calling="PYNETDICOM")


# --------------------------------------------------------------------------- matching


@pytest.mark.parametrize("tool", ["pynetdicom", "findscu"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_find_matches_manifest_and_orthanc(
    case: Case,
    tool: str,
    bridge: BridgeProcess,
    orthanc: OrthancFixture,
    tmp_path: Path,
) -> None:
    m = orthanc.manifest
    keywords = case.keywords(m)
    expected = manifest_rows(case.matches(m), keywords)
    assert len(expected) == case.count  # the case itself is what it claims to be

    got = run_case(tool, bridge.port, BRIDGE_AET, case, m, tmp_path / "bridge")
    assert got.status == SUCCESS, (got, bridge.log_tail())
    assert got.statuses.count(PENDING) == case.count
    assert rows(got.identifiers, keywords) == expected
    assert_exact_keys(got.identifiers, keywords, case.level)

    theirs = run_case(tool, orthanc.dicom_port, orthanc.aet, case, m, tmp_path / "orthanc")
    assert theirs.status == SUCCESS
    assert rows(theirs.identifiers, keywords) == rows(got.identifiers, keywords)


def test_non_ascii_patient_decodes_with_utf8(
    bridge: BridgeProcess, orthanc: OrthancFixture
) -> None:
    m = orthanc.manifest
    got = pynetdicom_find(
        bridge.port,
        BRIDGE_AET,
        [
            ("QueryRetrieveLevel", "STUDY"),
            ("PatientName", "M*LLER*"),
            ("StudyInstanceUID", ""),
            ("StudyDescription", ""),
        ],
    )
    assert got.status == SUCCESS
    assert {ds.StudyInstanceUID for ds in got.identifiers} == {
        s.StudyInstanceUID for s in m.studies_of("P003")
    }
    for ds in got.identifiers:
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert str(ds.PatientName) == "MÜLLER^HANS"
    descriptions = sorted(str(ds.StudyDescription) for ds in got.identifiers)
    assert descriptions == sorted(s.StudyDescription for s in m.studies_of("P003"))
    assert "Schädel MRT" in descriptions
    # An ASCII-only answer carries no SpecificCharacterSet at all.
    plain = pynetdicom_find(
        bridge.port,
        BRIDGE_AET,
        [("QueryRetrieveLevel", "STUDY"), ("PatientID", "P002"), ("PatientName", "")],
    )
    assert [str(ds.PatientName) for ds in plain.identifiers] == ["DOE^JANE"]
    assert "SpecificCharacterSet" not in plain.identifiers[0]


def test_non_ascii_exact_value_matches_like_orthanc(
    bridge: BridgeProcess, orthanc: OrthancFixture
) -> None:
    keys: Keys = [
        ("SpecificCharacterSet", "ISO_IR 192"),
        ("QueryRetrieveLevel", "STUDY"),
        ("PatientName", "MÜLLER^HANS"),
        ("StudyInstanceUID", ""),
    ]
    expected = {s.StudyInstanceUID for s in orthanc.manifest.studies_of("P003")}
    theirs = pynetdicom_find(orthanc.dicom_port, orthanc.aet, keys)
    assert {ds.StudyInstanceUID for ds in theirs.identifiers} == expected
    got = pynetdicom_find(bridge.port, BRIDGE_AET, keys)
    assert got.status == SUCCESS
    assert {ds.StudyInstanceUID for ds in got.identifiers} == expected


def test_non_person_name_matching_is_case_sensitive_like_orthanc(
    bridge: BridgeProcess, orthanc: OrthancFixture
) -> None:
    keys: Keys = [
        ("QueryRetrieveLevel", "STUDY"),
        ("StudyDescription", "ct*"),
        ("StudyInstanceUID", ""),
    ]
    theirs = pynetdicom_find(orthanc.dicom_port, orthanc.aet, keys)
    assert theirs.status == SUCCESS and theirs.identifiers == []
    upper = pynetdicom_find(
        bridge.port, BRIDGE_AET, [*keys[:1], ("StudyDescription", "CT*"), keys[2]]
    )
    assert len(upper.identifiers) == 4
    got = pynetdicom_find(bridge.port, BRIDGE_AET, keys)
    assert got.status == SUCCESS
    assert got.identifiers == []


# --------------------------------------------------------------------------- bad identifiers


@pytest.mark.parametrize(
    ("model", "keys", "in_comment"),
    [
        pytest.param("S", [("StudyInstanceUID", "")], "QueryRetrieveLevel", id="level-missing"),
        pytest.param(
            "S", [("QueryRetrieveLevel", "FOO"), ("StudyInstanceUID", "")], "FOO", id="level-foo"
        ),
        pytest.param(
            "S",
            [("QueryRetrieveLevel", "STUDY"), ("StudyInstanceUID", ""), ("Modality", "CT")],
            "Modality",
            id="series-key-in-study-query",
        ),
        pytest.param(
            "S",
            [("QueryRetrieveLevel", "PATIENT"), ("PatientID", "")],
            "PATIENT",
            id="patient-level-on-study-root",
        ),
        pytest.param(
            "P",
            [("QueryRetrieveLevel", "PATIENT"), ("PatientID", ""), ("StudyDate", "")],
            "StudyDate",
            id="study-key-in-patient-query",
        ),
        pytest.param(
            "P",
            [("QueryRetrieveLevel", "SERIES"), ("SeriesInstanceUID", ""), ("SOPInstanceUID", "")],
            "SOPInstanceUID",
            id="image-key-in-series-query",
        ),
    ],
)
def test_bad_identifier_is_a900_with_comment(
    model: str, keys: Keys, in_comment: str, bridge: BridgeProcess
) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(MODELS[model])
    assoc = ae.associate("127.0.0.1", bridge.port, ae_title=BRIDGE_AET)
    assert assoc.is_established
    try:
        bad = collect(assoc.send_c_find(build_identifier(keys), MODELS[model]))
        assert bad.status == IDENTIFIER_MISMATCH
        assert bad.identifiers == []
        assert bad.comment and in_comment in bad.comment, bad.comment
        # The same association goes on serving.
        good = collect(
            assoc.send_c_find(
                build_identifier([("QueryRetrieveLevel", "STUDY"), ("PatientID", "P001")]),
                MODELS[model],
                msg_id=2,
            )
        )
        assert good.status == SUCCESS
        assert len(good.identifiers) == 2
    finally:
        assoc.release()


def test_bad_identifier_seen_by_findscu(bridge: BridgeProcess, tmp_path: Path) -> None:
    got = findscu(
        bridge.port,
        BRIDGE_AET,
        [("QueryRetrieveLevel", "STUDY"), ("StudyInstanceUID", ""), ("Modality", "CT")],
        tmp_path / "modality",
    )
    assert got.status == IDENTIFIER_MISMATCH
    assert got.identifiers == []
    assert got.comment and "Modality" in got.comment
    got = findscu(
        bridge.port,
        BRIDGE_AET,
        [("QueryRetrieveLevel", "FOO"), ("StudyInstanceUID", "")],
        tmp_path / "foo",
    )
    assert got.status == IDENTIFIER_MISMATCH
    assert got.comment and "FOO" in got.comment


# --------------------------------------------------------------------------- paging, limits


def test_small_pages_return_everything(
    bridge_process: Callable[..., BridgeProcess], orthanc: OrthancFixture
) -> None:
    m = orthanc.manifest
    small = bridge_process(bridge_config(orthanc.dicomweb_url, free_port(), page_size=2))
    studies = pynetdicom_find(
        small.port, BRIDGE_AET, [("QueryRetrieveLevel", "STUDY"), ("StudyInstanceUID", "")]
    )
    assert studies.status == SUCCESS
    assert len(studies.identifiers) == 8
    assert {ds.StudyInstanceUID for ds in studies.identifiers} == m.study_uids
    series = pynetdicom_find(
        small.port,
        BRIDGE_AET,
        [("QueryRetrieveLevel", "SERIES"), ("SeriesInstanceUID", ""), ("StudyInstanceUID", "")],
    )
    assert sorted(ds.SeriesInstanceUID for ds in series.identifiers) == sorted(
        s.SeriesInstanceUID for s in m.series
    )
    # PATIENT level: one answer per patient and counts summed over studies on several pages.
    patients = pynetdicom_find(
        small.port,
        BRIDGE_AET,
        [
            ("QueryRetrieveLevel", "PATIENT"),
            ("PatientID", ""),
            ("NumberOfPatientRelatedStudies", ""),
            ("NumberOfPatientRelatedInstances", ""),
        ],
        model="P",
    )
    assert patients.status == SUCCESS
    keywords = ["PatientID", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances"]
    assert rows(patients.identifiers, keywords) == manifest_rows(m.patients, keywords)


def test_max_results_ends_with_a700_after_the_limit(
    bridge_process: Callable[..., BridgeProcess], orthanc: OrthancFixture
) -> None:
    capped = bridge_process(bridge_config(orthanc.dicomweb_url, free_port(), max_results=3))
    got = pynetdicom_find(
        capped.port, BRIDGE_AET, [("QueryRetrieveLevel", "STUDY"), ("StudyInstanceUID", "")]
    )
    assert got.status == OUT_OF_RESOURCES
    assert got.statuses == [PENDING, PENDING, PENDING, OUT_OF_RESOURCES]
    assert len({ds.StudyInstanceUID for ds in got.identifiers}) == 3
    assert {ds.StudyInstanceUID for ds in got.identifiers} <= orthanc.manifest.study_uids
    assert got.comment and "3" in got.comment and "more than" in got.comment, got.comment
    # Exactly as many matches as the limit is not "more than" it: a full success.
    exact = pynetdicom_find(
        capped.port,
        BRIDGE_AET,
        [("QueryRetrieveLevel", "STUDY"), ("StudyDate", "20240101-20240630")],
    )
    assert exact.status == SUCCESS
    assert len(exact.identifiers) == 3


def test_c_cancel_stops_paging(
    bridge_process: Callable[..., BridgeProcess], orthanc: OrthancFixture
) -> None:
    slow = bridge_process(bridge_config(orthanc.dicomweb_url, free_port(), page_size=1))
    model = MODELS["P"]
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", slow.port, ae_title=BRIDGE_AET)
    assert assoc.is_established
    try:
        context_id = assoc.accepted_contexts[0].context_id
        identifier = build_identifier(
            [("QueryRetrieveLevel", "IMAGE"), ("SOPInstanceUID", ""), ("PatientID", "")]
        )
        pending = 0
        final: int | None = None
        for status, _identifier in assoc.send_c_find(identifier, model, msg_id=7):
            if status.Status == PENDING:
                pending += 1
                if pending == 1:
                    assoc.send_c_cancel(7, context_id)
            else:
                final = int(status.Status)
        assert final == CANCEL
        assert 1 <= pending < len(orthanc.manifest.instances)
        # The association survives the cancel.
        after = collect(
            assoc.send_c_find(
                build_identifier([("QueryRetrieveLevel", "STUDY"), ("PatientID", "P002")]),
                model,
                msg_id=8,
            )
        )
        assert after.status == SUCCESS and len(after.identifiers) == 1
    finally:
        assoc.release()


# --------------------------------------------------------------------------- DICOMweb failures


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    return free_port()


def test_dead_dicomweb_server_is_a700_quickly_and_bridge_stays_up(
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/dicom-web"
    dead = bridge_process(bridge_config(url, free_port(), timeout=3))
    started = time.monotonic()
    got = pynetdicom_find(
        dead.port, BRIDGE_AET, [("QueryRetrieveLevel", "STUDY"), ("StudyInstanceUID", "")]
    )
    elapsed = time.monotonic() - started
    assert got.status == OUT_OF_RESOURCES
    assert got.identifiers == []
    assert got.comment and "unreachable" in got.comment, got.comment
    assert elapsed < 10, elapsed
    assert echo(dead.port) == SUCCESS
    assert dead.running


def test_orthanc_stopped_then_restarted(
    bridge_process: Callable[..., BridgeProcess],
    orthanc_factory: Callable[..., OrthancFixture],
) -> None:
    private = orthanc_factory()
    front = bridge_process(bridge_config(private.dicomweb_url, free_port(), timeout=3))
    query: Keys = [("QueryRetrieveLevel", "STUDY"), ("StudyInstanceUID", "")]
    before = pynetdicom_find(front.port, BRIDGE_AET, query)
    assert before.status == SUCCESS
    assert {ds.StudyInstanceUID for ds in before.identifiers} == private.manifest.study_uids

    private.server.stop()
    started = time.monotonic()
    down = pynetdicom_find(front.port, BRIDGE_AET, query)
    assert down.status == OUT_OF_RESOURCES, down
    assert down.identifiers == []
    assert time.monotonic() - started < 10
    assert echo(front.port) == SUCCESS

    private.server.restart()
    after = pynetdicom_find(front.port, BRIDGE_AET, query)
    assert after.status == SUCCESS, (after, front.log_tail())
    assert {ds.StudyInstanceUID for ds in after.identifiers} == private.manifest.study_uids
    assert front.running


@dataclass
class Scripted:
    """What the fake DICOMweb server answers next, and the paths it was asked for."""

    status: int = 200
    content_type: str = "application/dicom+json"
    body: bytes = b"[]"
    paths: list[str] = field(default_factory=list)


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    script: Scripted

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.script.paths.append(self.path)
        body = self.script.body
        self.send_response(self.script.status)
        self.send_header("Content-Type", self.script.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@dataclass
class FakeDicomweb:
    script: Scripted
    bridge: BridgeProcess


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeDicomweb]:
    """A tiny local HTTP server answering whatever its script says, and a bridge on it."""
    script = Scripted()
    handler = type("Handler", (_ScriptedHandler,), {"script": script})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    process = start_bridge(
        bridge_config(url, free_port(), timeout=3),
        tmp_path_factory.mktemp("fake-bridge"),
        name="fake",
    )
    try:
        yield FakeDicomweb(script, process)
    finally:
        process.stop()
        server.shutdown()
        server.server_close()


def study_query(port: int) -> FindResult:
    return pynetdicom_find(
        port,
        BRIDGE_AET,
        [("QueryRetrieveLevel", "STUDY"), ("StudyInstanceUID", ""), ("StudyDate", "")],
    )


def test_html_answer_is_c002(fake: FakeDicomweb) -> None:
    fake.script.status, fake.script.content_type = 200, "text/html"
    fake.script.body = b"<!DOCTYPE html><html><body><h1>Welcome to nginx!</h1></body></html>"
    fake.script.paths.clear()
    got = study_query(fake.bridge.port)
    assert fake.script.paths and fake.script.paths[0].startswith("/dicom-web/studies")
    assert got.status == DICOMWEB_UNREADABLE
    assert got.identifiers == []
    assert got.comment and "not JSON" in got.comment, got.comment
    assert echo(fake.bridge.port) == SUCCESS


@pytest.mark.parametrize(
    ("http_status", "dimse_status", "in_comment"),
    [
        (500, OUT_OF_RESOURCES, "HTTP 500"),
        (503, OUT_OF_RESOURCES, "HTTP 503"),
        (429, OUT_OF_RESOURCES, "HTTP 429"),
        (400, DICOMWEB_REJECTED, "HTTP 400"),
        (404, DICOMWEB_REJECTED, "HTTP 404"),
        (401, DICOMWEB_REJECTED, "authentication"),
        (403, DICOMWEB_REJECTED, "authentication"),
    ],
)
def test_http_error_statuses(
    http_status: int, dimse_status: int, in_comment: str, fake: FakeDicomweb
) -> None:
    fake.script.status, fake.script.content_type = http_status, "text/plain"
    fake.script.body = b"no"
    got = study_query(fake.bridge.port)
    assert got.status == dimse_status
    assert got.identifiers == []
    assert got.comment and in_comment in got.comment, got.comment


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{}", id="object-not-array"),
        pytest.param(b"[1, 2]", id="array-of-numbers"),
        pytest.param(b'[{"0020000D": "1.2.3"}]', id="element-not-an-object"),
        pytest.param(b'[{"00201208": {"vr": "IS", "Value": ["abc"]}}]', id="bad-IS"),
        pytest.param(b"[{", id="truncated"),
    ],
)
def test_not_dicom_json_is_c002(body: bytes, fake: FakeDicomweb) -> None:
    fake.script.status, fake.script.content_type, fake.script.body = (
        200,
        "application/dicom+json",
        body,
    )
    got = study_query(fake.bridge.port)
    assert got.status == DICOMWEB_UNREADABLE, got
    assert got.identifiers == []
    assert got.comment


def test_unencodable_dicom_json_is_c002(fake: FakeDicomweb) -> None:
    fake.script.status, fake.script.content_type = 200, "application/dicom+json"
    fake.script.body = (
        b'[{"0020000D": {"vr": "UI", "Value": ["1.2.3"]},'
        b' "00080020": {"vr": "DA", "Value": [20240101]}}]'
    )
    got = study_query(fake.bridge.port)
    assert got.status == DICOMWEB_UNREADABLE, got


def test_hanging_dicomweb_server_times_out_a700(
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    # A listening socket nobody accepts from: the connection is made, no answer ever comes.
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(16)
        url = f"http://127.0.0.1:{hang.getsockname()[1]}/dicom-web"
        slow = bridge_process(bridge_config(url, free_port(), timeout=1))
        started = time.monotonic()
        got = study_query(slow.port)
        elapsed = time.monotonic() - started
    assert got.status == OUT_OF_RESOURCES
    assert got.comment and "timed out" in got.comment, got.comment
    assert 0.9 < elapsed < 8, elapsed
    assert echo(slow.port) == SUCCESS
