"""C-STORE through the bridge to STOW-RS: dcmtk storescu and pynetdicom SCUs, a real Orthanc.

    storescu / pynetdicom SCU --C-STORE--> bridge --STOW-RS--> (FaultProxy -->) Orthanc

One private Orthanc (empty at the start) serves the module, with two bridges in front:
``direct`` talks to Orthanc itself (the test that stops Orthanc uses it, so the bridge
sees a refused connection, not a proxy's 502), ``proxied`` talks through a FaultProxy
that passes everything through unless a test injects an answer.

What "unchanged" means here: the bridge must not re-encode, so the data set Orthanc stores
(its file, ``GET /instances/{id}/file``, read over REST independently of the bridge) must
be the very bytes the SCU put on the wire. The comparison is of the encoded data set after
the File Meta group: Orthanc is free to write its own File Meta (implementation UID and
version name, source AE title), and does. The SCUs are set up so that what they send is
the data set part of the file they were given, unchanged: each file goes on a presentation
context of its own transfer syntax (storescu ``-x?`` per file; pynetdicom proposing only
Explicit VR Little Endian for files in it), so no SCU converts anything on the way.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)

from tests.conftest import require_orthanc
from tests.faults.proxy import FaultProxy, RequestRecord
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.dataset import make_ct_series, make_instance, to_bytes
from tests.integration.orthanc import OrthancServer
from tests.integration.tools import free_port, run_dcmtk
from tests.scu import c_echo as scu_c_echo

pytestmark = pytest.mark.integration

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
IDENTIFIER_MISMATCH = 0xA900
COERCION_WARNING = 0xB000

STOW_PATH = "/dicom-web/studies"
DATASET_TRAILING_PADDING = 0xFFFCFFFC


# --------------------------------------------------------------------------- helpers


def after_meta(part10: bytes) -> bytes:
    """The encoded data set of a Part 10 file: everything after preamble and File Meta."""
    assert part10[128:132] == b"DICM", "not a Part 10 file"
    group, element, vr, length, value = struct.unpack("<HH2sHI", part10[132:144])
    assert (group, element, vr, length) == (2, 0, b"UL", 4), "no File Meta group length"
    return part10[144 + value :]


def orthanc_has(server: OrthancServer, sop_instance_uid: str) -> bool:
    """Whether Orthanc holds the instance (``POST /tools/lookup``, no bridge involved)."""
    response = server.client.post("/tools/lookup", content=sop_instance_uid.encode())
    assert response.status_code == 200, response.text
    return any(m.get("Type") == "Instance" for m in response.json())


def syntax_of(part10: bytes) -> str:
    return str(dcmread(BytesIO(part10), stop_before_pixels=True).file_meta.TransferSyntaxUID)


def generated(key: str, n: int = 1) -> list[Dataset]:
    """`n` new CT instances (explicit VR LE) of a study of their own, unique per `key`."""
    return make_ct_series(n, key=f"store-{key}", patient_id=f"STORE-{key}"[:16])


def write(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(to_bytes(ds))
        paths.append(path)
    return paths


@dataclass
class StoreResult:
    status: int
    comment: str
    response: Dataset


def c_store(
    bridge: BridgeProcess,
    datasets: Sequence[Dataset],
    *,
    calling: str = "STORESCU",
    syntaxes: Sequence[str] = (ExplicitVRLittleEndian,),
) -> list[StoreResult]:
    """Store `datasets` on one association as a pynetdicom SCU; one result per data set."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(sop_class, list(syntaxes))
    assoc = ae.associate(bridge.host, bridge.port, ae_title=bridge.ae_title)
    assert assoc.is_established, f"association refused; bridge log:\n{bridge.log_tail()}"
    results = []
    try:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            assert "Status" in rsp, f"no C-STORE response; bridge log:\n{bridge.log_tail()}"
            results.append(StoreResult(int(rsp.Status), str(rsp.get("ErrorComment", "")), rsp))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def c_echo(bridge: BridgeProcess) -> int:
    return scu_c_echo((bridge.host, bridge.port, bridge.ae_title), "ECHOSCU")


class WireTap:
    """A TCP relay in front of the bridge that keeps every byte the SCU sends, and finds
    in them the data set of each C-STORE: the P-DATA-TF PDVs whose message control header
    says "data set" (PS3.8 9.3.5, E.2), concatenated per message, in order."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.streams: list[bytearray] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            recorded = bytearray()
            with self._lock:
                self.streams.append(recorded)
            for src, dst, keep in ((client, upstream, recorded), (upstream, client, None)):
                thread = threading.Thread(target=self._pump, args=(src, dst, keep), daemon=True)
                thread.start()
                self._threads.append(thread)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, keep: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if keep is not None:
                    keep += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        for thread in self._threads:
            thread.join(10)

    def datasets(self) -> list[bytes]:
        """The encoded data set of every DIMSE message the SCU sent with one."""
        found: list[bytes] = []
        with self._lock:
            streams = [bytes(s) for s in self.streams]
        for stream in streams:
            current = bytearray()
            offset = 0
            while offset + 6 <= len(stream):
                pdu_type = stream[offset]
                (length,) = struct.unpack(">I", stream[offset + 2 : offset + 6])
                body = stream[offset + 6 : offset + 6 + length]
                offset += 6 + length
                if pdu_type != 0x04:  # not P-DATA-TF
                    continue
                pos = 0
                while pos + 4 <= len(body):
                    (item_length,) = struct.unpack(">I", body[pos : pos + 4])
                    control = body[pos + 5]
                    fragment = body[pos + 6 : pos + 4 + item_length]
                    pos += 4 + item_length
                    if control & 0x01:  # command, not data set
                        continue
                    current += fragment
                    if control & 0x02:  # last fragment
                        found.append(bytes(current))
                        current = bytearray()
        return found


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class StoreSide:
    server: OrthancServer
    proxy: FaultProxy
    direct: BridgeProcess
    proxied: BridgeProcess
    workdir: Path


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSide]:
    require_orthanc()
    workdir = tmp_path_factory.mktemp("store")
    server = OrthancServer(workdir / "orthanc").start()
    proxy: FaultProxy | None = None
    bridges: list[BridgeProcess] = []
    try:
        proxy = FaultProxy(server.http_url).start()
        # No STOW-RS retry on a refused connection (the default retries it 4 times with
        # backoff): the Orthanc-down test stores several files and should not wait.
        direct = start_bridge(
            bridge_config(server.dicomweb_url, free_port(), dicomweb={"max_retries": 0}),
            workdir,
            name="store-direct",
        )
        bridges.append(direct)
        proxied = start_bridge(
            bridge_config(proxy.url + "/dicom-web", free_port()), workdir, name="store-proxied"
        )
        bridges.append(proxied)
        yield StoreSide(server, proxy, direct, proxied, workdir)
    finally:
        for bridge in bridges:
            bridge.stop()
        if proxy is not None:
            proxy.stop()
        server.stop()


@pytest.fixture
def proxy(side: StoreSide) -> Iterator[FaultProxy]:
    side.proxy.clear_faults()
    side.proxy.clear()
    yield side.proxy
    side.proxy.clear_faults()


# --------------------------------------------------------------------------- storescu


@dataclass(frozen=True)
class SourceFile:
    name: str
    path: Path
    syntax: str
    sop_class: str
    sop_uid: str
    flag: str | None  # storescu proposal option that puts `syntax` in a context of its own


# pydicom test file, its transfer syntax, the storescu option proposing it. All have
# distinct SOP Instance UIDs (MR_small's other variants and SC_rgb_jpeg_gdcm share theirs
# with files below, so they are not used).
STORESCU_SOURCES: tuple[tuple[str, str, str | None], ...] = (
    ("CT_small.dcm", ExplicitVRLittleEndian, None),  # default: Explicit LE in its own context
    ("MR_small_implicit.dcm", ImplicitVRLittleEndian, "-xi"),
    ("JPEG2000.dcm", JPEG2000, "-xw"),  # Secondary Capture, JPEG 2000 (lossy)
    ("SC_rgb_rle.dcm", RLELossless, "-xr"),
    ("SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit, "-xy"),
    ("JPEG-lossy.dcm", JPEGExtended12Bit, "-xx"),
)


@pytest.fixture(scope="module")
def source_files(tmp_path_factory: pytest.TempPathFactory) -> list[SourceFile]:
    """The pydicom test files above, unmodified, and a generated uncompressed Secondary
    Capture instance."""
    files: list[SourceFile] = []
    for filename, syntax, flag in STORESCU_SOURCES:
        found = get_testdata_file(filename)
        if found is None:
            pytest.skip(f"pydicom test file {filename} is not available")
        path = Path(found)
        ds = dcmread(path, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == syntax, filename
        files.append(
            SourceFile(filename, path, syntax, str(ds.SOPClassUID), str(ds.SOPInstanceUID), flag)
        )
    study = generate_uid(entropy_srcs=["store", "sc", "study"])
    series = generate_uid(entropy_srcs=["store", "sc", "series"])
    sc = make_instance(
        patient_id="STORESC",
        patient_name="STORE^SC",
        birth_date="19800101",
        sex="O",
        charset=None,
        study_uid=study,
        study_date="20240501",
        study_time="120000",
        accession="ACCSTORE1",
        study_description="SC STORE",
        referring="",
        study_id="1",
        series_uid=series,
        series_number=1,
        series_description="SC",
        modality="OT",
        frame_of_reference_uid=generate_uid(entropy_srcs=["store", "sc", "frame"]),
        sop_instance_uid=generate_uid(entropy_srcs=["store", "sc", "instance"]),
        instance_number=1,
    )
    path = write([sc], tmp_path_factory.mktemp("store-sc"))[0]
    files.append(
        SourceFile(
            "generated-SC",
            path,
            ExplicitVRLittleEndian,
            SecondaryCaptureImageStorage,
            str(sc.SOPInstanceUID),
            None,
        )
    )
    assert len({f.sop_uid for f in files}) == len(files), "SOP Instance UIDs must be distinct"
    assert {f.sop_class for f in files} >= {
        CTImageStorage,
        MRImageStorage,
        SecondaryCaptureImageStorage,
    }
    return files


def storescu(
    bridge: BridgeProcess,
    paths: Sequence[Path],
    flag: str | None,
    *extra: str,
    port: int | None = None,
) -> tuple[int, str]:
    """Run dcmtk's storescu -v against the bridge (or `port`, e.g. a WireTap in front)."""
    args: list[str] = ["-v", "-aet", "STORESCU", "-aec", bridge.ae_title, *extra]
    if flag:
        args.append(flag)
    port = bridge.port if port is None else port
    result = run_dcmtk("storescu", *args, bridge.host, str(port), *paths, timeout=120)
    return result.returncode, result.stdout + result.stderr


def store_responses(log: str) -> list[str]:
    """storescu -v: the text of every "Received Store Response (...)" line."""
    return [
        line.split("Received Store Response", 1)[1].strip().strip("()")
        for line in log.splitlines()
        if "Received Store Response" in line
    ]


def test_storescu_files_reach_orthanc_byte_identical(
    side: StoreSide, source_files: list[SourceFile]
) -> None:
    """Seven files (CT explicit LE, MR implicit LE, Secondary Capture explicit LE, JPEG
    2000, RLE, JPEG baseline, JPEG extended), each sent by storescu on a context of its own
    transfer syntax. Orthanc then holds each in that syntax, with a data set byte-identical
    to the one storescu put on the wire (captured by a TCP relay between storescu and the
    bridge), and element for element equal to the file's.

    The wire bytes, not the files' own bytes, are the reference: storescu re-encodes as
    DCMTK does (explicit sequence and item lengths; no (FFFC,FFFC) trailing padding, which
    CT_small.dcm has), so for three of the files the file's encoding is not what was sent.
    """
    tap = WireTap(side.direct.host, side.direct.port)
    try:
        for source in source_files:
            code, log = storescu(side.direct, [source.path], source.flag, port=tap.port)
            assert code == 0, f"{source.name}:\n{log[-3000:]}"
            assert store_responses(log) == ["Success"], f"{source.name}:\n{log[-3000:]}"
    finally:
        tap.close()
    sent = tap.datasets()
    assert len(sent) == len(source_files), "one data set per C-STORE"
    for source, wire in zip(source_files, sent, strict=True):
        assert orthanc_has(side.server, source.sop_uid), source.name
        stored = side.server.instance_file(source.sop_uid)
        assert syntax_of(stored) == source.syntax, source.name
        assert after_meta(stored) == wire, source.name
        original = dcmread(source.path)
        received = dcmread(BytesIO(stored))
        assert received.PixelData == original.PixelData, source.name
        differences = [
            str(elem.tag)
            for elem in original
            if elem.tag != DATASET_TRAILING_PADDING
            and (elem.tag not in received or received[elem.tag] != elem)
        ]
        assert not differences, (source.name, differences)


def test_pynetdicom_store_of_a_generated_dataset(side: StoreSide) -> None:
    (ds,) = generated("single")
    assert not orthanc_has(side.server, ds.SOPInstanceUID)
    (result,) = c_store(side.direct, [ds])
    assert result.status == SUCCESS, result.response
    assert orthanc_has(side.server, ds.SOPInstanceUID)
    # pynetdicom sends the data set as pydicom encodes it in Explicit VR LE: to_bytes() too.
    stored = side.server.instance_file(ds.SOPInstanceUID)
    assert after_meta(stored) == after_meta(to_bytes(ds))


def test_concurrent_associations_all_stored(side: StoreSide) -> None:
    """4 associations at once, 10 distinct instances each: 40 x 0x0000, 40 in Orthanc."""
    batches = [generated(f"concurrent-{n}", 10) for n in range(4)]
    results: dict[int, list[StoreResult]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(batches))

    def run(index: int) -> None:
        try:
            barrier.wait(10)
            results[index] = c_store(side.direct, batches[index], calling=f"STORESCU{index}")
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2, 3]
    statuses = [r.status for index in sorted(results) for r in results[index]]
    assert statuses == [SUCCESS] * 40, statuses
    uids = [str(ds.SOPInstanceUID) for batch in batches for ds in batch]
    assert len(set(uids)) == 40
    missing = [uid for uid in uids if not orthanc_has(side.server, uid)]
    assert not missing, f"{len(missing)} of 40 not in Orthanc"


# --------------------------------------------------------------------------- Orthanc down


def test_orthanc_stopped_every_store_fails_and_bridge_stays_up(side: StoreSide) -> None:
    """With Orthanc stopped: storescu gets a failure status for every file, a pynetdicom
    SCU gets 0xA700 with an ErrorComment, the bridge still answers C-ECHO, and after
    Orthanc is back none of those instances is there, and the bridge stores again (after
    the circuit breaker's cool-down)."""
    datasets = generated("down", 4)
    paths = write(datasets[:3], side.workdir / "down")
    server = side.server
    server.stop()
    try:
        started = time.monotonic()
        _, log = storescu(side.direct, paths, None, "-nh")
        responses = store_responses(log)
        assert len(responses) == len(paths), log[-3000:]
        assert all("Success" not in r for r in responses), responses
        assert all(r.startswith(("Refused", "Failed", "Error")) for r in responses), responses
        # (storescu -nh exits 0 whatever the store statuses: its log is what tells.)
        (result,) = c_store(side.direct, datasets[3:])
        assert result.status == OUT_OF_RESOURCES, result.response
        assert result.comment, "no ErrorComment"
        assert "unreachable" in result.comment or "connect" in result.comment, result.comment
        assert time.monotonic() - started < 30
        assert side.direct.running
        assert c_echo(side.direct) == SUCCESS
    finally:
        server.start()
    for ds in datasets:
        assert not orthanc_has(server, ds.SOPInstanceUID), ds.SOPInstanceUID
    # ...and once Orthanc is back the same bridge stores again: at once, or, if the
    # refused STOW-RS requests opened its circuit breaker, once the breaker's cool-down
    # (dicomweb.breaker_cooldown, 5 s) lets a probe through. Until then a C-STORE fails
    # at once, without asking the server.
    deadline = time.monotonic() + 5.0 + 5.0
    while True:
        (again,) = c_store(side.direct, datasets[:1])
        if again.status == SUCCESS or time.monotonic() > deadline:
            break
        assert again.status == OUT_OF_RESOURCES, again.response
        time.sleep(0.5)
    assert again.status == SUCCESS, again.response
    assert orthanc_has(server, datasets[0].SOPInstanceUID)


# --------------------------------------------------------------------------- STOW-RS answers


def _is_stow(path: str) -> bool:
    return path.split("?", 1)[0] == STOW_PATH


def _stow_records(proxy: FaultProxy) -> list[RequestRecord]:
    return [r for r in proxy.records() if r.method == "POST" and _is_stow(r.path)]


def _reference_item(ds: Dataset, reason_tag: str | None, reason: int | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
        "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
    }
    if reason_tag is not None:
        item[reason_tag] = {"vr": "US", "Value": [reason]}
    return item


def _stow_json(
    ds: Dataset, *, stored: bool, reason_tag: str | None = None, reason: int | None = None
) -> bytes:
    """A PS3.18 Store Instances Response naming `ds` as stored or failed."""
    sequence = "00081199" if stored else "00081198"  # Referenced / Failed SOP Sequence
    body = {
        "00081190": {"vr": "UR", "Value": ["http://example.invalid/dicom-web/studies/1"]},
        sequence: {"vr": "SQ", "Value": [_reference_item(ds, reason_tag, reason)]},
    }
    return json.dumps(body).encode()


DICOM_JSON = {"Content-Type": "application/dicom+json"}


def _answer(proxy: FaultProxy, status: int, body: bytes | None = None) -> None:
    """The next STOW-RS POST is answered `status` (+ `body`, DICOM JSON) by the proxy,
    without reaching Orthanc."""
    proxy.fail(
        status,
        path_filter=_is_stow,
        method="POST",
        count=1,
        headers=DICOM_JSON if body is not None else None,
        body=body,
    )


def _store_one(side: StoreSide, key: str) -> tuple[Dataset, StoreResult]:
    (ds,) = generated(key)
    (result,) = c_store(side.proxied, [ds])
    return ds, result


def test_stow_503_is_out_of_resources(side: StoreSide, proxy: FaultProxy) -> None:
    _answer(proxy, 503)
    ds, result = _store_one(side, "stow-503")
    assert result.status == OUT_OF_RESOURCES, result.response
    assert "503" in result.comment, result.comment
    # STOW-RS is not idempotent: a request that reached the server is not sent again.
    assert len(_stow_records(proxy)) == 1
    assert not orthanc_has(side.server, ds.SOPInstanceUID)


def test_stow_400_is_unable_to_process_with_comment(side: StoreSide, proxy: FaultProxy) -> None:
    _answer(proxy, 400)
    ds, result = _store_one(side, "stow-400")
    assert 0xC000 <= result.status <= 0xCFFF, hex(result.status)
    assert result.comment and "400" in result.comment, result.comment
    assert not orthanc_has(side.server, ds.SOPInstanceUID)


def test_stow_409_is_warning_already_present(side: StoreSide, proxy: FaultProxy) -> None:
    _answer(proxy, 409)
    _, result = _store_one(side, "stow-409")
    assert result.status == COERCION_WARNING, result.response
    assert "already present" in result.comment, result.comment


def test_stow_200_listing_it_failed_a900_is_a900(side: StoreSide, proxy: FaultProxy) -> None:
    (ds,) = generated("stow-200-failed")
    body = _stow_json(ds, stored=False, reason_tag="00081197", reason=0xA900)
    _answer(proxy, 200, body)
    (result,) = c_store(side.proxied, [ds])
    assert result.status == IDENTIFIER_MISMATCH, result.response
    assert result.comment, "no ErrorComment"
    assert len(_stow_records(proxy)) == 1


def test_stow_202_listing_it_stored_with_warning_is_b000(
    side: StoreSide, proxy: FaultProxy
) -> None:
    (ds,) = generated("stow-202-warning")
    body = _stow_json(ds, stored=True, reason_tag="00081196", reason=0xB000)
    _answer(proxy, 202, body)
    (result,) = c_store(side.proxied, [ds])
    assert result.status == COERCION_WARNING, result.response
    assert "0xB000" in result.comment or "B000" in result.comment.upper(), result.comment


def test_stow_through_the_proxy_untouched_is_success(side: StoreSide, proxy: FaultProxy) -> None:
    """Control: the same path without an injected answer stores for real."""
    ds, result = _store_one(side, "stow-pass")
    assert result.status == SUCCESS, result.response
    assert orthanc_has(side.server, ds.SOPInstanceUID)
    (record,) = _stow_records(proxy)
    assert record.status == 200
