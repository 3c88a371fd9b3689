"""The store-and-forward rows (issue 12): C-STORE into the spool, and how fast it drains.

- ``cstore.spool.N``: storescu → bridge in spool mode (Orthanc on loopback), timed until
  the last C-STORE response, against ``cstore.native.N`` (storescu → Orthanc).
- ``cstore.latency-direct.N`` / ``cstore.latency-spool.N``: the same with the latency
  proxy (+40 ms per HTTP request) between the bridge and Orthanc, direct vs spool mode.
- ``drain.*``: a spool of N instances filled beforehand (by a bridge whose server does
  not answer), then a bridge started on it: seconds from its listening to the last
  instance done, and instances/s, at 0 and +40 ms, in batches of 20 and one per request.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.clients import storescu
from bench.common import BRIDGE_AET, BenchError, log
from bench.data import Study, delete_study, study_instance_count
from bridge.config import load_config
from bridge.spool import admin
from bridge.spool.index import INDEX_NAME, Index
from tests.integration.bridge_runner import BridgeProcess
from tests.integration.orthanc import OrthancServer
from tests.integration.tools import free_port

if TYPE_CHECKING:
    from bench.scenarios import Bench

TARGETS = {
    "store_spool": ">= 1.0x storescu straight to Orthanc",
    "store_spool_latency": ">= 5x direct mode, +40 ms",
    "drain_batching": ">= 2x one instance per request, +40 ms",
}


def spool_store(spool_dir: Path, **store: Any) -> dict[str, Any]:
    return {"mode": "spool", "spool_dir": str(spool_dir), "retry_initial": 0.2, **store}


def wait_drained(spool_dir: Path, expected_done: int, timeout: float = 600.0) -> float:
    """Poll the index until `expected_done` rows are done and none waits; the time then."""
    index = Index(spool_dir / INDEX_NAME, create=False)
    deadline = time.monotonic() + timeout
    try:
        while True:
            counts = index.summary().counts
            waiting = counts["queued"] + counts["uploading"] + counts["failed"]
            if counts["done"] >= expected_done and waiting == 0:
                return time.perf_counter()
            if counts["dead"]:
                raise BenchError(f"spool {spool_dir}: {counts['dead']} dead")
            if time.monotonic() > deadline:
                raise BenchError(f"spool {spool_dir} not drained: {counts}")
            time.sleep(0.02)
    finally:
        index.close()


def phase_spool(bench: Bench, orthanc: OrthancServer, study: Study, files: list[Path]) -> None:
    o, lab = bench.o, bench.lab
    n = study.count
    ms = o.latency_ms
    root = lab.workdir / "spools"
    log(f"C-STORE in spool mode: storescu with {n} files, and the drain, at 0 and +{ms:.0f} ms")
    delayed = lab.start_proxy(ms / 1000.0)
    url = orthanc.dicomweb_url
    slow_url = f"{delayed.url}/dicom-web"
    spool_local = lab.start_bridge("bridge-spool", url, 8, store=spool_store(root / "local"))
    spool_slow = lab.start_bridge(
        "bridge-spool-latency", slow_url, 8, store=spool_store(root / "latency")
    )
    direct_slow = lab.start_bridge("bridge-direct-latency", slow_url, 8)
    done = {"local": 0, "latency": 0}

    def store(key: str, label: str, bridge: BridgeProcess, spool: str | None) -> None:
        delete_study(orthanc, study)
        pids = {"bridge": bridge.pid, "orthanc": bench.orthanc_pid}
        bench.measure(
            f"cstore.{key}.{n}",
            f"C-STORE {n}: {label}",
            study,
            pids,
            lambda: storescu(bridge.port, BRIDGE_AET, files, bench.scratch),
        )
        if spool is not None:
            done[spool] += n
            wait_drained(root / spool, done[spool])
        if study_instance_count(orthanc, study) != n:
            raise BenchError(f"C-STORE via {key}: not all {n} instances in Orthanc")

    def drain(key: str, label: str, target_url: str, batch: int) -> None:
        delete_study(orthanc, study)
        spool_dir = root / f"drain-{key}"
        dead_url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
        filler = lab.start_bridge(f"fill-{key}", dead_url, 8, store=spool_store(spool_dir))
        storescu(filler.port, BRIDGE_AET, files, bench.scratch)
        lab.stop_bridge(filler)
        config = load_config(filler.config_path)
        admin.retry(config, uids=None, out=io.StringIO(), err=io.StringIO())  # due now
        started: list[float] = []

        def once() -> float:
            bridge = lab.start_bridge(
                f"drain-{key}",
                target_url,
                8,
                store=spool_store(spool_dir, batch_max_instances=batch),
            )
            started.append(time.perf_counter())
            finished = wait_drained(spool_dir, n)
            lab.stop_bridge(bridge)
            return finished - started[-1]

        bench.measure(f"drain.{key}.{n}", f"spool drain {n}: {label}", study, {}, once)
        if study_instance_count(orthanc, study) != n:
            raise BenchError(f"drain {key}: not all {n} instances in Orthanc")

    for rep in range(o.reps):
        store("spool", "storescu -> bridge spool mode", spool_local, "local")
        store("latency-direct", f"storescu -> bridge direct +{ms:.0f} ms", direct_slow, None)
        store("latency-spool", f"storescu -> bridge spool +{ms:.0f} ms", spool_slow, "latency")
        drain("batch", "batches of 20, 0 ms", url, 20)
        drain("latency-batch", f"batches of 20, +{ms:.0f} ms", slow_url, 20)
        drain("latency-single", f"1 per request, +{ms:.0f} ms", slow_url, 1)
        log(f"  round {rep + 1}/{o.reps} done (spool C-STORE and drains)")
    delete_study(orthanc, study)
    for bridge in (direct_slow, spool_slow, spool_local):
        lab.stop_bridge(bridge)
    delayed.stop()


def spool_ratios(bench: Bench) -> None:
    r, n, ms = bench.results, bench.o.store, bench.o.latency_ms
    r.ratio(
        f"store_spool.{n}",
        f"C-STORE {n} spool mode / storescu -> Orthanc",
        f"cstore.spool.{n}",
        f"cstore.native.{n}",
        1.0,
        TARGETS["store_spool"],
    )
    r.ratio(
        f"store_spool_latency.{n}",
        f"C-STORE {n} +{ms:.0f} ms: spool / direct mode",
        f"cstore.latency-spool.{n}",
        f"cstore.latency-direct.{n}",
        5.0,
        TARGETS["store_spool_latency"],
    )
    r.ratio(
        f"drain_batching.{n}",
        f"spool drain {n} +{ms:.0f} ms: batches of 20 / 1 per request",
        f"drain.latency-batch.{n}",
        f"drain.latency-single.{n}",
        2.0,
        TARGETS["drain_batching"],
    )
    r.ratio(
        f"drain_latency.{n}",
        f"spool drain {n}: +{ms:.0f} ms / 0 ms, batches of 20",
        f"drain.latency-batch.{n}",
        f"drain.batch.{n}",
        None,
        "informative: what the latency costs the drain",
    )
