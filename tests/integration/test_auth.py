"""``[dicomweb.auth]`` end to end: the bridge (a subprocess) authenticating to a real Orthanc.

1. basic: Orthanc itself with ``AuthenticationEnabled`` and a registered user; the
   password read from a file. A wrong password gives C-FIND 0xC001 "authentication", and
   ``dimse-bridge check`` fails saying so.
2. bearer: the verifying proxy (tests/faults/authproxy.py) in front of the session
   Orthanc; a token from the environment; a token file rotated at run time while the
   proxy revokes the old token; a revoked token fails clearly.
3. oauth2: client credentials against the proxy's token endpoint issuing 2 s tokens;
   three threads of C-GETs for ~6 s all succeed while the token is renewed several times,
   never two renewals at once.
4. google: a generated service-account file whose token_uri is the proxy's endpoint
   (google-auth posts a signed JWT, the proxy verifies it).
5. aws: SigV4 with static credentials from the environment, every request's signature
   verified by the proxy; a wrong secret key fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    UltrasoundImageStorage,
)

from tests.conftest import OrthancFixture, require_orthanc
from tests.faults.authproxy import AuthProxy
from tests.integration.bridge_runner import REPO_ROOT, BridgeProcess, bridge_config
from tests.integration.dataset import Manifest, write_dataset
from tests.integration.orthanc import OrthancServer
from tests.integration.tools import free_port, missing_prerequisite
from tests.scu import RetrieveOutcome, c_get, scu

pytestmark = pytest.mark.integration

SUCCESS, PENDING = 0x0000, 0xFF00
DICOMWEB_REJECTED = 0xC001
FIND = StudyRootQueryRetrieveInformationModelFind
GET = StudyRootQueryRetrieveInformationModelGet
STORAGE = (CTImageStorage, MRImageStorage, UltrasoundImageStorage, SecondaryCaptureImageStorage)

StartBridge = Callable[..., BridgeProcess]


def need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        missing_prerequisite(f"{module} is not installed (pip install 'dimse-bridge[{extra}]')")


# --------------------------------------------------------------------------- SCU helpers


@dataclass
class FindOutcome:
    status: int
    comment: str
    identifiers: list[Dataset] = field(default_factory=list)


def c_find(bridge: BridgeProcess, **keys: str) -> FindOutcome:
    """One STUDY-level C-FIND (Study Root) on a fresh association."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(FIND)
    assoc = ae.associate(bridge.host, bridge.port, ae_title=bridge.ae_title)
    assert assoc.is_established, f"association refused; bridge log:\n{bridge.log_tail()}"
    found: list[Dataset] = []
    try:
        for status, identifier in assoc.send_c_find(query, FIND):
            assert status is not None and "Status" in status, bridge.log_tail()
            if status.Status == PENDING:
                assert identifier is not None  # a pending response carries its match
                found.append(identifier)
            else:
                return FindOutcome(int(status.Status), str(status.get("ErrorComment", "")), found)
    finally:
        assoc.release()
    raise AssertionError("C-FIND without a final status")


def c_get_study(bridge: BridgeProcess, study_uid: str) -> RetrieveOutcome:
    """One STUDY-level C-GET (Study Root); counts the instances received."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    outcome = c_get(
        scu("PYNETDICOM", timeouts=(30, 30, 30)),
        (bridge.host, bridge.port, bridge.ae_title),
        query,
        GET,
        [(cls, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for cls in STORAGE],
    )
    assert outcome.responses, bridge.log_tail()
    assert all("Status" in status for status, _ in outcome.responses), bridge.log_tail()
    return outcome


def study_uids(outcome: FindOutcome) -> set[str]:
    return {str(ds.StudyInstanceUID) for ds in outcome.identifiers}


def expected_studies(manifest: Manifest, patient_id: str) -> set[str]:
    return {s.StudyInstanceUID for s in manifest.studies_of(patient_id)}


def assert_auth_failure(outcome: FindOutcome, bridge: BridgeProcess) -> None:
    assert outcome.status == DICOMWEB_REJECTED, (outcome, bridge.log_tail())
    assert "authentication" in outcome.comment.lower(), outcome


def auth_config(url: str, **auth: Any) -> str:
    # A table value is merged as a section (dicomweb__auth={...} would name one).
    return bridge_config(url, free_port(), dicomweb={"auth": auth})


def run_check(config_text: str, workdir: Path, env: dict[str, str] | None = None) -> Any:
    """``python -m bridge check --config FILE`` with the checkout first on PYTHONPATH."""
    path = workdir / f"check-{time.monotonic_ns()}.toml"
    path.write_text(config_text, encoding="utf-8")
    child_env = dict(os.environ)
    child_env.pop("DIMSE_BRIDGE_CONFIG", None)
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")])
    )
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=workdir,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def write_secret(path: Path, value: str) -> Path:
    """Write a secret file the way Kubernetes rotates one: a new file moved into place."""
    staging = path.with_name(path.name + ".new")
    staging.write_text(value + "\n", encoding="utf-8")
    os.replace(staging, path)
    return path


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., AuthProxy]]:
    proxies: list[AuthProxy] = []

    def make(*args: Any, **kwargs: Any) -> AuthProxy:
        proxy = AuthProxy(*args, **kwargs).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


# --------------------------------------------------------------------------- 1. basic


USER, PASSWORD = "bridge", "orthanc-s3cret"


class AuthOrthanc(OrthancServer):
    """Orthanc requiring HTTP Basic. The fixture's own REST calls (readiness, uploads) get
    the credentials through the URL's userinfo, which httpx turns into Basic auth."""

    @property
    def http_url(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.http_port}"

    @property
    def plain_dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"


@pytest.fixture
def basic_orthanc(tmp_path: Path) -> Iterator[tuple[AuthOrthanc, Manifest]]:
    require_orthanc()
    manifest = write_dataset(tmp_path / "dataset")
    server = AuthOrthanc(
        tmp_path / "orthanc",
        extra_config={"AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}},
    ).start()
    try:
        server.upload_many(manifest.paths)
        yield server, manifest
    finally:
        server.stop()


def test_basic_auth_against_orthanc(
    basic_orthanc: tuple[AuthOrthanc, Manifest], bridge_process: StartBridge, tmp_path: Path
) -> None:
    server, manifest = basic_orthanc
    url = server.plain_dicomweb_url
    good = write_secret(tmp_path / "password", PASSWORD)
    bad = write_secret(tmp_path / "wrong-password", "not-the-password")

    good_config = auth_config(url, type="basic", username=USER, password_file=str(good))
    bridge = bridge_process(good_config)
    outcome = c_find(bridge, PatientID="P001")
    assert outcome.status == SUCCESS, (outcome, bridge.log_tail())
    assert study_uids(outcome) == expected_studies(manifest, "P001")

    bad_config = auth_config(url, type="basic", username=USER, password_file=str(bad))
    refused = bridge_process(bad_config)
    assert_auth_failure(c_find(refused, PatientID="P001"), refused)
    assert refused.running  # an authentication failure is an answer, not a crash

    ok = run_check(good_config, tmp_path)
    assert ok.returncode == 0, ok
    failed = run_check(bad_config, tmp_path)
    assert failed.returncode != 0, failed
    assert "authentication" in failed.stderr.lower(), failed.stderr
    assert "not-the-password" not in failed.stderr + failed.stdout


# --------------------------------------------------------------------------- 2. bearer


def test_bearer_env_then_rotated_file_then_revoked(
    orthanc: OrthancFixture,
    proxy_factory: Callable[..., AuthProxy],
    bridge_process: StartBridge,
    tmp_path: Path,
) -> None:
    proxy = proxy_factory(orthanc.http_url, mode="bearer", tokens={"env-token-1"})
    url = proxy.url + "/dicom-web"
    expected = expected_studies(orthanc.manifest, "P002")

    from_env = bridge_process(
        auth_config(url, type="bearer", token_env="BRIDGE_TEST_TOKEN"),
        env={"BRIDGE_TEST_TOKEN": "env-token-1"},
    )
    outcome = c_find(from_env, PatientID="P002")
    assert outcome.status == SUCCESS, (outcome, from_env.log_tail())
    assert study_uids(outcome) == expected

    token_file = write_secret(tmp_path / "token", "file-token-1")
    proxy.add_token("file-token-1")
    from_file = bridge_process(auth_config(url, type="bearer", token_file=str(token_file)))
    assert c_find(from_file, PatientID="P002").status == SUCCESS

    # Rotation: the new token is written, then the old one revoked at the server.
    proxy.add_token("file-token-2")
    write_secret(token_file, "file-token-2")
    proxy.revoke_token("file-token-1")
    refused_before = len(proxy.refused())
    for _ in range(2):
        outcome = c_find(from_file, PatientID="P002")
        assert outcome.status == SUCCESS, (outcome, from_file.log_tail())
        assert study_uids(outcome) == expected
    assert len(proxy.refused()) == refused_before, proxy.refused()

    proxy.revoke_token("file-token-2")
    assert_auth_failure(c_find(from_file, PatientID="P002"), from_file)
    assert proxy.refused()[-1].refused == "invalid, expired or revoked token"
    assert "file-token-2" not in from_file.log_text()


# --------------------------------------------------------------------------- 3. oauth2


def test_oauth2_short_lived_tokens_under_concurrent_c_gets(
    orthanc: OrthancFixture,
    proxy_factory: Callable[..., AuthProxy],
    bridge_process: StartBridge,
    tmp_path: Path,
) -> None:
    lifetime = 2
    proxy = proxy_factory(
        orthanc.http_url,
        mode="bearer",
        clients={"dimse-bridge": "client-s3cret"},
        expires_in=lifetime,
        token_delay_s=0.1,  # a slow token endpoint: overlapping fetches would show
    )
    secret = write_secret(tmp_path / "client-secret", "client-s3cret")
    bridge = bridge_process(
        auth_config(
            proxy.url + "/dicom-web",
            type="oauth2",
            token_url=proxy.token_url,
            client_id="dimse-bridge",
            client_secret_file=str(secret),
            scope="dicom.read",
        )
    )
    study = min(orthanc.manifest.studies, key=lambda s: s.NumberOfStudyRelatedInstances)
    outcomes: list[RetrieveOutcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + 3 * lifetime

    def worker() -> None:
        try:
            while time.monotonic() < deadline:
                outcome = c_get_study(bridge, study.StudyInstanceUID)
                with lock:
                    outcomes.append(outcome)
        except BaseException as exc:  # reported below, with the bridge log
            errors.append(exc)

    threads = [threading.Thread(target=worker, name=f"cget-{n}") for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started

    assert not errors, (errors, bridge.log_tail())
    assert len(outcomes) >= 6, outcomes
    bad = [
        o
        for o in outcomes
        if (o.status, len(o.received)) != (SUCCESS, study.NumberOfStudyRelatedInstances)
    ]
    assert not bad, (bad[:3], bridge.log_tail())

    issued = list(proxy.issued)
    assert all(i.subject == "dimse-bridge" and i.scope == "dicom.read" for i in issued)
    # Renewed about every 0.9 * lifetime; never two fetches at once, never a burst.
    assert proxy.max_concurrent_issues == 1
    assert 2 <= len(issued) <= elapsed / (0.75 * lifetime) + 2, (len(issued), elapsed)
    gaps = [b.at - a.at for a, b in zip(issued, issued[1:], strict=False)]
    assert all(gap > 0.5 * lifetime for gap in gaps), gaps
    assert "client-s3cret" not in bridge.log_text()


# --------------------------------------------------------------------------- 4. google


def _service_account(path: Path, token_uri: str) -> tuple[str, str]:
    """Write a service-account JSON with a fresh RSA key; (client_email, public key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    email = "dimse-bridge@test-project.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "test-key-1",
        "private_key": private,
        "client_email": email,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    return email, public


def test_google_service_account(
    orthanc: OrthancFixture,
    proxy_factory: Callable[..., AuthProxy],
    bridge_process: StartBridge,
    tmp_path: Path,
) -> None:
    need("google.auth", "google")
    proxy = proxy_factory(orthanc.http_url, mode="bearer")
    email, public = _service_account(tmp_path / "service-account.json", proxy.token_url)
    proxy.google_keys[email] = public
    bridge = bridge_process(
        auth_config(
            proxy.url + "/dicom-web",
            type="google",
            credentials_file=str(tmp_path / "service-account.json"),
        )
    )
    for _ in range(2):
        outcome = c_find(bridge, PatientID="P004")
        assert outcome.status == SUCCESS, (outcome, bridge.log_tail())
        assert study_uids(outcome) == expected_studies(orthanc.manifest, "P004")
    assert [(i.grant, i.subject) for i in proxy.issued] == [
        ("urn:ietf:params:oauth:grant-type:jwt-bearer", email)
    ]
    # The scope travels inside the signed JWT: the configured default.
    assert proxy.issued[0].scope == "https://www.googleapis.com/auth/cloud-platform"


# --------------------------------------------------------------------------- 5. aws


AWS_KEY_ID = "AKIDDIMSEBRIDGETEST"
AWS_SECRET = "dimse/bridge+test/secret/key/0123456789ab"


def test_aws_sigv4(
    orthanc: OrthancFixture,
    proxy_factory: Callable[..., AuthProxy],
    bridge_process: StartBridge,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    need("botocore", "aws")
    # Only the credentials given here: no profile, file or instance role of this machine.
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    aws_env = {
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
    }
    proxy = proxy_factory(
        orthanc.http_url, mode="sigv4", aws_keys={AWS_KEY_ID: AWS_SECRET}, region="eu-central-1"
    )
    url = proxy.url + "/dicom-web"

    bridge = bridge_process(
        auth_config(url, type="aws", region="eu-central-1"),
        env={**aws_env, "AWS_SECRET_ACCESS_KEY": AWS_SECRET},
    )
    outcome = c_find(bridge, PatientID="P001")
    assert outcome.status == SUCCESS, (outcome, proxy.refused(), bridge.log_tail())
    assert study_uids(outcome) == expected_studies(orthanc.manifest, "P001")
    # Matching characters left raw in the query string (^ *) are signed canonically.
    outcome = c_find(bridge, PatientName="DOE^*")
    assert outcome.status == SUCCESS, (outcome, proxy.refused(), bridge.log_tail())
    assert study_uids(outcome) == expected_studies(orthanc.manifest, "P001") | expected_studies(
        orthanc.manifest, "P002"
    )
    assert not proxy.refused() and proxy.forwarded()

    wrong = bridge_process(
        auth_config(url, type="aws", region="eu-central-1"),  # a port of its own
        env={**aws_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"},
    )
    assert_auth_failure(c_find(wrong, PatientID="P001"), wrong)
    assert proxy.refused()[-1].refused == "signature mismatch"
