"""gunicorn settings for serving digitgrad in production; each setting says why.

    gunicorn --config gunicorn.conf.py "server:create_app()"

Environment: MODEL_PATH (model file, default model.npz), BIND or PORT (default 0.0.0.0:8000),
WEB_CONCURRENCY (worker processes), GUNICORN_THREADS (threads per worker),
CLIENT_READ_TIMEOUT (seconds a request body may stall),
PROMETHEUS_MULTIPROC_DIR (where workers share metrics; a private temporary directory if unset),
and the app's limits (MAX_UPLOAD_BYTES, MAX_IMAGE_PIXELS, MAX_BATCH_FILES).
"""

import atexit
import os
import shutil
import socket
import tempfile

# --- before numpy loads ---------------------------------------------------------------------
# This file runs in the master before the app is imported. Each worker is one process doing
# small matrix products: BLAS/OpenMP thread pools would only make the workers fight over the
# cores (and a pool created in the preloading master does not survive fork safely).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# prometheus_client picks multiprocess mode when it is imported, from this variable, so it
# must be set now. Without it each worker would report only its own counts on /metrics.
# Workers write those files through mmap: on a full filesystem they die of SIGBUS, so they
# live in /dev/shm, apart from /tmp, which other files can fill.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    _created = tempfile.mkdtemp(prefix="digitgrad-prometheus-", dir=_shm)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _created
    _master = os.getpid()
    # Removed when the master exits, also after a failed start (no on_exit hook then). Workers
    # leave through sys.exit too and run atexit handlers: only the master may remove it.
    atexit.register(lambda: os.getpid() == _master and shutil.rmtree(_created, True))
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# --- where and how many ---------------------------------------------------------------------
# BIND wins (e.g. "127.0.0.1:8080" or "unix:/run/digitgrad.sock"); else all interfaces on
# $PORT, the convention of container platforms.
bind = os.environ.get("BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset/cgroup cpusets
    except AttributeError:
        return os.cpu_count() or 1


# One worker per core: prediction is CPU-bound (decode, preprocessing, matrix products), so
# more processes than cores only add switching. WEB_CONCURRENCY is the platforms' convention.
workers = int(os.environ.get("WEB_CONCURRENCY", _cpus()))
# Slow clients. A thread reading an upload is held for as long as the client takes to send
# it: with the old 4 threads per worker, 32 uploads that sent their headers and 4 bytes of a
# 100 kB body, then stalled, held every thread, and /healthz and /predict from another
# client waited > 30 s (never answered); the stalled uploads were never dropped. So threads
# are cheap waiters (many per worker; each idle thread costs a stack, not CPU), the work is
# bounded apart from them (server/api.py lets one request per worker decode or run the model
# at a time, COMPUTE_SLOTS in server/state.py, so memory and GIL contention do not grow with
# the thread count), and a read or write that makes no
# progress for CLIENT_READ_TIMEOUT seconds fails (pre_request below): the app answers 408
# and the connection is closed. Measured with 32 stalled uploads, 2 workers, loopback:
#   gthread, 4 threads, no read deadline:  /healthz, /predict time out (> 30 s)
#   gthread, 4 threads, 5 s read deadline: some requests still > 30 s (queued behind stalls)
#   gthread, 40 threads, 5 s deadline:     /healthz 8-36 ms, /predict 13-72 ms, stalls
#                                          answered at 5.1 s, a 1.7 MB photo sent in 64 kB
#                                          pieces every 0.25 s still answered 200
#   gevent, 5 s deadline:                  /healthz 9-38 ms, /predict 9-110 ms, stalls 5.0 s
#   this file (gthread, 64 threads, 5 s):  /healthz 1-14 ms, /predict 3-238 ms, stalls 408
#                                          at 5.1 s, the slow photo 200; with 100 stalls:
#                                          /healthz 7-8 ms, /predict 16-50 ms, 408 at 5.1-5.5 s
# (a machine shared with other jobs, load average 10-15 on 2 cores: latencies are inflated.)
# gevent would hold any number of stalls, not just fewer than `threads` per worker, but it
# is a new runtime dependency (gevent, greenlet, zope.*: C extensions) that monkey-patches
# the whole process (awkward with preload_app), for no gain in these figures or in
# throughput (wrk, same machine: /predict 28x28 PNG 480-500 req/s gthread vs 390-430
# gevent). Beyond ~`threads` stalled uploads per worker, a new request waits up to the read
# deadline for a thread. Not covered here: a client that trickles its request *headers* (a
# byte now and then) holds a thread for as long as it likes, since the deadline is set once
# the headers are parsed (gunicorn's only hook before the body); nor one that trickles its
# body a byte every few seconds. An internet-facing deployment should sit behind a buffering
# proxy (nginx, a cloud load balancer), which holds slow clients instead of the app.
# Behind such a proxy fewer threads are a little cheaper: GUNICORN_THREADS=8 against 64,
# 10 paired rounds of bench/serve.py's load (16 keep-alive clients, 2 workers), CPU per request
# 0.88x on /healthz (8 rounds of 10 lower) and 0.93x on the 28x28 PNG /predict (6 of 10). With
# 64 the pool grows to ~15 threads for 8 connections; why fewer cost less is not established.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "64"))
# Seconds a client may leave a request body (or our response) without progress: a photo on a
# slow mobile link still moves every few hundred milliseconds; a stalled one is dropped.
CLIENT_READ_TIMEOUT = float(os.environ.get("CLIENT_READ_TIMEOUT", "5"))

# --- time limits ----------------------------------------------------------------------------
# A worker silent for this long is killed and replaced: the slowest legitimate request (a
# full batch of 40 MP photos) takes a few seconds, a stuck one should not hold a slot forever.
timeout = 30
# On SIGTERM, in-flight requests get this long to finish before workers are killed; below the
# usual 30 s between an orchestrator's SIGTERM and SIGKILL.
graceful_timeout = 20
# Keep idle client connections open this long: clients and proxies reuse them instead of a
# new TCP handshake per prediction. Set above your load balancer's idle timeout if behind one.
keepalive = 5

# --- loading the app ------------------------------------------------------------------------
# Load the app (and the model) once in the master, then fork: the model's arrays are shared
# copy-on-write, workers start instantly, and a missing or invalid model stops the master at
# once with one "Error: <file>: <problem>" line instead of workers crash-looping.
# A new model without a restart: replace the file atomically (rename over it) and send the
# master SIGHUP. The master loads and self-tests the new file *before* forking the new workers
# (on_reload below), so they start on it while the old workers finish their requests and exit:
# the listening socket never closes and no request is lost. A file that fails to load is
# refused in the master: the new workers fork with the last good model, one log line says
# why, and /readyz (still 200) names the file under "reload_error". Workers never load the
# file themselves, so a bad file cannot crash-loop them. Keep preload_app on: without it a
# HUP makes every new worker load the file, and one that cannot stops the whole server.
preload_app = True
# The heartbeat file workers touch every few seconds: in memory, because a container's
# overlay filesystem can stall those writes and get healthy workers killed.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn >= 25 opens a control socket in $HOME/.gunicorn by default: two servers on one
# machine would collide on it, and a container's non-root user may have no writable home.
control_socket_disable = True

# --- logs -----------------------------------------------------------------------------------
# Both to stdout/stderr, where containers and systemd collect them.
accesslog = "-"
errorlog = "-"
# Client, request line, status, bytes, latency in milliseconds, worker pid: enough to find
# slow requests and the worker that served them. No headers: they may carry credentials.
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms %(p)s'


# --- hooks ----------------------------------------------------------------------------------
def on_starting(server):
    """Empty the metrics directory once per master start: counts from a previous run (whose
    worker pids may be reused) must not be added to this one's. Not re-run on HUP reloads,
    unlike this file's top level, so live workers keep their files. The app's metrics all
    have labels, so preloading it wrote no files yet."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and name.endswith(".db"):
            os.unlink(path)


def on_reload(arbiter):
    """SIGHUP, in the master, before the new workers fork: swap in the new model file if it
    loads and passes the self-test, else keep the current one (see preload_app above)."""
    app = arbiter.app.callable  # the Flask app preloaded in the master
    if app is None:
        return
    from server.app import reload_model

    swapped, message = reload_model(app)
    (arbiter.log.info if swapped else arbiter.log.error)(message)


def pre_request(worker, req):
    """Give the request's socket a per-read (and per-write) deadline, CLIENT_READ_TIMEOUT.

    gthread reads bodies with blocking reads and no timeout; the app sees a timed-out read
    as a client disconnect and answers 408 (server/errors.py). Runs once the headers are
    parsed, in the thread that serves the request, before the app reads the body.
    """
    req.unreader.sock.settimeout(CLIENT_READ_TIMEOUT)
    from server.gunicorn_hooks import defer_continue

    defer_continue(req)  # "100 Continue" only once the app reads the body, past its size checks


def post_request(worker, req, environ, resp):
    """After a 408 (a stalled body, see pre_request), shut the connection at once.

    Otherwise gunicorn closes it "gracefully": on the worker's main thread, it waits up to 2 s
    for the peer to close, and a stalled peer never does. Measured: 32 stalled uploads
    blocked the main loop 32 x 2 s, so the worker accepted nothing and was killed as hung.
    """
    if resp is not None and resp.status_code == 408:
        try:
            req.unreader.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone


def post_fork(server, worker):
    """gunicorn's own error pages (a request it cannot parse) in the JSON envelope, quoting
    nothing of the request (server/gunicorn_hooks.py)."""
    import gunicorn.util

    from server.gunicorn_hooks import json_error_page

    gunicorn.util.write_error = json_error_page


def child_exit(server, worker):
    """Fold a gone worker's metric files into the retired ones: the directory stays the same
    size across reloads (server/metrics.py)."""
    from server.metrics import retire_worker

    retire_worker(worker.pid)
