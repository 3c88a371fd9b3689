"""A C-GET of an instance larger than retrieve.max_buffer_bytes: streamed from WADO-RS to a
temporary file and sent from there in PDU-sized pieces, never held whole by the bridge.

A pynetdicom SCU receives the instance and the bytes are compared with Orthanc's copy;
the bridge's peak RSS (VmHWM) over the C-GET is printed, with a generous sanity bound
(the target, idle + 40 MB, is the benchmark's business, not a test's).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from bridge.dimse.fastsend import split_part10
from tests.conftest import OrthancFixture
from tests.integration.bridge_runner import BridgeProcess, bridge_config
from tests.integration.dataset import make_ct_series, to_bytes
from tests.integration.tools import free_port
from tests.scu import c_get, scu

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIB = 1024 * 1024
FRAMES, ROWS, COLUMNS = 40, 1024, 1024  # 16-bit: 80 MiB of pixel data
# Well above the target (40 MB) and well below holding the instance once (80 MiB), let
# alone the ~150 MB it cost when every instance was held whole.
SANITY_BOUND_MB = 70


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _reset_hwm(pid: int) -> None:
    # "5" to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _large_instance() -> Dataset:
    (ds,) = make_ct_series(1, key="large-80mib", patient_id="LARGE001")
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.NumberOfFrames = FRAMES
    ds.PixelData = os.urandom(ROWS * COLUMNS * 2 * FRAMES)
    return ds


def _get(bridge: BridgeProcess, study_uid: str) -> tuple[list[bytes], int]:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    outcome = c_get(
        scu("PYNETDICOM", timeouts=(30, 120, 120)),
        (bridge.host, bridge.port, bridge.ae_title),
        query,
        StudyRootQueryRetrieveInformationModelGet,
        [(CTImageStorage, [ExplicitVRLittleEndian])],
        nodelay=True,
    )
    assert outcome.status == 0x0000, (outcome.describe(), bridge.log_tail())
    return [item.raw for item in outcome.received], outcome.completed or 0


def test_an_instance_larger_than_the_buffer_goes_through_a_file(
    orthanc_factory: Callable[..., OrthancFixture],
    bridge_process: Callable[..., BridgeProcess],
    tmp_path: Path,
) -> None:
    server = orthanc_factory(with_dataset=False).server
    small = make_ct_series(1, key="large-warmup", patient_id="LARGE000")[0]
    large = _large_instance()
    server.upload(to_bytes(small))
    server.upload(to_bytes(large))
    stored = server.instance_file(str(large.SOPInstanceUID))
    _, offset = split_part10(stored)
    study_uid = str(large.StudyInstanceUID)
    del large

    spool = tmp_path / "tmp"
    spool.mkdir()
    bridge = bridge_process(
        # retrieve.max_buffer_bytes as by default: 64 MiB, below the instance's size.
        bridge_config(server.dicomweb_url, free_port()),
        env={"TMPDIR": str(spool)},
    )
    # Warm-up (imports, pools, the first association), then the peak from here on.
    raws, completed = _get(bridge, str(small.StudyInstanceUID))
    assert completed == 1 and len(raws) == 1
    _reset_hwm(bridge.pid)
    idle = _vm_hwm_mb(bridge.pid)

    raws, completed = _get(bridge, study_uid)
    peak = _vm_hwm_mb(bridge.pid)
    assert completed == 1
    assert len(raws) == 1
    assert len(raws[0]) == len(stored) - offset
    assert raws[0] == stored[offset:]
    print(
        f"\n[large instance] {len(raws[0]) / MIB:.1f} MiB: bridge VmHWM {peak:.0f} MB, "
        f"idle {idle:.0f} MB, +{peak - idle:.0f} MB"
    )
    assert peak - idle < SANITY_BOUND_MB, (peak, idle)
    assert list(spool.iterdir()) == []  # the temporary file and its directory are gone
