"""C-STORE SCP → STOW-RS: the instance as the modality encoded it, acknowledged only once stored.

pynetdicom writes each incoming data set to a temporary Part 10 file as it arrives
(``STORE_RECV_CHUNKED_DATASET``); the file is streamed to STOW-RS unchanged, so the
bridge never re-encodes the data set nor holds it in memory. The C-STORE response is
sent after the DICOMweb server's answer: success only when the server lists the
instance as stored.
"""

from __future__ import annotations

import logging
from typing import cast

from pydicom import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from bridge.dimse.commitment import needs_stored_index
from bridge.dimse.context import BridgeContext
from bridge.errors import BridgeError
from bridge.translate.status import (
    SUCCESS,
    internal_error,
    store_failure,
    store_status,
)

LOGGER = logging.getLogger(__name__)


def handle_store(event: Event, ctx: BridgeContext) -> Dataset:
    """pynetdicom EVT_C_STORE handler."""
    ctx = ctx.for_event(event)
    peer = event.assoc.requestor.ae_title
    sop_instance_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
    try:
        path = event.dataset_path
        size = path.stat().st_size
        ctx.metrics.bytes_transferred("C-STORE", "in", size)
        result = ctx.loop.call(ctx.client.store_instance(path, sop_instance_uid))
    except BridgeError as exc:
        status = store_failure(exc)
        LOGGER.warning(
            "C-STORE from %s: %s not stored: %s", peer, sop_instance_uid, status.ErrorComment
        )
        return status
    except Exception as exc:
        LOGGER.exception("C-STORE from %s: internal error", peer)
        return internal_error(exc)
    status = store_status(result)
    if status.Status == SUCCESS and needs_stored_index(ctx.dicomweb.capabilities):
        try:
            ctx.stored.remember_file(sop_instance_uid, path)
        except Exception as exc:  # only commitment needs it, and it fails safe without
            LOGGER.warning("C-STORE: cannot read the study/series of %s: %s", path, exc)
    if status.Status == SUCCESS:
        LOGGER.info("C-STORE from %s: stored %d bytes via STOW-RS", peer, size)
        LOGGER.debug("C-STORE stored %s", sop_instance_uid)
    else:
        LOGGER.warning(
            "C-STORE from %s: %s answered 0x%04X: %s",
            peer,
            sop_instance_uid,
            status.Status,
            status.get("ErrorComment", ""),
        )
    return status
