"""A C-GET or C-MOVE refused before any sub-operation, answered as Orthanc answers it: the
failure status with its ErrorComment, zero counters and no identifier.

pynetdicom 3.0 (``service_class.py``, ``_get_scp`` / ``_move_scp``) lets a handler choose a
failure status only after a count of at least 1, and then always attaches an identifier
to the response: the handler's data set if it holds a Failed SOP Instance UID List, else
one it builds with an empty list. A refusal has no failed instance to list, and dcmtk's
``DcmSCU`` (getscu) never reads the data set of a C-GET response: it stays unread in the
PDU stream, getscu's A-RELEASE-RQ is answered by that P-DATA-TF ("DUL P-Data PDU
arrived"), and getscu aborts. The identifier of a final response lists failed
sub-operations (PS3.4 C.4.2.1.4.2, C.4.3.1.3.2) and a refusal started none, so the
bridge sends no identifier, and 0 failed sub-operations where pynetdicom would count the
1 it was told to expect.

pynetdicom has no hook for the final response, so :func:`refusing` wraps the
association's ``dimse.send_msg`` for that one response: the only use of that internal
for it, pinned by ``pynetdicom>=3.0.4,<3.1`` and by the integration tests with getscu,
movescu and a pynetdicom SCU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from pydicom import Dataset

LOGGER = logging.getLogger(__name__)

_COUNTERS = (
    "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations",
    "NumberOfWarningSuboperations",
)


@contextlib.contextmanager
def refusing(assoc: Any, status: Dataset) -> Iterator[None]:
    """While active, the next response pynetdicom sends on `assoc` with ``status.Status``
    goes out as a refusal: no identifier, zero counters, nothing remaining.

    The handler yields the count (1) and then ``(status, None)`` inside this block;
    pynetdicom copies Status and ErrorComment from `status` into its response and sends
    it at once, without resuming the handler, so the wrapper undoes itself on that call.
    """
    dimse = assoc.dimse
    had_own = "send_msg" in vars(dimse)  # already wrapped (move.py's _CommentOnRefusal)
    previous = dimse.send_msg
    code = int(status.Status)

    def restore() -> None:
        if had_own:
            dimse.send_msg = previous
        else:
            with contextlib.suppress(AttributeError):
                del dimse.send_msg

    def send_msg(rsp: Any, context_id: int) -> None:
        if getattr(rsp, "Status", None) == code:
            restore()
            rsp.Identifier = None
            rsp.NumberOfRemainingSuboperations = None
            for counter in _COUNTERS:
                setattr(rsp, counter, 0)
        previous(rsp, context_id)

    dimse.send_msg = send_msg
    try:
        yield
    finally:
        if vars(dimse).get("send_msg") is send_msg:
            restore()
