"""Unit tests for bridge.dicomweb.auth: secrets, basic/bearer, OAuth2 client credentials
(caching, refresh before expiry, single flight, 401 handling), Google and AWS SigV4 over
``httpx.MockTransport``, and the missing-extra errors.

Google and AWS tests need google-auth / botocore (the ``google`` / ``aws`` extras): they
skip locally without them and fail under CI, like the other prerequisites.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import importlib.util
import json
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from bridge.config import AuthConfig, Secret
from bridge.dicomweb.auth import (
    AwsSigV4Auth,
    BearerAuth,
    GoogleAuth,
    OAuth2ClientCredentials,
    SecretBasicAuth,
    TokenEndpointError,
    build_auth,
    read_secret,
)
from bridge.dicomweb.auth.aws import UNSIGNED_PAYLOAD
from bridge.dicomweb.auth.oauth2 import DEFAULT_TOKEN_LIFETIME_S
from bridge.errors import (
    ConfigError,
    DicomwebHTTPError,
    DicomwebProtocolError,
    DicomwebUnavailable,
)
from tests.faults.authproxy import AuthProxy, verify_sigv4
from tests.integration.tools import free_port, missing_prerequisite

API = "https://pacs.example/dicom-web/studies"
TOKEN_URL = "https://idp.example/realms/r/token"


def need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        missing_prerequisite(f"{module} is not installed (pip install 'dimse-bridge[{extra}]')")


# --------------------------------------------------------------------------- read_secret


def test_read_secret_inline_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_secret(Secret(value="inline-pw")) == "inline-pw"
    monkeypatch.setenv("BRIDGE_TEST_SECRET", "env-pw")
    assert read_secret(Secret(env="BRIDGE_TEST_SECRET")) == "env-pw"
    path = tmp_path / "pw"
    path.write_text("  file-pw\n", encoding="utf-8")
    assert read_secret(Secret(file=str(path))) == "file-pw"


def test_read_secret_file_rotation(tmp_path: Path) -> None:
    path = tmp_path / "token"
    secret = Secret(file=str(path))
    path.write_text("first-token\n", encoding="utf-8")
    assert read_secret(secret) == "first-token"

    # Kubernetes style: a new file moved over the old one (new inode).
    new = tmp_path / "token.new"
    new.write_text("second-token-longer\n", encoding="utf-8")
    os.replace(new, path)
    assert read_secret(secret) == "second-token-longer"

    # In place, same size: only the mtime tells.
    stat = path.stat()
    path.write_text("third--token-longer\n", encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert read_secret(secret) == "third--token-longer"


def test_read_secret_file_is_cached_until_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("cached-value\n", encoding="utf-8")
    secret = Secret(file=str(path))
    assert read_secret(secret) == "cached-value"
    # Same inode, size and mtime: not read again (proves the cache; rotation never does this).
    stat = path.stat()
    with path.open("r+", encoding="utf-8") as handle:
        handle.write("CHANGED-VALU")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert read_secret(secret) == "cached-value"


def test_read_secret_errors_name_the_source_not_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BRIDGE_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError) as info:
        read_secret(Secret(env="BRIDGE_TEST_MISSING"))
    assert "BRIDGE_TEST_MISSING" in str(info.value)

    path = tmp_path / "pw"
    path.write_text("hunter2-secret\n", encoding="utf-8")
    secret = Secret(file=str(path))
    assert read_secret(secret) == "hunter2-secret"
    path.unlink()  # deleted after being cached: an error, not the stale value
    with pytest.raises(ConfigError) as info:
        read_secret(secret)
    assert str(path) in str(info.value) and "hunter2" not in str(info.value)

    path.write_bytes(b"\xffhunter2\xfe")
    with pytest.raises(ConfigError) as info:
        read_secret(secret)
    assert "UTF-8" in str(info.value) and "hunter2" not in str(info.value)
    assert "\\xff" not in str(info.value)

    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="empty"):
        read_secret(secret)


# --------------------------------------------------------------------------- basic, bearer


def _echo_client(auth: httpx.Auth, seen: list[httpx.Request]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    return httpx.Client(transport=httpx.MockTransport(handler), auth=auth)


def _async_echo_client(auth: httpx.Auth, seen: list[httpx.Request]) -> httpx.AsyncClient:
    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth)


def test_basic_auth_reads_the_rotated_password(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("pw-one\n", encoding="utf-8")
    seen: list[httpx.Request] = []
    with _echo_client(SecretBasicAuth("bridge", Secret(file=str(path))), seen) as client:
        client.get(API)
        os.replace(_write(tmp_path / "pw2", "pw-number-two\n"), path)
        client.get(API)
    decoded = [
        base64.b64decode(r.headers["authorization"].removeprefix("Basic ")).decode() for r in seen
    ]
    assert decoded == ["bridge:pw-one", "bridge:pw-number-two"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_bearer_auth_header_and_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []
    monkeypatch.setenv("BRIDGE_TEST_TOKEN", "env-token")
    with _echo_client(BearerAuth(Secret(env="BRIDGE_TEST_TOKEN")), seen) as client:
        client.get(API)
    path = _write(tmp_path / "token", "file-token-1\n")
    with _echo_client(BearerAuth(Secret(file=str(path))), seen) as client:
        client.get(API)
        os.replace(_write(tmp_path / "t2", "file-token-two\n"), path)
        client.get(API)
    assert [r.headers["authorization"] for r in seen] == [
        "Bearer env-token",
        "Bearer file-token-1",
        "Bearer file-token-two",
    ]


def test_bearer_token_with_a_line_break_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "token", "abc\nX-Injected: 1\n")
    with (
        _echo_client(BearerAuth(Secret(file=str(path))), []) as client,
        pytest.raises(ConfigError) as info,
    ):
        client.get(API)
    assert "Injected" not in str(info.value) and "abc" not in str(info.value)


# --------------------------------------------------------------------------- OAuth2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TokenServer:
    """A MockTransport handler: a token endpoint and an API accepting the valid tokens."""

    def __init__(self, expires_in: int | str | None = 100, delay_s: float = 0.0) -> None:
        self.expires_in = expires_in
        self.delay_s = delay_s
        self.token_hits = 0
        self.api_hits = 0
        self.forms: list[dict[str, list[str]]] = []
        self.valid: set[str] = set()
        self.token_status = 200
        self.always_401 = False
        self.timeouts: list[Any] = []
        self._in_flight = 0
        self.max_in_flight = 0

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_hits += 1
        self.forms.append(parse_qs(request.content.decode()))
        self.timeouts.append(request.extensions.get("timeout"))
        if self.token_status != 200:
            return httpx.Response(self.token_status, json={"error": "invalid_client"})
        token = f"tok-{self.token_hits}"
        self.valid = {token}  # a new token revokes the older ones
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)

    def _api(self, request: httpx.Request) -> httpx.Response:
        self.api_hits += 1
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.always_401 or token not in self.valid:
            return httpx.Response(401)
        return httpx.Response(200, json=[])

    async def async_handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            try:
                await asyncio.sleep(self.delay_s)
                return self._token(request)
            finally:
                self._in_flight -= 1
        # Consumed as a transport does (see StreamingTransport).
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        assert body in (b"", b"payload")
        return self._api(request)


class StreamingTransport(httpx.AsyncBaseTransport):
    """MockTransport without its ``request.aread()``: that keeps the body on the request
    object and so makes a streamed body replayable, as a real transport never does."""

    def __init__(self, handler: Callable[[httpx.Request], Any]) -> None:
        self.handler = handler

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = await self.handler(request)
        return response


def _oauth(
    clock: Callable[[], float] | None = None, scope: str = "dicom"
) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(
        TOKEN_URL,
        "bridge-client",
        Secret(value="client-s3cret"),
        scope,
        **({"clock": clock} if clock else {}),
    )


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_oauth2_token_request_form_and_caching() -> None:
    server = TokenServer()
    auth = _oauth(FakeClock())

    async def scenario() -> None:
        transport = httpx.MockTransport(server.async_handler)
        async with httpx.AsyncClient(transport=transport, auth=auth) as client:
            for _ in range(3):
                assert (await client.get(API)).status_code == 200

    _run(scenario())
    assert server.token_hits == 1 and server.api_hits == 3
    assert server.forms[0] == {
        "grant_type": ["client_credentials"],
        "client_id": ["bridge-client"],
        "client_secret": ["client-s3cret"],
        "scope": ["dicom"],
    }
    # The token request carries the client's timeout (httpcore would wait forever without).
    assert server.timeouts[0] is not None and server.timeouts[0]["read"] == 5.0


def test_oauth2_refreshes_before_expiry() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        for expires_in, margin in ((100, 10.0), (3600, 60.0), ("20", 2.0)):
            server = TokenServer(expires_in=expires_in)
            auth = _oauth(clock)
            transport = httpx.MockTransport(server.async_handler)
            async with httpx.AsyncClient(transport=transport, auth=auth) as client:
                start = clock.now
                await client.get(API)
                lifetime = float(expires_in)
                clock.now = start + lifetime - margin - 0.5
                await client.get(API)
                assert server.token_hits == 1, expires_in
                clock.now = start + lifetime - margin + 0.5  # inside the margin: refresh
                assert (await client.get(API)).status_code == 200
                assert server.token_hits == 2, expires_in
                await client.get(API)
                assert server.token_hits == 2, expires_in

    _run(scenario())


def test_oauth2_without_expires_in_assumes_a_default_lifetime() -> None:
    clock = FakeClock()
    server = TokenServer(expires_in=None)
    auth = _oauth(clock)

    async def scenario() -> None:
        transport = httpx.MockTransport(server.async_handler)
        async with httpx.AsyncClient(transport=transport, auth=auth) as client:
            await client.get(API)
            clock.now += DEFAULT_TOKEN_LIFETIME_S - 31
            await client.get(API)
            assert server.token_hits == 1
            clock.now += 2
            await client.get(API)
            assert server.token_hits == 2

    _run(scenario())


def test_oauth2_single_flight_with_20_concurrent_requests() -> None:
    async def scenario() -> tuple[TokenServer, list[int]]:
        server = TokenServer(delay_s=0.05)
        transport = httpx.MockTransport(server.async_handler)
        async with httpx.AsyncClient(transport=transport, auth=_oauth()) as client:
            responses = await asyncio.gather(*(client.get(API) for _ in range(20)))
        return server, [r.status_code for r in responses]

    server, statuses = _run(scenario())
    assert statuses == [200] * 20
    assert server.token_hits == 1 and server.api_hits == 20


def test_oauth2_single_flight_when_due_for_refresh() -> None:
    """Past the refresh point but before expiry: one refresh, nobody else waits for it."""

    async def scenario() -> TokenServer:
        clock = FakeClock()
        server = TokenServer(expires_in=100, delay_s=0.05)
        transport = httpx.MockTransport(server.async_handler)
        auth = _oauth(clock)
        async with httpx.AsyncClient(transport=transport, auth=auth) as client:
            await client.get(API)
            clock.now += 95
            # The old token stays valid at the server while the refresh is under way.
            old = set(server.valid)
            original = server._token

            def keep_old(request: httpx.Request) -> httpx.Response:
                response = original(request)
                server.valid |= old
                return response

            server._token = keep_old  # type: ignore[method-assign]
            responses = await asyncio.gather(*(client.get(API) for _ in range(20)))
            assert [r.status_code for r in responses] == [200] * 20
        return server

    server = _run(scenario())
    assert server.token_hits == 2 and server.max_in_flight == 1


def test_a_sync_client_is_refused_before_anything_is_sent() -> None:
    """The flows that await serve an AsyncClient only: a sync client gets a TypeError,
    not a request sent without credentials."""
    need("google.auth", "google")
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    auths: list[httpx.Auth] = [_oauth(), GoogleAuth(credentials=FakeGoogleCredentials())]
    for auth in auths:
        with (
            httpx.Client(transport=httpx.MockTransport(handler), auth=auth) as client,
            pytest.raises(TypeError, match="AsyncClient"),
        ):
            client.get(API)
    assert sent == []


def test_oauth2_401_refreshes_once_and_retries_once() -> None:
    server = TokenServer()
    auth = _oauth(FakeClock())

    async def scenario() -> None:
        transport = httpx.MockTransport(server.async_handler)
        async with httpx.AsyncClient(transport=transport, auth=auth) as client:
            assert (await client.get(API)).status_code == 200
            server.valid = set()  # revoked at the server before its expiry
            response = await client.post(API, content=b"payload")
            assert response.status_code == 200
            assert server.token_hits == 2 and server.api_hits == 3
            assert (await client.get(API)).status_code == 200
            assert server.token_hits == 2

    _run(scenario())


def test_oauth2_second_401_is_returned() -> None:
    async def scenario() -> tuple[TokenServer, int]:
        server = TokenServer()
        server.always_401 = True
        transport = httpx.MockTransport(server.async_handler)
        async with httpx.AsyncClient(transport=transport, auth=_oauth(FakeClock())) as client:
            response = await client.get(API)
        return server, response.status_code

    server, status = _run(scenario())
    assert status == 401
    assert server.token_hits == 2 and server.api_hits == 2


def test_oauth2_401_on_a_streamed_body_is_not_retried() -> None:
    async def scenario() -> tuple[TokenServer, int, int]:
        server = TokenServer()
        transport = StreamingTransport(server.async_handler)

        async def body() -> AsyncIterator[bytes]:
            yield b"pay"
            yield b"load"

        async with httpx.AsyncClient(transport=transport, auth=_oauth(FakeClock())) as client:
            await client.get(API)
            server.valid = set()
            refused = await client.post(API, content=body())
            after = await client.get(API)  # the refused token was dropped: a new one
        return server, refused.status_code, after.status_code

    server, refused, after = _run(scenario())
    assert (refused, after) == (401, 200)
    assert server.token_hits == 2 and server.api_hits == 3


def test_oauth2_refused_client_credentials() -> None:
    server = TokenServer()
    server.token_status = 401
    auth = _oauth()

    async def get() -> None:
        transport = httpx.MockTransport(server.async_handler)
        async with httpx.AsyncClient(transport=transport, auth=auth) as client:
            await client.get(API)

    with pytest.raises(TokenEndpointError) as info:
        _run(get())
    error = info.value
    assert isinstance(error, DicomwebHTTPError) and error.status_code == 401
    assert "invalid_client" in str(error) and TOKEN_URL in str(error)
    assert "client-s3cret" not in str(error)
    assert server.api_hits == 0 and not error.never_sent  # a refusal is not retried

    server.token_status = 503
    with pytest.raises(TokenEndpointError) as info:
        _run(get())
    assert info.value.status_code == 503
    assert info.value.never_sent  # transient, and the DICOMweb request never went out


def test_oauth2_answer_without_a_token() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"token_type": "Bearer"})

    async def get() -> None:
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(transport=transport, auth=_oauth()) as client:
            await client.get(API)

    with pytest.raises(DicomwebProtocolError, match="access_token"):
        _run(get())


# --------------------------------------------------------------------------- build_auth


def test_build_auth_types(tmp_path: Path) -> None:
    assert build_auth(AuthConfig()) is None
    assert isinstance(
        build_auth(AuthConfig(type="basic", username="u", password=Secret(value="p"))),
        SecretBasicAuth,
    )
    assert isinstance(build_auth(AuthConfig(type="bearer", token=Secret(value="t"))), BearerAuth)
    oauth = build_auth(
        AuthConfig(
            type="oauth2", token_url=TOKEN_URL, client_id="c", client_secret=Secret(value="s")
        )
    )
    assert isinstance(oauth, OAuth2ClientCredentials)


@pytest.fixture
def hide_modules(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``hide(prefix)``: importing `prefix` or any module under it fails from now on."""

    def hide(prefix: str) -> None:
        for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
            monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.setitem(sys.modules, prefix, None)

    return hide


def test_missing_google_extra_names_it(hide_modules: Callable[[str], None]) -> None:
    hide_modules("google")
    with pytest.raises(ConfigError) as info:
        build_auth(AuthConfig(type="google"))
    error = info.value
    assert (error.source, error.key) == ("[dicomweb.auth]", "type")
    assert "pip install 'dimse-bridge[google]'" in str(error) and "google-auth" in str(error)


def test_missing_aws_extra_names_it(hide_modules: Callable[[str], None]) -> None:
    hide_modules("botocore")
    with pytest.raises(ConfigError) as info:
        build_auth(AuthConfig(type="aws", region="us-east-1"))
    assert "pip install 'dimse-bridge[aws]'" in str(info.value) and "botocore" in str(info.value)


# --------------------------------------------------------------------------- Google


class FakeGoogleCredentials:
    """The part of google.auth.credentials.Credentials that GoogleAuth uses."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.valid = False
        self.refresh_threads: list[int] = []
        self.in_refresh = 0
        self.max_in_refresh = 0

    def refresh(self, request: Any) -> None:
        self.in_refresh += 1
        self.max_in_refresh = max(self.max_in_refresh, self.in_refresh)
        threading.Event().wait(0.05)
        self.refresh_threads.append(threading.get_ident())
        self.token = f"g-{len(self.refresh_threads)}"
        self.valid = True
        self.in_refresh -= 1

    def apply(self, headers: dict[str, str]) -> None:
        headers["authorization"] = f"Bearer {self.token}"


def test_google_refresh_in_a_thread_single_flight() -> None:
    need("google.auth", "google")
    credentials = FakeGoogleCredentials()
    auth = GoogleAuth(credentials=credentials)
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200)

    async def scenario() -> int:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
            await asyncio.gather(*(client.get(API) for _ in range(20)))
        return threading.get_ident()

    loop_thread = _run(scenario())
    assert len(credentials.refresh_threads) == 1 and credentials.max_in_refresh == 1
    assert credentials.refresh_threads[0] != loop_thread  # not on the event loop
    assert seen == ["Bearer g-1"] * 20


def test_google_401_refreshes_and_retries_once() -> None:
    need("google.auth", "google")
    credentials = FakeGoogleCredentials()
    statuses = iter([401, 200, 401, 401])

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(statuses))

    async def scenario() -> None:
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(handler), auth=GoogleAuth(credentials=credentials)
        ) as client:
            assert (await client.get(API)).status_code == 200
            assert len(credentials.refresh_threads) == 2
            # refreshed, retried, refused again
            assert (await client.get(API)).status_code == 401
            assert len(credentials.refresh_threads) == 3

    _run(scenario())


def _rsa_key_pem() -> tuple[str, str]:
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
    return private, public


def _service_account_file(path: Path, email: str, private_key: str, token_uri: str) -> Path:
    info = {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "k1",
        "private_key": private_key,
        "client_email": email,
        "client_id": "1",
        "token_uri": token_uri,
    }
    return _write(path, json.dumps(info))


def test_google_service_account_over_google_auths_transport(tmp_path: Path) -> None:
    """A real service-account file: google-auth signs a JWT and posts it through its own
    requests transport to a token endpoint on loopback, which verifies it."""
    need("google.auth", "google")
    private, public = _rsa_key_pem()
    email = "bridge@p.iam.gserviceaccount.com"
    with AuthProxy(google_keys={email: public}) as idp:
        path = _service_account_file(tmp_path / "sa.json", email, private, idp.token_url)
        auth = GoogleAuth(str(path), ("https://www.googleapis.com/auth/cloud-healthcare",))
        seen: list[httpx.Request] = []

        async def scenario() -> None:
            async with _async_echo_client(auth, seen) as client:
                await client.get(API)
                await client.get(API)

        _run(scenario())
    # The proxy checked the assertion's signature, audience and expiry before issuing.
    assert [(i.grant, i.subject, i.scope) for i in idp.issued] == [
        (
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            email,
            "https://www.googleapis.com/auth/cloud-healthcare",
        )
    ]
    assert [r.headers["authorization"] for r in seen] == [f"Bearer {idp.issued[0].token}"] * 2


def test_google_token_endpoint_unreachable(tmp_path: Path) -> None:
    """google-auth's transport failure is the bridge's DicomwebUnavailable, marked as never
    sent (the DICOMweb request did not go out), and the request is not sent."""
    need("google.auth", "google")
    private, _public = _rsa_key_pem()
    token_uri = f"http://127.0.0.1:{free_port()}/token"  # nothing listens there
    path = _service_account_file(
        tmp_path / "sa.json", "b@p.iam.gserviceaccount.com", private, token_uri
    )
    seen: list[httpx.Request] = []

    async def scenario() -> None:
        async with _async_echo_client(GoogleAuth(str(path)), seen) as client:
            await client.get(API)

    with pytest.raises(DicomwebUnavailable) as info:
        _run(scenario())
    assert info.value.never_sent and token_uri in str(info.value)
    assert "BEGIN PRIVATE KEY" not in str(info.value)
    assert seen == []


def test_google_bad_credentials_file(tmp_path: Path) -> None:
    need("google.auth", "google")
    path = _write(tmp_path / "sa.json", "{not json")
    with pytest.raises(ConfigError, match="credentials_file"):
        GoogleAuth(str(path))


# --------------------------------------------------------------------------- AWS SigV4

KEYS = {"AKIDEXAMPLE": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    need("botocore", "aws")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEYS["AKIDEXAMPLE"])
    yield


def _verified(request: httpx.Request, **kwargs: Any) -> str | None:
    headers = {k.lower(): v for k, v in request.headers.items()}
    target = request.url.raw_path.decode()
    return verify_sigv4(
        request.method,
        target,
        headers,
        request.content,
        keys=KEYS,
        region="eu-west-1",
        service="medical-imaging",
        **kwargs,
    )


def test_aws_sigv4_signatures_verify(aws_env: None) -> None:
    auth = build_auth(AuthConfig(type="aws", region="eu-west-1"))
    assert isinstance(auth, AwsSigV4Auth)
    results: list[str | None] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        results.append(_verified(request))
        return httpx.Response(200)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
            await client.get(f"{API}?PatientName=DOE^*&includefield=00100020&includefield=00080020")
            await client.get(API)
            await client.post(
                API, content=b"body bytes", headers={"Content-Type": "application/dicom"}
            )

    _run(scenario())
    assert results == [None, None, None]


def test_aws_sigv4_tampering_is_detected(aws_env: None) -> None:
    auth = build_auth(AuthConfig(type="aws", region="eu-west-1"))
    assert auth is not None
    request = httpx.Request("POST", API, content=b"original", headers={"Content-Type": "a/b"})
    flow = auth.async_auth_flow(request)

    async def first() -> httpx.Request:
        return await flow.__anext__()

    signed = _run(first())
    assert _verified(signed) is None
    headers = {k.lower(): v for k, v in signed.headers.items()}
    target = signed.url.raw_path.decode()
    common: dict[str, Any] = {"keys": KEYS, "region": "eu-west-1", "service": "medical-imaging"}
    assert verify_sigv4("POST", target, headers, b"tampered", **common) is not None
    assert verify_sigv4("POST", target + "?x=1", headers, b"original", **common) is not None
    assert verify_sigv4("PUT", target, headers, b"original", **common) is not None
    wrong = {"AKIDEXAMPLE": "another-secret"}
    assert verify_sigv4("POST", target, headers, b"original", **{**common, "keys": wrong}) == (
        "signature mismatch"
    )
    stale = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10)
    assert verify_sigv4("POST", target, headers, b"original", now=stale, **common) is not None


def test_aws_sigv4_streamed_bodies(aws_env: None) -> None:
    auth = build_auth(AuthConfig(type="aws", region="eu-west-1"))
    seen: list[tuple[str, str, bytes]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        seen.append((request.url.scheme, request.headers["x-amz-content-sha256"], body))
        verdict = _verified(request, allow_unsigned_payload=request.url.scheme == "https")
        return httpx.Response(200 if verdict is None else 403, text=verdict or "")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"part10-"
        yield b"stream"

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
            https = await client.post(API, content=chunks())
            plain = await client.post(API.replace("https:", "http:"), content=chunks())
        return [https.status_code, plain.status_code]

    assert _run(scenario()) == [200, 200]
    (scheme1, hash1, body1), (scheme2, hash2, body2) = seen
    assert (scheme1, hash1, body1) == ("https", UNSIGNED_PAYLOAD, b"part10-stream")
    # Over plain http the streamed body is buffered and its hash signed.
    assert (scheme2, body2) == ("http", b"part10-stream")
    assert hash2 == hashlib.sha256(b"part10-stream").hexdigest()


def test_aws_session_token_is_sent_and_signed(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-tok")
    auth = build_auth(AuthConfig(type="aws", region="eu-west-1"))
    seen: list[httpx.Request] = []

    async def scenario() -> None:
        async with _async_echo_client(auth, seen) as client:  # type: ignore[arg-type]
            await client.get(API)

    _run(scenario())
    assert seen[0].headers["x-amz-security-token"] == "session-tok"
    assert "x-amz-security-token" in seen[0].headers["authorization"]
    assert _verified(seen[0], session_tokens={"AKIDEXAMPLE": "session-tok"}) is None


def test_aws_without_credentials(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="AWS credentials"):
        build_auth(AuthConfig(type="aws", region="eu-west-1"))
    with pytest.raises(ConfigError) as info:
        build_auth(AuthConfig(type="aws", region="eu-west-1", profile="nosuchprofile"))
    assert info.value.key == "profile"
