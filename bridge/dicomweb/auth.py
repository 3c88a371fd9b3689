"""Authentication to the DICOMweb server: ``[dicomweb.auth]`` turned into an ``httpx.Auth``.

``build_auth(config)`` returns None (``type = "none"``) or one of:

* ``SecretBasicAuth`` - HTTP Basic, the password read through ``read_secret`` per request;
* ``BearerAuth`` - a static token (inline, environment or file), re-read per request;
* ``OAuth2ClientCredentials`` - the client-credentials grant, the token cached, refreshed
  before it expires, one refresh at a time, and refreshed once more on a 401;
* ``GoogleAuth`` - google-auth credentials (service-account file or Application Default
  Credentials), refreshed in a worker thread, one refresh at a time;
* ``AwsSigV4Auth`` - every request signed with AWS Signature Version 4 (botocore).

Secrets never appear in exception messages or log lines: errors name where a secret comes
from (the variable, the file), never what it is. The google and aws types need optional
libraries (``pip install 'dimse-bridge[google]'`` / ``'dimse-bridge[aws]'``); they are
imported when such an auth is built, and their absence is a ConfigError naming the extra.

The bridge uses an ``httpx.AsyncClient`` on one event loop (``bridge/aio.py``), so every
class that does I/O or locks implements ``async_auth_flow`` without blocking the loop;
``sync_auth_flow`` is there too, for a synchronous client (``dimse-bridge check`` may use
one). The two flows of one object do not share a lock: use an object with one kind of
client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import json
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, assert_never
from urllib.parse import quote, unquote

import httpx

from bridge.config import AuthConfig, Secret
from bridge.errors import (
    ConfigError,
    DicomwebHTTPError,
    DicomwebProtocolError,
    DicomwebUnavailable,
)

LOGGER = logging.getLogger(__name__)

AUTH_SOURCE = "[dicomweb.auth]"
GOOGLE_DEFAULT_SCOPES: tuple[str, ...] = AuthConfig.scopes

# Token lifetime assumed when a token endpoint leaves out expires_in (RFC 6749 makes it
# optional): short enough that a token the server expires sooner is replaced soon, and
# a 401 triggers a refresh anyway.
DEFAULT_TOKEN_LIFETIME_S = 300.0
# Refresh this long before expiry, but never more than this share of the lifetime (a
# 60 s margin would make a 60 s token useless).
REFRESH_MARGIN_S = 60.0
REFRESH_MARGIN_SHARE = 0.1

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class TokenEndpointError(DicomwebHTTPError):
    """The token endpoint did not give a token.

    A refusal (4xx, a redirect) is reported as status 401 so that the bridge answers it
    like any other authentication failure; a 5xx or 429 keeps its status (transient).
    """


# --------------------------------------------------------------------------- secrets

_FileKey = tuple[int, int, int, int]
_file_cache: dict[str, tuple[_FileKey, str]] = {}
_file_cache_lock = threading.Lock()


def read_secret(secret: Secret) -> str:
    """The secret's current value: inline, ``os.environ[env]``, or the file's content stripped.

    A file is read again only when it changed: the cache key is (device, inode, mtime_ns,
    size), so both an in-place rewrite and the symlink swap Kubernetes does when it
    rotates a mounted Secret are seen, at the cost of one ``stat`` per call. Raises
    ConfigError naming the variable or file, never the value.
    """
    if secret.value:
        return secret.value
    if secret.env:
        value = os.environ.get(secret.env)
        if value is None:
            raise ConfigError(
                "environment", secret.env, "expected this variable to be set (it holds a secret)"
            )
        if not value.strip():
            raise ConfigError("environment", secret.env, "expected a secret, the variable is empty")
        return value
    if secret.file:
        return _read_secret_file(secret.file)
    raise ConfigError(AUTH_SOURCE, "(secret)", "expected a value, an _env or a _file key")


def _read_secret_file(path: str) -> str:
    # stat before reading: if the file changes in between, the new content is cached under
    # the old key and the next call (seeing a new key) reads it again. The other order
    # could cache old content under the new key until the next change.
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(path, "(secret file)", f"cannot read: {exc.strerror}") from None
    key: _FileKey = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    with _file_cache_lock:
        cached = _file_cache.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(path, "(secret file)", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        # The decoder's message quotes the offending byte: a piece of the secret.
        raise ConfigError(path, "(secret file)", "expected UTF-8 text") from None
    if not value:
        raise ConfigError(path, "(secret file)", "expected a secret, the file is empty")
    with _file_cache_lock:
        _file_cache[path] = (key, value)
    LOGGER.debug("read secret file %s", path)
    return value


def _checked_token(token: str, source: str) -> str:
    """A bearer token safe to put in a header: visible ASCII only (RFC 6750 b64token).

    A line break inside would split the header; httpx's own encoding error would quote
    the offending character. Either way the message must not show the token.
    """
    if not token or any(not ("!" <= c <= "~") for c in token):
        raise ConfigError(
            AUTH_SOURCE,
            source,
            "expected a token of visible ASCII characters without spaces or line breaks; "
            "the value read is not one",
        )
    return token


def _body_or_none(request: httpx.Request) -> bytes | None:
    """The request body if it is in memory, None for a streamed (not yet read) one."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return None


def _replayable(request: httpx.Request) -> bool:
    # A streamed body (STOW-RS from disk) was consumed by the first attempt.
    return _body_or_none(request) is not None


# --------------------------------------------------------------------------- basic, bearer


class SecretBasicAuth(httpx.Auth):
    """HTTP Basic whose password comes from a Secret, read per request (rotation works).

    ``auth_flow`` serves both client kinds: the only I/O is a ``stat`` of a password file
    (the content is cached), too cheap to hand to a thread.
    """

    def __init__(self, username: str, password: Secret) -> None:
        self.username = username
        self.password = password

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        pair = f"{self.username}:{read_secret(self.password)}".encode()
        request.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        yield request


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>``, the token read per request (a stat when cached)."""

    def __init__(self, token: Secret) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = _checked_token(read_secret(self.token), "token")
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


# --------------------------------------------------------------------------- OAuth2


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float  # clock() after which a new token is fetched
    expires_at: float  # clock() after which this one is not used any more


class OAuth2ClientCredentials(httpx.Auth):
    """OAuth2 client-credentials grant (Keycloak, Azure AD, ...) with a cached token.

    The token request is yielded from the auth flow (httpx's documented pattern), so it
    goes out through the same client as the DICOMweb requests: the same TLS settings
    (verification, CA bundle, client certificate), proxies and timeouts, on both the
    async and the sync client, without a second connection pool to configure. A custom
    CA bundle therefore has to include the token endpoint's CA as well. The token
    request also belongs to the request that needed it, so cancelling that request (a
    DIMSE C-CANCEL) cancels the fetch and releases the lock.

    Refresh: ``REFRESH_MARGIN_S`` (at most ``REFRESH_MARGIN_SHARE`` of the lifetime)
    before expiry. One refresh at a time: requests that need a token wait on a lock held
    by the one fetching it; while a refresh of a still-valid token is under way, other
    requests go on with the old token instead of waiting. On a 401 the token is
    refreshed (unless another request already replaced it) and the request retried once;
    a second 401 is returned as it is.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: Secret,
        scope: str = "",
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self._clock = clock
        self._token: _Token | None = None
        self._async_lock = asyncio.Lock()
        self._sync_lock = threading.Lock()

    # -- state

    def _usable(self, refreshing: bool) -> _Token | None:
        """The cached token if a request may use it now without waiting, else None."""
        token, now = self._token, self._clock()
        if token is None:
            return None
        if now < token.refresh_at:
            return token
        # Due for refresh but still valid: if someone is refreshing, don't queue behind.
        if refreshing and now < token.expires_at:
            return token
        return None

    def _fresh(self) -> _Token | None:
        token = self._token
        return token if token is not None and self._clock() < token.refresh_at else None

    def _forget(self, token: _Token) -> None:
        # Only the refused token: a newer one fetched meanwhile stays.
        if self._token is not None and self._token.value == token.value:
            self._token = None

    # -- the token request

    def _token_request(self, original: httpx.Request) -> httpx.Request:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": read_secret(self.client_secret),
        }
        if self.scope:
            form["scope"] = self.scope
        request = httpx.Request(
            "POST", self.token_url, data=form, headers={"Accept": "application/json"}
        )
        # A request yielded from an auth flow gets no timeout from the client: without
        # the original's, a hanging token endpoint would hang the request forever.
        if "timeout" in original.extensions:
            request.extensions["timeout"] = original.extensions["timeout"]
        return request

    def _accept(self, response: httpx.Response, started: float) -> _Token:
        """Take the token out of the token endpoint's answer (raises when there is none)."""
        status = response.status_code
        if status != 200:
            if status >= 500 or status == 429:
                failed = TokenEndpointError(status, "token endpoint failed", self.token_url)
                # The DICOMweb request itself never went out: even STOW-RS may be retried.
                failed.never_sent = True
                raise failed
            detail = _oauth_error(response)
            raise TokenEndpointError(
                401,
                f"token endpoint refused the client credentials (HTTP {status}{detail})",
                self.token_url,
            )
        try:
            data = response.json()
        except ValueError:
            raise DicomwebProtocolError(
                f"token endpoint {self.token_url} answered something other than JSON"
            ) from None
        value = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise DicomwebProtocolError(f"token endpoint {self.token_url} gave no access_token")
        if any(not ("!" <= c <= "~") for c in value):
            raise DicomwebProtocolError(
                f"token endpoint {self.token_url} gave an access_token unfit for a header"
            )
        lifetime = _expires_in(data.get("expires_in"))
        margin = min(REFRESH_MARGIN_S, REFRESH_MARGIN_SHARE * lifetime)
        # Lifetimes count from when the request was sent: the server started counting
        # before its answer reached us.
        token = _Token(value, started + lifetime - margin, started + lifetime)
        self._token = token
        LOGGER.info("OAuth2 token obtained from %s (valid %.0f s)", self.token_url, lifetime)
        return token

    @staticmethod
    def _authorized(request: httpx.Request, token: _Token) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer {token.value}"
        return request

    # -- the flows (the same steps; one with asyncio, one with threading)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = self._usable(self._async_lock.locked())
        if token is None:
            async with self._async_lock:
                token = self._fresh()
                if token is None:
                    started = self._clock()
                    answer = yield self._token_request(request)
                    await answer.aread()
                    token = self._accept(answer, started)
        response = yield self._authorized(request, token)
        if response.status_code != 401:
            return
        if not _replayable(request):
            # Cannot send it again: the 401 stands; the next request fetches a new token.
            self._forget(token)
            return
        async with self._async_lock:
            current = self._token
            if current is None or current.value == token.value:
                started = self._clock()
                answer = yield self._token_request(request)
                await answer.aread()
                current = self._accept(answer, started)
        yield self._authorized(request, current)

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._usable(self._sync_lock.locked())
        if token is None:
            with self._sync_lock:
                token = self._fresh()
                if token is None:
                    started = self._clock()
                    answer = yield self._token_request(request)
                    answer.read()
                    token = self._accept(answer, started)
        response = yield self._authorized(request, token)
        if response.status_code != 401:
            return
        if not _replayable(request):
            self._forget(token)
            return
        with self._sync_lock:
            current = self._token
            if current is None or current.value == token.value:
                started = self._clock()
                answer = yield self._token_request(request)
                answer.read()
                current = self._accept(answer, started)
        yield self._authorized(request, current)


def _expires_in(raw: object) -> float:
    """Seconds from the answer's expires_in; some servers (Azure AD v1) send a string."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return DEFAULT_TOKEN_LIFETIME_S
    try:
        seconds = float(raw)
    except ValueError:
        return DEFAULT_TOKEN_LIFETIME_S
    return max(seconds, 0.0) if math.isfinite(seconds) else DEFAULT_TOKEN_LIFETIME_S


def _oauth_error(response: httpx.Response) -> str:
    """``, invalid_client`` from an RFC 6749 error answer (the code only: descriptions
    are free text that some servers fill with the request's parameters)."""
    try:
        data = response.json()
    except ValueError:
        return ""
    code = data.get("error") if isinstance(data, dict) else None
    if isinstance(code, str) and code.replace("_", "").isalnum() and len(code) <= 40:
        return f", {code}"
    return ""


# --------------------------------------------------------------------------- optional libraries


def _import_extra(module: str, extra: str, package: str) -> Any:
    """Import an optional library's module; a ConfigError naming the extra when absent.

    Imported by name (not an import statement) so that mypy and the core install do not
    need the optional libraries, and they load only when the auth type needs them.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            AUTH_SOURCE,
            "type",
            f'expected the optional library {package} for type = "{extra}" '
            f"(cannot import {module}): pip install 'dimse-bridge[{extra}]'",
        ) from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


# --------------------------------------------------------------------------- Google


class _GoogleResponse:
    """``google.auth.transport.Response`` (status, headers, data) over an httpx answer."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = dict(response.headers)
        self.data = response.content


class _GoogleTransport:
    """A ``google.auth.transport.Request`` over a synchronous httpx client.

    google-auth's own transports need ``requests`` or ``urllib3`` (its ``_http_client``
    one is private and meant for tests); httpx is already a dependency. Duck-typed rather
    than a subclass: google-auth only calls it. A client per call: refreshes are rare
    (about hourly) and this runs in worker threads, so nothing to share or close.
    """

    def __init__(
        self,
        exceptions: Any,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._exceptions = exceptions
        self._verify = verify
        self._transport = transport

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _GoogleResponse:
        try:
            with httpx.Client(
                verify=self._verify,
                transport=self._transport,
                timeout=timeout if timeout is not None else 30.0,
                follow_redirects=False,
            ) as client:
                response = client.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise self._exceptions.TransportError(_short(exc)) from exc
        return _GoogleResponse(response)


class GoogleAuth(httpx.Auth):
    """Google credentials (Cloud Healthcare API): a service-account file, else Application
    Default Credentials; ``Authorization: Bearer`` from them, refreshed when not valid.

    google-auth refreshes synchronously (an HTTP call): the async flow runs it in a worker
    thread (``asyncio.to_thread``) so the event loop keeps serving other requests, behind
    an asyncio lock so that concurrent requests start one refresh, not one each; the
    thread also holds a threading lock, since a cancelled waiter may leave its thread
    running. On a 401 the token is refreshed and the request retried once.
    """

    def __init__(
        self,
        credentials_file: str = "",
        scopes: Sequence[str] = GOOGLE_DEFAULT_SCOPES,
        *,
        credentials: Any = None,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`credentials`: a google.auth credentials object to use instead of loading one;
        `verify`/`transport`: for the token endpoint's HTTP client (tests)."""
        exceptions = _import_extra("google.auth.exceptions", "google", "google-auth")
        self._exceptions = exceptions
        if credentials is None:
            credentials = _load_google_credentials(credentials_file, tuple(scopes), exceptions)
        self.credentials = credentials
        self._request = _GoogleTransport(exceptions, verify, transport)
        self._async_lock = asyncio.Lock()
        self._sync_lock = threading.Lock()
        self._refused: str | None = None  # a token the server answered 401 to

    def _valid(self) -> bool:
        token = self.credentials.token
        return bool(self.credentials.valid) and token is not None and token != self._refused

    def _refresh_blocking(self) -> None:
        """Refresh unless another thread did meanwhile; runs in a worker thread."""
        with self._sync_lock:
            if self._valid():
                return
            try:
                self.credentials.refresh(self._request)
            except self._exceptions.RefreshError as exc:
                raise TokenEndpointError(
                    401, f"Google refused the credentials ({_short(exc)})", self._token_uri()
                ) from None
            except self._exceptions.TransportError as exc:
                unreachable = DicomwebUnavailable(
                    f"cannot reach the Google token endpoint {self._token_uri()}: {_short(exc)}"
                )
                unreachable.never_sent = True  # nor was the DICOMweb request
                raise unreachable from None
            self._refused = None
            LOGGER.info("Google credentials refreshed")

    def _token_uri(self) -> str:
        uri = getattr(self.credentials, "_token_uri", None)
        return uri if isinstance(uri, str) else "Google token endpoint"

    def _authorized(self, request: httpx.Request) -> str:
        headers: dict[str, str] = {}
        # apply() also adds x-goog-user-project when the credentials name a quota project.
        self.credentials.apply(headers)
        for name, value in headers.items():
            request.headers[name] = value
        return str(self.credentials.token)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self._valid():
            async with self._async_lock:
                if not self._valid():
                    await asyncio.to_thread(self._refresh_blocking)
        used = self._authorized(request)
        response = yield request
        if response.status_code != 401:
            return
        self._refused = used
        if not _replayable(request):
            return
        async with self._async_lock:
            if not self._valid():
                await asyncio.to_thread(self._refresh_blocking)
        self._authorized(request)
        yield request

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        if not self._valid():
            self._refresh_blocking()
        used = self._authorized(request)
        response = yield request
        if response.status_code != 401:
            return
        self._refused = used
        if not _replayable(request):
            return
        self._refresh_blocking()
        self._authorized(request)
        yield request


def _load_google_credentials(path: str, scopes: tuple[str, ...], exceptions: Any) -> Any:
    google_auth = _import_extra("google.auth", "google", "google-auth")
    if not path:
        try:
            credentials, _project = google_auth.default(scopes=list(scopes))
        except exceptions.DefaultCredentialsError:
            raise ConfigError(
                AUTH_SOURCE,
                "credentials_file",
                "expected a service-account file, or Application Default Credentials "
                "(GOOGLE_APPLICATION_CREDENTIALS, gcloud auth application-default login, "
                "or a GCE/GKE metadata server): none found",
            ) from None
        return credentials
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            AUTH_SOURCE, "credentials_file", f"cannot read {path}: {exc.strerror}"
        ) from None
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(
            AUTH_SOURCE, "credentials_file", f"expected a Google credentials JSON file: {path}"
        ) from None
    if not isinstance(info, dict):
        # google-auth would fail on it with an AttributeError (a traceback, not a message).
        raise ConfigError(
            AUTH_SOURCE, "credentials_file", f"expected a JSON object of Google credentials: {path}"
        )
    kind = info.get("type")
    try:
        if kind == "service_account":
            service_account = _import_extra(
                "google.oauth2.service_account", "google", "google-auth"
            )
            return service_account.Credentials.from_service_account_file(path, scopes=list(scopes))
        # authorized_user, external_account (workload identity federation), ...
        credentials, _project = google_auth.load_credentials_from_file(path, scopes=list(scopes))
        return credentials
    except (ValueError, exceptions.GoogleAuthError) as exc:
        # google-auth's messages name missing fields or the key format, not key material.
        raise ConfigError(
            AUTH_SOURCE,
            "credentials_file",
            f"expected usable Google credentials in {path} ({_short(exc)})",
        ) from None


# --------------------------------------------------------------------------- AWS SigV4


class AwsSigV4Auth(httpx.Auth):
    """AWS Signature Version 4 on every request (AWS HealthImaging: service
    ``medical-imaging``), with credentials from botocore's usual chain.

    Signed headers: host, x-amz-date, x-amz-content-sha256, x-amz-security-token (with
    temporary credentials) and content-type; not the hop-by-hop or client-chosen ones
    (connection, accept-encoding, user-agent) that proxies may rewrite.

    Payload: a body in memory is hashed. A streamed body (STOW-RS from disk) is not read
    into memory to be hashed when the URL is https: ``x-amz-content-sha256:
    UNSIGNED-PAYLOAD`` is signed instead and TLS protects the body. Over plain http the
    body is buffered and hashed, as botocore does: nothing else would protect it.

    The query is signed in AWS's canonical form (parameters decoded, strictly
    re-encoded, sorted), which is what the server recomputes, whatever encoding the
    request line uses (the "dicom" query encoding leaves ``^*?,`` unescaped).
    """

    def __init__(
        self,
        region: str,
        service: str = "medical-imaging",
        profile: str = "",
        *,
        credentials: Any = None,
    ) -> None:
        """`credentials`: a botocore credentials object instead of the session's chain."""
        self.region = region
        self.service = service
        self._signer_module = _import_extra("botocore.auth", "aws", "botocore")
        self._awsrequest = _import_extra("botocore.awsrequest", "aws", "botocore")
        if credentials is None:
            credentials = _aws_credentials(profile)
        self.credentials = credentials

    def _must_buffer(self, request: httpx.Request) -> bool:
        return _body_or_none(request) is None and request.url.scheme != "https"

    def _refresh_due(self) -> bool:
        # Temporary credentials (role, SSO, instance metadata) refresh inside
        # get_frozen_credentials() with a blocking HTTP call.
        refresh_needed = getattr(self.credentials, "refresh_needed", None)
        return callable(refresh_needed) and bool(refresh_needed())

    def sign(self, request: httpx.Request, frozen: Any) -> None:
        """Add the SigV4 headers to `request` (whose body is in memory or streamed)."""
        body = _body_or_none(request)
        payload = hashlib.sha256(body).hexdigest() if body is not None else UNSIGNED_PAYLOAD
        headers = {
            "host": request.headers.get("host") or request.url.netloc.decode("ascii"),
            # Present, botocore signs this value as the payload hash instead of hashing.
            "x-amz-content-sha256": payload,
        }
        content_type = request.headers.get("content-type")
        if content_type:
            headers["content-type"] = content_type
        aws_request = self._awsrequest.AWSRequest(
            method=request.method, url=signing_url(request.url), headers=headers, data=b""
        )
        self._signer_module.SigV4Auth(frozen, self.service, self.region).add_auth(aws_request)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256"):
            request.headers[name] = aws_request.headers[name]
        token = aws_request.headers.get("X-Amz-Security-Token")
        if token:
            request.headers["X-Amz-Security-Token"] = token

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._must_buffer(request):
            await request.aread()
        if self._refresh_due():
            frozen = await asyncio.to_thread(self.credentials.get_frozen_credentials)
        else:
            frozen = self.credentials.get_frozen_credentials()
        self.sign(request, frozen)
        yield request

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        if self._must_buffer(request):
            request.read()
        self.sign(request, self.credentials.get_frozen_credentials())
        yield request


def signing_url(url: httpx.URL) -> str:
    """The URL as SigV4 canonicalizes it: scheme, host, raw path, and the query's
    parameters decoded, re-encoded with only ``-_.~`` unescaped, sorted."""
    pairs: list[tuple[str, str]] = []
    for part in url.query.decode("ascii").split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    query = "&".join(f"{k}={v}" for k, v in sorted(pairs))
    path = url.raw_path.decode("ascii").split("?", 1)[0]
    base = f"{url.scheme}://{url.netloc.decode('ascii')}{path}"
    return f"{base}?{query}" if query else base


def _aws_credentials(profile: str) -> Any:
    session_module = _import_extra("botocore.session", "aws", "botocore")
    exceptions = _import_extra("botocore.exceptions", "aws", "botocore")
    try:
        credentials = session_module.Session(profile=profile or None).get_credentials()
    except exceptions.ProfileNotFound:
        raise ConfigError(
            AUTH_SOURCE, "profile", f"expected a configured AWS profile, {profile!r} is not one"
        ) from None
    except exceptions.BotoCoreError as exc:
        # botocore's messages name providers and variables, not key material.
        raise ConfigError(
            AUTH_SOURCE, "type", f"AWS credentials could not be loaded ({_short(exc)})"
        ) from None
    if credentials is None:
        raise ConfigError(
            AUTH_SOURCE,
            "type",
            'expected AWS credentials for type = "aws": none found (AWS_ACCESS_KEY_ID and '
            "AWS_SECRET_ACCESS_KEY, a profile, or an instance or task role)",
        )
    return credentials


# --------------------------------------------------------------------------- the factory


def build_auth(config: AuthConfig) -> httpx.Auth | None:
    """The httpx auth for ``[dicomweb.auth]`` (None for type "none").

    Loads what the type needs now (optional library, Google or AWS credentials), so
    that a missing piece is a ConfigError at startup rather than a failed request.
    """
    kind = config.type
    if kind == "none":
        return None
    if kind == "basic":
        return SecretBasicAuth(config.username, config.password)
    if kind == "bearer":
        return BearerAuth(config.token)
    if kind == "oauth2":
        return OAuth2ClientCredentials(
            config.token_url, config.client_id, config.client_secret, config.scope
        )
    if kind == "google":
        return GoogleAuth(config.credentials_file, config.scopes)
    if kind == "aws":
        return AwsSigV4Auth(config.region, config.service, config.profile)
    assert_never(kind)
