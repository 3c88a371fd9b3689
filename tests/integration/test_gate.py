"""Association policy: the calling-AE allow-list, the association limit, TCP_NODELAY, C-ECHO.

The allow-list and the limit are checked with dcmtk's echoscu and with pynetdicom, whose
association object exposes the A-ASSOCIATE-RJ fields (result, source, reason/diag.).
TCP_NODELAY is read from the bridge's own end of an association socket: the test process
duplicates that descriptor out of the bridge process (pidfd_getfd(2), Linux >= 5.6, allowed
because the bridge is our child) and asks getsockopt().
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from tests.conftest import OrthancFixture
from tests.integration.bridge_runner import BridgeProcess, bridge_config
from tests.integration.tools import describe, free_port, run_dcmtk

pytestmark = pytest.mark.integration

BRIDGE_AET = "DIMSE_BRIDGE"
# A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 permanent / 2 transient; source 1 service user,
# 3 service provider (presentation); reason 3 calling AE title not recognised (source 1),
# 2 local limit exceeded (source 3).
REJECTED_PERMANENT, REJECTED_TRANSIENT = 1, 2
SOURCE_USER, SOURCE_PROVIDER_PRESENTATION = 1, 3
REASON_CALLING_AET_NOT_RECOGNISED, REASON_LOCAL_LIMIT_EXCEEDED = 3, 2


def associate(port: int, calling: str, source: str | None = None) -> Association:
    """An association from `calling`, from the loopback address `source` when given."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    bind = (source, 0) if source else ("", 0)
    # A rejection is expected in some tests: keep pynetdicom's error log quiet about it.
    return ae.associate("127.0.0.1", port, ae_title=BRIDGE_AET, bind_address=bind)


def reject_fields(assoc: Association) -> tuple[int, int, int]:
    rsp = assoc.acceptor.primitive
    assert rsp is not None  # the A-ASSOCIATE response was received
    result, source, diagnostic = rsp.result, rsp.result_source, rsp.diagnostic
    assert result is not None and source is not None and diagnostic is not None
    return (int(result), int(source), int(diagnostic))


def echoscu(port: int, calling: str) -> tuple[int, str]:
    args = ["-v", "-aet", calling, "-aec", BRIDGE_AET, "127.0.0.1", str(port)]
    result = run_dcmtk("echoscu", *args, timeout=30)
    return result.returncode, describe(["echoscu", *args], result)


@pytest.fixture
def gated(bridge_process: Callable[..., BridgeProcess], orthanc: OrthancFixture) -> BridgeProcess:
    """A bridge that admits only the peer FINDSCU."""
    return bridge_process(
        bridge_config(
            orthanc.dicomweb_url,
            free_port(),
            accept_unknown_peers=False,
            peers=[("FINDSCU", "127.0.0.1", 104)],
        )
    )


def test_known_peer_is_accepted_by_the_allow_list(gated: BridgeProcess) -> None:
    code, output = echoscu(gated.port, "FINDSCU")
    assert code == 0, output
    assoc = associate(gated.port, "FINDSCU")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_unknown_peer_is_rejected_calling_aet_not_recognised(gated: BridgeProcess) -> None:
    code, output = echoscu(gated.port, "STRANGER")
    assert code != 0, output
    assert "Association Rejected" in output, output
    assert "Calling AE Title Not Recognized" in output, output

    assoc = associate(gated.port, "STRANGER")
    assert assoc.is_rejected and not assoc.is_established
    result, source, reason = reject_fields(assoc)
    assert result in (REJECTED_PERMANENT, REJECTED_TRANSIENT)
    assert (source, reason) == (SOURCE_USER, REASON_CALLING_AET_NOT_RECOGNISED)
    # The rejection is logged with its reason, and the bridge keeps serving the known peer.
    assert (
        "association from STRANGER (127.0.0.1) rejected: calling AE title not recognised"
        in gated.log_text()
    )
    code, output = echoscu(gated.port, "FINDSCU")
    assert code == 0, output


def test_unknown_peer_is_accepted_when_unknown_peers_allowed(
    bridge_process: Callable[..., BridgeProcess], orthanc: OrthancFixture
) -> None:
    open_bridge = bridge_process(
        bridge_config(
            orthanc.dicomweb_url,
            free_port(),
            accept_unknown_peers=True,
            peers=[("FINDSCU", "127.0.0.1", 104)],
        )
    )
    code, output = echoscu(open_bridge.port, "STRANGER")
    assert code == 0, output
    assoc = associate(open_bridge.port, "STRANGER")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


@pytest.fixture
def held() -> Iterator[list[Association]]:
    """Associations a test holds open; released (or aborted) at the end whatever happens."""
    associations: list[Association] = []
    yield associations
    for assoc in associations:
        if assoc.is_established:
            assoc.release()


def test_max_associations_rejects_the_one_too_many(
    bridge_process: Callable[..., BridgeProcess],
    orthanc: OrthancFixture,
    held: list[Association],
) -> None:
    limited = bridge_process(bridge_config(orthanc.dicomweb_url, free_port(), max_associations=2))
    for calling in ("PYNETDICOM", "ECHOSCU"):
        assoc = associate(limited.port, calling)
        held.append(assoc)
        assert assoc.is_established
    third = associate(limited.port, "GETSCU")
    assert third.is_rejected and not third.is_established
    assert reject_fields(third) == (
        REJECTED_TRANSIENT,
        SOURCE_PROVIDER_PRESENTATION,
        REASON_LOCAL_LIMIT_EXCEEDED,
    )
    assert (
        "association from GETSCU (127.0.0.1) rejected: too many associations "
        "(dimse.max_associations = 2)" in limited.log_text()
    )
    # The two held ones still work.
    assert all(a.send_c_echo().Status == 0x0000 for a in held)

    held[0].release()
    deadline = time.monotonic() + 5
    while True:  # the acceptor thread of the released association ends asynchronously
        again = associate(limited.port, "GETSCU")
        if again.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert again.is_established, "no association accepted after one was released"
    held.append(again)
    assert again.send_c_echo().Status == 0x0000


@pytest.fixture
def host_checked(
    bridge_process: Callable[..., BridgeProcess], orthanc: OrthancFixture
) -> BridgeProcess:
    """A bridge that checks peer hosts: CT1 lives at 127.0.0.2, WS1 at "localhost"; any
    other AE title may associate from anywhere (accept_unknown_peers stays true)."""
    return bridge_process(
        bridge_config(
            orthanc.dicomweb_url,
            free_port(),
            dimse__check_peer_host=True,
            peers=[("CT1", "127.0.0.2", 104), ("WS1", "localhost", 104)],
        )
    )


def test_check_peer_host_accepts_a_listed_ae_title_from_its_host(
    host_checked: BridgeProcess,
) -> None:
    assoc = associate(host_checked.port, "CT1", source="127.0.0.2")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    # A host name is resolved: dcmtk's echoscu calls from 127.0.0.1, which is localhost.
    code, output = echoscu(host_checked.port, "WS1")
    assert code == 0, output


def test_check_peer_host_rejects_a_listed_ae_title_from_another_host(
    host_checked: BridgeProcess,
) -> None:
    code, output = echoscu(host_checked.port, "CT1")  # from 127.0.0.1, not 127.0.0.2
    assert code != 0, output
    assert "Calling AE Title Not Recognized" in output, output
    assoc = associate(host_checked.port, "CT1", source="127.0.0.3")
    assert assoc.is_rejected and not assoc.is_established
    assert reject_fields(assoc) == (
        REJECTED_PERMANENT,
        SOURCE_USER,
        REASON_CALLING_AET_NOT_RECOGNISED,
    )
    log = host_checked.log_text()
    assert (
        "association from CT1 (127.0.0.3) rejected: host mismatch: CT1 is configured at "
        "127.0.0.2, not 127.0.0.3" in log
    ), host_checked.log_tail()
    assert "association from CT1 (127.0.0.1) rejected: host mismatch" in log
    # An AE title not in [[peers]] is not host-checked, and the bridge keeps serving.
    code, output = echoscu(host_checked.port, "STRANGER")
    assert code == 0, output
    again = associate(host_checked.port, "CT1", source="127.0.0.2")
    assert again.is_established
    again.release()


def test_without_check_peer_host_the_host_is_not_checked(gated: BridgeProcess) -> None:
    """The default (today's behaviour): FINDSCU is listed at 127.0.0.1 but accepted from
    127.0.0.2 as well."""
    assoc = associate(gated.port, "FINDSCU", source="127.0.0.2")
    assert assoc.is_established
    assoc.release()


def test_c_echo_is_success(gated: BridgeProcess) -> None:
    assoc = associate(gated.port, "FINDSCU")
    assert assoc.is_established
    try:
        status = assoc.send_c_echo()
        assert status.Status == 0x0000
        assert "ErrorComment" not in status
    finally:
        assoc.release()


# --------------------------------------------------------------------------- TCP_NODELAY

_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture


def _socket_inode(pid: int, fd: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def _peer_fd(pid: int, local: tuple[str, int]) -> int:
    """The descriptor number, in process `pid`, of the TCP socket whose remote end is
    `local` (our end of the association), found through /proc/net/tcp inodes."""
    ip, port = local
    wanted = f"{int.from_bytes(socket.inet_aton(ip), 'little'):08X}:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == wanted and fields[3] == "01":  # rem_address, ESTABLISHED
            inodes.add(f"socket:[{fields[9]}]")
    assert len(inodes) == 1, f"no unique bridge-side socket for {local}: {inodes}"
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if _socket_inode(pid, int(name)) in inodes:
                return int(name)
        except OSError:
            continue
    raise AssertionError(f"process {pid} holds no socket connected to {local}")


def _nodelay_of_remote_fd(pid: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        dup = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                pytest.skip(f"pidfd_getfd() not available here: {os.strerror(err)}")
            raise OSError(err, os.strerror(err))
    finally:
        os.close(pidfd)
    sock = socket.socket(fileno=dup)
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()  # closes only our duplicate


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfd_open")
def test_association_socket_has_tcp_nodelay(gated: BridgeProcess) -> None:
    assoc = associate(gated.port, "FINDSCU")
    assert assoc.is_established
    try:
        assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
        ours = assoc.dul.socket.socket
        local = ours.getsockname()
        # Control: pynetdicom's requestor side does not set it, so the probe can tell.
        assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        fd = _peer_fd(gated.pid, local)
        assert _nodelay_of_remote_fd(gated.pid, fd) != 0
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
