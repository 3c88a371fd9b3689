"""pynetdicom SCU helpers shared by the integration and fault tests.

`RetrieveOutcome` is the one record of a C-GET or C-MOVE as the requester saw it: every
response (status data set, identifier) in order, the CommandDataSetType of each, the
instances stored to it (C-GET sub-operations), and when it started, was cancelled and
ended. `c_get` and `c_move` run one retrieve on a fresh association and return it; the test
modules wrap them with their own AE titles, contexts and timeouts.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue
from pynetdicom import AE, build_role, evt

PENDING_STATUSES = (0xFF00, 0xFF01)
VERIFICATION = "1.2.840.10008.1.1"
# Command Field of the responses (PS3.7 E.1): whose CommandDataSetType is recorded.
C_GET_RSP = 0x8010
C_MOVE_RSP = 0x8021
# CommandDataSetType 0x0101: no data set follows the command (PS3.7 E.1).
NO_DATA_SET = 0x0101

# Storage contexts an SCU proposes: (SOP class, transfer syntaxes); None: pynetdicom's default.
Contexts = Sequence[tuple[str, Sequence[str] | None]]


def uid_list(value: Any) -> list[str]:
    """A UID list element's value (absent, empty, one or many) as a list of strings."""
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def failed_uid_list(identifier: Dataset | None) -> list[str]:
    """The Failed SOP Instance UID List (0008,0058) of a final response, as strings."""
    return uid_list(None if identifier is None else identifier.get("FailedSOPInstanceUIDList"))


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY on the SCU's socket.

    Without it Nagle holds a small PDU (a C-STORE-RSP, a C-CANCEL) behind the previous one
    for a delayed ACK (~40 ms).
    """
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class Received:
    """One instance a C-GET sub-operation stored to the SCU."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    raw: bytes  # the encoded data set exactly as it came over the network (no file meta)
    event: Any = field(repr=False)  # the EVT_C_STORE event, decoded on demand

    @cached_property
    def dataset(self) -> Dataset:
        """Decoded, with file_meta (TransferSyntaxUID = the context's)."""
        ds: Dataset = self.event.dataset
        meta = FileMetaDataset(self.event.file_meta)
        meta.TransferSyntaxUID = self.event.context.transfer_syntax
        ds.file_meta = meta
        return ds


@dataclass
class RetrieveOutcome:
    """Everything a C-GET or C-MOVE requester saw."""

    responses: list[tuple[Dataset, Dataset | None]] = field(default_factory=list)
    # CommandDataSetType of each C-GET-RSP/C-MOVE-RSP as received (0x0101: no data set).
    data_set_types: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    started_at: float = 0.0
    cancel_at: float | None = None
    final_at: float | None = None  # when the final (non-pending) response arrived

    @property
    def final(self) -> Dataset:
        """The last response's status data set."""
        assert self.responses, "no response at all"
        return self.responses[-1][0]

    @property
    def identifier(self) -> Dataset | None:
        """The last response's identifier (the Failed SOP Instance UID List's carrier)."""
        return self.responses[-1][1] if self.responses else None

    @property
    def status(self) -> int | None:
        """The final status; None without one (no response, association aborted, timeout)."""
        if not self.responses or "Status" not in self.final:
            return None
        status = int(self.final.Status)
        return None if status in PENDING_STATUSES else status

    @property
    def comment(self) -> str:
        return str(self.final.get("ErrorComment", "")) if self.responses else ""

    def count(self, keyword: str) -> int | None:
        """A sub-operation count of the final response; None when it is absent."""
        value = self.final.get(keyword) if self.responses else None
        return None if value is None else int(value)

    @property
    def completed(self) -> int | None:
        return self.count("NumberOfCompletedSuboperations")

    @property
    def failed(self) -> int | None:
        return self.count("NumberOfFailedSuboperations")

    @property
    def warning(self) -> int | None:
        return self.count("NumberOfWarningSuboperations")

    @property
    def pending(self) -> list[Dataset]:
        """The status data sets of the pending responses."""
        return [s for s, _ in self.responses if int(s.get("Status", -1)) in PENDING_STATUSES]

    @property
    def failed_uids(self) -> list[str]:
        """The final response's Failed SOP Instance UID List ([] when absent or empty)."""
        return failed_uid_list(self.identifier)

    @property
    def received_uids(self) -> list[str]:
        return [r.sop_instance_uid for r in self.received]

    def by_uid(self) -> dict[str, Received]:
        return {r.sop_instance_uid: r for r in self.received}

    @property
    def seconds(self) -> float:
        """From the request to the final response (or to now, without one)."""
        return (self.final_at or time.monotonic()) - self.started_at

    def describe(self) -> str:
        statuses = [
            f"0x{int(s.Status):04X}" if "Status" in s else "none" for s, _ in self.responses
        ]
        return (
            f"statuses={statuses} ({self.comment!r}), {len(self.received)} received, "
            f"failed list {self.failed_uids[:5]}, {self.seconds:.2f} s, "
            f"final={self.final if self.responses else None!r}"
        )

    summary = describe


def _record(outcome: RetrieveOutcome, status: Dataset, identifier: Dataset | None) -> None:
    outcome.responses.append((status, identifier))
    if "Status" in status and int(status.Status) not in PENDING_STATUSES:
        outcome.final_at = time.monotonic()


def scu(
    ae_title: str = "PYNETDICOM",
    *,
    timeouts: tuple[float | None, float | None, float | None] | None = None,
) -> AE:
    """An AE; `timeouts` = (acse, dimse, network) when given, pynetdicom's defaults if not."""
    ae = AE(ae_title=ae_title)
    if timeouts is not None:
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = timeouts
    return ae


def c_get(
    ae: AE,
    address: tuple[str, int, str],
    query: Dataset,
    model: str,
    contexts: Contexts,
    *,
    msg_id: int = 1,
    store_status: Callable[[Received], int] | None = None,
    on_store: Callable[[Received, int], None] | None = None,
    on_established: Callable[[Any], object] | None = None,
    nodelay: bool = False,
    handlers: Sequence[tuple[Any, Callable[..., Any]]] = (),
) -> RetrieveOutcome:
    """One C-GET from `address` = (host, port, called AE title) on a fresh association.

    `contexts`: the storage contexts proposed, each SOP class with the SCP role; the model
    (and anything else already on `ae`) is proposed too. `store_status(item)` answers each
    C-STORE (default 0x0000); `on_store(item, n)` runs in the C-STORE handler after the
    n-th instance arrived, before it answers (the thread that iterates ``send_c_get``);
    `on_established(assoc)` just before the C-GET request is sent.
    """
    outcome = RetrieveOutcome()
    ae.add_requested_context(model)
    for sop_class, syntaxes in contexts:
        if syntaxes is None:
            ae.add_requested_context(sop_class)
        else:
            ae.add_requested_context(sop_class, list(syntaxes))
    roles = [build_role(cls, scp_role=True) for cls in dict.fromkeys(c for c, _ in contexts)]

    def handle_store(event: Any) -> int:
        item = Received(
            sop_instance_uid=str(event.request.AffectedSOPInstanceUID),
            sop_class_uid=str(event.request.AffectedSOPClassUID),
            transfer_syntax=str(event.context.transfer_syntax),
            raw=event.request.DataSet.getvalue(),
            event=event,
        )
        outcome.received.append(item)
        if on_store is not None:
            on_store(item, len(outcome.received))
        return store_status(item) if store_status is not None else 0x0000

    assoc = _associate(
        ae,
        address,
        outcome,
        C_GET_RSP,
        [*handlers, (evt.EVT_C_STORE, handle_store)],
        nodelay,
        ext_neg=[*roles],
    )
    outcome.started_at = time.monotonic()
    if on_established is not None:
        on_established(assoc)
    try:
        for status, identifier in assoc.send_c_get(query, model, msg_id=msg_id):
            _record(outcome, status, identifier)
    finally:
        if assoc.is_established:
            assoc.release()
    return outcome


def c_move(
    ae: AE,
    address: tuple[str, int, str],
    query: Dataset,
    destination: str,
    model: str,
    *,
    msg_id: int = 1,
    cancel_after: int | None = None,
    nodelay: bool = False,
) -> RetrieveOutcome:
    """One C-MOVE to `destination` from `address` = (host, port, called AE title).

    With `cancel_after`, a C-CANCEL is sent once that many pending responses arrived.
    """
    outcome = RetrieveOutcome()
    ae.add_requested_context(model)
    assoc = _associate(ae, address, outcome, C_MOVE_RSP, [], nodelay)
    outcome.started_at = time.monotonic()
    try:
        for status, identifier in assoc.send_c_move(query, destination, model, msg_id=msg_id):
            _record(outcome, status, identifier)
            if (
                cancel_after is not None
                and outcome.cancel_at is None
                and len(outcome.pending) >= cancel_after
            ):
                outcome.cancel_at = time.monotonic()
                assoc.send_c_cancel(msg_id, query_model=model)
    finally:
        if assoc.is_established:
            assoc.release()
    return outcome


def _associate(
    ae: AE,
    address: tuple[str, int, str],
    outcome: RetrieveOutcome,
    response_field: int,
    handlers: list[tuple[Any, Callable[..., Any]]],
    nodelay: bool,
    **kwargs: Any,
) -> Any:
    def handle_dimse_recv(event: Any) -> None:
        command = event.message.command_set
        if command.CommandField == response_field:
            outcome.data_set_types.append(int(command.CommandDataSetType))

    host, port, called = address
    if nodelay:
        handlers = [(evt.EVT_CONN_OPEN, set_nodelay), *handlers]
    assoc = ae.associate(
        host,
        port,
        ae_title=called,
        evt_handlers=[*handlers, (evt.EVT_DIMSE_RECV, handle_dimse_recv)],
        **kwargs,
    )
    assert assoc.is_established, f"association to {called} at {host}:{port} refused"
    return assoc


def c_echo(address: tuple[str, int, str], ae_title: str = "PYNETDICOM") -> int:
    """The status of one C-ECHO to `address` = (host, port, called AE title)."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(address[0], address[1], ae_title=address[2])
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()
