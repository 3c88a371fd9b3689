"""Import boundaries: translation stays free of HTTP and DIMSE, the client free of DIMSE.

Checked in a fresh interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_translation_imports_neither_httpx_nor_pynetdicom() -> None:
    result = run_python(
        """
        import sys
        import bridge.translate.query, bridge.translate.status
        leaked = sorted(
            name for name in sys.modules
            if name.split(".")[0] in ("httpx", "httpcore", "pynetdicom")
        )
        print(",".join(leaked))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_dicomweb_client_does_not_import_pynetdicom() -> None:
    result = run_python(
        """
        import sys
        import bridge.dicomweb.client
        assert "httpx" in sys.modules  # the check below is not vacuous
        leaked = sorted(name for name in sys.modules if name.split(".")[0] == "pynetdicom")
        print(",".join(leaked))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_ops_imports_neither_pynetdicom_nor_httpx() -> None:
    result = run_python(
        """
        import sys
        import bridge.ops.http, bridge.ops.logs, bridge.ops.metrics
        assert "prometheus_client" in sys.modules  # the check below is not vacuous
        leaked = sorted(
            name for name in sys.modules
            if name.split(".")[0] in ("httpx", "httpcore", "pynetdicom")
        )
        print(",".join(leaked))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
