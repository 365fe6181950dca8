"""gunicorn settings for serving digitgrad in production; each setting says why.

    gunicorn --config gunicorn.conf.py "server:create_app()"

Environment: MODEL_PATH (model file, default model.npz), BIND or PORT (default 0.0.0.0:8000),
WEB_CONCURRENCY (worker processes), GUNICORN_THREADS (threads per worker),
CLIENT_READ_TIMEOUT (seconds a request body may stall),
PROMETHEUS_MULTIPROC_DIR (where workers share metrics; a private temporary directory in
/dev/shm if unset), and the app's limits (MAX_UPLOAD_BYTES, MAX_IMAGE_PIXELS, MAX_BATCH_FILES,
MAX_BODY_BYTES_PER_WORKER): docs/serving.md.
The measurements behind these choices are in docs/benchmarks.md.
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

# glibc's malloc, in the master and so in every worker forked from it: all threads share two
# arenas, and large blocks are unmapped when freed, so that an idle worker gives back what its
# requests used instead of keeping each thread's peak (autodiff/memory.py, docs/benchmarks.md).
from autodiff.memory import return_freed_memory  # noqa: E402 - after the variables above

return_freed_memory()

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
# Many threads per worker, for slow clients: a thread reading an upload is held as long as the
# client takes to send it, and an idle one costs a stack, not CPU; the work is one upload or
# forward pass at a time per worker (COMPUTE_SLOTS, server/state.py). gthread, not gevent (a
# C-extension dependency that monkey-patches the process): docs/serving.md, docs/benchmarks.md.
# gthread, except (server/worker.py): requests wait in a line in the event loop, which serves
# small predictions itself while no thread works (no hand-off, no GIL traded: the tail of a
# uvicorn loop) and, under overload, answers 503 to those that waited over MAX_QUEUE_WAIT_MS;
# a worker holding more connections than another leaves new ones to it, else a burst of
# keep-alive connections can all land on one worker (chosen over SO_REUSEPORT, which drops a
# reloading worker's queued connections). Threads serve uploads, explanations, slow clients.
# Measured in docs/benchmarks.md#connections-over-the-workers and the sections after it.
worker_class = "server.worker.BalancedThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS", "64"))
# Seconds a client may leave a request body (or our response) without progress: a photo on a
# slow mobile link still moves every few hundred milliseconds; a stalled one gets 408 and is
# dropped (pre_request below), so stalls do not hold threads for ever.
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
# Load the app (and the model) once in the master, then fork: the arrays are shared
# copy-on-write, and a bad model stops the master with one line instead of workers
# crash-looping. Keep it on for SIGHUP: the master vets a new file before forking (on_reload,
# docs/serving.md); without it every new worker loads the file, and one that cannot stops all.
preload_app = True
# The heartbeat file workers touch every few seconds: in memory, because a container's
# overlay filesystem can stall those writes and get healthy workers killed.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn >= 25 opens a control socket in $HOME/.gunicorn by default: two servers on one
# machine would collide on it, and a container's non-root user may have no writable home.
control_socket_disable = True

# --- logs -----------------------------------------------------------------------------------
# gunicorn's own messages to stderr, where containers and systemd collect them. No access log:
# the app writes one JSON line per request to stdout (server/requestlog.py: request id, route,
# status, latency, model, worker pid; no headers, they may carry credentials).
errorlog = "-"


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
    for the peer to close, and a stalled peer never does, so a few stalls block the worker
    until it is killed as hung (docs/benchmarks.md, slow clients).
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
