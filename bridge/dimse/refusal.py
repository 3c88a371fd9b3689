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

A C-MOVE is refused the same way, and before any sub-association is opened (Orthanc
opens none either: a destination that would not accept it turned the refusal into
0xA801): the handler yields ``(None, None)`` as for an unknown destination, the only
response pynetdicom sends before associating, and the 0xA801 it builds becomes the
refusal. pynetdicom's own "Unknown Move Destination" error line is left out of the log
for that one response, since the destination is not unknown.

pynetdicom has no hook for the final response, so :func:`refusing` edits that one
response on its way out (``adapter.editing_sent``), pinned by ``pynetdicom>=3.0.4,<3.1``
and by the integration tests with getscu, movescu and pynetdicom SCUs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from pydicom import Dataset

from bridge.dimse import adapter
from bridge.translate.status import PENDING

LOGGER = logging.getLogger(__name__)

_COUNTERS = (
    "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations",
    "NumberOfWarningSuboperations",
)
# pynetdicom.service_class logs this at ERROR before its 0xA801 response.
_PYNETDICOM_LOGGER = "pynetdicom.service_class"
_UNKNOWN_DESTINATION = "Unknown Move Destination"


@contextlib.contextmanager
def refusing(assoc: Any, status: Dataset) -> Iterator[None]:
    """While active, the next final response pynetdicom sends on `assoc` is `status`
    alone: its Status and ErrorComment, zero counters, nothing remaining, no identifier.

    C-GET: yield the count (1), then ``(status, None)`` inside this block. C-MOVE: yield
    ``(None, None)`` inside it. pynetdicom sends that response at once and does not
    resume the handler, so the edit is done with that response.
    """
    thread = threading.get_ident()
    pynetdicom_log = logging.getLogger(_PYNETDICOM_LOGGER)

    def not_unknown_destination(record: logging.LogRecord) -> bool:
        return record.thread != thread or not str(record.msg).startswith(_UNKNOWN_DESTINATION)

    def refuse(rsp: Any) -> bool:
        if getattr(rsp, "Status", None) == PENDING:
            return False
        pynetdicom_log.removeFilter(not_unknown_destination)
        rsp.Status = int(status.Status)
        rsp.ErrorComment = status.get("ErrorComment")
        rsp.Identifier = None
        rsp.NumberOfRemainingSuboperations = None
        for counter in _COUNTERS:
            setattr(rsp, counter, 0)
        return True

    pynetdicom_log.addFilter(not_unknown_destination)
    try:
        with adapter.editing_sent(assoc, refuse):
            yield
    finally:
        pynetdicom_log.removeFilter(not_unknown_destination)
