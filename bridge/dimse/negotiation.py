"""Which transfer syntax the bridge accepts for each proposed storage presentation context.

pynetdicom's acceptor (``presentation.negotiate_as_acceptor``, 3.0) takes, for each proposed
context, the first of *its own* supported syntaxes, in the order they were added to the AE,
that the context proposes: the proposer's order does not count. So a ``getscu +xv`` peer
proposing [JPEG 2000 lossless, Explicit VR LE, ...] got Explicit VR LE, and a JPEG 2000
stored instance was decompressed for a peer that would have taken it.

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
from typing import Any

from bridge.translate.syntax import accept_order

LOGGER = logging.getLogger(__name__)


def prefer_requested_syntaxes(
    event: Any, storage_classes: Collection[str], encodable: Collection[str]
) -> None:
    """pynetdicom ``EVT_REQUESTED`` handler: order each proposed storage SOP class's
    transfer syntaxes as ``accept_order`` says (`encodable`: the lossless syntaxes the
    bridge can encode itself)."""
    proposals: dict[str, list[list[str]]] = {}
    for cx in event.assoc.requestor.requested_contexts:
        sop_class = str(cx.abstract_syntax)
        if sop_class in storage_classes:
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
            cx.transfer_syntax = accept_order(proposals[sop_class], supported, encodable)
        contexts.append(cx)
    acceptor.supported_contexts = contexts
