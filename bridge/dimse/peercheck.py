"""``dimse-bridge check --peers``: a C-ECHO to each ``[[peers]]`` entry, and why one failed."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.events import Event

from bridge.config import Peer
from bridge.dimse import sop
from bridge.translate.status import SUCCESS

# Seconds for each step (TCP connect, A-ASSOCIATE-AC, C-ECHO-RSP): a check, not a transfer.
ECHO_TIMEOUT_S = 5.0
MAX_PARALLEL = 8


@dataclass(frozen=True)
class EchoResult:
    """One peer's answer: ``ok`` with the round trip in ms, or why not."""

    peer: Peer
    ok: bool
    detail: str
    ms: float = 0.0


def echo_peers(
    peers: tuple[Peer, ...], calling_ae: str, timeout: float = ECHO_TIMEOUT_S
) -> list[EchoResult]:
    """C-ECHO every peer (in parallel, results in the order given)."""
    if not peers:
        return []
    with ThreadPoolExecutor(min(MAX_PARALLEL, len(peers)), "peer-echo") as pool:
        return list(pool.map(lambda peer: echo_peer(peer, calling_ae, timeout), peers))


def echo_peer(peer: Peer, calling_ae: str, timeout: float = ECHO_TIMEOUT_S) -> EchoResult:
    """Associate with `peer` as `calling_ae`, send one C-ECHO, release."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(sop.VERIFICATION)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    seen: dict[str, Any] = {}

    def on_open(event: Event) -> None:
        seen["connected"] = True

    def on_acse(event: Any) -> None:  # Event declares no `primitive` (an EVT_ACSE_RECV keyword)
        seen["primitive"] = event.primitive

    started = time.monotonic()
    try:
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_ACSE_RECV, on_acse)],
        )
    except socket.gaierror as exc:  # pynetdicom resolves the host before connecting
        return EchoResult(peer, False, f"cannot resolve {peer.host}: {exc.strerror}")
    try:
        if not assoc.is_established:
            return EchoResult(peer, False, _why_not_established(peer, assoc, seen, timeout))
        status = assoc.send_c_echo()
        ms = (time.monotonic() - started) * 1000
        code = getattr(status, "Status", None)
        if code is None:
            return EchoResult(peer, False, f"no C-ECHO response within {timeout:g} s")
        if code != SUCCESS:
            return EchoResult(peer, False, f"C-ECHO answered status 0x{code:04X}", ms)
        return EchoResult(peer, True, "C-ECHO answered 0x0000 (success)", ms)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _why_not_established(peer: Peer, assoc: Any, seen: dict[str, Any], timeout: float) -> str:
    if not seen.get("connected"):
        return f"cannot connect: {_tcp_error(peer, timeout)}"
    primitive = seen.get("primitive")
    if assoc.is_rejected and primitive is not None:
        return (
            f"association rejected ({primitive.result_str}, source {primitive.source_str}: "
            f"{primitive.reason_str})"
        )
    if assoc.is_aborted:
        if primitive is not None and getattr(primitive, "result", None) == 0x00:
            # Accepted, then aborted by pynetdicom itself: no context for Verification.
            return "association accepted without the Verification SOP Class, then aborted"
        return "association aborted by the peer"
    return f"no A-ASSOCIATE response within {timeout:g} s"


def _tcp_error(peer: Peer, timeout: float) -> str:
    """Why a TCP connection to the peer fails: pynetdicom only logs the reason, so ask again.

    Only for a peer that already failed: a bare connect to a working SCP would hold one of
    its association threads until its own ACSE timeout.
    """
    try:
        socket.create_connection((peer.host, peer.port), timeout=timeout).close()
    except socket.gaierror as exc:
        return f"cannot resolve {peer.host}: {exc.strerror}"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    return "the connection failed, then succeeded on a second try"
