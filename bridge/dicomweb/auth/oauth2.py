"""The OAuth2 client-credentials grant: a cached token, refreshed before expiry and on a 401."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import httpx

from bridge.config import Secret
from bridge.dicomweb.auth.base import AsyncOnlyAuth, TokenEndpointError, _replayable
from bridge.dicomweb.auth.secrets import read_secret
from bridge.errors import DicomwebProtocolError

LOGGER = logging.getLogger(__name__)

# Token lifetime assumed when a token endpoint leaves out expires_in (RFC 6749 makes it
# optional): short enough that a token the server expires sooner is replaced soon, and
# a 401 triggers a refresh anyway.
DEFAULT_TOKEN_LIFETIME_S = 300.0
# Refresh this long before expiry, but never more than this share of the lifetime (a
# 60 s margin would make a 60 s token useless).
REFRESH_MARGIN_S = 60.0
REFRESH_MARGIN_SHARE = 0.1


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float  # clock() after which a new token is fetched
    expires_at: float  # clock() after which this one is not used any more


class OAuth2ClientCredentials(AsyncOnlyAuth):
    """OAuth2 client-credentials grant (Keycloak, Azure AD, ...) with a cached token.

    The token request is yielded from the auth flow (httpx's documented pattern), so it
    goes out through the same client as the DICOMweb requests: the same TLS settings
    (verification, CA bundle, client certificate), proxies and timeouts, without a
    second connection pool to configure. A custom
    CA bundle therefore has to include the token endpoint's CA as well. The token
    request also belongs to the request that needed it, so cancelling that request (a
    DIMSE C-CANCEL) cancels the fetch and releases the lock.

    Refresh: ``REFRESH_MARGIN_S`` (at most ``REFRESH_MARGIN_SHARE`` of the lifetime)
    before expiry. One refresh at a time: requests that need a token wait on an asyncio lock held
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
        self._lock = asyncio.Lock()

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

    # -- the flow

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = self._usable(self._lock.locked())
        if token is None:
            async with self._lock:
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
        async with self._lock:
            current = self._token
            if current is None or current.value == token.value:
                started = self._clock()
                answer = yield self._token_request(request)
                await answer.aread()
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
