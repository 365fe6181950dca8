"""gunicorn's threaded worker, with a line of requests in its event loop: small predictions
served by the loop itself, the late ones under overload answered 503, new connections taken
only while this worker holds no more than the others.

**The line.** A request arriving on a connection (a new connection's first, or a kept-alive
one's next) joins the worker's line, in order, and the event loop gives each its turn, for
SLICE at a time between looks for new connections and requests. At its turn a simple
prediction (server/shedding.py: one complete request for a prediction route, with a
Content-Length body within the first 64 KiB, nothing chunked, no ``Expect``, nothing
pipelined behind it) is

- answered 503 by the loop, with no thread and no Flask, if the worker already has as many
  requests in progress as may hold or wait for its compute slot (``MAX_QUEUED_REQUESTS + 1``),
  or if it has waited more than ``MAX_QUEUE_WAIT_MS`` while more than that many wait behind it
  (overload: a short line that waited on a stall is still served);
- served by the loop itself (gunicorn, Flask and the model, in this thread) if no thread is
  working, its request is at most INLINE_BYTES and asks for no explanation, and the client has
  taken every byte we sent it before (its answer, a few kB, then fits the empty send buffer:
  the loop never waits on a client). Light and heavy load alike, most predictions never meet a
  thread: no hand-off, no GIL traded between threads, no wait for the compute slot, and the
  line is served in the order it came, which keeps the tail short.

Anything else (uploads bigger than that, explanations, chunked bodies, other routes, a client
behind on its reading, or any request while a thread works) goes to gthread's threads, as
before, bounded by the compute slot's line.

**Connections spread over the workers.** All workers accept from one listening socket. Linux
wakes every one of them for a new connection and the first to call accept() wins, so a burst of
keep-alive connections (a client pool opening 16 at once) can all land on the worker that
happened to be running: one core then serves every request while the other idles, for as long
as the connections live. Here each worker publishes its open connections on a board in shared
memory, and one that has more than another live worker (by more than a quarter of its own)
leaves the connection to it for a moment (HOLD seconds). It still takes everything when it is
the only one accepting (one worker; the others stopping, hung, or at their connection limit).
It takes up to ACCEPTS_PER_TURN at a time: a connection not yet taken has its request wait
unseen. One listening socket stays: a per-worker SO_REUSEPORT socket would spread connections
by hash, but drops those queued on a worker that exits (reloads, restarts).

**Keep-alive fast path.** A thread that has answered on a keep-alive connection also serves
that client's next request itself when it arrives within NEXT_REQUEST_WAIT, no other connection
waits for a thread and the worker is not at its bound, instead of handing the connection back
to the event loop (a poller registration, a pipe write and a hand-off to another thread per
request). At most REQUESTS_IN_A_ROW in a row, so that no client keeps a thread to itself.

This relies on gthread's internals (verified with the gunicorn range pyproject.toml allows);
a gunicorn without one of them gets plain gthread, with a warning, rather than a crash.

Used by gunicorn.conf.py as ``worker_class``.
"""

from __future__ import annotations

import errno
import fcntl
import select
import selectors
import socket
import struct
import termios
import time
from collections import deque
from concurrent.futures import Future
from functools import partial
from multiprocessing.sharedctypes import RawArray

from gunicorn.workers import gthread
from gunicorn.workers.gthread import ThreadWorker

from server import requestlog, shedding
from server.inference import Busy
from server.state import get_serving

#: Board entries; a worker writes the one at its age modulo SLOTS. Spawns are numbered in
#: order, so two live workers share an entry only after SLOTS spawns within one's lifetime.
SLOTS = 64
#: Seconds a worker with more connections than another waits before taking one again.
HOLD = 0.002
#: New connections a worker takes at most in one turn of its event loop: a connection not yet
#: taken has its request wait, unseen, until it is.
ACCEPTS_PER_TURN = 64
#: An entry not refreshed for this long is a worker that is gone or stuck: it is not waited for.
STALE = 2.0
#: Seconds a thread waits for the next request on the connection it has just answered.
NEXT_REQUEST_WAIT = 0.001
#: Requests one thread serves in a row on one connection before handing it back.
REQUESTS_IN_A_ROW = 16
#: Bytes of a waiting request the event loop looks at (without taking them) to tell a simple
#: prediction request: one that does not fit is never shed.
PEEK_BYTES = 64 * 1024
#: A simple prediction request at most this large, asking for no explanation, is served by the
#: event loop itself when no thread is working: its body is all read already and its answer (a
#: few kB) fits the connection's empty send buffer, so the loop never waits on the client.
INLINE_BYTES = 16 * 1024
#: Words of a request that may ask for an explanation (``_explaining``).
EXPLAINING = (b"explain", b"attributions")
#: Seconds the event loop serves its line before it looks for new connections and requests.
SLICE = 0.005

#: What this worker uses of gthread's internals: a worker's attributes and ThreadWorker's methods.
GTHREAD_ATTRIBUTES = ("poller", "tpool", "nr_conns", "pending_conns", "keepalived_conns")
GTHREAD_METHODS = ("enqueue_req", "finish_request", "handle", "on_client_socket_readable",
                   "on_pending_socket_readable", "set_accept_enabled",
                   "wait_for_and_dispatch_events")

# (connections, monotonic time of writing, accepting 1/0) per slot; created when the master
# imports this module, so every forked worker shares it.
_BOARD = RawArray("d", 3 * SLOTS)


class BalancedThreadWorker(ThreadWorker):
    """gthread with a line of requests in its event loop, which serves small predictions
    itself and sheds late ones under overload, accepting while no other live worker holds
    fewer connections (module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        missing = ([name for name in GTHREAD_ATTRIBUTES if not hasattr(self, name)]
                   + [name for name in GTHREAD_METHODS if not hasattr(ThreadWorker, name)]
                   + ([] if hasattr(gthread, "TConn") else ["TConn"]))
        if missing:
            self.log.warning("gunicorn's gthread has no %s: serving as plain gthread",
                             ", ".join(missing))
            self.__class__ = ThreadWorker  # nothing of this class runs from here on
            return
        self._slot = 3 * (self.age % SLOTS)
        self._hold_until = 0.0
        #: Connections handed to the thread pool and not yet back: requests in progress.
        self.in_flight = 0
        self._shed_at: float | None = None
        self._max_wait = float("inf")  #: the app's MAX_QUEUE_WAIT_MS, in seconds
        #: (connection, when its request was seen): requests waiting for their turn, in order.
        self._line: deque[tuple[gthread.TConn, float]] = deque()

    # --- the board --------------------------------------------------------------------------

    def notify(self) -> None:
        """The heartbeat, once per turn of the event loop: also publish the connection count."""
        super().notify()
        self._publish()

    def _publish(self) -> None:
        accepting = self.alive and self.nr_conns < self.worker_connections
        _BOARD[self._slot:self._slot + 3] = [self.nr_conns, time.monotonic(), float(accepting)]

    def _fewest_elsewhere(self) -> float:
        """The fewest connections of another live, accepting worker (inf when there is none)."""
        now, fewest = time.monotonic(), float("inf")
        for slot in range(0, 3 * SLOTS, 3):
            if slot != self._slot and _BOARD[slot + 2] and now - _BOARD[slot + 1] < STALE:
                fewest = min(fewest, _BOARD[slot])
        return fewest

    def accept(self, listener) -> None:
        """Take the connections waiting, up to ACCEPTS_PER_TURN, while this worker holds no
        more than the others (by a quarter of its own, so that a worker with many takes
        several in a turn)."""
        for _ in range(ACCEPTS_PER_TURN):
            if (self.nr_conns > self._fewest_elsewhere() + self.nr_conns // 4
                    or self.nr_conns >= self.worker_connections):
                self._hold_until = time.monotonic() + HOLD
                self.set_accept_enabled(False)  # the event loop asks again on its next turn
                break
            try:
                sock, client = listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                    raise
                break
            self._take(sock, client, listener)
        self._publish()

    def _take(self, sock, client, listener) -> None:
        """gthread's accept hands a new connection to a thread, which waits there for its first
        request; here it waits in the poller, as gthread's deferred ones do, so that the
        request joins the line when it comes (on_pending_socket_readable)."""
        self.nr_conns += 1
        conn = gthread.TConn(self.cfg, sock, client, listener.getsockname())  # non-blocking
        conn.set_timeout()
        self.pending_conns.append(conn)
        self.poller.register(sock, selectors.EVENT_READ,
                             partial(self.on_pending_socket_readable, conn))

    def set_accept_enabled(self, enabled: bool) -> None:
        # During a hold the listener stays out of the poller: it is still readable (the
        # connection waits for the other worker) and would wake this loop over and over.
        if enabled and time.monotonic() < self._hold_until:
            enabled = False
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # ... and the loop comes back when the hold ends, to look at the board again (the
        # other worker may have taken more connections meanwhile, or none); with requests in
        # line it only looks, and serves them.
        hold = self._hold_until - time.monotonic()
        if self._line:
            timeout = 0
        elif hold > 0:
            timeout = min(timeout, hold)
        super().wait_for_and_dispatch_events(timeout)
        self._serve_line()

    # --- requests ---------------------------------------------------------------------------

    def enqueue_req(self, conn) -> None:
        self.in_flight += 1
        super().enqueue_req(conn)

    def finish_request(self, conn, fs) -> None:
        self.in_flight -= 1
        super().finish_request(conn, fs)

    def on_client_socket_readable(self, conn, client) -> None:
        self._queue(conn, self.keepalived_conns, client)

    def on_pending_socket_readable(self, conn, client) -> None:
        self._queue(conn, self.pending_conns, client)

    def _queue(self, conn, waiting, client) -> None:
        """A request has come on ``conn`` (in ``waiting``): it joins the line, out of the
        poller, until its turn (_serve_line)."""
        self.poller.unregister(client)
        waiting.remove(conn)
        conn.data_ready = True  # a new connection's thread need not wait for its request
        self._line.append((conn, time.monotonic()))

    def _capacity(self) -> float:
        """Requests in progress at once, at most: the app's compute slot and its line (inf for
        an app not ours, which is never shed here). Read from the app once, with its
        MAX_QUEUE_WAIT_MS."""
        if self._shed_at is None:
            try:
                self._shed_at = get_serving(self.wsgi).inference.slots.capacity
                self._max_wait = self.wsgi.config["MAX_QUEUE_WAIT_MS"] / 1000
            except (AttributeError, KeyError, RuntimeError):
                self._shed_at = float("inf")
        return self._shed_at

    def _serve_line(self) -> None:
        """Give the requests in line their turns, for SLICE at most."""
        ends = time.monotonic() + SLICE
        while self._line and time.monotonic() < ends:
            conn, seen = self._line.popleft()
            self._serve(conn, time.monotonic() - seen)

    def _serve(self, conn, waited: float) -> None:
        """The turn of the request on ``conn``, which has waited ``waited`` seconds in line.
        A simple prediction (server/shedding.py) is answered 503 if the worker is at its bound,
        or if it has waited more than the app's MAX_QUEUE_WAIT_MS in a line longer than that
        bound; served here if no thread is working and it is small; anything else goes to a
        thread, its bytes left in place."""
        capacity = self._capacity()
        idle = self.in_flight == 0
        at_bound = self.in_flight >= capacity
        # Waiting long counts only in a line longer than the bound: a short line waited on a
        # stall (a long request, a busy machine) that has passed.
        late = waited > self._max_wait and len(self._line) >= capacity
        if (idle or at_bound or late) and capacity < float("inf") \
                and not conn.is_http2 and not self.cfg.is_ssl:
            try:
                data = conn.sock.recv(PEEK_BYTES, socket.MSG_PEEK)
            except OSError:  # nothing to read after all, or an error the thread will meet
                data = b""
            request = shedding.simple_request(data) if data else None
            if request is not None:
                if at_bound or late:
                    self._shed(conn, data, request)
                    return
                if idle and len(data) <= INLINE_BYTES and not _explaining(data) \
                        and not _unsent(conn.sock):
                    self.in_flight += 1
                    done = Future()
                    done.set_result(ThreadWorker.handle(self, conn))  # one request, no more
                    self.finish_request(conn, done)
                    return
        self.enqueue_req(conn)

    def _shed(self, conn, data: bytes, request: shedding.SimpleRequest) -> None:
        """Answer ``request`` (``data``, all of the bytes waiting on ``conn``) 503."""
        try:
            conn.sock.recv(len(data))  # exactly the request looked at
            conn.sock.sendall(shedding.overloaded_response(request))  # the buffer takes it
            sent = True
        except OSError:
            sent = False
        get_serving(self.wsgi).metrics.observe_rejection(Busy.code)
        self._log_shed(request)
        if sent and request.keep_alive:
            conn.set_timeout()
            self.keepalived_conns.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self.on_client_socket_readable, conn))
        else:
            self.nr_conns -= 1
            conn.close()

    def _log_shed(self, request: shedding.SimpleRequest) -> None:
        """The request log's line for a 503 from the event loop, routed as the app would."""
        app = self.wsgi
        try:
            rule, _ = app.url_map.bind("localhost").match(
                request.target.split("?", 1)[0], request.method, return_rule=True)
            route = rule.rule
        except Exception:  # a path the app would refuse itself; shedding.PREDICTING matched it
            route = "unmatched"
        requestlog.log_unrouted(request.request_id, request.method, route, 503,
                                get_serving(app).model.model_id)

    def handle(self, conn):
        """Serve the connection's request, then its next ones while they come at once."""
        keepalive = super().handle(conn)
        for _ in range(REQUESTS_IN_A_ROW - 1):
            if keepalive is not True or not self.alive or not self._next_request_ready(conn):
                break
            keepalive = super().handle(conn)
        return keepalive

    def _next_request_ready(self, conn) -> bool:
        waiting = getattr(self.tpool, "_work_queue", None)  # ThreadPoolExecutor's queue
        if waiting is None or not waiting.empty() or self.in_flight >= self._capacity():
            # others wait for a thread, or the worker is busy: this connection goes back to
            # the event loop, in line with the others (and shed like them)
            return False
        if conn.parser.unreader.buf.getvalue():
            return True  # already read ahead
        return bool(select.select([conn.sock], [], [], NEXT_REQUEST_WAIT)[0])


def _explaining(data: bytes) -> bool:
    """Whether a request may ask for an explanation (``/predict?explain=1``, V2's
    ``attributions`` output), which costs several predictions: never served by the loop. Any
    mention counts; a prediction that only seems to ask goes to a thread, as before."""
    return any(word in data for word in EXPLAINING)


def _unsent(sock) -> int:
    """Bytes in ``sock``'s send queue not yet taken by the client (Linux's SIOCOUTQ); a
    socket that cannot tell counts as full."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except OSError:
        return 1 << 30
