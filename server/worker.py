"""gunicorn's threaded worker, taking new connections only while it holds no more than the others,
and answering predictions beyond its bound 503 from its event loop.

**Connections spread over the workers.** All workers accept from one listening socket. Linux
wakes every one of them for a new connection and the first to call accept() wins, so a burst of
keep-alive connections (a client pool opening 16 at once) can all land on the worker that
happened to be running: one core then serves every request while the other idles, for as long
as the connections live. Here each worker publishes its open connections on a board in shared
memory, and one that has more than another live worker leaves the connection to it for a
moment (HOLD seconds). It still takes everything when it is the only one accepting
(one worker; the others stopping, hung, or at their connection limit). One listening socket
stays: a per-worker SO_REUSEPORT socket would spread connections by hash, but drops those
queued on a worker that exits (reloads, restarts).

**Shedding.** When a worker already has as many requests in progress as may hold or wait for
its compute slot (``MAX_QUEUED_REQUESTS + 1``), a prediction arriving on a connection, new or
kept alive, is answered 503 by the event loop itself (server/shedding.py), before any thread or
Flask sees it. New connections therefore wait for their first request in the poller, as
gthread's deferred ones do, instead of in a thread: under overload a new client's request was
otherwise admitted unconditionally and waited behind everyone (a p99 of seconds).

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
import select
import selectors
import socket
import time
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
#: An entry not refreshed for this long is a worker that is gone or stuck: it is not waited for.
STALE = 2.0
#: Seconds a thread waits for the next request on the connection it has just answered.
NEXT_REQUEST_WAIT = 0.001
#: Requests one thread serves in a row on one connection before handing it back.
REQUESTS_IN_A_ROW = 16
#: Bytes of a waiting request the event loop looks at (without taking them) to tell a simple
#: prediction request: one that does not fit is never shed.
PEEK_BYTES = 64 * 1024

#: What this worker uses of gthread's internals: a worker's attributes and ThreadWorker's methods.
GTHREAD_ATTRIBUTES = ("poller", "tpool", "nr_conns", "pending_conns", "keepalived_conns")
GTHREAD_METHODS = ("enqueue_req", "finish_request", "handle", "on_client_socket_readable",
                   "on_pending_socket_readable", "set_accept_enabled",
                   "wait_for_and_dispatch_events")

# (connections, monotonic time of writing, accepting 1/0) per slot; created when the master
# imports this module, so every forked worker shares it.
_BOARD = RawArray("d", 3 * SLOTS)


class BalancedThreadWorker(ThreadWorker):
    """gthread, accepting while no other live worker holds fewer connections and shedding
    predictions beyond its bound in its event loop (module doc)."""

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
        if self.nr_conns > self._fewest_elsewhere():
            self._hold_until = time.monotonic() + HOLD
            self.set_accept_enabled(False)  # the event loop asks again on its next turn
            return
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self._take(sock, client, listener)
        self._publish()

    def _take(self, sock, client, listener) -> None:
        """gthread's accept hands a new connection to a thread, which waits there for its first
        request; here it waits in the poller, as gthread's deferred ones do, so that the event
        loop can shed that request (on_pending_socket_readable)."""
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
        # other worker may have taken more connections meanwhile, or none).
        hold = self._hold_until - time.monotonic()
        super().wait_for_and_dispatch_events(min(timeout, hold) if hold > 0 else timeout)

    # --- requests ---------------------------------------------------------------------------

    def enqueue_req(self, conn) -> None:
        self.in_flight += 1
        super().enqueue_req(conn)

    def finish_request(self, conn, fs) -> None:
        self.in_flight -= 1
        super().finish_request(conn, fs)

    def on_client_socket_readable(self, conn, client) -> None:
        if not self._shed(conn, self.keepalived_conns):
            super().on_client_socket_readable(conn, client)

    def on_pending_socket_readable(self, conn, client) -> None:
        if not self._shed(conn, self.pending_conns):
            super().on_pending_socket_readable(conn, client)

    def _capacity(self) -> float:
        """Requests in progress at once, at most: the app's compute slot and its line (inf for
        an app not ours, which is never shed here)."""
        if self._shed_at is None:
            try:
                self._shed_at = get_serving(self.wsgi).inference.slots.capacity
            except (AttributeError, KeyError, RuntimeError):
                self._shed_at = float("inf")
        return self._shed_at

    def _shed(self, conn, waiting) -> bool:
        """Answer the request waiting on ``conn`` (in the ``waiting`` deque) 503 if the worker
        is at its bound and the request is one simple prediction (server/shedding.py); else
        False, its bytes left in place."""
        if self.in_flight < self._capacity() or conn.is_http2 or self.cfg.is_ssl:
            return False
        try:
            data = conn.sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        except OSError:  # nothing to read after all, or an error the thread will meet
            return False
        request = shedding.simple_request(data) if data else None
        if request is None:
            return False
        try:
            conn.sock.recv(len(data))  # exactly the request looked at
            conn.sock.sendall(shedding.overloaded_response(request))  # the buffer takes it
            sent = True
        except OSError:
            sent = False
        get_serving(self.wsgi).metrics.observe_rejection(Busy.code)
        self._log_shed(request)
        waiting.remove(conn)
        if sent and request.keep_alive:
            conn.set_timeout()
            self.keepalived_conns.append(conn)
            if waiting is self.pending_conns:  # a first request: now a kept-alive connection
                self.poller.modify(conn.sock, selectors.EVENT_READ,
                                   partial(self.on_client_socket_readable, conn))
        else:
            self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            conn.close()
        return True

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
