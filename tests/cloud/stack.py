"""The per-profile test stack: the bridge (a real ``python -m bridge run`` process, with
``profile = "<name>"``) in front of that vendor's conformance emulator in front of Orthanc.

    SCU --DIMSE--> bridge (profile=P) --DICOMweb--> ConformanceEmulator(P) --> Orthanc

:class:`Stacks` starts one stack per profile on first use and keeps it for its fixture's
scope (a bridge start costs about a second), so a module parametrized over the six
profiles starts six bridges and one Orthanc.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cloud.emulator import ConformanceEmulator
from tests.conftest import OrthancFixture
from tests.integration.bridge_runner import BridgeProcess, bridge_config, start_bridge
from tests.integration.tools import free_port

PROFILES = ("generic", "orthanc", "google", "azure", "aws", "dcm4chee")


@dataclass
class ProfileStack:
    profile: str
    emulator: ConformanceEmulator
    bridge: BridgeProcess

    def refused(self) -> str:
        """The emulator's refusals and the bridge's log tail, for an assertion message."""
        lines = [f"{r.status} {r.reason}  <- {r.method} {r.path}" for r in self.emulator.refusals()]
        return "refusals:\n" + "\n".join(lines) + f"\nbridge log:\n{self.bridge.log_tail(10)}"


class Stacks:
    """``stacks("azure") -> ProfileStack``, started once; records cleared on every call."""

    def __init__(self, orthanc: OrthancFixture, workdir: Path, **overrides: Any) -> None:
        self.orthanc = orthanc
        self.workdir = workdir
        self.overrides = overrides
        self._started: dict[str, ProfileStack] = {}
        self._names = itertools.count(1)

    def __call__(self, profile: str) -> ProfileStack:
        stack = self._started.get(profile)
        if stack is None:
            emulator = ConformanceEmulator(self.orthanc.http_url, profile).start()
            try:
                config = bridge_config(
                    emulator.dicomweb_url,
                    free_port(),
                    dicomweb__profile=profile,
                    **self.overrides,
                )
                bridge = start_bridge(config, self.workdir, name=f"{profile}-{next(self._names)}")
            except BaseException:
                emulator.stop()
                raise
            stack = self._started[profile] = ProfileStack(profile, emulator, bridge)
        assert stack.bridge.running, stack.bridge.log_tail()
        stack.emulator.clear()
        stack.emulator.clear_faults()
        stack.emulator.reset_rate()
        return stack

    def close(self) -> None:
        for stack in self._started.values():
            stack.bridge.stop()
            stack.emulator.stop()
        self._started.clear()
