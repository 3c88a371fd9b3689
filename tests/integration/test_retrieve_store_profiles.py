"""Retrieve and store per server profile, against a real Orthanc behind the tests' proxy acting
as the narrower server (issue 11 items 4 and 5).

    storescu / pynetdicom SCU --DIMSE--> bridge (profile) --HTTP--> NarrowServer --> Orthanc

``NarrowServer`` is the fault proxy with two of a cloud server's documented limits: WADO-RS
answers 406 to an Accept transfer syntax outside the profile's list (Azure: "An unsupported
transfer-syntax results in 406 Not Acceptable"), and STOW-RS refuses an implicit VR body
(Azure: "Only transfer syntaxes with explicit Value Representations are accepted"). It
records what each request asked for, so the tests assert that the bridge never asked for
anything the server refuses, and that the data arrived unchanged.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

from bridge.dicomweb.multipart import MultipartDecoder, boundary_from_content_type
from bridge.profiles import PROFILES
from tests.conftest import require_orthanc
from tests.faults.paths import is_wado
from tests.faults.proxy import FaultProxy
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.dataset import make_ct_series, to_bytes
from tests.integration.orthanc import OrthancServer
from tests.integration.tools import free_port, run_dcmtk
from tests.scu import c_get, scu

pytestmark = pytest.mark.integration

GET_MODEL = StudyRootQueryRetrieveInformationModelGet
_SYNTAX_PARAM = re.compile(r"transfer-syntax=([^;,\s]+)")


@dataclass(frozen=True)
class Seen:
    """One request as the narrow server saw it."""

    method: str
    path: str
    asked_syntax: str | None  # the Accept's transfer-syntax (WADO-RS)
    body_syntax: str | None  # the transfer syntax of the STOW-RS part
    refused: int | None  # the status it was refused with, if it was


class NarrowServer(FaultProxy):
    """The fault proxy in front of Orthanc, refusing what a narrower server refuses."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.produces: frozenset[str] | None = None  # WADO-RS syntaxes besides "*"
        self.explicit_only = False  # STOW-RS refuses Implicit VR Little Endian
        self._seen: list[Seen] = []
        self._seen_lock = threading.Lock()

    def mode(self, profile: str) -> None:
        caps = PROFILES[profile]  # type: ignore[index]
        self.produces = caps.retrieve_syntaxes
        self.explicit_only = not caps.stow_implicit_vr
        with self._seen_lock:
            self._seen.clear()

    @property
    def seen(self) -> list[Seen]:
        with self._seen_lock:
            return list(self._seen)

    async def _respond_inner(self, req: Any, rec: Any, fault: Any, writer: Any, state: Any) -> bool:
        asked = None
        match = _SYNTAX_PARAM.search(req.header("accept") or "")
        if match:
            asked = match.group(1).strip('"')
        body_syntax = _stow_syntax(req) if req.method == "POST" else None
        refused = None
        if asked not in (None, "*") and self.produces is not None and asked not in self.produces:
            refused = 406
        elif body_syntax == ImplicitVRLittleEndian and self.explicit_only:
            refused = 415
        with self._seen_lock:
            self._seen.append(Seen(req.method, req.target, asked, body_syntax, refused))
        if refused is not None:
            return bool(await self._send_simple(req, rec, writer, refused, b"not supported\n"))
        return bool(await super()._respond_inner(req, rec, fault, writer, state))


def _stow_syntax(req: Any) -> str | None:
    try:
        decoder = MultipartDecoder(boundary_from_content_type(req.header("content-type") or ""))
        parts = decoder.feed(req.body) + decoder.close()
        return str(
            dcmread(BytesIO(parts[0].content), stop_before_pixels=True).file_meta.TransferSyntaxUID
        )
    except Exception:
        return None


@dataclass
class Side:
    server: OrthancServer
    narrow: NarrowServer
    workdir: Path
    bridges: dict[str, BridgeProcess]
    study_uid: str
    uids: list[str]
    datasets: list[Dataset]

    def bridge(self, profile: str) -> BridgeProcess:
        self.narrow.mode(profile)
        return self.bridges[profile]


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    require_orthanc()
    workdir = tmp_path_factory.mktemp("profiles-rs")
    server = OrthancServer(workdir / "orthanc").start()
    narrow: NarrowServer | None = None
    bridges: dict[str, BridgeProcess] = {}
    try:
        datasets = make_ct_series(6, rows=32, columns=32, key="profiles-rs")
        server.upload_many(to_bytes(ds) for ds in datasets)
        narrow = NarrowServer(server.http_url).start()
        for profile in ("generic", "azure", "aws"):
            config = bridge_config(
                narrow.url + "/dicom-web",
                free_port(),
                dicomweb={"profile": profile, "max_retries": 1},
            )
            bridges[profile] = start_bridge(config, workdir, name=f"rs-{profile}")
        yield Side(
            server,
            narrow,
            workdir,
            bridges,
            str(datasets[0].StudyInstanceUID),
            [str(ds.SOPInstanceUID) for ds in datasets],
            datasets,
        )
    finally:
        for bridge in bridges.values():
            bridge.stop()
        if narrow is not None:
            narrow.stop()
        server.stop()


def get_study(side: Side, profile: str, syntaxes: list[str]) -> Any:
    bridge = side.bridge(profile)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = side.study_uid
    return c_get(
        scu("GETSCU", timeouts=(30, 60, 60)),
        (bridge.host, bridge.port, bridge.ae_title),
        query,
        GET_MODEL,
        [(CTImageStorage, syntaxes)],
    )


# --------------------------------------------------------------------------- retrieve


@pytest.mark.parametrize(
    ("profile", "syntax"),
    [
        ("aws", JPEG2000Lossless),  # AWS makes only Explicit VR LE: the bridge encodes
        ("azure", RLELossless),  # Azure makes no RLE: the bridge encodes
        ("aws", RLELossless),
    ],
)
def test_cget_asks_only_for_syntaxes_the_server_makes(
    side: Side, profile: str, syntax: str
) -> None:
    """A peer that takes only a syntax the server cannot produce: every instance arrives
    in it, losslessly converted by the bridge, and the server was never asked for it (no
    406 at all). Before issue 11 the bridge asked the server first and got refused."""
    outcome = get_study(side, profile, [syntax])
    assert outcome.status == 0x0000, outcome.describe()
    assert sorted(outcome.received_uids) == sorted(side.uids)
    by_uid = outcome.by_uid()
    for ds in side.datasets:
        received = by_uid[str(ds.SOPInstanceUID)]
        assert received.transfer_syntax == syntax
        assert np.array_equal(received.dataset.pixel_array, ds.pixel_array)
    seen = side.narrow.seen
    assert [s for s in seen if s.refused] == []
    produces = PROFILES[profile].retrieve_syntaxes  # type: ignore[index]
    assert produces is not None
    asked = {s.asked_syntax for s in seen if s.asked_syntax is not None}
    assert asked <= {"*"} | produces, asked


def test_aws_never_retrieves_a_whole_study(side: Side) -> None:
    """AWS has no study-level WADO-RS: a STUDY-level C-GET fetches instance by instance."""
    outcome = get_study(side, "aws", [ExplicitVRLittleEndian])
    assert outcome.status == 0x0000, outcome.describe()
    study_level = [
        s
        for s in side.narrow.seen
        if s.method == "GET" and re.fullmatch(r"/dicom-web/studies/[0-9.]+", s.path)
    ]
    assert study_level == []
    assert len([s for s in side.narrow.seen if is_wado(s.path)]) == len(side.uids)


def test_generic_profile_still_asks_the_server_to_transcode(side: Side) -> None:
    """Control: a PS3.18 server is asked for the peer's syntax (Orthanc answers 500 for
    RLE, and the bridge then converts locally, as before)."""
    outcome = get_study(side, "generic", [RLELossless])
    assert outcome.status == 0x0000, outcome.describe()
    assert RLELossless in {s.asked_syntax for s in side.narrow.seen}


# --------------------------------------------------------------------------- store


def rich_implicit_file(directory: Path) -> Path:
    """A CT instance in Implicit VR LE with private elements of known and unknown creators
    (UN after re-encoding), nested sequences, a "US or SS" element and pixel data."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "RS-IMPLICIT"
    ds.StudyDate = "20261204"
    ds.SliceThickness = "1.50"
    ds.InstanceNumber = "7"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = 8, 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SmallestImagePixelValue = -32
    ds.PixelData = np.arange(-32, 32, dtype="<i2").tobytes()
    ds.private_block(0x0009, "GEMS_IDEN_01", create=True).add_new(0x01, "LO", "GE FULL NAME")
    acme = ds.private_block(0x0011, "ACME 1.0", create=True)
    acme.add_new(0x01, "LO", "acme text")
    acme.add_new(0x02, "OB", bytes(range(9)) + b"\0")
    inner = Dataset()
    inner.CodeValue = "121320"
    inner.CodingSchemeDesignator = "DCM"
    inner.CodeMeaning = "Uncompressed predecessor"
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = generate_uid()
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.SourceImageSequence = Sequence([item])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.9.9999.2")
    ds.file_meta = meta
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "implicit.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return path


def raw_values(ds: Dataset, prefix: str = "") -> dict[str, bytes]:
    """Every element, nested ones by path, as its value bytes straight off the file (the
    few pydicom decodes while reading, as their decoded value)."""
    found: dict[str, bytes] = {}
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        elem = ds[tag]
        if elem.VR == "SQ":
            found[f"{prefix}{tag}"] = b"SQ"
            for index, nested in enumerate(elem.value):
                found.update(raw_values(nested, f"{prefix}{tag}[{index}]."))
        elif isinstance(raw, RawDataElement):
            found[f"{prefix}{tag}"] = bytes(raw.value or b"")
        else:  # pydicom decodes a few on reading (Specific Character Set): their values
            found[f"{prefix}{tag}"] = b"" if elem.is_empty else repr(elem.value).encode()
    return found


def orthanc_file(server: OrthancServer, sop_instance_uid: str) -> bytes:
    found = server.client.post("/tools/lookup", content=sop_instance_uid.encode())
    assert found.status_code == 200, found.text
    ids = [m["ID"] for m in found.json() if m.get("Type") == "Instance"]
    assert len(ids) == 1, found.json()
    answer = server.client.get(f"/instances/{ids[0]}/file")
    assert answer.status_code == 200
    return answer.content


def test_storescu_implicit_vr_through_azure_is_stored_with_every_element(
    side: Side, tmp_path: Path
) -> None:
    """storescu sends an Implicit VR LE file (-xi: implicit only); the bridge with the azure
    profile sends it to STOW-RS as Explicit VR LE, which the narrow server takes; Orthanc
    then holds every element of it with the same value bytes, private and UN ones too."""
    path = rich_implicit_file(tmp_path)
    bridge = side.bridge("azure")
    result = run_dcmtk(
        "storescu",
        "-v",
        "-xi",
        "-aet",
        "STORESCU",
        "-aec",
        bridge.ae_title,
        bridge.host,
        str(bridge.port),
        str(path),
        timeout=60,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "Received Store Response (Success)" in log, log
    (stow,) = [s for s in side.narrow.seen if s.method == "POST"]
    assert stow.body_syntax == ExplicitVRLittleEndian
    assert stow.refused is None
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    stored_file = orthanc_file(side.server, uid)
    stored = dcmread(BytesIO(stored_file))
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    # Fresh reads, nothing accessed before: every value still as raw bytes.
    before = raw_values(dcmread(path))
    after = raw_values(dcmread(BytesIO(stored_file)))
    assert list(after) == list(before)
    assert after == before
    assert stored[0x00111001].VR == "UN"  # unknown private creator: VR unknown


def test_storescu_implicit_vr_through_generic_is_sent_as_received(
    side: Side, tmp_path: Path
) -> None:
    """Control: a server that takes implicit VR gets the file as the modality sent it."""
    path = rich_implicit_file(tmp_path)
    bridge = side.bridge("generic")
    result = run_dcmtk(
        "storescu",
        "-v",
        "-xi",
        "-aet",
        "STORESCU",
        "-aec",
        bridge.ae_title,
        bridge.host,
        str(bridge.port),
        str(path),
        timeout=60,
    )
    assert "Received Store Response (Success)" in result.stdout + result.stderr
    (stow,) = [s for s in side.narrow.seen if s.method == "POST"]
    assert stow.body_syntax == ImplicitVRLittleEndian


def test_429_with_retry_after_is_honoured_under_the_rate_limit(side: Side) -> None:
    """The aws profile's rate limit does not hide a 429: the refused WADO-RS request is sent
    again after its Retry-After, and every instance arrives."""
    bridge = side.bridge("aws")
    side.narrow.clear()
    side.narrow.fail(429, path_filter=is_wado, method="GET", count=1, headers={"Retry-After": "1"})
    try:
        outcome = get_study(side, "aws", [ExplicitVRLittleEndian])
    finally:
        side.narrow.clear_faults()
    assert outcome.status == 0x0000, f"{outcome.describe()}\n{bridge.log_tail()}"
    assert sorted(outcome.received_uids) == sorted(side.uids)
    wado = [r for r in side.narrow.records() if is_wado(r.path)]
    assert [r.status for r in wado].count(429) == 1
    assert len(wado) == len(side.uids) + 1


AZURE_DUPLICATE = (
    b'{"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["%s"]},'
    b' "00081197": {"vr": "US", "Value": [45070]}}]}}'
)


def test_azure_duplicate_is_a_warning(side: Side, tmp_path: Path) -> None:
    """Azure answers a second copy with 409 and failure reason 45070: warning 0xB000 with
    a comment, never success (the server did not list it) nor a failure (the data is
    there: the modality must not resend)."""
    path = rich_implicit_file(tmp_path)
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    bridge = side.bridge("azure")
    side.narrow.fail(
        409,
        method="POST",
        count=1,
        headers={"Content-Type": "application/dicom+json"},
        body=AZURE_DUPLICATE % uid.encode(),
    )
    ae = scu("STORESCU", timeouts=(30, 60, 60))
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
    assoc = ae.associate(bridge.host, bridge.port, ae_title=bridge.ae_title)
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(dcmread(path))
    finally:
        assoc.release()
        side.narrow.clear_faults()
    assert rsp.Status == 0xB000, rsp
    assert "already present on the DICOMweb server (HTTP 409)" in rsp.ErrorComment
