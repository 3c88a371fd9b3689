"""AWS Signature Version 4 on every request, with botocore's credential chain."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import quote, unquote

import httpx

from bridge.dicomweb.auth.base import (
    AUTH_SOURCE,
    AsyncOnlyAuth,
    _body_or_none,
    _import_extra,
    _short,
)
from bridge.errors import ConfigError

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class AwsSigV4Auth(AsyncOnlyAuth):
    """AWS Signature Version 4 on every request (AWS HealthImaging: service
    ``medical-imaging``), with credentials from botocore's usual chain.

    Signed headers: host, x-amz-date, x-amz-content-sha256, x-amz-security-token (with
    temporary credentials) and content-type; not the hop-by-hop or client-chosen ones
    (connection, accept-encoding, user-agent) that proxies may rewrite.

    WadoAnswer: a body in memory is hashed. A streamed body (STOW-RS from disk) is not read
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
