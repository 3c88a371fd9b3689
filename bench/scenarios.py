"""The measurements: each phase's servers, interleaved rounds, and the targets they are held to."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

from bench.clients import (
    DICOM_JSON,
    WADO_ACCEPT,
    cfind_pynetdicom,
    cget_getscu,
    cget_pynetdicom,
    storescu,
    wado_all,
)
from bench.common import BRIDGE_AET, BenchError, log
from bench.data import (
    PixelPool,
    Study,
    delete_study,
    find_study_payloads,
    large_instance,
    load_study,
    study_instance_count,
    upload,
    upload_large,
    write_study,
)
from bench.options import Options
from bench.processes import (
    Lab,
    ProxyProcess,
    client_cpu_seconds,
    cpu_seconds,
    reset_vm_hwm,
    vm_hwm_mb,
)
from bench.report import Check, Results
from bench.spool import phase_spool, spool_ratios
from bridge.translate.retrieve import INSTANCE_FIELDS
from tests.integration.bridge_runner import BridgeProcess
from tests.integration.orthanc import OrthancServer

TARGETS: dict[str, str] = {
    "cget_pynetdicom": ">= 1.0x Orthanc-native -> pynetdicom",
    "cget_getscu": ">= 0.25x Orthanc-native -> getscu (goal 0.6x)",
    "latency": ">= 5x the fetch-ahead-disabled bridge",
    "rss_big": "<= 250 MB",
    "rss_growth": "<= 1.5x the small-study figure",
    "rss_large": "<= idle + 40 MB",
    "first_store": "<= QIDO + one WADO-RS + 50 ms",
    "store": ">= 0.8x storescu straight to Orthanc",
    "find": "<= 1.5x Orthanc-native time",
}


# 40 frames of 1024 x 1024 x 16-bit: 80 MiB, above the default max_buffer_bytes (64 MiB).
LARGE_FRAMES = 40


@dataclass(frozen=True)
class Target:
    """A DIMSE server under test and the processes whose CPU time is charged to a run."""

    name: str  # key part: native, bridge, nofetch, proxy0, latency, latency-nofetch...
    label: str  # "Orthanc", "bridge", "bridge fetches=1"...
    port: int
    called: str
    pids: dict[str, int]  # bridge / orthanc / proxy


class Bench:
    """The phases of one run on the `Lab`'s processes; figures accumulate in `results`."""

    def __init__(self, options: Options, lab: Lab) -> None:
        self.o = options
        self.lab = lab
        self.results = Results()
        self.scratch = lab.workdir / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.studies: list[Study] = []
        self.orthanc_pid = 0

    # ------------------------------------------------------------------ helpers

    def measure(
        self, key: str, label: str, study: Study, pids: dict[str, int], action: Callable[[], float]
    ) -> float:
        """Run `action` (returns its seconds) and record it with the CPU each process used."""
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client_before = client_cpu_seconds()
        seconds = action()
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        cpu["client"] = client_cpu_seconds() - client_before
        row = self.results.row(key, label, study)
        row.runs.append(seconds)
        for name, used in cpu.items():
            row.cpu.setdefault(name, []).append(used)
        return seconds

    def rounds(self, scenarios: list[tuple[str, Callable[[], None]]], reps: int) -> None:
        """Run every scenario once per round, `reps` rounds (interleaved: fair under noise)."""
        for rep in range(reps):
            for _name, scenario in scenarios:
                scenario()
            log(f"  round {rep + 1}/{reps} done ({', '.join(n for n, _ in scenarios)})")

    def cget_scenarios(
        self, targets: Sequence[Target], study: Study
    ) -> list[tuple[str, Callable[[], None]]]:
        """C-GET of `study` from each target by a pynetdicom SCU and by getscu."""
        n = study.count
        scenarios: list[tuple[str, Callable[[], None]]] = []
        for t in targets:

            def pyn(t: Target = t) -> None:
                key = f"cget.{t.name}.pynetdicom.{n}"

                def once() -> float:
                    got = cget_pynetdicom(t.port, t.called, study)
                    self.results.figures.setdefault(f"first_store.{key}", []).append(
                        got.first_store
                    )
                    return got.seconds

                self.measure(key, f"C-GET {n}: {t.label} -> pynetdicom", study, t.pids, once)

            def dcmtk(t: Target = t) -> None:
                self.measure(
                    f"cget.{t.name}.getscu.{n}",
                    f"C-GET {n}: {t.label} -> getscu",
                    study,
                    t.pids,
                    lambda: cget_getscu(t.port, t.called, study, self.scratch),
                )

            scenarios += [(f"{t.name}/pynetdicom", pyn), (f"{t.name}/getscu", dcmtk)]
        return scenarios

    def bridge_target(self, name: str, label: str, bridge: BridgeProcess, **pids: int) -> Target:
        return Target(
            name,
            label,
            bridge.port,
            BRIDGE_AET,
            {"bridge": bridge.pid, "orthanc": self.orthanc_pid, **pids},
        )

    def warm_up(self, target: Target, study: Study) -> None:
        """One untimed C-GET (first association, lazy imports, HTTP connections, caches)."""
        cget_getscu(target.port, target.called, study, self.scratch)

    # ------------------------------------------------------------------ phases

    def run(self) -> Results:
        o = self.o
        orthanc = self.lab.start_orthanc()
        assert orthanc.process is not None
        self.orthanc_pid = orthanc.process.pid
        system = orthanc.client.get("/system").json()
        plugin = orthanc.client.get("/plugins/dicom-web").json()
        self.results.figures["orthanc_version"] = system.get("Version")
        self.results.figures["dicomweb_plugin_version"] = plugin.get("Version")
        log(
            f"Orthanc {system.get('Version')} (DICOMweb {plugin.get('Version')}) on "
            f"HTTP {orthanc.http_port}, DICOM {orthanc.dicom_port}; workdir {self.lab.workdir}"
        )

        pool = PixelPool()
        studies = [
            load_study(orthanc, Study(key=f"cget-{n}", count=n, description=f"CGET {n}"), pool, i)
            for i, n in enumerate(o.sizes, start=1)
        ]
        big = load_study(
            orthanc, Study(key=f"big-{o.big}", count=o.big, description="BIG"), pool, 50
        )
        started = time.perf_counter()
        count, _ = upload(orthanc, find_study_payloads(o.find_studies, pool))
        seconds = time.perf_counter() - started
        log(f"loaded {count} tiny studies for C-FIND in {seconds:.1f} s ({count / seconds:.0f}/s)")
        store_study, store_files = write_study(
            Study(key=f"store-{o.store}", count=o.store, description="STORE"),
            pool,
            60,
            self.lab.workdir / "store",
        )
        log(f"wrote {o.store} files ({store_study.megabytes:.0f} MB) for C-STORE")
        self.studies = studies

        self.phase_direct(orthanc, studies)
        self.phase_auth(pool, studies[0])
        self.phase_find(orthanc)
        self.phase_store(orthanc, store_study, store_files)
        phase_spool(self, orthanc, store_study, store_files)
        self.phase_latency(orthanc, next(s for s in studies if s.count == o.latency_size))
        self.phase_memory(orthanc, studies[0], big)
        self.phase_large(orthanc, pool, studies[0])
        if o.huge:
            self.phase_large(orthanc, pool, studies[0], o.huge)
        self.summarize()
        return self.results

    def phase_direct(self, orthanc: OrthancServer, studies: list[Study]) -> None:
        log("C-GET: Orthanc native vs bridge vs bridge without fetch-ahead")
        fast = self.lab.start_bridge("bridge", orthanc.dicomweb_url, 8)
        slow = self.lab.start_bridge("bridge-nofetch", orthanc.dicomweb_url, 1)
        targets = [
            Target(
                "native", "Orthanc", orthanc.dicom_port, orthanc.aet, {"orthanc": self.orthanc_pid}
            ),
            self.bridge_target("bridge", "bridge", fast),
            self.bridge_target("nofetch", "bridge fetches=1", slow),
        ]
        for study in studies:
            log(f"C-GET {study.count} instances ({study.megabytes:.0f} MB)")
            for target in targets:
                self.warm_up(target, study)
            self.rounds(self.cget_scenarios(targets, study), self.o.reps)
            self.reference_latency(orthanc, study)
        self.lab.stop_bridge(slow)
        self.lab.stop_bridge(fast)

    def phase_auth(self, pool: PixelPool, study: Study) -> None:
        """The same C-GET from an Orthanc that requires HTTP Basic: the HTTP fast path
        (bridge/dicomweb/transport.py) serves authenticated backends too."""
        log(f"C-GET {study.count}: bridge with [dicomweb.auth] basic, Orthanc requiring it")
        orthanc = self.lab.start_auth_orthanc()
        assert orthanc.process is not None
        load_study(orthanc, study, pool, 1)
        bridge = self.lab.start_bridge(
            "bridge-auth", orthanc.plain_dicomweb_url, 8, basic_auth=True
        )
        target = Target(
            "auth",
            "bridge basic auth",
            bridge.port,
            BRIDGE_AET,
            {"bridge": bridge.pid, "orthanc": orthanc.process.pid},
        )
        self.warm_up(target, study)
        self.rounds(self.cget_scenarios([target], study), self.o.reps)
        self.lab.stop_bridge(bridge)
        orthanc.stop()

    def reference_latency(self, orthanc: OrthancServer, study: Study) -> None:
        """QIDO-RS listing of the study + WADO-RS of its first instance, straight to Orthanc."""
        base = orthanc.dicomweb_url
        qido_url = (
            f"{base}/studies/{study.study_uid}/instances?includefield="
            + "&includefield=".join(INSTANCE_FIELDS)
        )
        wado_url = (
            f"{base}/studies/{study.study_uid}/series/{study.series_uid}"
            f"/instances/{study.instance_uid(1)}"
        )
        qido: list[float] = []
        wado: list[float] = []
        with httpx.Client(timeout=60.0, headers={"Accept-Encoding": "identity"}) as client:
            for attempt in range(max(5, self.o.reps) + 1):
                started = time.perf_counter()
                response = client.get(qido_url, headers={"Accept": DICOM_JSON})
                middle = time.perf_counter()
                if response.status_code != 200 or len(response.json()) != study.count:
                    raise BenchError(f"reference QIDO-RS: HTTP {response.status_code}")
                body = client.get(wado_url, headers={"Accept": WADO_ACCEPT})
                ended = time.perf_counter()
                if body.status_code != 200 or len(body.content) < study.total_bytes / study.count:
                    raise BenchError(f"reference WADO-RS: HTTP {body.status_code}")
                if attempt:  # the first round opens the connection: not counted
                    qido.append(middle - started)
                    wado.append(ended - middle)
        self.results.figures[f"reference.qido.{study.count}"] = statistics.median(qido)
        self.results.figures[f"reference.wado.{study.count}"] = statistics.median(wado)

    def phase_find(self, orthanc: OrthancServer) -> None:
        n = self.o.find_studies
        log(f"C-FIND: STUDY level, {n} matches, Orthanc native vs bridge")
        bridge = self.lab.start_bridge("bridge-find", orthanc.dicomweb_url, 8)
        targets = [
            Target(
                "native", "Orthanc", orthanc.dicom_port, orthanc.aet, {"orthanc": self.orthanc_pid}
            ),
            self.bridge_target("bridge", "bridge", bridge),
        ]
        matches = Study(key="find", count=n)
        for t in targets:
            cfind_pynetdicom(t.port, t.called, n)  # warm-up
        scenarios: list[tuple[str, Callable[[], None]]] = []
        for t in targets:

            def run(t: Target = t) -> None:
                self.measure(
                    f"cfind.{t.name}.{n}",
                    f"C-FIND {n} studies: {t.label} -> pynetdicom",
                    matches,
                    t.pids,
                    lambda: cfind_pynetdicom(t.port, t.called, n),
                )

            scenarios.append((t.name, run))
        self.rounds(scenarios, self.o.reps)
        self.lab.stop_bridge(bridge)

    def phase_store(self, orthanc: OrthancServer, study: Study, files: list[Path]) -> None:
        n = study.count
        log(f"C-STORE: storescu with {n} files, straight to Orthanc vs through the bridge")
        bridge = self.lab.start_bridge("bridge-store", orthanc.dicomweb_url, 8)
        targets = {
            "native": Target(
                "native",
                "storescu -> Orthanc",
                orthanc.dicom_port,
                orthanc.aet,
                {"orthanc": self.orthanc_pid},
            ),
            "bridge": self.bridge_target("bridge", "storescu -> bridge -> STOW-RS", bridge),
        }

        def one(t: Target, record: bool) -> None:
            delete_study(orthanc, study)  # both paths start from the study being absent
            action = partial(storescu, t.port, t.called, files, self.scratch)
            if record:
                self.measure(
                    f"cstore.{t.name}.{n}", f"C-STORE {n}: {t.label}", study, t.pids, action
                )
            else:
                action()
            stored = study_instance_count(orthanc, study)
            if stored != n:
                raise BenchError(f"C-STORE via {t.name}: {stored}/{n} instances in Orthanc")

        for t in targets.values():  # warm-up: page cache for the files, first stores
            one(t, record=False)
        for rep in range(self.o.reps):
            # Alternate which path goes first.
            order = ["native", "bridge"] if rep % 2 == 0 else ["bridge", "native"]
            for name in order:
                one(targets[name], record=True)
            log(f"  round {rep + 1}/{self.o.reps} done ({', '.join(order)})")
        delete_study(orthanc, study)
        self.lab.stop_bridge(bridge)

    def phase_latency(self, orthanc: OrthancServer, study: Study) -> None:
        n = study.count
        ms = self.o.latency_ms
        log(f"C-GET {n} with {ms:.0f} ms added to every HTTP request (FaultProxy in a child)")
        zero = self.lab.start_proxy(0.0)
        delayed = self.lab.start_proxy(ms / 1000.0)
        self.proxy_capacity(orthanc, zero, study)
        via0 = self.lab.start_bridge("bridge-proxy0", f"{zero.url}/dicom-web", 8)
        fast = self.lab.start_bridge("bridge-latency", f"{delayed.url}/dicom-web", 8)
        slow = self.lab.start_bridge("bridge-latency-nofetch", f"{delayed.url}/dicom-web", 1)
        targets = [
            self.bridge_target("proxy0", "bridge via proxy 0 ms", via0, proxy=zero.pid),
            self.bridge_target("latency", f"bridge +{ms:.0f} ms", fast, proxy=delayed.pid),
            self.bridge_target(
                "latency-nofetch", f"bridge fetches=1 +{ms:.0f} ms", slow, proxy=delayed.pid
            ),
        ]
        for target in targets:
            self.warm_up(target, study)
        self.rounds(self.cget_scenarios(targets, study), self.o.reps)
        for bridge in (slow, fast, via0):
            self.lab.stop_bridge(bridge)
        delayed.stop()
        zero.stop()

    def proxy_capacity(self, orthanc: OrthancServer, proxy: ProxyProcess, study: Study) -> None:
        """WADO-RS of every instance, 8 at a time with httpx: Orthanc direct vs via the proxy."""
        for name, base, pids in (
            ("direct", orthanc.dicomweb_url, {"orthanc": self.orthanc_pid}),
            ("proxy0", f"{proxy.url}/dicom-web", {"orthanc": self.orthanc_pid, "proxy": proxy.pid}),
        ):
            for record in (False, *([True] * self.o.reps)):
                action = partial(wado_all, base, study, 8)
                if record:
                    self.measure(
                        f"wado.{name}.{study.count}",
                        f"WADO-RS {study.count} x8 httpx: "
                        + ("Orthanc direct" if name == "direct" else "via proxy 0 ms"),
                        study,
                        pids,
                        action,
                    )
                else:
                    action()

    def phase_memory(self, orthanc: OrthancServer, small: Study, big: Study) -> None:
        log("peak RSS of a fresh bridge during one C-GET (pynetdicom SCU)")
        for label, study in (("small", small), ("big", big)):
            bridge = self.lab.start_bridge(f"bridge-rss-{label}", orthanc.dicomweb_url, 8)
            before = vm_hwm_mb(bridge.pid)
            target = self.bridge_target("rss", "fresh bridge (RSS run)", bridge)

            def once(t: Target = target, st: Study = study) -> float:
                return cget_pynetdicom(t.port, t.called, st).seconds

            seconds = self.measure(
                f"cget.rss.pynetdicom.{study.count}",
                f"C-GET {study.count}: fresh bridge (RSS run) -> pynetdicom",
                study,
                target.pids,
                once,
            )
            peak = vm_hwm_mb(bridge.pid)
            self.lab.stop_bridge(bridge)
            self.results.figures[f"rss.{label}"] = {
                "instances": study.count,
                "megabytes_retrieved": round(study.megabytes, 1),
                "vmhwm_mb_idle": round(before, 1),
                "vmhwm_mb": round(peak, 1),
                "seconds": round(seconds, 3),
            }
            log(
                f"  {study.count} instances ({study.megabytes:.0f} MB): VmHWM {peak:.0f} MB "
                f"(idle {before:.0f} MB), {seconds:.1f} s"
            )

    def phase_large(
        self, orthanc: OrthancServer, pool: PixelPool, warm: Study, frames: int = LARGE_FRAMES
    ) -> None:
        """Peak RSS while one instance of `frames` 2 MiB frames (80 MiB by default) goes
        through (larger than max_buffer_bytes: streamed through a temporary file), after
        a warm-up C-GET of `warm`."""
        study = Study(key=f"large-{frames}", count=1, rows=1024, columns=1024, description="LARGE")
        payload = large_instance(study, pool, frames)
        upload_large(orthanc, payload)
        study = Study(**{**study.__dict__, "total_bytes": len(payload)})
        del payload
        log(f"peak RSS of a bridge sending one {study.megabytes:.0f} MB instance")
        bridge = self.lab.start_bridge("bridge-rss-large", orthanc.dicomweb_url, 8)
        target = self.bridge_target("rss-large", "bridge (RSS run)", bridge)
        cget_pynetdicom(target.port, target.called, warm)
        reset_vm_hwm(bridge.pid)
        idle = vm_hwm_mb(bridge.pid)
        seconds = self.measure(
            f"cget.rss-large-{frames}.pynetdicom.1",
            f"C-GET 1 x {study.megabytes:.0f} MB: bridge (RSS run) -> pynetdicom",
            study,
            target.pids,
            lambda: cget_pynetdicom(target.port, target.called, study).seconds,
        )
        peak = vm_hwm_mb(bridge.pid)
        self.lab.stop_bridge(bridge)
        delete_study(orthanc, study)
        self.results.figures[f"rss.large-{frames}"] = {
            "megabytes_retrieved": round(study.megabytes, 1),
            "vmhwm_mb_idle": round(idle, 1),
            "vmhwm_mb": round(peak, 1),
            "seconds": round(seconds, 3),
        }
        self.results.checks.append(
            Check(
                f"rss_large.{frames}",
                f"peak RSS growth, one {study.megabytes:.0f} MB instance",
                peak - idle,
                "MB",
                TARGETS["rss_large"],
                peak - idle <= 40.0,
                f"VmHWM {peak:.0f} MB, idle (after a warm-up C-GET) {idle:.0f} MB",
            )
        )
        log(f"  VmHWM {peak:.0f} MB (idle {idle:.0f} MB), {seconds:.1f} s")

    # ------------------------------------------------------------------ summary

    def summarize(self) -> None:
        r = self.results
        spool_ratios(self)
        studies = self.studies
        for study in studies:
            n = study.count
            r.ratio(
                f"cget_pynetdicom.{n}",
                f"C-GET {n} bridge/native, pynetdicom SCU",
                f"cget.bridge.pynetdicom.{n}",
                f"cget.native.pynetdicom.{n}",
                1.0,
                TARGETS["cget_pynetdicom"],
            )
            r.ratio(
                f"cget_getscu.{n}",
                f"C-GET {n} bridge/native, getscu",
                f"cget.bridge.getscu.{n}",
                f"cget.native.getscu.{n}",
                0.25,
                TARGETS["cget_getscu"],
            )
            for client in ("pynetdicom", "getscu"):
                r.ratio(
                    f"auth.{client}.{n}",
                    f"C-GET {n} basic auth/no auth, {client}",
                    f"cget.auth.{client}.{n}",
                    f"cget.bridge.{client}.{n}",
                    None,
                    "informative: the same fast path with auth",
                )
                r.ratio(
                    f"nofetch.{client}.{n}",
                    f"C-GET {n} fetches=1/fetches=8, {client}",
                    f"cget.nofetch.{client}.{n}",
                    f"cget.bridge.{client}.{n}",
                    None,
                    "informative: fetch-ahead without latency",
                )
        n = self.o.latency_size
        for client in ("pynetdicom", "getscu"):
            r.ratio(
                f"latency.{client}.{n}",
                f"C-GET {n} +{self.o.latency_ms:.0f} ms: fetch-ahead/fetches=1, {client}",
                f"cget.latency.{client}.{n}",
                f"cget.latency-nofetch.{client}.{n}",
                5.0,
                TARGETS["latency"],
            )
            r.ratio(
                f"proxy_overhead.{client}.{n}",
                f"C-GET {n} bridge via proxy 0 ms / direct, {client}",
                f"cget.proxy0.{client}.{n}",
                f"cget.bridge.{client}.{n}",
                None,
                "informative: cost of the proxy itself",
            )
        r.ratio(
            f"proxy_capacity.{n}",
            f"WADO-RS {n} x8: via proxy 0 ms / direct",
            f"wado.proxy0.{n}",
            f"wado.direct.{n}",
            None,
            "informative: the proxy's own throughput",
        )
        rss = r.figures.get("rss.big"), r.figures.get("rss.small")
        if rss[0] is not None and rss[1] is not None:
            big, small = rss[0]["vmhwm_mb"], rss[1]["vmhwm_mb"]
            r.checks.append(
                Check(
                    "rss_big",
                    f"peak RSS, C-GET of {rss[0]['megabytes_retrieved']:.0f} MB",
                    big,
                    "MB",
                    TARGETS["rss_big"],
                    big <= 250.0,
                    f"idle {rss[0]['vmhwm_mb_idle']} MB",
                )
            )
            r.checks.append(
                Check(
                    "rss_growth",
                    f"peak RSS {rss[0]['instances']} / {rss[1]['instances']} instances",
                    big / small,
                    "x",
                    TARGETS["rss_growth"],
                    big / small <= 1.5,
                    f"{big:.0f} MB / {small:.0f} MB",
                )
            )
        for study in studies:
            n = study.count
            runs = r.figures.get(f"first_store.cget.bridge.pynetdicom.{n}")
            qido = r.figures.get(f"reference.qido.{n}")
            wado = r.figures.get(f"reference.wado.{n}")
            native = r.figures.get(f"first_store.cget.native.pynetdicom.{n}")
            if runs and qido is not None and wado is not None:
                first = statistics.median(runs)
                bound = qido + wado + 0.050
                r.figures[f"first_store.median.bridge.{n}"] = first
                if native:
                    r.figures[f"first_store.median.native.{n}"] = statistics.median(native)
                r.checks.append(
                    Check(
                        f"first_store.{n}",
                        f"C-GET {n}: request -> first C-STORE, bridge",
                        first * 1000,
                        "ms",
                        TARGETS["first_store"],
                        first <= bound,
                        f"QIDO {qido * 1000:.1f} + WADO {wado * 1000:.1f} + 50"
                        f" = {bound * 1000:.1f} ms"
                        + (
                            f"; Orthanc native {statistics.median(native) * 1000:.1f} ms"
                            if native
                            else ""
                        ),
                    )
                )
        n = self.o.store
        r.ratio(
            f"store.{n}",
            f"C-STORE {n}: bridge/native throughput",
            f"cstore.bridge.{n}",
            f"cstore.native.{n}",
            0.8,
            TARGETS["store"],
        )
        n = self.o.find_studies
        a, b = r.rows.get(f"cfind.bridge.{n}"), r.rows.get(f"cfind.native.{n}")
        if a is not None and b is not None and a.runs and b.runs:
            value = a.seconds / b.seconds
            r.checks.append(
                Check(
                    f"find.{n}",
                    f"C-FIND {n} studies: bridge/native time",
                    value,
                    "x",
                    TARGETS["find"],
                    value <= 1.5,
                    f"{a.seconds:.3f} s / {b.seconds:.3f} s",
                )
            )
