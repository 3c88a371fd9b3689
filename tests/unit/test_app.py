"""bridge.app's signal handling: the original handlers come back, a second SIGINT forces.

Real signals, raised in this process (pytest runs tests in the main thread)."""

from __future__ import annotations

import signal
from types import FrameType

import pytest

from bridge.app import HANDLED_SIGNALS, Signals


def _previous(signum: int, frame: FrameType | None) -> None:
    raise AssertionError("the bridge's handler should be the one installed")


@pytest.fixture
def installed() -> object:
    """Handlers of the test's own on SIGINT and SIGTERM, as an embedding program has."""
    saved = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, _previous)
    yield _previous
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_the_original_handlers_are_restored(installed: object) -> None:
    signals = Signals()
    with signals.capture():
        for sig in HANDLED_SIGNALS:
            assert signal.getsignal(sig) == signals.handle
        signal.raise_signal(signal.SIGTERM)
    assert signals.should_exit.is_set() and not signals.force_exit.is_set()
    for sig in HANDLED_SIGNALS:
        assert signal.getsignal(sig) is installed


def test_the_original_handlers_are_restored_when_the_body_fails(installed: object) -> None:
    with pytest.raises(RuntimeError), Signals().capture():
        raise RuntimeError("start failed")
    for sig in HANDLED_SIGNALS:
        assert signal.getsignal(sig) is installed


def test_a_second_sigint_forces_exit(installed: object) -> None:
    signals = Signals()
    forced: list[bool] = []
    signals.on_force = lambda: forced.append(True)
    with signals.capture():
        signal.raise_signal(signal.SIGINT)
        assert signals.should_exit.is_set() and not forced
        signal.raise_signal(signal.SIGINT)
    assert signals.force_exit.is_set()
    assert forced == [True]


def test_a_second_sigterm_does_not_force(installed: object) -> None:
    signals = Signals()
    signals.on_force = lambda: pytest.fail("SIGTERM twice is still a graceful shutdown")
    with signals.capture():
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
    assert signals.should_exit.is_set() and not signals.force_exit.is_set()
