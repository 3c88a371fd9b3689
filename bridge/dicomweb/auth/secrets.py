"""Secrets read per request (inline, environment, or a file re-read on rotation); Basic, Bearer."""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Generator
from pathlib import Path

import httpx

from bridge.config import Secret
from bridge.dicomweb.auth.base import AUTH_SOURCE
from bridge.errors import ConfigError

LOGGER = logging.getLogger(__name__)

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


class SecretBasicAuth(httpx.Auth):
    """HTTP Basic whose password comes from a Secret, read per request (rotation works).

    A plain ``auth_flow`` (httpx's ``async_auth_flow`` runs it on the event loop): the
    only I/O is a ``stat`` of a password file (the content is cached), too cheap to hand
    to a thread.
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
