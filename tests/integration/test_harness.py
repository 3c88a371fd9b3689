"""Tests of the bridge-side harness (config rendering, process fixture) with a stand-in bridge."""

from __future__ import annotations

import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import OrthancFixture
from tests.integration.bridge_runner import BridgeProcess, BridgeStartError, bridge_config
from tests.integration.tools import describe, run_dcmtk

pytestmark = pytest.mark.integration

# A minimal program answering to the bridge's command line (`python -m bridge run --config
# FILE`): a pynetdicom C-ECHO SCP on [dimse] host/port that exits 0 on SIGTERM. It lets the
# fixture be tested whatever state the real bridge package is in.
STAND_IN_MAIN = """
import signal, sys, threading, tomllib
from pynetdicom import AE
from pynetdicom.sop_class import Verification

args = sys.argv[1:]
assert args[0] == "run" and args[1] == "--config", args
with open(args[2], "rb") as handle:
    config = tomllib.load(handle)
if config.get("fail"):
    print("stand-in bridge: refusing to start", file=sys.stderr)
    sys.exit(3)
dimse = config["dimse"]
ae = AE(ae_title=dimse["ae_title"])
ae.add_supported_context(Verification)
server = ae.start_server((dimse["host"], dimse["port"]), block=False)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("stand-in bridge listening", flush=True)
stop.wait()
server.shutdown()
print("stand-in bridge stopped", flush=True)
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> dict[str, str]:
    """Environment that makes ``python -m bridge`` run the stand-in instead of the package."""
    package = tmp_path / "stand_in" / "bridge"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent(STAND_IN_MAIN))
    return {"PYTHONPATH": str(package.parent)}


def test_bridge_config_renders_the_contract() -> None:
    text = bridge_config(
        "http://127.0.0.1:8042/dicom-web",
        11112,
        peers=[("STORESCP", "127.0.0.1", 11113)],
    )
    assert tomllib.loads(text) == {
        "dimse": {
            "ae_title": "DIMSE_BRIDGE",
            "host": "127.0.0.1",
            "port": 11112,
            "accept_unknown_peers": True,
            "max_associations": 16,
        },
        "dicomweb": {"url": "http://127.0.0.1:8042/dicom-web", "timeout": 30},
        "peers": [{"ae_title": "STORESCP", "host": "127.0.0.1", "port": 11113}],
    }


def test_bridge_config_overrides() -> None:
    config = tomllib.loads(
        bridge_config(
            "http://h/dicom-web",
            4242,
            ae_title="OTHER",
            accept_unknown_peers=False,
            max_associations=None,
            timeout=2.5,
            retrieve__max_concurrent_fetches=2,
            logging={"level": "DEBUG"},
            peers=[{"ae_title": 'Q"UOTE\\', "host": "localhost", "port": 1}],
        )
    )
    assert config["dimse"] == {
        "ae_title": "OTHER",
        "host": "127.0.0.1",
        "port": 4242,
        "accept_unknown_peers": False,
    }
    assert config["dicomweb"]["timeout"] == 2.5
    assert config["retrieve"] == {"max_concurrent_fetches": 2}
    assert config["logging"] == {"level": "DEBUG"}
    assert config["peers"][0]["ae_title"] == 'Q"UOTE\\'
    with pytest.raises(TypeError):
        bridge_config("http://h/dicom-web", 1, no_such_key=1)


def test_bridge_process_starts_answers_and_stops(
    bridge_process: Callable[..., BridgeProcess],
    free_port: Callable[[], int],
    stand_in: dict[str, str],
) -> None:
    port = free_port()
    bridge = bridge_process(bridge_config("http://127.0.0.1:9/dicom-web", port), env=stand_in)
    assert bridge.running and bridge.port == port and bridge.ae_title == "DIMSE_BRIDGE"
    result = run_dcmtk("echoscu", "-aec", bridge.ae_title, "127.0.0.1", str(port), timeout=30)
    assert result.returncode == 0, describe(["echoscu"], result)
    assert bridge.stop() == 0
    assert "stand-in bridge stopped" in bridge.log_text()


def test_bridge_process_reports_a_failed_start(
    bridge_process: Callable[..., BridgeProcess],
    free_port: Callable[[], int],
    stand_in: dict[str, str],
) -> None:
    config = "fail = true\n" + bridge_config("http://127.0.0.1:9/dicom-web", free_port())
    with pytest.raises(BridgeStartError, match="refusing to start"):
        bridge_process(config, env=stand_in)


def test_real_bridge_starts_echoes_and_stops_cleanly(
    bridge_process: Callable[..., BridgeProcess],
    free_port: Callable[[], int],
    orthanc: OrthancFixture,
) -> None:
    bridge = bridge_process(bridge_config(orthanc.dicomweb_url, free_port()))
    result = run_dcmtk(
        "echoscu",
        "-aet",
        "ECHOSCU",
        "-aec",
        bridge.ae_title,
        bridge.host,
        str(bridge.port),
        timeout=30,
    )
    assert result.returncode == 0, describe(["echoscu"], result) + "\n" + bridge.log_tail()
    assert bridge.stop(timeout=10) == 0, bridge.log_tail()
