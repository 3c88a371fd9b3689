"""The service table: what build_ae offers, what is bound, and that a SOP class with no
row is refused with SOP_CLASS_NOT_SUPPORTED instead of being answered as another model.

Real pynetdicom associations over loopback; no DICOMweb server: a handler that got as far
as querying would touch the backend-less context and fail differently."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, evt

from bridge.config import parse_config
from bridge.dimse import sop
from bridge.dimse.context import BridgeContext
from bridge.dimse.server import build_ae
from bridge.dimse.services import (
    CANCELLABLE_REQUESTS,
    RESPONSE_NAMES,
    SERVICES,
    STORAGE_CLASSES,
    bindings,
)
from bridge.models import InformationModel
from bridge.translate.status import SOP_CLASS_NOT_SUPPORTED

MODALITY_WORKLIST_FIND = UID("1.2.840.10008.5.1.4.31")
# Retired, and never in the table: the kind of class a future edit could add to build_ae.
PATIENT_STUDY_ONLY_GET = UID("1.2.840.10008.5.1.4.1.2.3.3")
PATIENT_STUDY_ONLY_MOVE = UID("1.2.840.10008.5.1.4.1.2.3.2")


class _NoBackend:
    """A context with no backend: any use means the handler went on to query."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the handler used ctx.{name} for an unserved SOP class")


def _config() -> Any:
    return parse_config({"dicomweb": {"url": "http://127.0.0.1:9/dicom-web"}})


def test_build_ae_offers_exactly_the_table() -> None:
    ae = build_ae(_config())
    offered = {str(cx.abstract_syntax) for cx in ae.supported_contexts}
    assert offered == {str(s.sop_class) for s in SERVICES}
    assert str(sop.STUDY_ROOT_FIND) in offered and str(sop.VERIFICATION) in offered
    assert STORAGE_CLASSES == {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}


def test_each_event_is_bound_once_with_its_models() -> None:
    ctx = cast(BridgeContext, _NoBackend())
    handlers: list[Any] = list(bindings(ctx))
    events = [h[0] for h in handlers]
    assert len(events) == len(set(events)) == 6
    by_event = {h[0]: h for h in handlers}
    find = by_event[evt.EVT_C_FIND]
    assert len(find) == 3 and find[2][1] == {
        str(sop.PATIENT_ROOT_FIND): InformationModel.PATIENT_ROOT,
        str(sop.STUDY_ROOT_FIND): InformationModel.STUDY_ROOT,
    }
    assert len(by_event[evt.EVT_C_GET][2][1]) == 4
    assert len(by_event[evt.EVT_C_MOVE][2][1]) == 3
    assert by_event[evt.EVT_C_ECHO][2] == [ctx]


def test_metrics_names_come_from_the_table() -> None:
    assert RESPONSE_NAMES[0x8020] == "C-FIND"
    assert RESPONSE_NAMES[0x8010] == "C-GET"
    assert RESPONSE_NAMES[0x8130] == "N-ACTION"
    assert CANCELLABLE_REQUESTS == {0x0010: "C-GET", 0x0020: "C-FIND", 0x0021: "C-MOVE"}


@pytest.fixture
def bridge_ae() -> Iterator[int]:
    """The bridge's AE with three extra, unserved SOP classes, bound from the table."""
    ae = build_ae(_config())
    ae.require_calling_aet = []
    for uid in (MODALITY_WORKLIST_FIND, PATIENT_STUDY_ONLY_GET, PATIENT_STUDY_ONLY_MOVE):
        ae.add_supported_context(uid)
    handlers = bindings(cast(BridgeContext, _NoBackend()))
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def _identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.3"
    return ds


def _final(port: int, sop_class: UID, service: str) -> Dataset:
    scu = AE(ae_title="SCU")
    scu.add_requested_context(sop_class)
    assoc = scu.associate("127.0.0.1", port, ae_title=build_ae(_config()).ae_title)
    assert assoc.is_established
    try:
        if service == "find":
            responses = list(assoc.send_c_find(_identifier(), sop_class))
        elif service == "get":
            responses = list(assoc.send_c_get(_identifier(), sop_class))
        else:
            responses = list(assoc.send_c_move(_identifier(), "ANY", sop_class))
    finally:
        assoc.release()
    statuses = [status for status, _ in responses if status]
    assert len(statuses) == 1, statuses
    return statuses[0]


@pytest.mark.parametrize(
    ("sop_class", "service"),
    [
        (MODALITY_WORKLIST_FIND, "find"),
        (PATIENT_STUDY_ONLY_GET, "get"),
        (PATIENT_STUDY_ONLY_MOVE, "move"),
    ],
)
def test_a_sop_class_without_a_row_is_refused(
    bridge_ae: int, sop_class: UID, service: str
) -> None:
    status = _final(bridge_ae, sop_class, service)
    assert status.Status == SOP_CLASS_NOT_SUPPORTED
    assert str(sop_class) in status.ErrorComment
    if service != "find":
        assert status.NumberOfCompletedSuboperations == 0
        assert status.NumberOfFailedSuboperations == 0
