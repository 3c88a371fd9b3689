"""Authentication to the DICOMweb server: ``[dicomweb.auth]`` turned into an ``httpx.Auth``.

``build_auth(config)`` returns None (``type = "none"``) or one of:

* ``SecretBasicAuth`` - HTTP Basic, the password read through ``read_secret`` per request;
* ``BearerAuth`` - a static token (inline, environment or file), re-read per request;
* ``OAuth2ClientCredentials`` - the client-credentials grant, the token cached, refreshed
  before it expires, one refresh at a time, and refreshed once more on a 401;
* ``GoogleAuth`` - google-auth credentials (service-account file or Application Default
  Credentials), refreshed in a worker thread, one refresh at a time;
* ``AwsSigV4Auth`` - every request signed with AWS Signature Version 4 (botocore).

One module per concept: ``secrets`` (the Secret sources, Basic, Bearer), ``oauth2``,
``google``, ``aws``, and ``base`` (what they share: ``TokenEndpointError``, the
async-only base class, the optional-library import).

Secrets never appear in exception messages or log lines: errors name where a secret comes
from (the variable, the file), never what it is. The google and aws types need optional
libraries (``pip install 'dimse-bridge[google]'`` / ``'dimse-bridge[aws]'``); they are
imported when such an auth is built, and their absence is a ConfigError naming the extra.

Every client of the bridge is an ``httpx.AsyncClient`` on one event loop
(``bridge/loop_thread.py``), so the types that do I/O or lock implement ``async_auth_flow`` only,
without blocking the loop; on a synchronous ``httpx.Client`` they raise TypeError rather
than send a request without credentials. Basic and Bearer work with either.
"""

from __future__ import annotations

from typing import assert_never

import httpx

from bridge.config import AuthConfig
from bridge.dicomweb.auth.aws import AwsSigV4Auth
from bridge.dicomweb.auth.base import TokenEndpointError
from bridge.dicomweb.auth.google import GoogleAuth
from bridge.dicomweb.auth.oauth2 import OAuth2ClientCredentials
from bridge.dicomweb.auth.secrets import BearerAuth, SecretBasicAuth, read_secret

__all__ = [
    "AwsSigV4Auth",
    "BearerAuth",
    "GoogleAuth",
    "OAuth2ClientCredentials",
    "SecretBasicAuth",
    "TokenEndpointError",
    "build_auth",
    "read_secret",
]


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
