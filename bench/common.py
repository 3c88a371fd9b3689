"""What every bench module shares: the repository root, loopback host, AE titles, errors, log."""

from __future__ import annotations

import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCU_AET = "BENCHSCU"  # the pynetdicom SCU
GETSCU_AET = "GETSCU"
STORESCU_AET = "STORESCU"
FINDSCU_AET = "FINDSCU"
BRIDGE_AET = "DIMSE_BRIDGE"
HOST = "127.0.0.1"
MB = 1e6


class BenchError(RuntimeError):
    """A benchmark step failed (a client saw an error, a count did not add up...)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
