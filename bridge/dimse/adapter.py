"""The only place that touches pynetdicom internals: pinned to ``pynetdicom>=3.0.4,<3.1``.

pynetdicom 3.0 has no public hook for several things the bridge needs, so this module
reaches into private attributes of ``Association``, ``DULServiceProvider``, its state
machine and ``DIMSEServiceProvider``, and into its private modules (``_config``,
``pdu_primitives``, ``timer``). Checked against 3.0.4's source; the same range is pinned
in pyproject.toml, and an upgrade touches only this file: ``tests/unit/test_adapter.py``
and ``tests/unit/test_lean_send.py`` pin the behaviour against real associations, and
``tests/unit/test_boundaries.py`` fails when another module reaches into pynetdicom.
Outside the range the lean send path below turns itself off (``lean_unavailable``).

**The idle timeout measures silence while the bridge has nothing outstanding.**
pynetdicom restarts ``dul._idle_timer`` only on *received* PDUs, and the association's
reactor checks it right after a served request returns: a C-MOVE whose requester waits
silently for longer than ``dimse.network_timeout`` ended in an A-ABORT just after its
final response. ``prepare()`` installs ``_IdleTimer`` as ``dul._idle_timer``: it never
expires while work is outstanding on the association, and restarts (a full timeout of
silence again) when the last piece of work ends. Work is counted in one place for DIMSE
requests (a wrapper around ``Association._serve_request``: C-ECHO, C-FIND, C-GET,
C-MOVE, C-STORE waiting on STOW-RS, N-ACTION), by ``begin_work``/``end_work`` for the
storage-commitment report a worker thread still has to send, and for as long as the
bridge holds a reactor paused (the C-MOVE sub-association while it sends on it).

**Pausing a reactor is proved, not guessed.** A requestor association (the C-MOVE
sub-association) runs a reactor thread that reads the DIMSE queue every millisecond,
and pynetdicom's own way to stop it (clear ``_reactor_checkpoint``, spin until
``_is_paused``) is racy: the flag is also True for a moment on every pass of the loop,
so a sender could see it after the reactor had passed the checkpoint, and the reactor
then took the C-STORE-RSP off the queue ("Received unexpected C-STORE service
message", a DIMSE timeout, a lost association). ``prepare()`` installs ``_Checkpoint``
as ``_reactor_checkpoint``: one condition variable, under which the reactor records
that it is blocked, so ``reactor_paused()`` returns only once the reactor is really
waiting at the checkpoint, and keeps it there until the bridge is done. Nested pauses
by pynetdicom's ``send_*`` methods inside that hold (``send_c_store`` on the stock
path) are absorbed: they neither release the hold nor wait for it. The C-MOVE holds
the sub-association's reactor once for the whole move, so no sub-operation pays for a
pause.

**Responses are awaited watching the association.** While a sender holds a reactor,
``dimse.get_msg(block=True)`` (what ``send_c_store`` calls) is replaced by
``wait_response``: it polls the DIMSE queue in 50 ms steps and gives up as soon as the
association is aborted or its DUL thread is gone, rather than after the whole DIMSE
timeout.

**Messages pynetdicom builds itself are edited on their way out.** ``editing_sent`` is
the one wrapper of ``dimse.send_msg`` (refusals, the final ErrorComment, the 0xA801
comment are small edits through it), and ``replacing_send_c_store`` the one of
``send_c_store`` (sub-operation results, the encoded fast path). Socket options, the
calling AE title of an opening association and the sending of a DIMSE message outside
``send_*`` are here too.

**Why an association was aborted is remembered, not guessed afterwards.** pynetdicom
fires the same EVT_ABORTED for an A-ABORT the peer sent, a lost connection and an abort
the bridge sent, and says nothing about why the bridge sent one. ``abort_cause`` tells
them apart: the primitive the peer's side delivered (``note_acse_received``, from
EVT_ACSE_RECV, which pynetdicom fires just before EVT_ABORTED), ``_sent_abort`` for the
bridge's own, a cause marked by the code that aborts (``abort(assoc, cause)``: shutdown;
``wait_response`` running out of time: DIMSE timeout), and the idle timer (the reactor
aborts when it expires).

**An association's threads run the bridge's code first.** ``wrap_reactor`` and
``wrap_dul`` replace the ``run`` of the association's reactor thread and of its DUL
thread before they start (from EVT_CONN_OPEN): each sets the association's id for the
log (bridge/dimse/trace.py), the reactor does the DICOM TLS handshake before pynetdicom
reads (``tls_handshake``) and reports how the association ended once it has
(``end_cause``).

**The lean send path takes turns on the socket.** pynetdicom's DUL thread sends every
P-DATA primitive through its queue and state machine, one per reactor pass, and reads
responses the same way, with a 1 ms sleep whenever it is idle: ~1 ms of CPU and latency
per sub-operation. ``prepare()`` installs ``_SocketTurns`` on the DUL: the thread holds
one lock whenever it sends or reads (until the end of the state machine action that
follows; an idle pass takes none). ``exchange()`` takes the same lock, writes a
request's P-DATA-TF PDUs straight to the socket (``sendmsg``, the fragments as views of
the encoded data set) and reads PDUs itself until the response: P-DATA goes to
``DIMSEServiceProvider.receive_primitive`` as the state machine's DT-2 action would (so a
C-CANCEL lands in ``cancel_req``, and EVT_DIMSE_RECV fires); anything else (A-ABORT,
A-RELEASE-RQ, a closed connection, an invalid PDU) is handed back to the DUL's event
queue and the exchange ends, so pynetdicom's state machine handles it as ever. Between
exchanges the DUL runs as usual: ARTIM, the idle timer, a C-CANCEL or A-ABORT while the
bridge waits on WADO-RS are all its own. While a retrieve runs (``lean_sending``), the
P-DATA pynetdicom sends on that association (the pending C-GET responses) is written
straight to the socket as well, under the same lock, so it cannot overtake or be
overtaken by a sub-operation. Not used on DICOM TLS sockets (``lean_unavailable``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pynetdicom
from pydicom import Dataset
from pynetdicom import _config
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, P_DATA
from pynetdicom.timer import Timer

from bridge.dimse.pdus import Buffer, parse_pdata, pdata_pdu

LOGGER = logging.getLogger(__name__)

PINNED = ((3, 0, 4), (3, 1))  # pynetdicom>=3.0.4,<3.1, as in pyproject.toml
PAUSE_TIMEOUT = 5.0  # seconds for a reactor to reach its checkpoint (it loops every 1 ms)
_POLL = 0.05  # seconds between liveness checks while waiting


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


PYNETDICOM_PINNED = PINNED[0] <= _version(pynetdicom.__version__) < PINNED[1]


class _IdleTimer(Timer):
    """``dul._idle_timer`` that does not expire while the bridge has work outstanding."""

    def __init__(self, timeout: float | None) -> None:
        super().__init__(timeout)
        self._lock = threading.Lock()
        self._outstanding = 0
        self.fired = False  # it expired once: the reactor ends the association for idling

    @property
    def expired(self) -> bool:
        if self._outstanding:
            return False
        expired = bool(super().expired)
        self.fired = self.fired or expired
        return expired

    def begin(self) -> None:
        with self._lock:
            self._outstanding += 1

    def end(self) -> None:
        with self._lock:
            self._outstanding = max(0, self._outstanding - 1)
            if not self._outstanding:
                # The peer gets a full timeout of silence after the work ends.
                self.restart()


class _Checkpoint:
    """``Association._reactor_checkpoint``: the Event API the reactor and pynetdicom's
    ``send_*`` methods use (``wait``/``set``/``clear``), plus a proof that the reactor is
    blocked in ``wait`` and a single holder that keeps it there."""

    def __init__(self, assoc: Any, is_open: bool) -> None:
        self._assoc = assoc
        self._cond = threading.Condition()
        self._open = is_open
        # Every opening starts a new generation: a reactor woken by one passes even if
        # the gate is closed again before it runs (threading.Event's semantics), so
        # only a reactor blocked in the current generation proves a pause.
        self._generation = 0
        self._blocked_in: int | None = None
        self._holder: threading.Thread | None = None
        self._holders = threading.Lock()  # one holder at a time

    # The threading.Event API, as pynetdicom calls it.

    def is_set(self) -> bool:
        return self._open

    def wait(self, timeout: float | None = None) -> bool:
        # Only the association's reactor thread waits here.
        with self._cond:
            if self._open:
                return True
            generation = self._generation
            self._blocked_in = generation
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: self._open or self._generation != generation, timeout)
            finally:
                self._blocked_in = None
            return self._open or self._generation != generation

    @property
    def blocked(self) -> bool:
        """The reactor is waiting at the closed gate, and stays there until it opens."""
        with self._cond:
            return not self._open and self._blocked_in == self._generation

    def set(self) -> None:
        if self._absorbed():
            return
        with self._cond:
            self._open = True
            self._generation += 1
            self._cond.notify_all()

    def clear(self) -> None:
        if self._absorbed():
            return
        with self._cond:
            self._open = False

    def _absorbed(self) -> bool:
        """A pause or unpause that must not change the gate: the holder's own nested
        pynetdicom ``send_*`` calls, and the reactor thread pausing itself (a handler
        running inside the reactor, as C-GET's does; the reactor is not at its checkpoint
        then anyway). Ending the association (abort, release, kill) always opens it, so
        the reactor can exit."""
        me = threading.current_thread()
        if me is not self._holder and me is not self._assoc:
            return False
        return bool(self._assoc.is_established and not self._assoc._sent_abort)

    # The bridge's side.

    def hold(self, timeout: float) -> bool:
        """Close the gate and wait until the reactor is blocked at it. False (gate open
        again) when that does not happen within `timeout` or the association ends."""
        deadline = time.monotonic() + timeout
        if not self._holders.acquire(timeout=timeout):
            return False
        with self._cond:
            self._holder = threading.current_thread()
            self._open = False
            while self._blocked_in != self._generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _reactor_alive(self._assoc):
                    self._release_locked()
                    return False
                self._cond.wait(min(remaining, _POLL))
        return True

    def release(self) -> None:
        with self._cond:
            self._release_locked()

    def _release_locked(self) -> None:
        self._holder = None
        self._open = True
        self._generation += 1
        self._cond.notify_all()
        self._holders.release()

    def held_by_me(self) -> bool:
        return self._holder is threading.current_thread()


def _reactor_alive(assoc: Any) -> bool:
    return bool(assoc.is_alive() and not assoc._kill and assoc.dul.is_alive())


def prepare(assoc: Any) -> None:
    """Install the idle timer, the provable checkpoint and the request tracking on a new
    association (from its EVT_CONN_OPEN handler, before its reactor serves anything)."""
    if isinstance(assoc._reactor_checkpoint, _Checkpoint):
        return
    old_timer = assoc.dul._idle_timer
    timer = _IdleTimer(old_timer.timeout)
    if old_timer._start_time is not None:  # the requestor's DUL is already running
        timer.start()
    assoc.dul._idle_timer = timer
    assoc._reactor_checkpoint = _Checkpoint(assoc, assoc._reactor_checkpoint.is_set())
    if PYNETDICOM_PINNED:
        _SocketTurns.install(assoc.dul)
    serve: Callable[[Any, int], None] = assoc._serve_request

    def serve_request(msg: Any, context_id: int) -> None:
        begin_work(assoc)
        try:
            serve(msg, context_id)
        finally:
            end_work(assoc)

    assoc._serve_request = serve_request


def begin_work(assoc: Any) -> None:
    """The bridge has something outstanding on `assoc`: its idle timer does not expire."""
    timer = assoc.dul._idle_timer
    if isinstance(timer, _IdleTimer):
        timer.begin()


def end_work(assoc: Any) -> None:
    """The work begun by ``begin_work`` is done: the idle timer restarts from now."""
    timer = assoc.dul._idle_timer
    if isinstance(timer, _IdleTimer):
        timer.end()


@contextlib.contextmanager
def working(assoc: Any) -> Iterator[None]:
    begin_work(assoc)
    try:
        yield
    finally:
        end_work(assoc)


@contextlib.contextmanager
def reactor_paused(assoc: Any, timeout: float = PAUSE_TIMEOUT) -> Iterator[bool]:
    """Keep `assoc`'s reactor blocked at its checkpoint, so this thread alone reads the
    DIMSE queue; yields False when the reactor could not be paused (the association is
    ending, or another thread holds it for longer than `timeout`): send nothing then.

    Re-entrant, and a no-op pause in the reactor's own thread (a C-GET handler runs
    there: nothing else reads the queue). Responses are awaited with ``wait_response``.
    """
    checkpoint = assoc._reactor_checkpoint
    if not isinstance(checkpoint, _Checkpoint):
        prepare(assoc)
        checkpoint = assoc._reactor_checkpoint
    if checkpoint.held_by_me():
        yield True
        return
    in_reactor = threading.current_thread() is assoc
    if not in_reactor and not checkpoint.hold(timeout):
        LOGGER.warning("the association's reactor could not be paused within %.0f s", timeout)
        yield False
        return
    try:
        with working(assoc), _watched_get_msg(assoc):
            yield True
    finally:
        if not in_reactor:
            checkpoint.release()
            if lost(assoc):
                _wound_down(assoc)


def _wound_down(assoc: Any, timeout: float = PAUSE_TIMEOUT) -> None:
    """Let a reactor that was held while its peer aborted take the A-ABORT and end the
    association, before the caller goes on: pynetdicom releases a C-MOVE sub-association
    right after the last sub-operation, and a release sent while the association still
    looks established waits out the whole ACSE timeout for an answer that never comes."""
    deadline = time.monotonic() + timeout
    while assoc.is_established and assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)


@contextlib.contextmanager
def _watched_get_msg(assoc: Any) -> Iterator[None]:
    dimse = assoc.dimse
    if "get_msg" in vars(dimse):  # already watched (nested)
        yield
        return
    stock = dimse.get_msg

    def get_msg(block: bool = False) -> tuple[int | None, Any]:
        if not block:
            return stock(False)  # type: ignore[no-any-return]
        return wait_response(assoc, dimse.dimse_timeout)

    dimse.get_msg = get_msg
    try:
        yield
    finally:
        del dimse.get_msg


def lost(assoc: Any) -> bool:
    """The association is gone or going: aborted (even if its paused reactor has not
    noticed yet), released, or its DUL thread has stopped."""
    return bool(
        not assoc.is_established
        or assoc.is_aborted
        or not assoc.dul.is_alive()
        or assoc.acse.is_aborted()
    )


def wait_response(
    assoc: Any, timeout: float | None, give_up: Callable[[], bool] | None = None
) -> tuple[int | None, Any]:
    """The next (context ID, DIMSE message) from `assoc`'s queue, or (None, None) after
    `timeout` seconds (None: no limit), as soon as the association is lost, or when
    `give_up()` turns True. The caller must hold the reactor (``reactor_paused``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if give_up is not None and give_up():
            return None, None
        step = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
        if step <= 0:
            # The caller aborts the association next (``response_status``, pynetdicom's
            # own send_*): that abort is a DIMSE timeout.
            _timed_out(assoc)
            return None, None
        try:
            item: tuple[int | None, Any] = assoc.dimse.msg_queue.get(timeout=step)
            return item
        except queue.Empty:
            if lost(assoc):
                return None, None


Around = Callable[[Callable[[], None]], None]
"""Runs a thread's original ``run`` (passed to it): code before, after, or instead of it."""


def wrap_reactor(assoc: Any, around: Around) -> None:
    """The association's own thread (its reactor) runs ``around(run)``; call before it
    starts (EVT_CONN_OPEN of an acceptor). Wrappers nest: the last one runs first."""
    run: Callable[[], None] = assoc.run
    assoc.run = lambda: around(run)


def name_threads(assoc: Any, name: str) -> None:
    """Name the association's reactor thread ``AcceptorThread-<name>`` (or Requestor...)
    and its DUL thread ``<name>-dul`` (before they start): pynetdicom's
    "AcceptorThread@<second>" is shared by every association that starts in the same
    second. The "AcceptorThread" stays: pynetdicom finds a server's associations by it
    (``ThreadedAssociationServer.active_associations``), and the shutdown drain with it."""
    role = str(assoc.name).partition("@")[0] or "Association"
    assoc.name = f"{role}-{name}"
    assoc.dul.name = f"{name}-dul"


def wrap_dul(assoc: Any, around: Around) -> None:
    """The association's DUL thread (socket reader, FSM) runs ``around(run)``; call before
    the association starts."""
    dul = assoc.dul
    run: Callable[[], None] = dul.run
    dul.run = lambda: around(run)


def tls_handshake(assoc: Any, timeout: float | None) -> str | None:
    """Do the TLS handshake of an acceptor's socket (wrapped without it, see
    ``bridge.dimse.server``) within `timeout` seconds; None when it succeeded, else why
    not, and then the socket is shut down so pynetdicom reads an orderly end of stream
    instead of logging the SSL error with its traceback."""
    sock = assoc.dul.socket.socket
    if not isinstance(sock, ssl.SSLSocket):
        return None
    previous = sock.gettimeout()
    try:
        sock.settimeout(timeout)
        sock.do_handshake()
        sock.settimeout(previous)
        return None
    except (OSError, ValueError) as exc:  # ssl.SSLError, a timeout, a reset
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # also drops the SSL object: plain reads
        return str(reason)


def end_cause(assoc: Any) -> tuple[str, str]:
    """How an acceptor association ended, once its reactor has returned: ("released" or
    "aborted", and by whom: "peer", "bridge" or "timeout")."""
    timer = assoc.dul._idle_timer
    timed_out = (isinstance(timer, _IdleTimer) and timer.fired) or getattr(
        assoc, "_bridge_timed_out", False
    )
    if assoc.is_released:
        return "released", "timeout" if timed_out else "peer"
    if timed_out:
        return "aborted", "timeout"
    if assoc._sent_abort:
        return "aborted", "bridge"
    return "aborted", "peer"  # an A-ABORT, or the connection closed (A-P-ABORT)


def release_requested(assoc: Any) -> bool:
    """The peer has sent an A-RELEASE-RQ the (paused) reactor has not answered yet."""
    return bool(assoc.acse.is_release_requested())


def valid_context(
    assoc: Any, sop_class: str, syntax: str, role: str | None, allow_conversion: bool = True
) -> Any:
    """The accepted presentation context pynetdicom's ``send_*`` would use (ValueError if
    there is none)."""
    return assoc._get_valid_context(sop_class, syntax, role, allow_conversion=allow_conversion)


def peer_max_pdu(assoc: Any) -> int:
    """The peer's maximum PDU length (0: unlimited)."""
    return int(assoc.dimse.maximum_pdu_size)


def pdata_primitives(context_id: int, pdvs: Iterable[tuple[int, Buffer]]) -> Iterator[Any]:
    """pynetdicom P-DATA primitives, one per (control header, fragment), as ``encode_msg``
    yields them (``bridge.dimse.pdus.fragments`` makes the pieces)."""
    for control, fragment in pdvs:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, bytes([control]) + fragment))
        yield pdata


def send_pdata(assoc: Any, context_id: int, pdvs: Iterable[tuple[int, Buffer]]) -> None:
    """Hand one message's P-DATA to the DUL, as ``DIMSEServiceProvider.send_msg`` does."""
    for pdata in pdata_primitives(context_id, pdvs):
        assoc.dul.send_pdu(pdata)


def response_status(assoc: Any, rsp: Any) -> Dataset:
    """The status Dataset of a received response, as ``send_c_store`` builds it; an empty
    Dataset (no Status) after no or an invalid response, and then the association is
    aborted as pynetdicom does."""
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    status: Dataset = assoc._check_received_status(rsp)
    return status


def send_message(assoc: Any, msg: Any, context_id: int) -> None:
    """Send a DIMSE message pynetdicom has no ``send_*`` for in this role (the
    N-EVENT-REPORT an acceptor sends on the requestor's association)."""
    assoc.dimse.send_msg(msg, context_id)


def peer_ended(assoc: Any) -> bool:
    """The peer has aborted or asked to release, or the association is no longer
    established. An acceptor's association is marked ended only in its reactor, which
    runs the handler's own thread: meanwhile this shows only in the ACSE state."""
    return bool(
        not assoc.is_established or assoc.acse.is_aborted() or assoc.acse.is_release_requested()
    )


def dul_alive(assoc: Any) -> bool:
    """The association's DUL thread still runs (its connection is not gone)."""
    return bool(assoc.dul.is_alive())


def send_reject(assoc: Any, result: int, source: int, diagnostic: int) -> None:
    """Answer an A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ from an EVT_REQUESTED handler."""
    assoc.acse.send_reject(result, source, diagnostic)


def configure_process() -> None:
    """pynetdicom's process-wide settings the bridge serves with (``pynetdicom._config``)."""
    # pynetdicom's own logging prints identifiers (PHI) at INFO and formats every PDU: the
    # bridge logs what an operator needs itself.
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # Incoming C-STORE data sets go to a temporary Part 10 file as they arrive, which the
    # STOW-RS upload streams from: never re-encoded, never whole in memory.
    _config.STORE_RECV_CHUNKED_DATASET = True


def set_nodelay(assoc: Any) -> None:
    """TCP_NODELAY on the association's socket: Nagle plus delayed ACKs makes a
    pynetdicom sender ~4x slower and erratic. Call from EVT_CONN_OPEN."""
    sock = assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_calling_ae_title(assoc: Any, ae_title: str) -> None:
    """The calling AE title of a requestor association pynetdicom is opening (from
    EVT_CONN_OPEN): it has already built the A-ASSOCIATE-RQ primitive, so set both."""
    assoc.requestor.ae_title = ae_title
    assoc.requestor.primitive.calling_ae_title = ae_title


# --- the messages pynetdicom sends ------------------------------------------------------

SentEdit = Callable[[Any], bool]
"""Edits a DIMSE message pynetdicom is about to send; returns True once it is done."""


class _SendEditor:
    """Stands in for an association's ``dimse.send_msg`` while edits are active."""

    def __init__(self, dimse: Any) -> None:
        self.dimse = dimse
        self.original: Callable[[Any, int], None] = dimse.send_msg
        self.edits: list[list[SentEdit]] = []  # one-element lists: identity tokens

    def __call__(self, msg: Any, context_id: int) -> None:
        for entry in reversed(self.edits):  # the latest first, as nested wrappers would
            if entry[0](msg):
                self.discard(entry)
        self.original(msg, context_id)

    def discard(self, entry: list[SentEdit]) -> None:
        self.edits = [e for e in self.edits if e is not entry]
        if not self.edits and vars(self.dimse).get("send_msg") is self:
            del self.dimse.send_msg


@contextlib.contextmanager
def editing_sent(assoc: Any, edit: SentEdit) -> Iterator[None]:
    """While active, `edit` sees every DIMSE message pynetdicom sends on `assoc` just
    before it goes out, and may change it.

    pynetdicom builds some responses itself with no hook for the handler (the 0xA801 of
    a C-MOVE, the final C-GET/C-MOVE response once every sub-operation has a result):
    ``DIMSEServiceProvider.send_msg`` is the one place to reach them. Edits nest, the
    latest applied first. An edit returning True is removed at once, since a handler
    pynetdicom does not resume after that response never leaves its ``with`` block.
    """
    dimse = assoc.dimse
    editor = vars(dimse).get("send_msg")
    if not isinstance(editor, _SendEditor):
        editor = _SendEditor(dimse)
        dimse.send_msg = editor
    entry = [edit]
    editor.edits.append(entry)
    try:
        yield
    finally:
        editor.discard(entry)


@contextlib.contextmanager
def replacing_send_c_store(
    assoc: Any, make: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Iterator[None]:
    """While active, pynetdicom's C-GET/C-MOVE service classes call ``make(original)``
    instead of ``assoc.send_c_store`` for each sub-operation: the only way to see their
    results, or to send one differently."""
    assoc.send_c_store = make(assoc.send_c_store)
    try:
        yield
    finally:
        with contextlib.suppress(AttributeError):
            del assoc.send_c_store


# --- why an association ended in an abort ------------------------------------------------

# The causes abort_cause returns: the ``cause`` label values of
# dimse_bridge_association_aborts_total (bridge/ops/metrics.py ABORT_CAUSES lists them).
PEER_ABORT = "peer_abort"
CONNECTION_LOST = "connection_lost"
BRIDGE_ABORT = "bridge_abort"
IDLE_TIMEOUT = "idle_timeout"
ARTIM_TIMEOUT = "artim_timeout"
DIMSE_TIMEOUT = "dimse_timeout"
SHUTDOWN = "shutdown"

# Association → the last cause marked for an abort the bridge sends, or the primitive the
# peer's side delivered. Weak: an association's entry goes with it.
_causes: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_received: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_causes_lock = threading.Lock()


def _timed_out(assoc: Any) -> None:
    """No DIMSE response within the DIMSE timeout: the caller aborts the association next
    (``response_status``, pynetdicom's own send_*). Both accounts of it say why: the abort
    metrics (``abort_cause``) and the association-end line (``end_cause``)."""
    _mark(assoc, DIMSE_TIMEOUT)
    assoc._bridge_timed_out = True


def _mark(assoc: Any, cause: str) -> None:
    # The latest wins: a DIMSE timeout nobody acted on must not name a later abort.
    with _causes_lock:
        _causes[assoc] = cause


def abort(assoc: Any, cause: str) -> None:
    """Send an A-ABORT on `assoc` (blocking, as ``Association.abort()``), for `cause`."""
    _mark(assoc, cause)
    assoc.abort()


def note_acse_received(assoc: Any, primitive: Any) -> None:
    """EVT_ACSE_RECV: remember an A-ABORT or A-P-ABORT from the peer's side, which the
    reactor takes off the queue just before it fires EVT_ABORTED."""
    if isinstance(primitive, A_ABORT):
        received = PEER_ABORT
    elif isinstance(primitive, A_P_ABORT):
        # The connection closed (or the peer broke the protocol) without an A-ABORT.
        received = CONNECTION_LOST
    else:
        return
    with _causes_lock:
        _received.setdefault(assoc, received)


def abort_cause(assoc: Any) -> str:
    """Why `assoc` was aborted (call from EVT_ABORTED): one of the causes above."""
    with _causes_lock:
        marked, received = _causes.get(assoc), _received.get(assoc)
    if getattr(assoc, "_sent_abort", False):
        if marked is not None:
            return marked
        timer = assoc.dul._idle_timer
        # The reactor aborts when the idle timer has expired, and nothing restarts it.
        if timer.expired:
            return IDLE_TIMEOUT
        return BRIDGE_ABORT
    return received if received is not None else CONNECTION_LOST


def artim_expired(assoc: Any) -> bool:
    """The connection's ARTIM timer ran out (checked on EVT_CONN_CLOSE): on a connection
    that never sent an A-ASSOCIATE-RQ, that is why pynetdicom closed it."""
    return bool(assoc.dul.artim_timer.expired)


def wait_sent(assoc: Any, most: int, timeout: float | None) -> bool:
    """Wait until at most `most` PDUs are queued for `assoc`'s DUL to send (backpressure
    for a sender streaming a large data set from a file, since pynetdicom's queue has no
    bound); False when the association is lost or the queue did not move for `timeout`
    seconds (the peer stopped reading)."""
    pending = assoc.dul.to_provider_queue
    last = pending.qsize()
    since = time.monotonic()
    while (size := pending.qsize()) > most:
        if lost(assoc):
            return False
        now = time.monotonic()
        if size < last:
            last, since = size, now
        elif timeout is not None and now - since > timeout:
            return False
        time.sleep(0.0005)
    return True


def receive_into(directory: Path) -> None:
    """Make pynetdicom write incoming C-STORE data sets (``STORE_RECV_CHUNKED_DATASET``)
    into `directory`: the spool's incoming/, on the file system of its files/, so that
    keeping one is a hard link, not a copy.

    pynetdicom 3.0 opens that file with ``NamedTemporaryFile(delete=False)`` and no
    ``dir`` (dimse_messages.py, ``DIMSEMessage.decode_msg``), so only the process-wide
    ``tempfile.tempdir`` moves it; it unlinks its own name after the handler returns and
    ignores an OSError, so a hard link taken by the handler survives. Nothing else in
    the bridge relies on the default temporary directory.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(directory)


# --- the lean send path -----------------------------------------------------------------

_P_DATA_TF = 0x04
_PDU_TYPES = range(0x01, 0x08)  # the PDU types pynetdicom's DUL reads (PS3.8 9.3.1)
_IOV_MAX = 512  # buffers per sendmsg call, well under every platform's IOV_MAX
_ESTABLISHED = "Sta6"  # the state machine's "association established, ready for data"


class _SocketTurns:
    """The lock an association's DUL thread holds whenever it touches the socket, so the
    bridge can take a turn (``exchange``, the direct P-DATA of ``lean_sending``).

    The DUL's reactor pass is wrapped at its three steps: ``_process_recv_primitive``
    (the start of a pass: the lock is taken when a queued primitive is to be sent),
    ``_is_transport_event`` (reads the socket: the lock is taken when data is waiting)
    and ``state_machine.do_action`` (the end of a pass with an event: let go). The DUL
    holds it only while it really sends or reads: an idle pass (the 1 ms sleep, the
    readiness check) takes no lock, so the bridge never waits on a DUL thread that is
    itself waiting for the GIL. In the established state the DUL skips a pass's read
    when the bridge holds the lock (the bridge is reading then, and hands back anything
    that is not its own).
    """

    def __init__(self, dul: Any) -> None:
        self.dul = dul
        self.lock = threading.Lock()
        # The DUL has started a wrapped pass: from then on every pass keeps these turns
        # (the pass that was running when this was installed has ended).
        self.engaged = False
        self._dul_holds = False
        self._process = dul._process_recv_primitive
        self._transport = dul._is_transport_event
        self._do_action = dul.state_machine.do_action

    @classmethod
    def install(cls, dul: Any) -> None:
        if isinstance(vars(dul).get("_bridge_turns"), cls):
            return
        turns = cls(dul)
        dul._bridge_turns = turns
        dul._process_recv_primitive = turns.process_recv_primitive
        dul._is_transport_event = turns.is_transport_event
        dul.state_machine.do_action = turns.do_action

    # The DUL thread's side.

    def process_recv_primitive(self) -> bool:
        self._let_go()  # a pass that ended without an event (it never does: belt and braces)
        self.engaged = True
        # Only the DUL takes from this queue: not empty now, not empty when _process looks.
        if self.dul.to_provider_queue.empty():
            return False  # nothing to send this pass
        self._hold()
        if self._process():
            return True  # an event follows: do_action lets go
        self._let_go()
        return False

    def is_transport_event(self) -> bool:
        transport = self.dul.socket
        if self.dul.state_machine.current_state == _ESTABLISHED:
            if transport is None or not transport.ready:
                return False  # what the stock check returns, without the lock
            if not self.lock.acquire(blocking=False):
                return False  # the bridge is reading: it hands back what is not its own
            self._dul_holds = True
        else:
            self._hold()  # Sta13 and the rest: pynetdicom's own check, as ever
        try:
            return bool(self._transport())
        finally:
            if self.dul.event_queue.empty():
                self._let_go()  # no state machine action this pass

    def do_action(self, event: str) -> None:
        try:
            self._do_action(event)
        finally:
            self._let_go()

    def _hold(self) -> None:
        if not self._dul_holds:
            self.lock.acquire()
            self._dul_holds = True

    def _let_go(self) -> None:
        if self._dul_holds:
            self._dul_holds = False
            self.lock.release()

    # The bridge's side.

    def take(self, assoc: Any, deadline: float | None) -> bool:
        """The lock, once the DUL has nothing queued to send (so nothing written here can
        overtake it); False when the association is lost first or `deadline` passes."""
        while True:
            if self.lock.acquire(timeout=_POLL / 10):
                if self.dul.to_provider_queue.empty():
                    return True
                self.lock.release()  # let the DUL send what is queued first
                time.sleep(0.0005)
            if lost(assoc) or assoc._kill or (deadline is not None and time.monotonic() > deadline):
                return False


def _turns(assoc: Any) -> _SocketTurns | None:
    turns = vars(assoc.dul).get("_bridge_turns")
    return turns if isinstance(turns, _SocketTurns) else None


def lean_unavailable(assoc: Any) -> str | None:
    """Why the lean path cannot send on `assoc` (then the DUL does), or None when it can."""
    if not PYNETDICOM_PINNED:
        return f"pynetdicom {pynetdicom.__version__} is outside the pinned range"
    turns = _turns(assoc)
    if turns is None or not turns.engaged:
        return "association not prepared"
    transport = assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is None:
        return "no socket"
    if isinstance(sock, ssl.SSLSocket):
        # Buffered TLS records are invisible to select and an SSLSocket has no sendmsg:
        # the DUL's own loop handles them.
        return "DICOM TLS"
    return None


def _write(sock: socket.socket, buffers: Sequence[Buffer]) -> None:
    """All of `buffers`, in order, with as few system calls as the kernel allows."""
    views = [memoryview(b) for b in buffers if len(b)]
    first = 0
    while first < len(views):
        sent = sock.sendmsg(views[first : first + _IOV_MAX])
        while first < len(views) and sent >= len(views[first]):
            sent -= len(views[first])
            first += 1
        if sent:  # a partial write ended inside this buffer
            views[first] = views[first][sent:]


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    """`size` bytes, or None when the connection ends first (the socket's own network
    timeout bounds each wait, as for the DUL)."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def exchange(assoc: Any, pdus: Sequence[Buffer], timeout: float | None) -> Any:
    """Write one request's P-DATA-TF PDUs straight to `assoc`'s socket and read PDUs until
    a DIMSE message arrives: that message (the response), or None after `timeout` seconds
    (the DIMSE timeout) or when the association is lost or ending. The caller holds the
    reactor (``reactor_paused``) and hands the result to ``response_status``.

    Every PDU read is what pynetdicom's DUL would have read: P-DATA goes to the DIMSE
    provider as the DT-2 action does; anything else goes back to the DUL's event queue,
    and this returns once the state machine has acted on it.
    """
    dul = assoc.dul
    turns = _turns(assoc)
    deadline = None if timeout is None else time.monotonic() + timeout
    if turns is None or not turns.take(assoc, deadline):
        return None
    handed_back = False
    try:
        sock = dul.socket.socket if dul.socket is not None else None
        if sock is None or dul.state_machine.current_state != _ESTABLISHED:
            return None
        try:
            _write(sock, pdus)
        except OSError:
            dul.event_queue.put("Evt17")  # what AssociationSocket.send does on an error
            handed_back = True
            return None
        while True:
            try:
                _, message = assoc.dimse.msg_queue.get_nowait()
                return message
            except queue.Empty:
                pass
            if not dul.event_queue.empty():  # an invalid DIMSE message (Evt19)
                handed_back = True
                return None
            step = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
            if step <= 0:
                _timed_out(assoc)
                return None
            readable, _, _ = select.select([sock], [], [], step)
            if not readable:
                if lost(assoc) or assoc._kill:
                    return None
                continue
            handed_back = not _read_pdu(dul, sock)
            if handed_back:
                return None
    finally:
        turns.lock.release()
        if handed_back:
            _acted_on(assoc, turns)


def _read_pdu(dul: Any, sock: socket.socket) -> bool:
    """Read one PDU as ``DULServiceProvider._read_pdu_data`` does and act on it: True for
    P-DATA given to the DIMSE provider, False when it went back to the DUL's queue."""
    try:
        header = _read_exactly(sock, 6)
        if header is None:
            dul.event_queue.put("Evt17")  # transport connection closed
            return False
        pdu_type, length = header[0], int.from_bytes(header[2:6], "big")
        if pdu_type not in _PDU_TYPES:
            dul.event_queue.put("Evt19")  # unrecognised PDU
            return False
        body = _read_exactly(sock, length)
    except OSError:
        dul.event_queue.put("Evt17")
        return False
    if body is None:
        dul.event_queue.put("Evt17")
        return False
    dul._idle_timer.restart()
    pdvs = parse_pdata(body) if pdu_type == _P_DATA_TF else None
    if pdvs is not None:
        pdata = P_DATA()
        pdata.presentation_data_value_list.extend(pdvs)
        dul.assoc.dimse.receive_primitive(pdata)  # the state machine's DT-2
        return True
    try:
        pdu, event = dul._decode_pdu(bytearray(header + body))
    except Exception:
        dul.event_queue.put("Evt19")
        return False
    if event == "Evt10":  # a P-DATA-TF only pynetdicom's decoder reads
        dul.assoc.dimse.receive_primitive(pdu.to_primitive())
        return True
    dul._recv_pdu.put(pdu)
    dul.event_queue.put(event)
    return False


def _acted_on(assoc: Any, turns: _SocketTurns, timeout: float = 2.0) -> None:
    """Wait until the DUL has taken and acted on what was handed back (an A-ABORT, a
    closed connection), so the caller sees the association as pynetdicom then leaves it:
    ``response_status`` must not abort an association the peer has aborted already."""
    deadline = time.monotonic() + timeout
    dul = assoc.dul
    while not dul.event_queue.empty() and dul.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    # The DUL holds the lock until its action is done.
    if turns.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        turns.lock.release()


@contextlib.contextmanager
def lean_sending(assoc: Any) -> Iterator[bool]:
    """For the duration of one retrieve, every P-DATA pynetdicom sends on `assoc` (the
    pending C-GET responses between sub-operations) is written straight to the socket in
    the caller's thread, under the socket lock, instead of through the DUL's queue.
    Yields False (and changes nothing) where the lean path does not apply."""
    dul = assoc.dul
    turns = _turns(assoc)
    if turns is None or lean_unavailable(assoc) is not None:
        yield False
        return
    if "send_pdu" in vars(dul):  # nested
        yield True
        return
    stock: Callable[[Any], None] = dul.send_pdu

    def send_pdu(primitive: Any) -> None:
        if not isinstance(primitive, P_DATA) or threading.current_thread() is dul:
            stock(primitive)
            return
        if not turns.take(assoc, time.monotonic() + PAUSE_TIMEOUT):
            stock(primitive)  # the association is going: pynetdicom decides
            return
        try:
            sock = dul.socket.socket if dul.socket is not None else None
            if sock is None or dul.state_machine.current_state != _ESTABLISHED:
                stock(primitive)
                return
            try:
                sock.sendall(pdata_pdu(primitive.presentation_data_value_list))
            except OSError:
                dul.event_queue.put("Evt17")
        finally:
            turns.lock.release()

    dul.send_pdu = send_pdu
    try:
        yield True
    finally:
        del dul.send_pdu
