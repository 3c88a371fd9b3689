"""What the auth types share: the token-endpoint error, the async-only base, body checks, extras."""

from __future__ import annotations

import importlib
from collections.abc import Generator
from typing import Any

import httpx

from bridge.errors import ConfigError, DicomwebHTTPError

AUTH_SOURCE = "[dicomweb.auth]"


class TokenEndpointError(DicomwebHTTPError):
    """The token endpoint did not give a token.

    A refusal (4xx, a redirect) is reported as status 401 so that the bridge answers it
    like any other authentication failure; a 5xx or 429 keeps its status (transient).
    """


class AsyncOnlyAuth(httpx.Auth):
    """An ``httpx.Auth`` whose flow awaits (asyncio locks, worker threads): every client
    of the bridge is an ``httpx.AsyncClient`` (``bridge/loop_thread.py``), so only
    ``async_auth_flow`` is implemented.

    httpx's default ``sync_auth_flow`` would run the base ``auth_flow`` and send the
    request without credentials; a synchronous client fails here instead.
    """

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise TypeError(
            f"{type(self).__name__} works with an httpx.AsyncClient only, not an httpx.Client"
        )


# The underscored helpers below are for the modules of this package only (not exported
# by bridge.dicomweb.auth); their names are those the single auth.py module used.


def _body_or_none(request: httpx.Request) -> bytes | None:
    """The request body if it is in memory, None for a streamed (not yet read) one."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return None


def _replayable(request: httpx.Request) -> bool:
    # A streamed body (STOW-RS from disk) was consumed by the first attempt.
    return _body_or_none(request) is not None


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
