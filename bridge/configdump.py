"""The effective Config written back as TOML (``dimse-bridge config``), secrets masked.

The output names every key with its effective value, defaults filled in, and parses back
(``parse_config``) to the same Config: except that an inline secret (``password``,
``token``, ``client_secret``, a password in a URL) reads ``***``. Secrets taken from the
environment or a file are shown as that reference (``password_env = "VAR"``,
``token_file = "/run/secrets/token"``), never read.

The tables are walked from the dataclasses themselves, a field's name being its TOML key
(config.py's convention), so a key added to config.py appears here without an edit; a
field of a type this module cannot write fails loudly (a unit test dumps the defaults).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bridge.config import Config, Secret
from bridge.profiles import Capabilities

MASK = "***"

# Fields whose values are URLs that may carry a password (httpx sends user:password@
# as HTTP Basic).
_URL_KEYS = frozenset({"url", "token_url"})
# Config fields that are not tables of their own name.
_SPECIAL = frozenset({"peers", "backends", "source"})


def dump_config(config: Config, header: str = "") -> str:
    """`config` as TOML: every key, its effective value, inline secrets masked."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for f in dataclasses.fields(config):
        if f.name not in _SPECIAL:
            _table(lines, f.name, getattr(config, f.name))
    for backend in config.backends:
        name = f"backends.{toml_key(backend.name)}"
        _table(lines, name, backend.dicomweb, ae_title=backend.ae_title)
    if not config.peers:
        lines += ["# [[peers]]: none configured", ""]
    for peer in config.peers:
        lines.append("[[peers]]")
        lines += _scalars(peer)
        lines.append("")
    return "\n".join(lines)


def _table(lines: list[str], name: str, obj: Any, **first: Any) -> None:
    """``[name]``, its keys (after `first`), then its sub-tables: TOML needs that order."""
    lines.append(f"[{name}]")
    lines += [f"{toml_key(k)} = {_value(v)}" for k, v in first.items()]
    lines += _scalars(obj)
    lines.append("")
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, Secret):
            _table(lines, f"{name}.{toml_key(f.name)}", value)


def _scalars(obj: Any) -> list[str]:
    lines: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Secret):
            lines += [
                f"{f.name} = {_value(MASK if value.value else '')}",
                f"{f.name}_env = {_value(value.env)}",
                f"{f.name}_file = {_value(value.file)}",
            ]
        elif dataclasses.is_dataclass(value):
            continue  # a sub-table, written after the keys
        elif value is None and isinstance(obj, Capabilities):
            lines.append(f'{toml_key(f.name)} = ["*"]')  # any attribute or syntax
        elif value is None:
            lines.append(f"# {f.name}: not set")
        else:
            if f.name in _URL_KEYS and isinstance(value, str):
                value = mask_url(value)
            lines.append(f"{toml_key(f.name)} = {_value(value)}")
    return lines


def mask_url(url: str) -> str:
    """`url` with the password of its userinfo (``user:password@``) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # config.py refuses inf and nan, which repr would not write as TOML
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, frozenset):
        return _value(sorted(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"configdump cannot write {type(value).__name__} as TOML: {value!r}")


def _string(value: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped (\\uXXXX)."""
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    """`key` bare when TOML allows it, else quoted."""
    bare = key != "" and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else _string(key)
