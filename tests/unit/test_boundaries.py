"""Import boundaries, over every module of each package.

translate/ is pure (neither httpx nor pynetdicom), dicomweb/ is the HTTP side and never loads
pynetdicom, ops/ needs only prometheus-client (neither httpx nor pynetdicom).

Each package is checked in a fresh interpreter, since this test process has imported
everything already; every module of the package is imported there (found with pkgutil, so a
new module is checked without editing this test) before sys.modules is read.
"""

from __future__ import annotations

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
