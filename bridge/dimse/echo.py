"""C-ECHO (Verification SCP): answers Success without touching the DICOMweb server."""

from __future__ import annotations

from pynetdicom.events import Event

from bridge.dimse.context import BridgeContext
from bridge.translate.status import SUCCESS


def handle_echo(event: Event, ctx: BridgeContext) -> int:
    return SUCCESS
