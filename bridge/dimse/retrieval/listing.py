"""The instances a C-GET or C-MOVE identifier matches: its plan, then the QIDO-RS listing
(paged to the end, in sending order), or the failure status to answer with instead."""


from __future__ import annotations

import logging
from collections.abc import Callable

from pydicom import Dataset
from pynetdicom.events import Event

from bridge.dimse.context import BridgeContext
from bridge.dimse.find import decode_identifier
from bridge.dimse.search import PlanRun
from bridge.errors import (
    BridgeError,
    DicomwebCircuitOpen,
    DicomwebProtocolError,
    InvalidIdentifier,
)
from bridge.loop_thread import Cancelled
from bridge.models import InformationModel, InstanceRef, QueryLevel
from bridge.translate.frames import FrameError
from bridge.translate.plan import plan_search
from bridge.translate.retrieve import (
    RetrievePlan,
    build_retrieve_plan,
    instance_ref,
    sort_instances,
)
from bridge.translate.status import (
    CANCEL,
    IDENTIFIER_MISMATCH,
    OUT_OF_RESOURCES_MATCHES,
    describe,
    internal_error,
    status_dataset,
)

LOGGER = logging.getLogger(__name__)

def list_instances(
    plan: RetrievePlan, ctx: BridgeContext, cancelled: Callable[[], bool]
) -> list[InstanceRef]:
    """Every instance the plan matches, paged to the end, in sending order.

    The instance search is fitted to the server (bridge/translate/plan.py): a UID list it
    cannot take is fanned out, and a server with hierarchical resources only is walked
    study → series → instances. Counts (NumberOf*Related*) are never relied on.
    """
    searches = plan_search(QueryLevel.IMAGE, plan.query, ctx.dicomweb.capabilities)
    LOGGER.debug("retrieve plan %s", searches)
    # Only keys matched locally make the listing read rows it then drops; a walk reads
    # the study's series first, which a large study retrieve must be allowed to do.
    budget = ctx.dicomweb.max_results if searches.filtered else 0
    refs: dict[str, InstanceRef] = {}
    for result in PlanRun(searches, ctx, cancelled, budget=budget).results():
        ref = instance_ref(result)
        if ref is None:
            raise DicomwebProtocolError("QIDO-RS instance result without its UIDs")
        refs.setdefault(ref.sop_instance_uid, ref)
    return sort_instances(refs.values())


def find_instances(
    event: Event,
    ctx: BridgeContext,
    model: InformationModel,
    cancelled: Callable[[], bool],
    service: str,
) -> tuple[RetrievePlan, list[InstanceRef]] | Dataset:
    """The plan and matching instances of a C-GET/C-MOVE request, or the failure status
    to answer with (0xA900 bad identifier, 0xAA0x frame request, 0xA701 search failed,
    0xFE00 cancelled, internal error)."""
    peer = event.assoc.requestor.ae_title
    try:
        plan = build_retrieve_plan(decode_identifier(event), model)
    except FrameError as exc:
        return status_dataset(exc.status, str(exc))
    except InvalidIdentifier as exc:
        LOGGER.warning("%s from %s refused: %s", service, peer, exc)
        return status_dataset(IDENTIFIER_MISMATCH, str(exc))
    except Exception as exc:
        LOGGER.exception("%s: internal error while reading the identifier", service)
        return internal_error(exc)
    LOGGER.info("%s %s %s from %s", service, model.value, plan.level.name, peer)
    try:
        return plan, list_instances(plan, ctx, cancelled)
    except Cancelled:
        return status_dataset(CANCEL)
    except DicomwebCircuitOpen as exc:
        # The breaker logged the outage once (WARNING); this is one request of many.
        LOGGER.info("%s from %s: cannot list instances: %s", service, peer, exc)
        return status_dataset(OUT_OF_RESOURCES_MATCHES, exc.summary)
    except BridgeError as exc:
        LOGGER.warning("%s from %s: cannot list instances: %s", service, peer, exc)
        return status_dataset(OUT_OF_RESOURCES_MATCHES, describe(exc))
    except Exception as exc:
        LOGGER.exception("%s: internal error while listing instances", service)
        return internal_error(exc)
