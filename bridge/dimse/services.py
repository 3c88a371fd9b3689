"""The DIMSE services the bridge offers: one row per SOP class, read by everything.

``build_ae`` proposes each row's SOP class, ``bindings`` binds each row's handler to its
pynetdicom event, the C-FIND/C-GET/C-MOVE handlers take their information model from the
rows of their event (a SOP class with no row gets SOP_CLASS_NOT_SUPPORTED, never another
model's answer), and the metrics observer (bridge/dimse/observe.py) names DIMSE messages
by the rows' service names. Adding a service is a row here and its handler module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.uid import UID
from pynetdicom import AllStoragePresentationContexts, evt
from pynetdicom.events import EventHandlerType, InterventionEvent

from bridge.dimse import sop
from bridge.dimse.commitment import handle_action
from bridge.dimse.context import BridgeContext
from bridge.dimse.echo import handle_echo
from bridge.dimse.find import handle_find
from bridge.dimse.get import handle_get
from bridge.dimse.move import handle_move
from bridge.dimse.store import handle_store
from bridge.models import InformationModel

Models = Mapping[str, InformationModel]
"""SOP Class UID → information model, for the rows of one event (a handler's bound arg)."""


@dataclass(frozen=True)
class Service:
    """One SOP class the bridge serves, and how."""

    sop_class: UID
    name: str  # the DIMSE service: log and metrics label ("C-FIND")
    command_field: int  # its request's Command Field (PS3.7 E.1); the response sets bit 15
    event: InterventionEvent
    handler: Callable[..., Any]
    model: InformationModel | None = None  # Query/Retrieve services only
    cancellable: bool = False  # a C-CANCEL may refer to it (PS3.7 9.3.2.3)


def _echo(uid: UID) -> Service:
    return Service(uid, "C-ECHO", 0x0030, evt.EVT_C_ECHO, handle_echo)


def _find(uid: UID, model: InformationModel) -> Service:
    return Service(uid, "C-FIND", 0x0020, evt.EVT_C_FIND, handle_find, model, True)


def _get(uid: UID, model: InformationModel) -> Service:
    return Service(uid, "C-GET", 0x0010, evt.EVT_C_GET, handle_get, model, True)


def _move(uid: UID, model: InformationModel) -> Service:
    return Service(uid, "C-MOVE", 0x0021, evt.EVT_C_MOVE, handle_move, model, True)


def _store(uid: UID) -> Service:
    return Service(uid, "C-STORE", 0x0001, evt.EVT_C_STORE, handle_store)


SERVICES: tuple[Service, ...] = (
    _echo(sop.VERIFICATION),
    _find(sop.PATIENT_ROOT_FIND, InformationModel.PATIENT_ROOT),
    _find(sop.STUDY_ROOT_FIND, InformationModel.STUDY_ROOT),
    _get(sop.PATIENT_ROOT_GET, InformationModel.PATIENT_ROOT),
    _get(sop.STUDY_ROOT_GET, InformationModel.STUDY_ROOT),
    _get(sop.COMPOSITE_INSTANCE_ROOT_GET, InformationModel.COMPOSITE_INSTANCE_ROOT),
    _get(sop.WITHOUT_BULK_DATA_GET, InformationModel.WITHOUT_BULK_DATA),
    _move(sop.PATIENT_ROOT_MOVE, InformationModel.PATIENT_ROOT),
    _move(sop.STUDY_ROOT_MOVE, InformationModel.STUDY_ROOT),
    _move(sop.COMPOSITE_INSTANCE_ROOT_MOVE, InformationModel.COMPOSITE_INSTANCE_ROOT),
    Service(sop.STORAGE_COMMITMENT_PUSH, "N-ACTION", 0x0130, evt.EVT_N_ACTION, handle_action),
    # Every storage SOP class: received by C-STORE, and sent back as C-GET sub-operations
    # on the same association (build_ae accepts both roles for these).
    *(_store(UID(str(cx.abstract_syntax))) for cx in AllStoragePresentationContexts),
)

STORAGE_CLASSES = frozenset(str(s.sop_class) for s in SERVICES if s.event is evt.EVT_C_STORE)
"""Storage SOP classes: their contexts get the requester's syntax order (negotiation.py)."""

RESPONSE_NAMES: Mapping[int, str] = {s.command_field | 0x8000: s.name for s in SERVICES}
"""Response Command Field → service name: the final responses the bridge sends."""

REQUEST_NAMES: Mapping[int, str] = {s.command_field: s.name for s in SERVICES}
"""Request Command Field → service name: the requests the bridge serves."""

CANCELLABLE_REQUESTS: Mapping[int, str] = {
    s.command_field: s.name for s in SERVICES if s.cancellable
}
"""Request Command Field → service name, for the requests a C-CANCEL may refer to."""


def models_for(event: InterventionEvent) -> dict[str, InformationModel]:
    """The information model of each SOP class served on `event`."""
    return {
        str(s.sop_class): s.model for s in SERVICES if s.event is event and s.model is not None
    }


def bindings(ctx: BridgeContext) -> list[EventHandlerType]:
    """``evt_handlers`` entries binding each service's handler, once per event: with
    `ctx`, and the event's SOP class → model table where it has models."""
    handlers: list[EventHandlerType] = []
    bound: set[InterventionEvent] = set()
    for service in SERVICES:
        if service.event in bound:
            continue
        bound.add(service.event)
        models = models_for(service.event)
        args: list[object] = [ctx, models] if models else [ctx]
        handlers.append((service.event, service.handler, args))
    return handlers
