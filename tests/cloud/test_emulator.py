"""The conformance emulator against the real Orthanc: each vendor limit is enforced, what
it takes passes through unchanged, and every refusal is recorded.

One private Orthanc (the standard data set) serves the module; requests go to the
emulator with httpx, and the emulator's answers are compared with Orthanc's own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from io import BytesIO
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.cloud.emulator import (
    AZURE_ALREADY_STORED,
    AZURE_VALIDATION_FAILED,
    ConformanceEmulator,
)
from tests.cloud.vendor import AWS
from tests.conftest import OrthancFixture
from tests.integration.dataset import make_ct_series, to_bytes

pytestmark = pytest.mark.integration

Emulators = Callable[[str], ConformanceEmulator]
JSON = {"Accept": "application/dicom+json"}
BOUNDARY = "emulatortestboundary"
EXPLICIT = str(ExplicitVRLittleEndian)


def get(emu: ConformanceEmulator, path: str, headers: dict[str, str] | None = None) -> Any:
    # A pre-built URL: httpx keeps ^ * , unescaped (Orthanc does not percent-decode).
    return httpx.get(emu.dicomweb_url + path, headers=headers or JSON, timeout=30)


def uids(response: httpx.Response, tag: str = "0020000D") -> list[str]:
    return [row[tag]["Value"][0] for row in response.json()]


def direct(orthanc: OrthancFixture, path: str) -> httpx.Response:
    return httpx.get(orthanc.dicomweb_url + path, headers=JSON, timeout=30)


def stow(emu: ConformanceEmulator, *datasets: Dataset) -> httpx.Response:
    body = bytearray()
    for ds in datasets:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += to_bytes(ds) + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return httpx.post(
        emu.dicomweb_url + "/studies",
        content=bytes(body),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json",
        },
        timeout=30,
    )


def new_instances(key: str, n: int, syntax: str) -> list[Dataset]:
    datasets = make_ct_series(n, rows=8, columns=8, key=key)
    for ds in datasets:
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    return datasets


def stored(orthanc: OrthancFixture, sop_uid: str) -> bool:
    rows = direct(orthanc, f"/instances?SOPInstanceUID={sop_uid}").json()
    return bool(rows)


def failed_reasons(answer: dict[str, Any]) -> dict[str, int]:
    items = answer.get("00081198", {}).get("Value", [])
    return {i["00081155"]["Value"][0]: i["00081197"]["Value"][0] for i in items}


def stored_uids(answer: dict[str, Any]) -> set[str]:
    items = answer.get("00081199", {}).get("Value", [])
    return {i["00081155"]["Value"][0] for i in items}


# --------------------------------------------------------------------------- pass-through


@pytest.mark.parametrize("vendor", ["generic", "orthanc", "dcm4chee"])
def test_conformant_vendors_pass_every_form_unchanged(
    vendor: str, emulators: Emulators, cloud_orthanc: OrthancFixture
) -> None:
    emu = emulators(vendor)
    m = cloud_orthanc.manifest
    pair = ",".join(s.StudyInstanceUID for s in m.studies[:2])
    for query in (
        "/studies?PatientName=DOE*&includefield=StudyDescription",
        f"/studies?StudyInstanceUID={pair}",
        "/studies?StudyDate=20240101-20240630",
        "/series?Modality=MR",
        "/studies?limit=3&offset=2",
    ):
        ours, theirs = get(emu, query), direct(cloud_orthanc, query)
        assert ours.status_code == theirs.status_code == 200, query
        assert sorted(uids(ours, "0020000D")) == sorted(uids(theirs, "0020000D")), query
    emu.assert_refused_nothing()
    assert len(emu.records()) == 5


# --------------------------------------------------------------------------- Google


def test_google_refuses_forms_it_does_not_take_and_records_them(emulators: Emulators) -> None:
    emu = emulators("google")
    refused = [
        "/studies?PatientName=DOE*",
        "/studies?ModalitiesInStudy=CT",
        "/studies?StudyInstanceUID=1.2.3,1.2.4",
        "/studies?includefield=NumberOfStudyRelatedInstances",
        "/studies?limit=5001",
        "/instances?SOPClassUID=1.2.840.10008.5.1.4.1.1.2",
    ]
    for query in refused:
        assert get(emu, query).status_code == 400, query
    assert [r.path for r in emu.refusals()] == ["/dicom-web" + q for q in refused]
    assert {r.status for r in emu.refusals()} == {400}
    assert all(rec.status == 400 for rec in emu.records())


def test_google_answers_without_counts_or_warning_and_pages_itself(
    emulators: Emulators, cloud_orthanc: OrthancFixture
) -> None:
    emu = emulators("google")
    m = cloud_orthanc.manifest
    full = get(emu, "/studies?PatientID=P001&includefield=StudyDescription")
    assert full.status_code == 200 and "warning" not in full.headers
    assert sorted(uids(full)) == sorted(s.StudyInstanceUID for s in m.studies_of("P001"))
    assert all("00201206" not in row and "00201208" not in row for row in full.json())
    # Orthanc itself sends the counts: the emulator removed them.
    theirs = direct(cloud_orthanc, "/studies?PatientID=P001").json()
    assert all("00201208" in row for row in theirs)
    first, second = get(emu, "/studies?limit=5"), get(emu, "/studies?limit=5&offset=5")
    assert len(first.json()) == 5 and len(second.json()) == len(m.studies) - 5
    assert set(uids(first)) | set(uids(second)) == {s.StudyInstanceUID for s in m.studies}
    emu.assert_refused_nothing()


def test_google_fuzzymatching_is_emulated(emulators: Emulators) -> None:
    emu = emulators("google")
    answer = get(emu, "/studies?fuzzymatching=true&PatientName=doe&includefield=PatientID")
    assert answer.status_code == 200
    assert sorted(r["00100020"]["Value"][0] for r in answer.json()) == ["P001", "P001", "P002"]
    emu.assert_refused_nothing()


def test_google_duplicate_store_is_409_already_exists(
    emulators: Emulators, cloud_orthanc: OrthancFixture
) -> None:
    emu = emulators("google")
    (ds,) = new_instances("google-dup", 1, ExplicitVRLittleEndian)
    assert stow(emu, ds).status_code == 200
    again = stow(emu, ds)
    assert again.status_code == 409
    assert again.json()["error"]["status"] == "ALREADY_EXISTS"
    assert [r.kind for r in emu.refusals()] == ["duplicate"]
    cloud_orthanc.server.delete_instance(str(ds.SOPInstanceUID))


# --------------------------------------------------------------------------- Azure


def test_azure_limits_and_204(emulators: Emulators, cloud_orthanc: OrthancFixture) -> None:
    emu = emulators("azure")
    n = len(cloud_orthanc.manifest.studies)
    assert get(emu, "/studies?limit=201").status_code == 400
    assert get(emu, "/studies?PatientName=").status_code == 400
    assert get(emu, "/studies?ModalitiesInStudy=CT,MR").status_code == 400
    assert get(emu, "/studies?StudyTime=080000-110000").status_code == 400
    assert len(emu.refusals()) == 4
    emu.clear()
    assert len(get(emu, "/studies?limit=200").json()) == n
    past = get(emu, f"/studies?limit=5&offset={n}")
    assert past.status_code == 204 and past.content == b""
    assert get(emu, "/studies?PatientID=NOBODY").status_code == 204
    assert get(emu, "/studies?StudyDate=20240101-20240630&limit=10").status_code == 200
    emu.assert_refused_nothing()


def test_azure_pages_newest_first(emulators: Emulators, cloud_orthanc: OrthancFixture) -> None:
    emu = emulators("azure")
    (ds,) = new_instances("azure-newest", 1, ExplicitVRLittleEndian)
    assert stow(emu, ds).status_code == 200
    first = get(emu, "/studies?limit=2")
    assert uids(first)[0] == str(ds.StudyInstanceUID)
    # The row that arrived pushes the others down: page 2 starts with page 1's last row of
    # before, so a pager that goes by offset sees it twice.
    assert len(get(emu, "/studies?limit=200").json()) == len(cloud_orthanc.manifest.studies) + 1
    emu.assert_refused_nothing()
    cloud_orthanc.server.delete_instance(str(ds.SOPInstanceUID))


def test_azure_retrieve_accept(emulators: Emulators, cloud_orthanc: OrthancFixture) -> None:
    emu = emulators("azure")
    inst = cloud_orthanc.manifest.instances[0]
    path = (
        f"/studies/{inst.StudyInstanceUID}/series/{inst.SeriesInstanceUID}"
        f"/instances/{inst.SOPInstanceUID}"
    )
    media = 'multipart/related; type="application/dicom"'
    for syntax, expected in (
        ("1.2.840.10008.1.2.1", 200),
        ("*", 200),
        ("1.2.840.10008.1.2.4.70", 406),
        ("1.2.840.10008.1.2", 406),
    ):
        answer = get(emu, path, {"Accept": f"{media}; transfer-syntax={syntax}"})
        assert answer.status_code == expected, syntax
    assert get(emu, path, {"Accept": media}).status_code == 200
    assert [r.status for r in emu.refusals()] == [406, 406]


def test_azure_refuses_implicit_vr_and_missing_patient_id(
    emulators: Emulators, cloud_orthanc: OrthancFixture
) -> None:
    emu = emulators("azure")
    implicit, explicit, no_pid = (
        new_instances("azure-implicit", 1, ImplicitVRLittleEndian)
        + new_instances("azure-explicit", 1, ExplicitVRLittleEndian)
        + new_instances("azure-nopid", 1, ExplicitVRLittleEndian)
    )
    del no_pid.PatientID
    only_implicit = stow(emu, implicit)
    assert only_implicit.status_code == 409
    assert failed_reasons(only_implicit.json()) == {
        str(implicit.SOPInstanceUID): AZURE_VALIDATION_FAILED
    }
    assert not stored(cloud_orthanc, str(implicit.SOPInstanceUID))
    mixed = stow(emu, implicit, explicit, no_pid)
    assert mixed.status_code == 202
    assert failed_reasons(mixed.json()) == {
        str(implicit.SOPInstanceUID): AZURE_VALIDATION_FAILED,
        str(no_pid.SOPInstanceUID): AZURE_VALIDATION_FAILED,
    }
    assert stored_uids(mixed.json()) == {str(explicit.SOPInstanceUID)}
    assert stored(cloud_orthanc, str(explicit.SOPInstanceUID))
    assert not stored(cloud_orthanc, str(no_pid.SOPInstanceUID))
    duplicate = stow(emu, explicit)
    assert duplicate.status_code == 409
    assert failed_reasons(duplicate.json()) == {str(explicit.SOPInstanceUID): AZURE_ALREADY_STORED}
    assert [r.kind for r in emu.refusals()] == ["store", "store", "store", "duplicate"]
    cloud_orthanc.server.delete_instance(str(explicit.SOPInstanceUID))


# --------------------------------------------------------------------------- AWS


def test_aws_has_no_root_resources_nor_study_retrieve(
    emulators: Emulators, cloud_orthanc: OrthancFixture
) -> None:
    emu = emulators("aws")
    series = cloud_orthanc.manifest.series[0]
    study = series.StudyInstanceUID
    for path in ("/series", "/instances", f"/studies/{study}/instances", f"/studies/{study}"):
        assert get(emu, path).status_code == 404, path
    assert get(emu, f"/studies/{study}/series?PatientID=P001").status_code == 400
    assert len(emu.refusals()) == 5
    emu.clear()
    listed = get(emu, f"/studies/{study}/series")
    assert listed.status_code == 200
    numbers = [r["00200011"]["Value"][0] for r in listed.json()]
    assert numbers == sorted(numbers) and len(numbers) == len(
        cloud_orthanc.manifest.series_of(study)
    )
    wado = get(
        emu,
        f"/studies/{study}/series/{series.SeriesInstanceUID}",
        {"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}'},
    )
    assert wado.status_code == 200 and len(wado.content) > 0
    emu.assert_refused_nothing()


def test_aws_retrieve_serves_stored_syntax_or_explicit_only(
    emulators: Emulators, cloud_orthanc: OrthancFixture
) -> None:
    emu = emulators("aws")
    inst = cloud_orthanc.manifest.instances[0]
    path = (
        f"/studies/{inst.StudyInstanceUID}/series/{inst.SeriesInstanceUID}"
        f"/instances/{inst.SOPInstanceUID}"
    )
    stored_syntax = str(
        dcmread(BytesIO(cloud_orthanc.server.instance_file(inst.SOPInstanceUID)))
        .file_meta["TransferSyntaxUID"]
        .value
    )
    media = 'multipart/related; type="application/dicom"; transfer-syntax='
    assert get(emu, path, {"Accept": media + stored_syntax}).status_code == 200
    assert get(emu, path, {"Accept": media + "*"}).status_code == 200
    assert get(emu, path, {"Accept": media + "1.2.840.10008.1.2.4.70"}).status_code == 406
    assert [r.status for r in emu.refusals()] == [406]


def test_aws_rate_limit_is_429_with_retry_after(cloud_orthanc: OrthancFixture) -> None:
    assert (AWS.wado_rate, AWS.wado_burst) == (50.0, 100)
    # The same token bucket, slowed down so that the test does not race the refill: a
    # burst of 5, then 1 per second.
    slow = replace(AWS, wado_rate=1.0, wado_burst=5)
    inst = cloud_orthanc.manifest.instances[0]
    with ConformanceEmulator(cloud_orthanc.http_url, slow) as emu:
        path = (
            f"{emu.dicomweb_url}/studies/{inst.StudyInstanceUID}/series/"
            f"{inst.SeriesInstanceUID}/instances/{inst.SOPInstanceUID}/metadata"
        )
        with httpx.Client(timeout=30) as client:
            answers = [client.get(path, headers=JSON) for _ in range(8)]
        statuses = [a.status_code for a in answers]
        assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
        limited = [a for a in answers if a.status_code == 429]
        assert all(int(a.headers["Retry-After"]) >= 1 for a in limited)
        assert [r.kind for r in emu.refusals()] == ["rate"] * len(limited)
        # QIDO-RS is not counted against the WADO-RS rate.
        assert get(emu, "/studies?limit=1").status_code == 200


def test_aws_duplicate_is_listed_but_not_stored_again(
    emulators: Emulators, cloud_orthanc: OrthancFixture
) -> None:
    emu = emulators("aws")
    (ds,) = new_instances("aws-dup", 1, ExplicitVRLittleEndian)
    assert stow(emu, ds).status_code == 200
    changed = copy.deepcopy(ds)
    changed.PatientID = "CONFLICT"
    again = stow(emu, changed)
    assert again.status_code == 200 and stored_uids(again.json()) == {str(ds.SOPInstanceUID)}
    shown = direct(
        cloud_orthanc, f"/instances?SOPInstanceUID={ds.SOPInstanceUID}&includefield=PatientID"
    )
    assert [r["00100020"]["Value"][0] for r in shown.json()] == [str(ds.PatientID)]
    assert [r.kind for r in emu.refusals()] == ["duplicate"]
    cloud_orthanc.server.delete_instance(str(ds.SOPInstanceUID))


def test_fault_actions_replace_the_answer_and_delays_delay_it(emulators: Emulators) -> None:
    emu = emulators("azure")
    emu.fail(503, "/studies", count=1, headers={"Retry-After": "1"})
    assert get(emu, "/studies?limit=201").status_code == 503
    assert get(emu, "/studies?limit=201").status_code == 400
    assert [r.status for r in emu.refusals()] == [400]
    delay = emu.add_fault(path_filter="/studies", delay_s=0.2, count=1)
    assert get(emu, "/studies?limit=201").status_code == 400  # still the vendor's answer
    assert delay.hits == 1
    assert [r.status for r in emu.refusals()] == [400, 400]


def test_dcm4chee_refuses_fuzzymatching(emulators: Emulators) -> None:
    emu = emulators("dcm4chee")
    assert get(emu, "/studies?fuzzymatching=true&PatientName=DOE*").status_code == 400
    assert get(emu, "/studies?PatientName=doe*").status_code == 200
    assert [r.reason for r in emu.refusals()] == ["fuzzymatching is not supported"]
