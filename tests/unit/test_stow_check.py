"""STOW-RS per server through the client (httpx MockTransport, no network): implicit VR is
re-encoded where the profile says the server refuses it, and for AWS a stored instance is
checked with QIDO-RS, since a conflicting one goes to a non-primary image set that queries
do not show."""

from __future__ import annotations

import asyncio
import json
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from bridge.dicomweb.client import DicomwebClient
from bridge.dicomweb.multipart import MultipartDecoder, boundary_from_content_type
from bridge.models import StowVerdict
from bridge.profiles import PROFILES, ProfileName

BASE = "http://server/dicom-web"


def write_instance(tmp_path: Path, *, implicit: bool) -> tuple[Path, Dataset]:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P-1"
    ds.PatientName = "DOE^JANE"
    ds.StudyDate = "20261204"
    ds.AccessionNumber = "A-1"
    ds.add_new(0x00291010, "OB", b"\x00\x01\x02\x03")  # private, no creator: UN
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta = meta
    path = tmp_path / "instance.dcm"
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return path, ds


def listed(uid: str) -> dict[str, Any]:
    return {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]}}]}}


def found(ds: Dataset, **changes: str) -> dict[str, Any]:
    values = {
        "00080018": ds.SOPInstanceUID,
        "00100020": changes.get("PatientID", ds.PatientID),
        "00080020": ds.StudyDate,
        "00080050": ds.AccessionNumber,
    }
    return {tag: {"vr": "LO", "Value": [value]} for tag, value in values.items()}


def store(
    profile: ProfileName, path: Path, uid: str, qido: httpx.Response | None
) -> tuple[StowVerdict, list[httpx.Request], list[bytes]]:
    requests: list[httpx.Request] = []
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.method == "POST":
            decoder = MultipartDecoder(boundary_from_content_type(request.headers["content-type"]))
            parts = decoder.feed(request.content) + decoder.close()
            bodies.extend(part.content for part in parts)
            return httpx.Response(200, json=listed(uid))
        assert qido is not None, f"unexpected {request.url}"
        return qido

    async def go() -> StowVerdict:
        client = DicomwebClient(
            httpx.AsyncClient(transport=httpx.MockTransport(handler)),
            BASE,
            query_encoding="dicom",
            capabilities=PROFILES[profile],
        )
        try:
            return (await client.store_instance(path, uid)).verdict
        finally:
            await client.aclose()

    return asyncio.run(go()), requests, bodies


@pytest.mark.parametrize(("profile", "reencoded"), [("azure", True), ("generic", False)])
def test_implicit_vr_is_reencoded_only_for_servers_that_refuse_it(
    tmp_path: Path, profile: ProfileName, reencoded: bool
) -> None:
    path, ds = write_instance(tmp_path, implicit=True)
    verdict, _, bodies = store(profile, path, ds.SOPInstanceUID, None)
    assert verdict is StowVerdict.STORED
    sent = dcmread(BytesIO(bodies[0]))
    expected = ExplicitVRLittleEndian if reencoded else ImplicitVRLittleEndian
    assert sent.file_meta.TransferSyntaxUID == expected
    assert (bodies[0] == path.read_bytes()) is not reencoded
    assert sent.PatientName == "DOE^JANE"
    assert sent[0x00291010].VR == "UN"
    assert sent[0x00291010].value == b"\x00\x01\x02\x03"


def test_explicit_vr_is_sent_unchanged_to_azure(tmp_path: Path) -> None:
    path, ds = write_instance(tmp_path, implicit=False)
    _, _, bodies = store("azure", path, ds.SOPInstanceUID, None)
    assert bodies[0] == path.read_bytes()


def test_aws_instance_found_by_qido_is_stored(tmp_path: Path) -> None:
    path, ds = write_instance(tmp_path, implicit=False)
    verdict, requests, _ = store(
        "aws", path, ds.SOPInstanceUID, httpx.Response(200, json=[found(ds)])
    )
    assert verdict is StowVerdict.STORED
    check = requests[-1]
    assert check.method == "GET"
    assert check.url.path == (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances"
    )
    assert check.url.params["SOPInstanceUID"] == ds.SOPInstanceUID


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json=[]),  # filed in a non-primary image set: not shown
        httpx.Response(204),
        # Only another instance listed.
        httpx.Response(200, json=[{"00080018": {"vr": "UI", "Value": ["x"]}}]),
    ],
)
def test_aws_instance_not_found_by_qido_is_not_visible(
    tmp_path: Path, answer: httpx.Response
) -> None:
    path, ds = write_instance(tmp_path, implicit=False)
    verdict, _, _ = store("aws", path, ds.SOPInstanceUID, answer)
    assert verdict is StowVerdict.NOT_VISIBLE


def test_aws_conflicting_copy_listed_is_not_visible(tmp_path: Path) -> None:
    path, ds = write_instance(tmp_path, implicit=False)
    answer = httpx.Response(200, json=[found(ds, PatientID="SOMEONE-ELSE")])
    verdict, _, _ = store("aws", path, ds.SOPInstanceUID, answer)
    assert verdict is StowVerdict.NOT_VISIBLE


def test_failed_check_keeps_the_stored_verdict(tmp_path: Path) -> None:
    path, ds = write_instance(tmp_path, implicit=False)
    verdict, _, _ = store("aws", path, ds.SOPInstanceUID, httpx.Response(400))
    assert verdict is StowVerdict.STORED


def test_no_check_without_stow_verify(tmp_path: Path) -> None:
    path, ds = write_instance(tmp_path, implicit=False)
    _, requests, _ = store("generic", path, ds.SOPInstanceUID, None)
    assert [r.method for r in requests] == ["POST"]
    assert json.dumps(PROFILES["aws"].stow_verify) == "true"
