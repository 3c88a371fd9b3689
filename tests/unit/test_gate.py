"""The peer-host check of dimse.check_peer_host, with an injected resolver and clock."""

from __future__ import annotations

import socket

from bridge.config import parse_config
from bridge.dimse.gate import REFRESH_S, PeerGate


class FakeDns:
    def __init__(self, records: dict[str, set[str]]) -> None:
        self.records = records
        self.lookups: list[str] = []

    def __call__(self, host: str) -> set[str]:
        self.lookups.append(host)
        if host not in self.records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return set(self.records[host])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _gate(dns: FakeDns, clock: Clock, check: bool = True) -> PeerGate:
    config = parse_config(
        {
            "dimse": {"check_peer_host": check},
            "peers": [
                {"ae_title": "CT1", "host": "ct1.example", "port": 104},
                {"ae_title": "MR1", "host": "10.0.0.7"},
            ],
        }
    )
    return PeerGate(config, resolver=dns, clock=clock)


def test_listed_ae_title_must_come_from_its_host() -> None:
    dns = FakeDns({"ct1.example": {"10.0.0.5"}, "10.0.0.7": {"10.0.0.7"}})
    gate = _gate(dns, Clock())
    assert gate.host_mismatch("CT1", "10.0.0.5") is None
    assert gate.host_mismatch("CT1 ", "::ffff:10.0.0.5") is None  # IPv4-mapped, padded AE
    assert gate.host_mismatch("MR1", "10.0.0.7") is None
    assert gate.host_mismatch("CT1", "10.0.0.9") == (
        "host mismatch: CT1 is configured at ct1.example, not 10.0.0.9"
    )
    # Not listed: not host-checked.
    assert gate.host_mismatch("STRANGER", "192.0.2.1") is None


def test_off_by_default_and_then_resolves_nothing() -> None:
    dns = FakeDns({})
    config = parse_config({"peers": [{"ae_title": "CT1", "host": "ct1.example"}]})
    assert config.dimse.check_peer_host is False
    gate = PeerGate(config, resolver=dns)
    assert gate.host_mismatch("CT1", "10.0.0.9") is None
    assert dns.lookups == []


def test_a_changed_record_is_picked_up_at_most_every_refresh_interval() -> None:
    dns = FakeDns({"ct1.example": {"10.0.0.5"}, "10.0.0.7": {"10.0.0.7"}})
    clock = Clock()
    gate = _gate(dns, clock)
    assert sorted(dns.lookups) == ["10.0.0.7", "ct1.example"]  # resolved at start
    dns.records["ct1.example"] = {"10.0.0.6"}  # the modality moved
    clock.now += 1
    assert gate.host_mismatch("CT1", "10.0.0.6") is not None  # too soon to look again
    assert dns.lookups.count("ct1.example") == 1
    clock.now += REFRESH_S
    assert gate.host_mismatch("CT1", "10.0.0.6") is None
    assert dns.lookups.count("ct1.example") == 2
    assert gate.host_mismatch("CT1", "10.0.0.5") is not None  # the old address is gone


def test_an_unresolvable_host_rejects_until_it_resolves() -> None:
    dns = FakeDns({"10.0.0.7": {"10.0.0.7"}})
    clock = Clock()
    gate = _gate(dns, clock)
    assert gate.host_mismatch("CT1", "10.0.0.5") is not None
    dns.records["ct1.example"] = {"10.0.0.5"}
    clock.now += REFRESH_S
    assert gate.host_mismatch("CT1", "10.0.0.5") is None


def test_rejection_reasons() -> None:
    gate = _gate(FakeDns({"ct1.example": set(), "10.0.0.7": set()}), Clock(), check=False)

    class Rj:
        def __init__(self, result: int, source: int, diagnostic: int) -> None:
            self.result, self.result_source, self.diagnostic = result, source, diagnostic

    assert gate.reason_of(Rj(1, 1, 3)) == (
        "calling AE title not recognised (not in [[peers]], accept_unknown_peers = false)"
    )
    assert gate.reason_of(Rj(2, 3, 2)) == "too many associations (dimse.max_associations = 16)"
    assert gate.reason_of(Rj(1, 2, 2)) == "A-ASSOCIATE-RJ result 1, source 2, reason 2"
