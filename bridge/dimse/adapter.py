"""The only place that touches pynetdicom internals; pinned to the range in pyproject.toml.

pynetdicom 3.0 has no public hook for several things the bridge needs, so this module
reaches into private attributes of ``Association``, ``DULServiceProvider`` and
``DIMSEServiceProvider`` (checked against 3.0.4's source; an upgrade touches only this
file, and ``tests/unit/test_adapter.py`` pins the behaviour against real associations).

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
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import _config
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT
from pynetdicom.timer import Timer

LOGGER = logging.getLogger(__name__)

PAUSE_TIMEOUT = 5.0  # seconds for a reactor to reach its checkpoint (it loops every 1 ms)
_POLL = 0.05  # seconds between liveness checks while waiting


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
            _mark(assoc, DIMSE_TIMEOUT)
            assoc._bridge_timed_out = True  # pynetdicom aborts next: say why (end_cause)
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
    """Name the association's reactor thread `name` and its DUL thread `name`-dul (before
    they start): pynetdicom's "AcceptorThread@<second>" is shared by every association
    that starts in the same second."""
    assoc.name = name
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


def send_pdata(assoc: Any, items: Iterable[Any]) -> None:
    """Hand P-DATA primitives to the DUL, as ``DIMSEServiceProvider.send_msg`` does."""
    for pdata in items:
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
