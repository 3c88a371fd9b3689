#!/usr/bin/env python3
"""CPU per WADO-RS answer of the bridge's HTTP clients: stock httpx vs the h11 transport.

Standalone, from the repository root::

    python bench/http_cpu.py                 # 100 instances x 5 rounds, 4 concurrent
    python bench/http_cpu.py --instances 40 --rounds 2

One Orthanc (DICOMweb plugin) is started in a temporary directory and loaded with
generated ~0.5 MB CT instances (bench/data.py). Each client fetches every instance with
per-instance WADO-RS, 4 requests at a time, on loopback, in interleaved rounds. The
figure is this process's CPU time (``time.process_time``: user + system, all threads)
per answer, the median over the rounds: it stays meaningful when other work shares the
cores, when wall-clock figures do not. Orthanc's CPU is not counted.

Clients (each an ``httpx.AsyncClient`` made as the bridge makes it):

- ``raw``: GET and read the body with ``aiter_raw`` (the HTTP stack alone);
- ``bridge``: ``DicomwebClient.retrieve_instance`` (adds the multipart decoding, retries
  and metrics wrapper the bridge runs per instance);

each over ``httpx`` (httpx's default transport, httpcore + anyio; ``retrieve.fast_http =
false``) and over ``h11`` (bridge/dicomweb/transport.py, the default).
"""

# ruff: noqa: E402 - the repository root must be on sys.path before the project imports

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import MB
from bench.data import PixelPool, Study, load_study
from bridge.config import DicomwebConfig
from bridge.dicomweb.client import DicomwebClient, make_client
from bridge.models import InstanceRef
from tests.integration.orthanc import OrthancServer

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
HEADERS = {"Accept": ACCEPT, "Accept-Encoding": "identity"}
CONCURRENCY = 4

Fetch = Callable[[DicomwebClient, InstanceRef], Awaitable[int]]


async def fetch_raw(client: DicomwebClient, ref: InstanceRef) -> int:
    size = 0
    async with client.http.stream("GET", client.instance_url(ref), headers=HEADERS) as rsp:
        rsp.raise_for_status()
        async for chunk in rsp.aiter_raw():
            size += len(chunk)
    return size


async def fetch_bridge(client: DicomwebClient, ref: InstanceRef) -> int:
    return len(await client.retrieve_instance(ref))


async def one_round(client: DicomwebClient, refs: Sequence[InstanceRef], fetch: Fetch) -> int:
    """Every instance once, CONCURRENCY at a time; the bytes received."""
    queue = list(reversed(refs))
    total = 0

    async def worker() -> None:
        nonlocal total
        while queue:
            size = await fetch(client, queue.pop())
            total += size

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return total


async def measure(
    url: str, refs: Sequence[InstanceRef], rounds: int
) -> dict[str, tuple[list[float], float]]:
    """{row: (CPU ms per answer of each round, MB per answer)}."""
    config = DicomwebConfig(url=url, max_connections=CONCURRENCY)
    clients = {
        "httpx": make_client(config, fast_http=False),
        "h11": make_client(config, fast_http=True),
    }
    fetches: dict[str, Fetch] = {"raw": fetch_raw, "bridge": fetch_bridge}
    results: dict[str, tuple[list[float], float]] = {}
    try:
        # Warm-up: connections open, code paths and Orthanc's cache warm.
        for client in clients.values():
            for fetch in fetches.values():
                await one_round(client, refs[: CONCURRENCY * 2], fetch)
        for _ in range(rounds):
            for fetch_name, fetch in fetches.items():
                for client_name, client in clients.items():
                    started = time.process_time()
                    size = await one_round(client, refs, fetch)
                    cpu_ms = (time.process_time() - started) * 1000 / len(refs)
                    row = f"{fetch_name} over {client_name}"
                    results.setdefault(row, ([], size / len(refs) / MB))[0].append(cpu_ms)
    finally:
        for client in clients.values():
            await client.aclose()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/http_cpu.py", description=__doc__)
    parser.add_argument("--instances", type=int, default=100, help="instances (~0.5 MB each)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per client (median)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dimse-bridge-httpcpu-") as workdir:
        orthanc = OrthancServer(Path(workdir) / "orthanc")
        orthanc.start()
        try:
            study = load_study(orthanc, Study("httpcpu", args.instances), PixelPool(), 0)
            refs = [
                InstanceRef(study.study_uid, study.series_uid, study.instance_uid(n))
                for n in range(1, study.count + 1)
            ]
            results = asyncio.run(measure(orthanc.dicomweb_url, refs, args.rounds))
        finally:
            orthanc.stop()
    print(
        f"\nCPU ms per WADO-RS answer, this process, {CONCURRENCY} concurrent, loopback; "
        f"median of {args.rounds} rounds of {len(refs)}"
    )
    print(f"{'client':<20} {'MB/answer':>9} {'CPU ms':>8}   rounds")
    for row, (cpu, size) in results.items():
        rounds = " ".join(f"{value:.2f}" for value in cpu)
        print(f"{row:<20} {size:>9.2f} {statistics.median(cpu):>8.2f}   {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
