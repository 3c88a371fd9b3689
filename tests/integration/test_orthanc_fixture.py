"""Smoke tests of the integration harness: Orthanc up with the data set, dcmtk talks to it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.conftest import OrthancFixture
from tests.integration.dataset import build_dataset, make_ct_series, to_bytes
from tests.integration.tools import describe, run_dcmtk

pytestmark = pytest.mark.integration

JSON = {"Accept": "application/dicom+json", "Accept-Encoding": "identity"}


def qido_study_uids(orthanc: OrthancFixture, query: str = "") -> set[str]:
    """StudyInstanceUIDs of ``GET /dicom-web/studies<query>``; `query` is sent verbatim."""
    response = httpx.get(f"{orthanc.dicomweb_url}/studies{query}", headers=JSON, timeout=30)
    assert response.status_code in (200, 204), response.text
    if response.status_code == 204 or not response.content:
        return set()
    return {item["0020000D"]["Value"][0] for item in response.json()}


def test_orthanc_is_up_with_the_dataset(orthanc: OrthancFixture) -> None:
    system = httpx.get(f"{orthanc.http_url}/system", timeout=10).json()
    assert system["DicomAet"] == orthanc.aet == "ORTHANC"
    assert system["DicomPort"] == orthanc.dicom_port
    stats = orthanc.server.statistics()
    manifest = orthanc.manifest
    assert stats["CountPatients"] == len(manifest.patients)
    assert stats["CountStudies"] == len(manifest.studies)
    assert stats["CountSeries"] == len(manifest.series)
    assert stats["CountInstances"] == len(manifest.instances)


def test_dataset_shape_and_determinism() -> None:
    first, second = build_dataset(), build_dataset()
    assert [to_bytes(a) for a in first] == [to_bytes(b) for b in second]
    names = {str(ds.PatientName) for ds in first}
    assert {"DOE^JOHN", "DOE^JANE", "MÜLLER^HANS", "SMITH^ANNA"} <= names
    modalities = {ds.Modality for ds in first}
    assert {"CT", "MR", "US", "OT"} <= modalities
    bulk = make_ct_series(3, rows=32, columns=24, key="shape-check")
    assert [ds.InstanceNumber for ds in bulk] == [1, 2, 3]
    assert len({ds.SOPInstanceUID for ds in bulk}) == 3
    assert len({ds.SeriesInstanceUID for ds in bulk}) == 1
    assert bulk[0].pixel_array.shape == (32, 24)


def test_qido_lists_every_study(orthanc: OrthancFixture) -> None:
    assert qido_study_uids(orthanc) == orthanc.manifest.study_uids


def test_dcmtk_echoscu(orthanc: OrthancFixture) -> None:
    result = run_dcmtk(
        "echoscu",
        "-aet",
        "ECHOSCU",
        "-aec",
        orthanc.aet,
        "127.0.0.1",
        str(orthanc.dicom_port),
        timeout=30,
    )
    assert result.returncode == 0, describe(["echoscu"], result)


def test_dcmtk_findscu_study_level(orthanc: OrthancFixture, tmp_path: Path) -> None:
    out = tmp_path / "find"
    out.mkdir()
    result = run_dcmtk(
        "findscu",
        "-S",
        "-aet",
        "FINDSCU",
        "-aec",
        orthanc.aet,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID",
        "-k",
        "PatientName",
        "-k",
        "ModalitiesInStudy",
        "-X",
        "-od",
        str(out),
        "127.0.0.1",
        str(orthanc.dicom_port),
        timeout=60,
    )
    assert result.returncode == 0, describe(["findscu"], result)
    answers = [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
    assert {str(ds.StudyInstanceUID) for ds in answers} == orthanc.manifest.study_uids
    assert len(answers) == len(orthanc.manifest.studies)


def test_dcmtk_findscu_series_level(orthanc: OrthancFixture, tmp_path: Path) -> None:
    study = next(s for s in orthanc.manifest.studies if len(s.ModalitiesInStudy) > 1)
    result = run_dcmtk(
        "findscu",
        "-S",
        "-aet",
        "FINDSCU",
        "-aec",
        orthanc.aet,
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"StudyInstanceUID={study.StudyInstanceUID}",
        "-k",
        "SeriesInstanceUID",
        "-k",
        "Modality",
        "-X",
        "-od",
        str(tmp_path),
        "127.0.0.1",
        str(orthanc.dicom_port),
        timeout=60,
    )
    assert result.returncode == 0, describe(["findscu"], result)
    found = {
        (str(ds.SeriesInstanceUID), ds.Modality)
        for ds in map(pydicom.dcmread, tmp_path.glob("rsp*.dcm"))
    }
    series = orthanc.manifest.series_of(study.StudyInstanceUID)
    expected = {(s.SeriesInstanceUID, s.Modality) for s in series}
    assert found == expected


# --- Facts about this Orthanc's QIDO-RS that the bridge's query translation depends on. If one
# --- of these fails after an Orthanc upgrade, revisit bridge's QIDO encoding, not this test.


def test_qido_modalities_in_study_comma_list_means_any_of(orthanc: OrthancFixture) -> None:
    expected = {
        s.StudyInstanceUID
        for s in orthanc.manifest.studies
        if {"CT", "MR"} & set(s.ModalitiesInStudy)
    }
    assert expected and expected != orthanc.manifest.study_uids
    assert qido_study_uids(orthanc, "?ModalitiesInStudy=CT,MR") == expected


def test_qido_modalities_in_study_backslash_matches_nothing(orthanc: OrthancFixture) -> None:
    assert qido_study_uids(orthanc, "?ModalitiesInStudy=CT%5CMR") == set()
    assert qido_study_uids(orthanc, "?ModalitiesInStudy=CT\\MR") == set()


def test_qido_person_name_caret_must_be_literal(orthanc: OrthancFixture) -> None:
    studies = orthanc.manifest.studies
    does = {s.StudyInstanceUID for s in studies if s.PatientName.startswith("DOE^")}
    assert len(does) == 3
    assert qido_study_uids(orthanc, "?PatientName=DOE^*") == does
    assert qido_study_uids(orthanc, "?PatientName=DOE%5E%2A") == set()


def test_qido_cannot_match_non_ascii_characters(orthanc: OrthancFixture) -> None:
    muller = {s.StudyInstanceUID for s in orthanc.manifest.studies if s.PatientID == "P003"}
    assert qido_study_uids(orthanc, "?PatientName=M%C3%9CLLER*") == set()
    assert qido_study_uids(orthanc, "?PatientName=MULLER*") == set()
    assert qido_study_uids(orthanc, "?PatientName=M*LLER^HANS") == muller


def test_qido_reports_latin1_charset_with_unicode_values(orthanc: OrthancFixture) -> None:
    response = httpx.get(
        f"{orthanc.dicomweb_url}/studies?PatientID=P003&includefield=StudyDescription",
        headers=JSON,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    for study in response.json():
        assert study["00080005"]["Value"] == ["ISO_IR 100"]  # though stored as ISO_IR 192
        assert study["00100010"]["Value"][0]["Alphabetic"] == "MÜLLER^HANS"


# --- The OrthancServer helpers, on a private server (they change its content).


def test_orthanc_helpers_upload_fetch_delete_restart(
    orthanc_factory: Callable[..., OrthancFixture],
) -> None:
    private = orthanc_factory(with_dataset=False)
    server = private.server
    datasets = make_ct_series(2, key="helpers")
    for ds in datasets:
        server.upload(to_bytes(ds))
    uid = str(datasets[0].SOPInstanceUID)
    assert server.instance_file(uid) == to_bytes(datasets[0])
    server.delete_instance(uid)
    assert server.statistics()["CountInstances"] == 1
    old_url = server.http_url
    server.restart()
    assert server.http_url == old_url
    assert server.statistics()["CountInstances"] == 1
