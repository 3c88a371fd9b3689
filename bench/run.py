#!/usr/bin/env python3
"""dimse-bridge benchmark: the bridge against Orthanc's own DIMSE services, on loopback.

Run from the repository root (Orthanc, orthanc-dicomweb, dcmtk and the package with its
test extras installed)::

    python bench/run.py                 # full run: 300 and 1,000 instance studies, ~1 GB study
    python bench/run.py --quick         # smoke run: 60/120 instances, 200 big, 1 repetition

One Orthanc (DICOMweb plugin, TCP_NODELAY=1) is started in a temporary directory and loaded
with generated CT studies (512x512x16-bit, ~0.5 MB per instance, pseudo-random pixels so
nothing compresses trivially). Every figure is the median of ``--reps`` runs; clients
discard what they receive. See bench/README.md for what each row measures and the targets.
"""

# ruff: noqa: E402 - the repository root must be on sys.path before the project imports

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

try:
    from bench.common import BenchError, log
    from bench.options import parse_args
    from bench.processes import Lab, check_prerequisites
    from bench.report import Results, environment_info, report, write_json
    from bench.scenarios import Bench
except ImportError as _exc:  # pragma: no cover - depends on the machine
    sys.exit(
        f"bench/run.py: missing prerequisite: {_exc}\n"
        "Install the package with its test extras from the repository root "
        "(python -m pip install -e '.[test]') and run this from there."
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    missing = check_prerequisites()
    if missing:
        print("bench/run.py: missing prerequisites:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = time.perf_counter()
    environment = environment_info()
    workdir = Path(tempfile.mkdtemp(prefix="dimse-bridge-bench-"))
    lab = Lab(workdir)
    results: Results | None = None
    failed = False
    try:
        bench = Bench(options, lab)
        try:
            results = bench.run()
        except Exception as exc:  # report what was measured, then fail
            failed = True
            results = bench.results
            if not isinstance(exc, BenchError):
                traceback.print_exc()
            print(f"\nbench/run.py: FAILED: {exc}", file=sys.stderr)
            lab.print_log_tails()
            bench.summarize()
    finally:
        lab.close()
        if options.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    environment["orthanc"] = results.figures.get("orthanc_version") if results else None
    if results is not None:
        print(report(results, options, started, environment))
        path = write_json(results, options, environment)
        log(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
