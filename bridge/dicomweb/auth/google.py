"""Google credentials (service-account file or Application Default Credentials) as Bearer."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import httpx

from bridge.config import AuthConfig
from bridge.dicomweb.auth.base import (
    AUTH_SOURCE,
    AsyncOnlyAuth,
    TokenEndpointError,
    _import_extra,
    _replayable,
    _short,
)
from bridge.errors import ConfigError, DicomwebUnavailable

LOGGER = logging.getLogger(__name__)

GOOGLE_DEFAULT_SCOPES: tuple[str, ...] = AuthConfig.scopes


class GoogleAuth(AsyncOnlyAuth):
    """Google credentials (Cloud Healthcare API): a service-account file, else Application
    Default Credentials; ``Authorization: Bearer`` from them, refreshed when not valid.

    google-auth refreshes synchronously, an HTTP call through its own requests transport
    (``google.auth.transport.requests.Request``, which its credential types expect): the
    async flow runs it in a worker thread (``asyncio.to_thread``) so the event loop keeps
    serving other requests, behind an asyncio lock so that concurrent requests start one
    refresh, not one each; the thread also holds a threading lock, since a cancelled
    waiter may leave its thread running. On a 401 the token is refreshed and the request
    retried once.
    """

    def __init__(
        self,
        credentials_file: str = "",
        scopes: Sequence[str] = GOOGLE_DEFAULT_SCOPES,
        *,
        credentials: Any = None,
    ) -> None:
        """`credentials`: a google.auth credentials object to use instead of loading one."""
        exceptions = _import_extra("google.auth.exceptions", "google", "google-auth")
        self._exceptions = exceptions
        transport = _import_extra("google.auth.transport.requests", "google", "requests")
        if credentials is None:
            credentials = _load_google_credentials(credentials_file, tuple(scopes), exceptions)
        self.credentials = credentials
        # One session for the token endpoint; refreshes (about hourly) take turns on it.
        self._request = transport.Request()
        self._lock = asyncio.Lock()
        self._thread_lock = threading.Lock()
        self._refused: str | None = None  # a token the server answered 401 to

    def _valid(self) -> bool:
        token = self.credentials.token
        return bool(self.credentials.valid) and token is not None and token != self._refused

    def _refresh_blocking(self) -> None:
        """Refresh unless another thread did meanwhile; runs in a worker thread."""
        with self._thread_lock:
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
            async with self._lock:
                if not self._valid():
                    await asyncio.to_thread(self._refresh_blocking)
        used = self._authorized(request)
        response = yield request
        if response.status_code != 401:
            return
        self._refused = used
        if not _replayable(request):
            return
        async with self._lock:
            if not self._valid():
                await asyncio.to_thread(self._refresh_blocking)
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
