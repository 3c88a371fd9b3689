"""The lean send path: its PDUs byte for byte against pynetdicom's own encoder, and its
behaviour against real pynetdicom peers over loopback.

The sender here is a prepared requestor association, as the bridge's C-MOVE
sub-association is; the C-GET side (the bridge's acceptor associations) is exercised end to
end by tests/integration/test_get_lean.py and the C-GET/C-MOVE suites.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_GET_RSP, C_STORE_RQ
from pynetdicom.dimse_primitives import C_GET, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from bridge.dimse import adapter
from bridge.dimse.fastsend import EncodedInstance, encode_store_rq, send_encoded
from bridge.dimse.pdus import fragments, parse_pdata, pdata_pdu, pdata_pdus
from tests.integration.tools import free_port

HOST = "127.0.0.1"
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
PENDING = 0xFF00

FILES = [
    "CT_small.dcm",  # Explicit VR Little Endian
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "JPEG2000.dcm",  # encapsulated
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
]
SYNTAXES = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
]


def _payload(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    with open(path, "rb") as handle:
        return handle.read()


def _stock_pdus(
    instance: EncodedInstance, context_id: int, max_pdu: int, msg_id: int, originator: Any
) -> bytes:
    """What pynetdicom puts on the wire for this C-STORE-RQ: its DIMSE message encoder, then
    one P-DATA-TF PDU per primitive (the state machine's DT-1)."""
    aet, originator_id = originator
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = 2
    req.AffectedSOPClassUID = instance.SOPClassUID
    req.AffectedSOPInstanceUID = instance.SOPInstanceUID
    req.MoveOriginatorApplicationEntityTitle = aet
    req.MoveOriginatorMessageID = originator_id
    req.DataSet = BytesIO(bytes(instance.encoded))
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    return b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(context_id, max_pdu))


def _edge_sizes(instance: EncodedInstance, command: bytes) -> list[int]:
    """Max PDU sizes at the fragmentation edges of this message: data an exact multiple of
    the fragment size, one byte over, the command set exactly one fragment, and split."""
    data = len(instance.encoded)
    divisor = next(d for d in range(4000, 1, -1) if data % d == 0)
    return [divisor + 6, divisor + 5, len(command) + 6, len(command) + 5, 40]


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("originator", [(None, None), ("MOVER", 3), ("ODDAE", 65535)])
def test_lean_pdus_equal_pynetdicoms_bytes(name: str, originator: tuple[Any, Any]) -> None:
    instance = EncodedInstance(_payload(name))
    aet, originator_id = originator
    command = encode_store_rq(
        9, 2, str(instance.SOPClassUID), str(instance.SOPInstanceUID), aet, originator_id
    )
    sizes = [0, 16384, 4096, 1000, *_edge_sizes(instance, command)]
    for max_pdu in sizes:
        for context_id in (1, 255):
            ours = b"".join(pdata_pdus(context_id, command, instance.encoded, max_pdu))
            theirs = _stock_pdus(instance, context_id, max_pdu, 9, originator)
            assert ours == theirs, (name, max_pdu, context_id)


def test_fragments_never_copy_the_data_set() -> None:
    instance = EncodedInstance(_payload("CT_small.dcm"))
    pieces = list(fragments(b"\0" * 10, instance.encoded, 1000))
    assert all(isinstance(fragment, memoryview) for _, fragment in pieces)
    assert [control for control, _ in pieces][:2] == [0x03, 0x00]
    assert pieces[-1][0] == 0x02  # last data fragment


@pytest.mark.parametrize("max_pdu", [0, 16384, 60])
@pytest.mark.parametrize("status", [PENDING, 0xB000, SUCCESS])
def test_direct_pdata_equals_pynetdicoms_pdu(max_pdu: int, status: int) -> None:
    """The pending C-GET responses ``lean_sending`` writes itself are the bytes DT-1 sends."""
    rsp = C_GET()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
    rsp.Status = status
    rsp.NumberOfRemainingSuboperations = 3 if status == PENDING else None
    rsp.NumberOfCompletedSuboperations = 4
    rsp.NumberOfFailedSuboperations = 0
    rsp.NumberOfWarningSuboperations = 1
    message = C_GET_RSP()
    message.primitive_to_message(rsp)
    primitives = list(message.encode_msg(3, max_pdu))
    assert primitives
    for primitive in primitives:
        pdvs = primitive.presentation_data_value_list
        assert pdata_pdu(pdvs) == P_DATA_TF(primitive).encode()


@pytest.mark.parametrize(
    "pdvs",
    [
        [(1, b"\x03" + b"x" * 100)],
        [(1, b"\x01abc"), (1, b"\x03defg"), (3, b"\x02" + b"\0" * 5000)],
        [(7, b"\x00")],
    ],
)
def test_parse_pdata_equals_pynetdicoms_decoder(pdvs: list[tuple[int, bytes]]) -> None:
    from pynetdicom.pdu_primitives import P_DATA

    primitive = P_DATA()
    primitive.presentation_data_value_list.extend(pdvs)
    encoded = P_DATA_TF(primitive).encode()
    decoded = P_DATA_TF()
    decoded.decode(encoded)
    expected = decoded.to_primitive().presentation_data_value_list
    assert parse_pdata(encoded[6:]) == expected == pdvs


@pytest.mark.parametrize(
    "body", [b"", b"\0\0\0\x05\x01\x03", b"\0\0\0\x01\x01", b"\0\0\0\x02\x01\x03\xff"]
)
def test_parse_pdata_leaves_odd_pdus_to_pynetdicom(body: bytes) -> None:
    assert parse_pdata(body) is None


def test_the_socket_writer_survives_partial_writes() -> None:
    """More buffers than one sendmsg takes, through a small send buffer: every byte arrives
    once, in order (the kernel cuts writes anywhere, also inside a buffer)."""
    writer, reader = socket.socketpair()
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    buffers: list[bytes | memoryview] = [bytes([i % 251]) * (i % 997 + 1) for i in range(3000)]
    buffers += [b"", memoryview(b"x" * 300_000)]
    expected = b"".join(bytes(b) for b in buffers)
    got = bytearray()

    def read() -> None:
        while len(got) < len(expected) and (chunk := reader.recv(65536)):
            got.extend(chunk)

    thread = threading.Thread(target=read)
    thread.start()
    with writer, reader:
        adapter._write(writer, buffers)
        thread.join(10)
    assert bytes(got) == expected


# --- against real pynetdicom peers ----------------------------------------------------


def _prepare(event: Any) -> None:
    adapter.prepare(event.assoc)


class StoreScp:
    """A pynetdicom Storage SCP whose C-STORE handler is `on_store`; records what it got
    on the wire (EVT_DATA_RECV: every PDU's bytes)."""

    def __init__(self, on_store: Callable[[Any], int]) -> None:
        self.port = free_port()
        self.wire: list[bytes] = []
        self.received: list[str] = []
        ae = AE(ae_title="LEANSCP")
        ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
        ae.add_supported_context(MRImageStorage, ["1.2.840.10008.1.2"])

        def handle(event: Any) -> int:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            return on_store(event)

        handlers: list[Any] = [
            (evt.EVT_C_STORE, handle),
            (evt.EVT_DATA_RECV, lambda event: self.wire.append(bytes(event.data))),
        ]
        server = ae.start_server((HOST, self.port), block=False, evt_handlers=handlers)
        assert server is not None
        self.server = server

    def associate(self, dimse_timeout: float = 5.0, max_pdu: int = 16382) -> Any:
        ae = AE(ae_title="LEANSCU")
        ae.dimse_timeout = dimse_timeout
        ae.maximum_pdu_size = max_pdu
        ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
        ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2"])
        assoc = ae.associate(
            HOST, self.port, ae_title="LEANSCP", evt_handlers=[(evt.EVT_CONN_OPEN, _prepare)]
        )
        assert assoc.is_established
        deadline = time.monotonic() + 2
        while adapter.lean_unavailable(assoc) is not None and time.monotonic() < deadline:
            time.sleep(0.001)  # the DUL's first wrapped pass
        assert adapter.lean_unavailable(assoc) is None
        return assoc


@pytest.fixture
def scp_factory() -> Iterator[Callable[[Callable[[Any], int]], StoreScp]]:
    servers: list[StoreScp] = []

    def make(on_store: Callable[[Any], int] = lambda event: SUCCESS) -> StoreScp:
        scp = StoreScp(on_store)
        servers.append(scp)
        return scp

    yield make
    for scp in servers:
        scp.server.shutdown()


def _lean_send(assoc: Any, instance: EncodedInstance, msg_id: int) -> Any:
    with adapter.reactor_paused(assoc) as held, adapter.lean_sending(assoc) as lean:
        assert held and lean
        return send_encoded(assoc, instance, msg_id=msg_id)


def _wire_messages(wire: list[bytes]) -> list[bytes]:
    """The P-DATA-TF PDUs of what the SCP received (the association's own PDUs dropped)."""
    return [pdu for pdu in wire if pdu[:1] == b"\x04"]


def test_on_the_wire_the_lean_path_sends_pynetdicoms_bytes(
    scp_factory: Callable[..., StoreScp],
) -> None:
    payload = _payload("CT_small.dcm")
    instance = EncodedInstance(payload)
    lean_scp, stock_scp = scp_factory(), scp_factory()
    lean, stock = lean_scp.associate(), stock_scp.associate()
    try:
        for msg_id in (1, 2):
            assert int(_lean_send(lean, instance, msg_id).Status) == SUCCESS
            with adapter.reactor_paused(stock):
                status = stock.send_c_store(dcmread(BytesIO(payload)), msg_id=msg_id)
            assert int(status.Status) == SUCCESS
    finally:
        lean.release()
        stock.release()
    ours, theirs = _wire_messages(lean_scp.wire), _wire_messages(stock_scp.wire)
    assert len(ours) > 4  # fragmented: a command PDU and several data PDUs per message
    assert ours == theirs
    assert lean_scp.received == [str(instance.SOPInstanceUID)] * 2
    assert lean.is_released and not lean.is_aborted


def test_a_failure_status_from_the_peer_is_returned_and_the_association_stays(
    scp_factory: Callable[..., StoreScp],
) -> None:
    answers = iter([OUT_OF_RESOURCES, SUCCESS])
    scp = scp_factory(lambda event: next(answers))
    assoc = scp.associate()
    instance = EncodedInstance(_payload("CT_small.dcm"))
    try:
        assert int(_lean_send(assoc, instance, 1).Status) == OUT_OF_RESOURCES
        assert assoc.is_established
        assert int(_lean_send(assoc, instance, 2).Status) == SUCCESS
    finally:
        assoc.release()
    assert assoc.is_released


def test_the_dimse_timeout_aborts_when_the_peer_never_answers(
    scp_factory: Callable[..., StoreScp],
) -> None:
    release = threading.Event()

    def never_answer(event: Any) -> int:
        release.wait(10)  # well past the sender's DIMSE timeout
        return SUCCESS

    scp = scp_factory(never_answer)
    assoc = scp.associate(dimse_timeout=0.5)
    try:
        status = _lean_send(assoc, EncodedInstance(_payload("CT_small.dcm")), 1)
    finally:
        release.set()
    assert "Status" not in status  # no response: pynetdicom's empty status
    # pynetdicom's reaction to a DIMSE timeout: the sender aborts the association.
    assert assoc.is_aborted and not assoc.is_established
    assoc.join(5)
    assert not assoc.is_alive()
    assert scp.received == [str(EncodedInstance(_payload("CT_small.dcm")).SOPInstanceUID)]


def test_an_abort_by_the_peer_mid_transfer_ends_the_association_once(
    scp_factory: Callable[..., StoreScp],
) -> None:
    aborted: list[Any] = []

    def abort_on_second(event: Any) -> int:
        if len(aborted) == 0 and len(scp.received) == 2:
            aborted.append(event.assoc)
            event.assoc.abort()  # from its handler: before any C-STORE-RSP goes out
        return SUCCESS

    scp = scp_factory(abort_on_second)
    assoc = scp.associate(dimse_timeout=30)
    instance = EncodedInstance(_payload("MR_small_implicit.dcm"))
    assert int(_lean_send(assoc, instance, 1).Status) == SUCCESS
    started = time.monotonic()
    status = _lean_send(assoc, instance, 2)
    assert "Status" not in status
    # The A-ABORT went back to pynetdicom's state machine, which ended the association
    # (not the 30 s DIMSE timeout), and the sender did not abort it a second time.
    assert time.monotonic() - started < 10
    assert assoc.is_aborted and not assoc.is_established
    assert not assoc._sent_abort
    assoc.join(5)
    assert not assoc.is_alive()


def test_the_dul_keeps_its_turns_between_exchanges(scp_factory: Callable[..., StoreScp]) -> None:
    """Each PDU the lean path reads restarts the idle timer as the DUL's reads do, the
    retrieve's direct P-DATA hook is undone after it, and the DUL then releases as ever."""
    scp = scp_factory()
    assoc = scp.associate()
    instance = EncodedInstance(_payload("CT_small.dcm"))
    timer = assoc.dul._idle_timer
    for msg_id in range(1, 4):
        before = timer._start_time
        assert int(_lean_send(assoc, instance, msg_id).Status) == SUCCESS
        assert timer._start_time is not None and timer._start_time != before
    assert "send_pdu" not in vars(assoc.dul)  # lean_sending undone
    # An idle DUL pass takes no lock (so the bridge never waits for a DUL thread that is
    # itself waiting for the GIL): with the lock held, the DUL keeps looping.
    dul = assoc.dul
    turns = dul._bridge_turns
    passes = [0]
    wrapped = dul._process_recv_primitive

    def counting() -> bool:
        passes[0] += 1
        return bool(wrapped())

    dul._process_recv_primitive = counting
    with turns.lock:
        time.sleep(0.2)  # ~200 passes of an idle DUL (it sleeps 1 ms between them)
    dul._process_recv_primitive = wrapped
    assert passes[0] > 20
    assoc.release()
    assert assoc.is_released and not assoc.is_aborted


class FreezingRelay:
    """A TCP relay between the sender and an SCP that can go silent: once frozen it
    forwards nothing either way and never closes, like a peer that hangs."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        self.frozen = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection((HOST, self.target_port))
        self.sockets += [client, upstream]
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if self.frozen.is_set():
                    continue  # swallowed
                sink.sendall(chunk)

    def close(self) -> None:
        for sock in [self.listener, *self.sockets]:
            sock.close()


def test_the_dimse_timeout_ends_an_association_whose_peer_hangs(
    scp_factory: Callable[..., StoreScp],
) -> None:
    """The peer stops reading and answering, and never closes: the lean exchange gives up
    after the DIMSE timeout, and pynetdicom's state machine takes it from there (A-ABORT,
    Sta13, the connection closed, Sta1) with the socket back in the DUL's hands. ARTIM
    itself runs only in Sta2 and Sta13, where the lean path never exchanges (it checks for
    Sta6); between exchanges the DUL checks it on every pass as before."""
    scp = scp_factory()
    relay = FreezingRelay(scp.port)
    ae = AE(ae_title="LEANSCU")
    ae.dimse_timeout = 0.5
    ae.acse_timeout = 1.0
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate(
        HOST, relay.port, ae_title="LEANSCP", evt_handlers=[(evt.EVT_CONN_OPEN, _prepare)]
    )
    try:
        assert assoc.is_established
        instance = EncodedInstance(_payload("CT_small.dcm"))
        assert int(_lean_send(assoc, instance, 1).Status) == SUCCESS
        relay.frozen.set()
        status = _lean_send(assoc, instance, 2)
        assert "Status" not in status
        # abort() returned: the A-ABORT went out and the DUL closed the connection.
        assert assoc.is_aborted and not assoc.is_established
        assoc.dul.join(10)
        assert not assoc.dul.is_alive()
        assert assoc.dul.state_machine.current_state == "Sta1"
    finally:
        relay.close()


def test_dicom_tls_and_an_unpinned_pynetdicom_keep_the_dul_path(
    scp_factory: Callable[..., StoreScp], monkeypatch: pytest.MonkeyPatch
) -> None:
    scp = scp_factory()
    assoc = scp.associate()
    transport = assoc.dul.socket
    plain = transport.socket
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    with socket.socket() as raw, context.wrap_socket(raw, do_handshake_on_connect=False) as tls:
        transport.socket = tls  # what a DICOM TLS association's transport holds
        try:
            assert adapter.lean_unavailable(assoc) == "DICOM TLS"
            with adapter.lean_sending(assoc) as lean:
                assert not lean and "send_pdu" not in vars(assoc.dul)
        finally:
            transport.socket = plain
    assert adapter.lean_unavailable(assoc) is None
    monkeypatch.setattr(adapter, "PYNETDICOM_PINNED", False)
    assert "outside the pinned range" in str(adapter.lean_unavailable(assoc))
    monkeypatch.undo()
    # The encoded path through the DUL still works on such an association.
    with adapter.reactor_paused(assoc):
        monkeypatch.setattr(adapter, "lean_unavailable", lambda a: "off")
        status = send_encoded(assoc, EncodedInstance(_payload("CT_small.dcm")), msg_id=1)
    assert int(status.Status) == SUCCESS
    assoc.release()
    assert assoc.is_released


@pytest.mark.parametrize(
    ("text", "pinned"), [("3.0.4", True), ("3.0.10", True), ("3.0.3", False), ("3.1.0", False)]
)
def test_the_pinned_range(text: str, pinned: bool) -> None:
    low, high = adapter.PINNED
    assert (low <= adapter._version(text) < high) is pinned


def test_the_adapters_range_is_the_one_pinned_in_pyproject() -> None:
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pins = [d for d in project["project"]["dependencies"] if d.startswith("pynetdicom")]
    low, high = adapter.PINNED
    dotted = ".".join
    assert pins == [f"pynetdicom>={dotted(map(str, low))},<{dotted(map(str, high))}"]
