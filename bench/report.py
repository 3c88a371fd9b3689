"""The results (rows of runs, checks against targets) and their table and JSON forms."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.clients import tool
from bench.data import Study
from bench.options import Options


@dataclass
class Row:
    """One throughput measurement: the same operation repeated, median reported."""

    key: str
    label: str
    instances: int
    megabytes: float
    runs: list[float] = field(default_factory=list)
    # CPU seconds per run of each process involved: bridge, orthanc, proxy, client.
    cpu: dict[str, list[float]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.seconds if self.runs else float("nan")

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds if self.runs else float("nan")

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "instances": self.instances,
            "megabytes": round(self.megabytes, 3),
            "seconds": _round(self.seconds),
            "instances_per_s": _round(self.inst_per_s, 1),
            "mb_per_s": _round(self.mb_per_s, 1),
            "runs": [_round(r) for r in self.runs],
            "cpu_ms_per_instance": self.cpu_ms_per_instance(),
        }

    def cpu_ms_per_instance(self) -> dict[str, float]:
        """Median CPU time per instance (per match for C-FIND) of each process, in ms."""
        return {
            name: round(statistics.median(values) * 1000 / self.instances, 2)
            for name, values in self.cpu.items()
            if values
        }


@dataclass
class Check:
    """A figure compared with its target."""

    key: str
    label: str
    value: float
    unit: str
    target: str
    ok: bool | None  # None: informative only
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "value": _round(self.value),
            "unit": self.unit,
            "target": self.target,
            "met": self.ok,
            "detail": self.detail,
        }


def _round(value: float, digits: int = 4) -> float | None:
    return None if value != value else round(value, digits)  # NaN -> null


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.checks: list[Check] = []
        self.figures: dict[str, Any] = {}
        self.loads: list[dict[str, Any]] = []

    def row(self, key: str, label: str, study: Study) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, label, study.count, study.megabytes)
        return self.rows[key]

    def ratio(
        self, key: str, label: str, num: str, den: str, target: float | None, tgt: str
    ) -> None:
        """Throughput ratio rows[num] / rows[den], at least `target` (None: informative)."""
        a, b = self.rows.get(num), self.rows.get(den)
        if a is None or b is None or not a.runs or not b.runs:
            return
        value = a.inst_per_s / b.inst_per_s
        ok = None if target is None else value >= target
        detail = f"{a.inst_per_s:.1f} / {b.inst_per_s:.1f} inst/s"
        self.checks.append(Check(key, label, value, "x", tgt, ok, detail))


def _cpu_text(row: Row) -> str:
    short = {"bridge": "b", "orthanc": "o", "proxy": "p", "client": "c"}
    cpu = row.cpu_ms_per_instance()
    return " ".join(f"{short.get(k, k)}{v:.1f}" for k, v in cpu.items())


def report(results: Results, options: Options, started: float, environment: dict[str, Any]) -> str:
    lines: list[str] = []
    width = max([len(row.label) for row in results.rows.values()] + [20])
    lines.append("")
    lines.append(
        f"{'measurement':<{width}}  {'inst':>5}  {'MB':>6}  {'s median':>8}  "
        f"{'inst/s':>7}  {'MB/s':>6}  {'CPU ms/inst':<22}  runs (s)"
    )
    lines.append("-" * (width + 80))
    for row in results.rows.values():
        runs = " ".join(f"{r:.3f}" for r in row.runs)
        mb = f"{row.megabytes:>6.1f}" if row.megabytes else f"{'-':>6}"
        mbs = f"{row.mb_per_s:>6.1f}" if row.megabytes else f"{'-':>6}"
        lines.append(
            f"{row.label:<{width}}  {row.instances:>5}  {mb}  {row.seconds:>8.3f}  "
            f"{row.inst_per_s:>7.1f}  {mbs}  {_cpu_text(row):<22}  {runs}"
        )
    lines.append(
        "CPU ms/inst: CPU time per instance (per match for C-FIND), median over runs, of "
        "b=bridge o=Orthanc p=proxy c=client (pynetdicom SCU in this process, or the dcmtk tool)"
    )
    lines.append("")
    cwidth = max([len(c.label) for c in results.checks] + [20])
    lines.append(f"{'ratio / figure':<{cwidth}}  {'value':>9}  {'met':>4}  target; detail")
    lines.append("-" * (cwidth + 60))
    for check in results.checks:
        met = "-" if check.ok is None else ("yes" if check.ok else "NO")
        value = (
            f"{check.value:.2f}{check.unit}"
            if check.unit == "x"
            else (f"{check.value:.1f} {check.unit}")
        )
        lines.append(
            f"{check.label:<{cwidth}}  {value:>9}  {met:>4}  {check.target}; {check.detail}"
        )
    lines.append("")
    lines.append(
        f"total {time.perf_counter() - started:.0f} s; reps {options.reps}; load average "
        f"{environment['loadavg_start']} at start, "
        f"{tuple(round(x, 2) for x in os.getloadavg())} at the end"
    )
    return "\n".join(lines)


def write_json(results: Results, options: Options, environment: dict[str, Any]) -> Path:
    checks = [c.as_json() for c in results.checks]
    data = {
        "environment": environment,
        "options": {
            "sizes": options.sizes,
            "big": options.big,
            "reps": options.reps,
            "find_studies": options.find_studies,
            "store": options.store,
            "latency_ms": options.latency_ms,
            "latency_size": options.latency_size,
            "quick": options.quick,
        },
        "rows": [row.as_json() for row in results.rows.values()],
        "checks": checks,
        "figures": results.figures,
    }
    path = options.json_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def environment_info() -> dict[str, Any]:
    import pydicom
    import pynetdicom

    dcmtk_version = ""
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [tool("getscu"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        dcmtk_version = out.splitlines()[0].strip() if out else ""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": tuple(round(x, 2) for x in os.getloadavg()),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "httpx": httpx.__version__,
        "dcmtk": dcmtk_version,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
