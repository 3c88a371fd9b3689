"""The command line: `python bench/run.py` options and their --quick defaults."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO_ROOT
from bench.processes import proxy_child


@dataclass
class Options:
    """The parsed command line, with --quick's defaults applied."""

    sizes: list[int]
    big: int
    reps: int
    find_studies: int
    store: int
    latency_ms: float
    latency_size: int
    huge: int
    json_path: Path
    keep: bool
    quick: bool


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Benchmark dimse-bridge against Orthanc's own DIMSE services (loopback).",
    )
    parser.add_argument("--sizes", help="C-GET study sizes in instances (default 300,1000)")
    parser.add_argument("--big", type=int, help="instances of the ~1 GB study (default 2000)")
    parser.add_argument("--reps", type=int, help="repetitions per figure, median (default 3)")
    parser.add_argument("--find-studies", type=int, help="tiny studies for C-FIND (default 1000)")
    parser.add_argument("--store", type=int, help="instances for C-STORE (default: first size)")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="added per HTTP request")
    parser.add_argument(
        "--latency-size", type=int, help="study size of the latency rows (default: first size)"
    )
    parser.add_argument(
        "--huge",
        type=int,
        help="frames (2 MiB each) of the huge-instance RSS row (default 960, ~2 GB; 0 = none)",
    )
    parser.add_argument(
        "--json", default=str(REPO_ROOT / "bench" / "results" / "latest.json"), help="output"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 60,120 / big 200 / 1 rep")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--proxy-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.proxy_child:
        sys.exit(proxy_child(args.proxy_child[0], float(args.proxy_child[1])))
    quick = bool(args.quick)
    try:
        sizes = [int(s) for s in (args.sizes or ("60,120" if quick else "300,1000")).split(",")]
    except ValueError:
        parser.error("--sizes: expected comma-separated integers, e.g. 300,1000")
    big = args.big if args.big is not None else (200 if quick else 2000)
    reps = args.reps if args.reps is not None else (1 if quick else 3)
    finds = args.find_studies if args.find_studies is not None else (200 if quick else 1000)
    store = args.store if args.store is not None else sizes[0]
    latency_size = args.latency_size if args.latency_size is not None else sizes[0]
    huge = args.huge if args.huge is not None else (0 if quick else 960)
    if min([*sizes, big, reps, finds, store, latency_size]) < 1:
        parser.error("sizes, --big, --reps, --find-studies, --store must be at least 1")
    if latency_size not in sizes:
        parser.error("--latency-size must be one of --sizes")
    return Options(
        sizes=sizes,
        big=big,
        reps=reps,
        find_studies=finds,
        store=store,
        latency_ms=args.latency_ms,
        latency_size=latency_size,
        huge=max(0, huge),
        json_path=Path(args.json),
        keep=bool(args.keep),
        quick=quick,
    )
