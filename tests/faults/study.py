"""A private Orthanc holding one generated CT study, for module-scoped fault fixtures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_orthanc
from tests.integration.dataset import make_ct_series, to_bytes
from tests.integration.orthanc import OrthancServer


@dataclass(frozen=True)
class Study:
    server: OrthancServer
    study_uid: str
    uids: tuple[str, ...]  # in the bridge's sending order (instance number)
    upload_s: float


@contextmanager
def uploaded_study(workdir: Path, size: int, key: str) -> Iterator[Study]:
    """Orthanc in `workdir` with `size` 64x64 CT instances uploaded once; stopped after.

    For module-scoped fixtures: ``orthanc_factory`` is function-scoped, so the server is
    built here from the same OrthancServer it uses.
    """
    require_orthanc()
    datasets = make_ct_series(size, rows=64, columns=64, key=key)
    server = OrthancServer(workdir).start()
    try:
        started = time.monotonic()
        server.upload_many(to_bytes(ds) for ds in datasets)
        upload_s = time.monotonic() - started
        assert server.statistics()["CountInstances"] == size
        yield Study(
            server=server,
            study_uid=str(datasets[0].StudyInstanceUID),
            uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
            upload_s=upload_s,
        )
    finally:
        server.stop()
