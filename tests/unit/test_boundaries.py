"""Import boundaries, over every module of each package.

translate/ is pure (neither httpx nor pynetdicom), dicomweb/ is the HTTP side and never loads
pynetdicom, ops/ needs only prometheus-client (neither httpx nor pynetdicom).

Each package is checked in a fresh interpreter, since this test process has imported
everything already; every module of the package is imported there (found with pkgutil, so a
new module is checked without editing this test) before sys.modules is read.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The probe prints {"modules": [...imported...], "loaded": [...top-level packages loaded...]}.
_PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
modules = [sys.argv[1]]
for info in pkgutil.walk_packages(package.__path__, prefix=sys.argv[1] + "."):
    importlib.import_module(info.name)
    modules.append(info.name)
loaded = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps({"modules": modules, "loaded": loaded}))
"""


def import_every_module(package: str) -> tuple[list[str], set[str]]:
    """(modules of `package` imported, top-level names in sys.modules afterwards)."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PROBE), package],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    return list(report["modules"]), set(report["loaded"])


def package_modules(package: str) -> list[str]:
    """Every module file under bridge/<package>, as dotted names (what the probe must see)."""
    root = REPO / Path(*package.split("."))
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return sorted(names)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("bridge.translate", {"httpx", "httpcore", "pynetdicom"}),
        ("bridge.dicomweb", {"pynetdicom"}),
        ("bridge.ops", {"httpx", "httpcore", "pynetdicom"}),
    ],
)
def test_package_stays_inside_its_boundary(package: str, forbidden: set[str]) -> None:
    imported, loaded = import_every_module(package)
    # Not vacuous: every module file of the package was imported in the probe.
    assert sorted(imported) == package_modules(package)
    assert sorted(loaded & forbidden) == []


def test_dicomweb_probe_is_not_vacuous() -> None:
    """The dicomweb probe does load httpx, so its empty pynetdicom set means something."""
    _, loaded = import_every_module("bridge.dicomweb")
    assert "httpx" in loaded


# --- pynetdicom internals: bridge/dimse/adapter.py only --------------------------------

ADAPTER = "bridge/dimse/adapter.py"
# pynetdicom's modules below its public API (AE, evt, events, presentation, sop_class,
# status, dsutils, dimse_primitives, transport's servers): the DUL, ACSE, state machine,
# PDUs, the DIMSE provider and messages, timers, and every private module.
INTERNAL_MODULES = {
    "acse",
    "dimse",
    "dimse_messages",
    "dul",
    "fsm",
    "pdu",
    "pdu_items",
    "pdu_primitives",
    "timer",
}
# Attributes that exist only on pynetdicom's internal objects.
INTERNAL_ATTRIBUTES = {
    "acse",
    "artim_timer",
    "cancel_req",
    "dul",
    "event_queue",
    "msg_queue",
    "state_machine",
    "to_provider_queue",
    "to_user_queue",
}
# Underscore names that are public API (namedtuple's).
PUBLIC_UNDERSCORE = {"_asdict", "_fields", "_make", "_replace"}


def _internal_name(module: str) -> bool:
    return module.startswith("_") or module in INTERNAL_MODULES


def pynetdicom_internals(source: str) -> list[str]:
    """Every use of a pynetdicom internal in `source`: imports of its private or internal
    modules, underscore attributes of anything but ``self``/``cls``, attributes only its
    internal objects have, and ``X.dimse`` where X is not ``self`` or a config section."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            names = [alias.name for alias in node.names]
            if parts[0] == "pynetdicom" and (
                any(_internal_name(p) for p in parts[1:])
                or (
                    len(parts) == 1
                    and any(n.startswith("_") or n in INTERNAL_MODULES for n in names)
                )
            ):
                found.append(f"{node.lineno}: from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "pynetdicom" and any(
                    p.startswith("_") or p in INTERNAL_MODULES for p in parts[1:]
                ):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.Attribute):
            base, name = ast.unparse(node.value), node.attr
            private = name.startswith("_") and not name.startswith("__")
            if private and base not in ("self", "cls") and name not in PUBLIC_UNDERSCORE:
                found.append(f"{node.lineno}: {base}.{name}")
            elif name in INTERNAL_ATTRIBUTES:
                found.append(f"{node.lineno}: {base}.{name}")
            elif name == "dimse" and base != "self" and not base.endswith("config"):
                found.append(f"{node.lineno}: {base}.{name}")
    return found


def _pynetdicom_side() -> list[Path]:
    """bridge/dimse/ and every other module that imports pynetdicom."""
    paths = []
    for path in sorted((REPO / "bridge").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "bridge/dimse/" in path.relative_to(REPO).as_posix() or "pynetdicom" in text:
            paths.append(path)
    return paths


def test_only_the_adapter_touches_pynetdicom_internals() -> None:
    paths = _pynetdicom_side()
    checked = [p.relative_to(REPO).as_posix() for p in paths]
    assert ADAPTER in checked and "bridge/dimse/retrieval/send.py" in checked
    offenders = {
        rel: uses
        for path, rel in zip(paths, checked, strict=True)
        if rel != ADAPTER and (uses := pynetdicom_internals(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_the_internals_check_sees_the_adapters_uses() -> None:
    """Not vacuous: the adapter's own uses are all found."""
    uses = pynetdicom_internals((REPO / ADAPTER).read_text(encoding="utf-8"))
    text = "\n".join(uses)
    for expected in (
        "from pynetdicom import _config",
        "from pynetdicom.pdu_primitives import",
        "assoc._reactor_checkpoint",
        "assoc.dul",
        "assoc.dimse",
        "dul.state_machine",
        "assoc.acse",
    ):
        assert expected in text, expected


@pytest.mark.parametrize(
    "snippet",
    [
        "from pynetdicom import _config",
        "import pynetdicom._handlers",
        "from pynetdicom.dul import DULServiceProvider",
        "from pynetdicom import dimse_messages",
        "event.assoc._get_valid_context(a, b, c)",
        "assoc.dul.socket",
        "event.assoc.acse.is_aborted()",
        "assoc.dimse.msg_queue.get()",
    ],
)
def test_the_internals_check_flags(snippet: str) -> None:
    assert pynetdicom_internals(snippet) != []


@pytest.mark.parametrize(
    "snippet",
    [
        "from pynetdicom import AE, evt, build_context",
        "from pynetdicom.dimse_primitives import C_STORE",
        "ctx.config.dimse.ae_title",
        "self._lock.acquire()",
        "parts._replace(netloc='x')",
        "assoc.requestor.ae_title",
    ],
)
def test_the_internals_check_allows(snippet: str) -> None:
    assert pynetdicom_internals(snippet) == []
