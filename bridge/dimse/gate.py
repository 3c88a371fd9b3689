"""Who may associate: the calling-AE allow-list, the peer-host check, and why a request was refused.

pynetdicom itself checks the allow-list (``AE.require_calling_aet``) and the association
limit; this module adds ``dimse.check_peer_host`` (like Orthanc's
``DicomCheckModalityHost``): a calling AE title listed in ``[[peers]]`` is accepted only
from an address its ``host`` resolves to. Host names are resolved when the gate is built
and again, at most once per ``REFRESH_S`` seconds per AE title, when an association
comes from an address they did not resolve to, so a peer whose DNS record changed is
accepted once the record has. An AE title not listed in ``[[peers]]`` is not
host-checked (``accept_unknown_peers`` decides about it).

Every refusal is logged with its reason: unknown calling AE title, host mismatch, or too
many associations.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from pynetdicom import evt
from pynetdicom.events import Event

from bridge.config import Config
from bridge.dimse import adapter

LOGGER = logging.getLogger(__name__)

REFRESH_S = 30.0

# A-ASSOCIATE-RJ (PS3.8 9.3.4): (result, source, reason/diag.).
_REJECTED_PERMANENT = 0x01
_SOURCE_SERVICE_USER = 0x01
_CALLING_AE_NOT_RECOGNISED = 0x03
_REASONS: dict[tuple[int, ...], str] = {
    (0x01, 0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x01, 0x07): "called AE title not recognised",
    (0x02, 0x02, 0x01): "user identity not accepted",
    (0x02, 0x03, 0x02): "too many associations",
}

Resolver = Callable[[str], set[str]]


def resolve(host: str) -> set[str]:
    """The addresses `host` resolves to (an IP address resolves to itself)."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return {_normal(str(info[4][0])) for info in infos}


def _normal(address: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 (``::ffff:10.0.0.5``) as IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class PeerGate:
    """The peer-host check, and the reason of each refusal for the log."""

    def __init__(
        self,
        config: Config,
        *,
        resolver: Resolver = resolve,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = config.dimse.check_peer_host
        self.max_associations = config.dimse.max_associations
        self._resolver = resolver
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, list[str]] = {}
        for peer in config.peers:
            self._hosts.setdefault(peer.ae_title.strip(), []).append(peer.host)
        self._addresses: dict[str, set[str]] = {}
        self._resolved_at: dict[str, float] = {}
        # Reasons the bridge itself refused an association for, read by the log handler.
        self._reasons: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        if self.enabled:
            for ae_title in self._hosts:
                self._refresh(ae_title)

    def _refresh(self, ae_title: str) -> set[str]:
        addresses: set[str] = set()
        for host in self._hosts[ae_title]:
            try:
                addresses |= self._resolver(host)
            except OSError as exc:
                LOGGER.warning("peer %s: cannot resolve host %r: %s", ae_title, host, exc)
        self._addresses[ae_title] = addresses
        self._resolved_at[ae_title] = self._clock()
        return addresses

    def host_mismatch(self, calling_ae: str, address: str) -> str | None:
        """Why `calling_ae` may not associate from `address`, or None when it may."""
        ae_title = calling_ae.strip()
        if not self.enabled or ae_title not in self._hosts:
            return None
        address = _normal(address)
        with self._lock:
            known = self._addresses.get(ae_title, set())
            stale = self._clock() - self._resolved_at.get(ae_title, 0.0) >= REFRESH_S
            if address not in known and stale:
                known = self._refresh(ae_title)
        if address in known:
            return None
        hosts = ", ".join(self._hosts[ae_title])
        return f"host mismatch: {ae_title} is configured at {hosts}, not {address}"

    def on_requested(self, event: Event) -> None:
        """EVT_REQUESTED: refuse a listed AE title calling from another host.

        pynetdicom skips its own negotiation when this handler has sent an
        A-ASSOCIATE-RJ (``Association.run``): "calling AE title not recognised", the
        answer Orthanc's DicomCheckModalityHost gives."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        assert primitive is not None  # EVT_REQUESTED: the A-ASSOCIATE-RQ has arrived
        calling_ae = str(primitive.calling_ae_title)
        reason = self.host_mismatch(calling_ae, assoc.requestor.address)
        if reason is None:
            return
        self._reasons[assoc] = reason
        # pynetdicom sets it during the negotiation this refusal skips.
        assoc.requestor.ae_title = calling_ae
        adapter.send_reject(
            assoc, _REJECTED_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED
        )
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        # As pynetdicom does after its own refusals: stop the DUL thread.
        assoc.kill()

    def on_rejected(self, event: Event) -> None:
        """EVT_REJECTED: one WARNING line saying who was refused and why."""
        assoc = event.assoc
        requestor = assoc.requestor
        reason = self._reasons.pop(assoc, None) or self.reason_of(assoc.acceptor.primitive)
        LOGGER.warning(
            "association from %s (%s) rejected: %s", requestor.ae_title, requestor.address, reason
        )

    def reason_of(self, primitive: Any) -> str:
        fields = tuple(
            int(getattr(primitive, name, None) or 0)
            for name in ("result", "result_source", "diagnostic")
        )
        reason = _REASONS.get(fields)
        if reason is None:
            return "A-ASSOCIATE-RJ result {}, source {}, reason {}".format(*fields)
        if fields == (0x02, 0x03, 0x02):
            return f"{reason} (dimse.max_associations = {self.max_associations})"
        if fields == (0x01, 0x01, 0x03):
            return f"{reason} (not in [[peers]], accept_unknown_peers = false)"
        return reason

    def handlers(self) -> Iterable[tuple[Any, Callable[[Any], None]]]:
        return [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_REJECTED, self.on_rejected)]
