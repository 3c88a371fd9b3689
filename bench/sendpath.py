#!/usr/bin/env python3
"""CPU per C-STORE sub-operation of the bridge's three send paths, to dcmtk's storescp.

    python bench/sendpath.py [--count 300] [--paths lean,dul,stock]

One association from this process (prepared as the bridge prepares its associations,
TCP_NODELAY set) to ``storescp --ignore`` (TCP_NODELAY=1) sends the same ~0.5 MB CT
instance `count` times on each path: ``lean`` (PDUs straight to the socket, the response
read from it), ``dul`` (the same pre-encoded PDUs through pynetdicom's DUL queue and state
machine), ``stock`` (pynetdicom's ``send_c_store`` of a decoded pydicom Dataset). It prints
this process's CPU time per C-STORE (every thread: the DUL's too), which stays meaningful
when other work shares the machine, and the wall-clock rate, which does not.
"""

# ruff: noqa: E402 - the repository root must be on sys.path before the project imports

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pydicom import Dataset, dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from bench.data import InstanceFactory, PixelPool, Study
from bridge.dimse import adapter
from bridge.dimse.fastsend import EncodedInstance, send_encoded
from bridge.dimse.server import configure_pynetdicom
from tests.integration.tools import free_port, storescp

HOST = "127.0.0.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
PATHS = ("lean", "dul", "stock")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _on_open(event: Any) -> None:
    adapter.set_nodelay(event.assoc)
    adapter.prepare(event.assoc)


@contextmanager
def _without_lean(off: bool) -> Iterator[None]:
    """The lean path made unavailable, so ``send_encoded`` goes through the DUL."""
    stock = adapter.lean_unavailable
    if off:
        adapter.lean_unavailable = lambda assoc: "off for the benchmark"
    try:
        yield
    finally:
        adapter.lean_unavailable = stock


def measure(port: int, path: str, payload: bytes, count: int) -> tuple[float, float]:
    """(CPU ms per C-STORE, C-STOREs per second) of `count` sends on `path`."""
    ae = AE(ae_title="SENDBENCH")
    ae.maximum_pdu_size = 16382
    ae.add_requested_context(CTImageStorage, [EXPLICIT_LE])
    assoc = ae.associate(
        HOST, port, ae_title="STORESCP", evt_handlers=[(evt.EVT_CONN_OPEN, _on_open)]
    )
    if not assoc.is_established:
        raise SystemExit(f"cannot associate with storescp on port {port}")
    time.sleep(0.05)  # the DUL's first pass, which engages the lean path
    instance = EncodedInstance(payload)
    dataset: Dataset = dcmread(BytesIO(payload))
    send: Callable[[int], Dataset]
    if path == "stock":
        send = lambda msg_id: assoc.send_c_store(dataset, msg_id=msg_id)  # noqa: E731
    else:
        send = lambda msg_id: send_encoded(assoc, instance, msg_id=msg_id)  # noqa: E731
    try:
        with (
            _without_lean(path == "dul"),
            adapter.reactor_paused(assoc),
            adapter.lean_sending(assoc),
        ):
            cpu, wall = _cpu(), time.perf_counter()
            for msg_id in range(1, count + 1):
                status = send(msg_id)
                if int(status.get("Status", 0xFFFF)) != 0:
                    raise SystemExit(f"{path}: C-STORE {msg_id} answered {status}")
            cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    finally:
        assoc.release()
    return cpu / count * 1000, count / wall


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/sendpath.py", description=__doc__)
    parser.add_argument("--count", type=int, default=300, help="C-STOREs per path")
    parser.add_argument(
        "--paths", default=",".join(PATHS), help="comma-separated, of " + ",".join(PATHS)
    )
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    if any(p not in PATHS for p in paths) or args.count < 1:
        parser.error(f"--paths: some of {', '.join(PATHS)}; --count at least 1")
    configure_pynetdicom()  # as the bridge runs: pynetdicom's own logging off
    payload = InstanceFactory(Study("SENDPATH", 1), PixelPool(), 1).encode(1)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sendpath-") as tmp:
        work = Path(tmp)
        with storescp(port, work, work / "storescp.log", "--ignore", "-aet", "STORESCP"):
            print(f"{len(payload) / 1e6:.2f} MB instance, {args.count} C-STOREs per path")
            for path in paths:
                ms, rate = measure(port, path, payload, args.count)
                print(f"{path:>6}: {ms:5.2f} ms CPU per C-STORE   {rate:7.0f} C-STORE/s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
