"""TLS on both sides of the bridge, with a throw-away CA made by the `cryptography` package.

* DICOM TLS (``[dimse.tls]``): a second listener beside the plain one, requiring client
  certificates signed by the test CA; pynetdicom and dcmtk's echoscu as TLS SCUs.
* HTTPS to the DICOMweb server (``[dicomweb] ca_bundle``, ``verify``, ``client_cert``,
  ``client_key``): a TLS-terminating TCP relay (asyncio, own thread) in front of the
  session Orthanc, with a server certificate from the test CA, optionally requiring a
  client certificate (mutual TLS).

    SCU --DICOM TLS--> bridge --HTTPS--> TlsRelay --HTTP--> Orthanc
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from tests.conftest import OrthancFixture
from tests.integration.bridge_runner import (
    REPO_ROOT,
    BridgeProcess,
    bridge_config,
    start_bridge,
)
from tests.integration.tools import dcmtk, describe, free_port, missing_prerequisite, run_dcmtk

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:  # pragma: no cover - reported by the `pki` fixture
    x509 = None  # type: ignore[assignment]

FIND_MODEL = StudyRootQueryRetrieveInformationModelFind
SUCCESS, PENDING = 0x0000, 0xFF00
OUT_OF_RESOURCES = 0xA700
DICOMWEB_UNREADABLE = 0xC002
# The QIDO-RS failures that a refused TLS connection can surface as (see test_mtls).
TLS_FAILURES = (OUT_OF_RESOURCES, DICOMWEB_UNREADABLE)


# --------------------------------------------------------------------------- test PKI


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for localhost/127.0.0.1, a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, *, with_certificate: bool = True) -> ssl.SSLContext:
        """A TLS client context trusting the test CA (hostname checked)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        if with_certificate:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    def server_context(self, *, require_client_certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        context.load_cert_chain(str(self.server_cert), str(self.server_key))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_NONE
        return context


def _write_pem(path: Path, cert: Any, key: Any = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)


def make_pki(root: Path) -> Pki:
    """A CA (RSA 2048, valid a day) and two leaf certificates it signs."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("dimse-bridge test CA"))
        .issuer_name(name("dimse-bridge test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage: x509.ObjectIdentifier, san: list[Any]) -> tuple[Any, Any]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = leaf("DIMSE_BRIDGE_TEST_CLIENT", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    _write_pem(root / "ca.pem", ca_cert)
    _write_pem(root / "server.pem", *server)
    _write_pem(root / "client.pem", *client)
    return Pki(
        ca=root / "ca.pem",
        server_cert=root / "server.pem",
        server_key=root / "server.key",
        client_cert=root / "client.pem",
        client_key=root / "client.key",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if x509 is None:
        missing_prerequisite("the cryptography package is not installed (pip install cryptography)")
    return make_pki(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------- DIMSE SCUs


def _ae(ae_title: str, *contexts: str) -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = 10
    ae.dimse_timeout = 30
    ae.network_timeout = 30
    ae.connection_timeout = 5
    for context in contexts:
        ae.add_requested_context(context)
    return ae


def study_query(**keys: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientID = ""
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return query


def find_on(assoc: Any, query: Dataset) -> tuple[list[str], Dataset]:
    """C-FIND on an open association: (StudyInstanceUIDs of the matches, final status)."""
    uids: list[str] = []
    final = Dataset()
    for status, identifier in assoc.send_c_find(query, FIND_MODEL):
        if "Status" not in status:
            break
        if int(status.Status) in (PENDING, 0xFF01):
            uids.append(str(identifier.StudyInstanceUID))
        else:
            final = status
    return uids, final


def c_find(port: int, query: Dataset, called: str = "DIMSE_BRIDGE") -> tuple[list[str], Dataset]:
    """C-FIND over a plain association to 127.0.0.1:`port`."""
    assoc = _ae("FINDSCU", FIND_MODEL).associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "the bridge refused the association"
    try:
        return find_on(assoc, query)
    finally:
        assoc.release()


def p001_studies(orthanc: OrthancFixture) -> list[str]:
    return sorted(s.StudyInstanceUID for s in orthanc.manifest.studies_of("P001"))


# --------------------------------------------------------------------------- (a) DICOM TLS


@dataclass(frozen=True)
class TlsBridge:
    process: BridgeProcess
    plain_port: int
    tls_port: int


@pytest.fixture(scope="module")
def tls_bridge(
    orthanc: OrthancFixture, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsBridge]:
    """The bridge on the session Orthanc: plain listener on P1, DICOM TLS on P2 requiring
    a client certificate signed by the test CA."""
    plain_port, tls_port = free_port(), free_port()
    tls = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": tls_port,
        "certificate": str(pki.server_cert),
        "private_key": str(pki.server_key),
        "ca_certificates": str(pki.ca),
        "require_client_certificate": True,
    }
    process = start_bridge(
        bridge_config(orthanc.dicomweb_url, plain_port, dimse={"tls": tls}),
        tmp_path_factory.mktemp("bridge-tls"),
        name="bridge-tls",
    )
    try:
        yield TlsBridge(process, plain_port, tls_port)
    finally:
        process.stop()


def tls_associate(ae: AE, port: int, context: ssl.SSLContext) -> Any:
    return ae.associate("127.0.0.1", port, ae_title="DIMSE_BRIDGE", tls_args=(context, "localhost"))


def test_tls_scu_with_client_certificate_echo_and_find(
    tls_bridge: TlsBridge, orthanc: OrthancFixture, pki: Pki
) -> None:
    """A pynetdicom TLS SCU with a client certificate from the CA: C-ECHO 0x0000 and a
    C-FIND answering P001's two studies; the plain listener answers the same C-FIND
    while the TLS association is open."""
    ae = _ae("TLSSCU", Verification, FIND_MODEL)
    assoc = tls_associate(ae, tls_bridge.tls_port, pki.client_context())
    assert assoc.is_established, tls_bridge.process.log_tail()
    try:
        assert isinstance(assoc.dul.socket.socket, ssl.SSLSocket)
        assert assoc.dul.socket.socket.version() in ("TLSv1.2", "TLSv1.3")
        echo = assoc.send_c_echo()
        assert int(echo.Status) == SUCCESS
        uids, final = find_on(assoc, study_query(PatientID="P001"))
        assert int(final.Status) == SUCCESS, final
        assert sorted(uids) == p001_studies(orthanc)

        # Side by side: the plain listener, during the TLS association.
        plain_uids, plain_final = c_find(tls_bridge.plain_port, study_query(PatientID="P001"))
        assert int(plain_final.Status) == SUCCESS
        assert sorted(plain_uids) == p001_studies(orthanc)
        plain = _ae("ECHOSCU", Verification).associate(
            "127.0.0.1", tls_bridge.plain_port, ae_title="DIMSE_BRIDGE"
        )
        assert plain.is_established
        assert int(plain.send_c_echo().Status) == SUCCESS
        plain.release()

        # The TLS association is still usable afterwards.
        assert int(assoc.send_c_echo().Status) == SUCCESS
    finally:
        assoc.release()


def test_tls_scu_without_client_certificate_is_refused(tls_bridge: TlsBridge, pki: Pki) -> None:
    """require_client_certificate = true: a TLS client without a certificate gets no
    association, nor does a plain (non-TLS) client on the TLS port; then a client with a
    certificate still does."""
    ae = _ae("TLSSCU", Verification)
    assoc = tls_associate(ae, tls_bridge.tls_port, pki.client_context(with_certificate=False))
    assert not assoc.is_established
    plain_on_tls = ae.associate("127.0.0.1", tls_bridge.tls_port, ae_title="DIMSE_BRIDGE")
    assert not plain_on_tls.is_established
    good = tls_associate(ae, tls_bridge.tls_port, pki.client_context())
    assert good.is_established
    assert int(good.send_c_echo().Status) == SUCCESS
    good.release()
    assert tls_bridge.process.running


def test_plain_client_on_the_tls_port_gets_one_warning_line(tls_bridge: TlsBridge) -> None:
    """A plain DICOM client on the TLS port: one WARNING line saying the TLS handshake
    failed, tagged with its association id; no traceback, no pynetdicom error lines."""
    log = tls_bridge.process
    offset = len(log.log_text())
    ae = _ae("PLAINSCU", Verification)
    ae.acse_timeout = 5
    assoc = ae.associate("127.0.0.1", tls_bridge.tls_port, ae_title="DIMSE_BRIDGE")
    assert not assoc.is_established
    deadline = time.monotonic() + 10
    while "TLS handshake" not in log.log_text()[offset:] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # anything pynetdicom would still write about it
    new = log.log_text()[offset:].splitlines()
    # (The previous test's associations may still write their end lines meanwhile.)
    assert not [line for line in new if "Traceback" in line or "pynetdicom" in line], new
    handshake = [line for line in new if "TLS handshake" in line]
    assert len(handshake) == 1, new
    assert re.match(
        r"\S+ \S+ WARNING \[[0-9a-f]{4}\] bridge\.dimse\.server: TLS handshake with "
        r"127\.0\.0\.1:\d+ failed \(WRONG_VERSION_NUMBER\)",
        handshake[0],
    ), new
    assert tls_bridge.process.running


def _dcmtk_has_tls() -> bool:
    result = subprocess.run(
        [dcmtk("echoscu"), "--help"], capture_output=True, text=True, timeout=20, check=False
    )
    return "+tls" in result.stdout + result.stderr


def test_dcmtk_echoscu_over_tls(tls_bridge: TlsBridge, pki: Pki) -> None:
    """dcmtk's echoscu with ``+tls client.key client.pem +cf ca.pem``: C-ECHO succeeds;
    anonymous TLS (``+tla``, no certificate) is refused."""
    if not _dcmtk_has_tls():
        pytest.skip("this dcmtk build has no TLS support (echoscu --help lists no +tls)")
    port = str(tls_bridge.tls_port)
    args = ["-v", "-aet", "ECHOSCU", "-aec", "DIMSE_BRIDGE", "-to", "10", "-ta", "10"]
    tls = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]
    result = run_dcmtk("echoscu", *args, *tls, "127.0.0.1", port, timeout=30)
    assert result.returncode == 0, describe(["echoscu", *args, *tls], result)
    assert "Received Echo Response (Success)" in result.stdout + result.stderr

    anonymous = ["+tla", "+cf", str(pki.ca)]
    refused = run_dcmtk("echoscu", *args, *anonymous, "127.0.0.1", port, timeout=30)
    assert refused.returncode != 0, describe(["echoscu", *args, *anonymous], refused)
    assert "Echo Response" not in refused.stdout + refused.stderr


# --------------------------------------------------------------------------- (b) HTTPS


class TlsRelay:
    """A TLS-terminating TCP relay on 127.0.0.1 (asyncio, own thread) to a plain port.

    ``handshakes`` counts TLS connections that completed their handshake (and so were
    relayed to the upstream): a client refused during the handshake never reaches it.
    """

    def __init__(self, upstream_port: int, context: ssl.SSLContext) -> None:
        self.upstream_port = upstream_port
        self.context = context
        self.port = 0
        self.handshakes = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="TlsRelay")
        self._thread.daemon = True
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> TlsRelay:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(
                self._handle, "127.0.0.1", 0, ssl=self.context, ssl_handshake_timeout=5
            ),
            self._loop,
        ).result(10)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}/dicom-web"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.handshakes += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:  # ssl.SSLError included
                pass
            finally:
                with contextlib.suppress(Exception):
                    sink.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._tasks.discard(task)


@pytest.fixture(scope="module")
def https_relay(orthanc: OrthancFixture, pki: Pki) -> Iterator[TlsRelay]:
    """HTTPS (server certificate from the test CA) in front of the session Orthanc."""
    relay = TlsRelay(orthanc.server.http_port, pki.server_context(require_client_certificate=False))
    yield relay.start()
    relay.stop()


@pytest.fixture(scope="module")
def mtls_relay(orthanc: OrthancFixture, pki: Pki) -> Iterator[TlsRelay]:
    """HTTPS requiring a client certificate signed by the test CA (mutual TLS)."""
    relay = TlsRelay(orthanc.server.http_port, pki.server_context(require_client_certificate=True))
    yield relay.start()
    relay.stop()


@pytest.fixture
def https_bridge(
    bridge_process: Callable[..., BridgeProcess],
) -> Callable[..., BridgeProcess]:
    """``https_bridge(url, **dicomweb keys)``: a bridge whose [dicomweb] is that.

    retry_deadline = 1: a refused TLS connection counts as a connection failure, which
    is retried; one second keeps the failing cases short.
    """

    def start(url: str, **dicomweb: Any) -> BridgeProcess:
        return bridge_process(
            bridge_config(url, free_port(), dicomweb={"retry_deadline": 1, **dicomweb})
        )

    return start


def run_check(bridge: BridgeProcess) -> subprocess.CompletedProcess[str]:
    """``dimse-bridge check --config <the bridge's config>``."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("DIMSE_BRIDGE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check", "--config", str(bridge.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_https_with_ca_bundle(
    https_bridge: Callable[..., BridgeProcess],
    https_relay: TlsRelay,
    orthanc: OrthancFixture,
    pki: Pki,
) -> None:
    """url = https://localhost:PORT/dicom-web and ca_bundle = the test CA: C-FIND answers
    through the relay, and ``dimse-bridge check`` says ok."""
    bridge = https_bridge(https_relay.url(), ca_bundle=str(pki.ca))
    before = https_relay.handshakes
    uids, final = c_find(bridge.port, study_query(PatientID="P001"))
    assert int(final.Status) == SUCCESS, (final, bridge.log_tail())
    assert sorted(uids) == p001_studies(orthanc)
    assert https_relay.handshakes > before  # it really went through TLS

    check = run_check(bridge)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: ") and "QIDO-RS answered HTTP 200" in check.stdout


def test_https_unknown_ca_fails_verification(
    https_bridge: Callable[..., BridgeProcess], https_relay: TlsRelay
) -> None:
    """No ca_bundle (verification on, the system CAs do not know the test CA): C-FIND
    fails with 0xA700 "DICOMweb server unreachable", no request reaches the relay's
    upstream, the log names the verification failure, and ``dimse-bridge check`` exits 3
    with it."""
    bridge = https_bridge(https_relay.url())
    before = https_relay.handshakes
    uids, final = c_find(bridge.port, study_query(PatientID="P001"))
    assert uids == []
    # Not retried and not "unreachable": a certificate that is not trusted stays so.
    assert int(final.Status) == 0xC001, final
    assert final.ErrorComment.startswith("DICOMweb TLS failed: self-signed certificate")
    assert https_relay.handshakes == before
    assert "CERTIFICATE_VERIFY_FAILED" in bridge.log_text(), bridge.log_tail()

    check = run_check(bridge)
    assert check.returncode == 3, (check.stdout, check.stderr)
    assert check.stdout == ""
    assert https_relay.url() in check.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in check.stderr, check.stderr


def test_https_verify_false(
    https_bridge: Callable[..., BridgeProcess], https_relay: TlsRelay, orthanc: OrthancFixture
) -> None:
    """verify = false, no ca_bundle: the unknown CA is accepted and C-FIND answers."""
    bridge = https_bridge(https_relay.url(), verify=False)
    uids, final = c_find(bridge.port, study_query(PatientID="P001"))
    assert int(final.Status) == SUCCESS, (final, bridge.log_tail())
    assert sorted(uids) == p001_studies(orthanc)


def test_mtls_with_client_certificate(
    https_bridge: Callable[..., BridgeProcess],
    mtls_relay: TlsRelay,
    orthanc: OrthancFixture,
    pki: Pki,
) -> None:
    """The relay requires a client certificate; client_cert/client_key set: C-FIND answers."""
    bridge = https_bridge(
        mtls_relay.url(),
        ca_bundle=str(pki.ca),
        client_cert=str(pki.client_cert),
        client_key=str(pki.client_key),
    )
    before = mtls_relay.handshakes
    uids, final = c_find(bridge.port, study_query(PatientID="P001"))
    assert int(final.Status) == SUCCESS, (final, bridge.log_tail())
    assert sorted(uids) == p001_studies(orthanc)
    assert mtls_relay.handshakes > before


def test_mtls_without_client_certificate(
    https_bridge: Callable[..., BridgeProcess], mtls_relay: TlsRelay, pki: Pki
) -> None:
    """The relay requires a client certificate and the bridge has none: C-FIND fails and
    nothing is relayed. With TLS 1.3 the server checks the client certificate after the
    client considers the handshake done, so the bridge sees the connection closed without
    an HTTP answer (0xC002 "broken HTTP answer", measured) or, if the alert is read
    first, a failed connection (0xA700)."""
    bridge = https_bridge(mtls_relay.url(), ca_bundle=str(pki.ca))
    before = mtls_relay.handshakes
    uids, final = c_find(bridge.port, study_query(PatientID="P001"))
    assert uids == []
    assert int(final.Status) in TLS_FAILURES, final
    assert final.get("ErrorComment"), final
    assert mtls_relay.handshakes == before


def test_mtls_with_client_certificate_and_verify_false(
    https_bridge: Callable[..., BridgeProcess],
    mtls_relay: TlsRelay,
    orthanc: OrthancFixture,
    pki: Pki,
) -> None:
    """verify = false (server certificate not checked) with a client certificate: the
    certificate must still be presented, and C-FIND answers."""
    bridge = https_bridge(
        mtls_relay.url(),
        verify=False,
        client_cert=str(pki.client_cert),
        client_key=str(pki.client_key),
    )
    uids, final = c_find(bridge.port, study_query(PatientID="P001"))
    assert int(final.Status) == SUCCESS, final
    assert sorted(uids) == p001_studies(orthanc)


# --------------------------------------------------------------------------- last: a stall


def test_silent_tcp_client_does_not_block_the_tls_listener(tls_bridge: TlsBridge, pki: Pki) -> None:
    """A TCP connection to the TLS port that never sends a ClientHello (a port scanner, a
    TCP health check that lingers) must not keep other TLS clients out."""
    silent = socket.create_connection(("127.0.0.1", tls_bridge.tls_port), timeout=5)
    try:
        ae = _ae("TLSSCU", Verification)
        ae.connection_timeout = 3
        ae.acse_timeout = 3
        assoc = tls_associate(ae, tls_bridge.tls_port, pki.client_context())
        established = assoc.is_established
        if established:
            assoc.release()
        assert established, "the TLS listener is blocked by a silent TCP client"
    finally:
        silent.close()
