"""deploy/systemd/dimse-bridge.service: ``systemd-analyze verify`` clean, installed from a venv.

``systemd-analyze verify`` checks the unit's syntax and directives and that the ExecStart
binary exists. The unit is verified under a throwaway ``--root``: the unit in
etc/systemd/system, the host's own system units (the targets it orders against), and an
executable stand-in at the ExecStart path, which is where the unit's install steps put
``dimse-bridge`` (``python3 -m venv /opt/dimse-bridge``). Unknown directives are only
warnings to systemd-analyze (exit 0), so any output at all fails the test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "deploy" / "systemd" / "dimse-bridge.service"
VENV = "/opt/dimse-bridge"
HOST_UNITS = [Path("/lib/systemd/system"), Path("/usr/lib/systemd/system")]


def exec_start(text: str) -> str:
    match = re.search(r"^ExecStart=(\S+)", text, re.MULTILINE)
    assert match is not None, "no ExecStart="
    return match.group(1)


def verify(unit_text: str, root: Path, *, stand_in: bool = True) -> tuple[int, str]:
    """``systemd-analyze verify --root=ROOT`` of `unit_text`: exit status and output."""
    systemd_analyze = shutil.which("systemd-analyze")
    if systemd_analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: package systemd)")
    host_units = next((p for p in HOST_UNITS if (p / "sysinit.target").is_file()), None)
    if host_units is None:
        pytest.skip("no system units (sysinit.target) on this host to verify against")
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / UNIT.name).write_text(unit_text)
    if stand_in:
        binary = root / exec_start(unit_text).lstrip("/")
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
    result = subprocess.run(
        [
            systemd_analyze,
            "verify",
            "--man=no",
            f"--root={root}",
            f"/etc/systemd/system/{UNIT.name}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, (result.stdout + result.stderr).strip()


def test_unit_verifies_clean(tmp_path: Path) -> None:
    code, output = verify(UNIT.read_text(), tmp_path)
    assert (code, output) == (0, "")


def test_verify_catches_a_misspelt_directive(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("ProtectClock=yes", "ProtectClok=yes")
    assert broken != UNIT.read_text()
    code, output = verify(broken, tmp_path)
    assert "Unknown key 'ProtectClok'" in output, (code, output)


def test_verify_catches_a_missing_binary(tmp_path: Path) -> None:
    code, output = verify(UNIT.read_text(), tmp_path, stand_in=False)
    assert code != 0 and "is not executable" in output, (code, output)


def test_unit_runs_the_venv_its_install_steps_make() -> None:
    """No pip into the system Python (Debian refuses it, PEP 668): the venv in /opt."""
    text = UNIT.read_text()
    assert exec_start(text) == f"{VENV}/bin/dimse-bridge"
    comments = [line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")]
    assert f"python3 -m venv {VENV}" in comments
    pip_lines = [line for line in comments if "pip install" in line]
    assert pip_lines and all(line.startswith(f"{VENV}/bin/pip install") for line in pip_lines)
