"""Which transfer syntax the bridge accepts for each proposed storage presentation context.

pynetdicom's acceptor (``presentation.negotiate_as_acceptor``, 3.0) takes, for each proposed
context, the first of *its own* supported syntaxes, in the order they were added to the AE,
that the context proposes: the proposer's order does not count. So a ``getscu +xv`` peer
proposing [JPEG 2000 lossless, Explicit VR LE, ...] got Explicit VR LE, and a JPEG 2000
stored instance was decompressed for a peer that would have taken it.

Only storage SOP classes for which the requester proposed the SCP role (SCP/SCU Role
Selection, PS3.7 D.3.3.4: it will receive C-GET sub-operations) are reordered. For an
incoming C-STORE the bridge keeps its own order (uncompressed first): what a modality sends
is what the archive stores and serves to every DICOMweb client, and a server such as
Orthanc 1.10 cannot transcode JPEG 2000 for them.

The one hook: an ``EVT_REQUESTED`` handler, which pynetdicom runs after the A-ASSOCIATE-RQ
arrived and before it negotiates, replaces the association's own copy of the supported
contexts (``assoc.acceptor.supported_contexts``, writable until the A-ASSOCIATE-AC is sent)
for the storage SOP classes the peer proposed, with the order ``accept_order`` works out
from the proposals (pure, in ``bridge.translate.syntax``). Public pynetdicom API only; the
AE's own contexts are untouched, so other associations are unaffected.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Collection

from pydicom.uid import UID
from pynetdicom.events import Event

from bridge.translate.syntax import accept_order

LOGGER = logging.getLogger(__name__)


def prefer_requested_syntaxes(
    event: Event, storage_classes: Collection[str], encodable: Collection[str]
) -> None:
    """pynetdicom ``EVT_REQUESTED`` handler: order the transfer syntaxes of each storage
    SOP class the requester will receive (SCP role proposed) as ``accept_order`` says
    (`encodable`: the lossless syntaxes the bridge can encode itself)."""
    requestor = event.assoc.requestor
    receiving = {
        str(uid) for uid, item in requestor.role_selection.items() if item.scp_role is True
    }
    proposals: dict[str, list[list[str]]] = {}
    for cx in requestor.requested_contexts:
        sop_class = str(cx.abstract_syntax)
        if sop_class in storage_classes and sop_class in receiving:
            proposals.setdefault(sop_class, []).append([str(ts) for ts in cx.transfer_syntax])
    if not proposals:
        return
    acceptor = event.assoc.acceptor
    contexts = []
    for cx in acceptor.supported_contexts:
        sop_class = str(cx.abstract_syntax)
        if sop_class in proposals:
            cx = copy.deepcopy(cx)
            supported = [str(ts) for ts in cx.transfer_syntax]
            ordered: list[str | bytes | UID] = [
                *accept_order(proposals[sop_class], supported, encodable)
            ]
            cx.transfer_syntax = ordered
        contexts.append(cx)
    acceptor.supported_contexts = contexts
