"""Model swaps on a real gunicorn under load: SIGHUP after replacing the model file.

The guarantee (gunicorn.conf.py, preload_app and on_reload): no request fails during a swap;
a good file is served afterwards everywhere the model id shows (/predict, /model, /readyz, the
V2 metadata); a bad one is refused in the master, the last good model keeps serving, and
/readyz names the file that failed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from drawing import digit_png
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from serving import request, running_gunicorn

from bench.servers import proc_status, worker_pids
from models import DeepNetwork, preprocessing_config, save
from models.archive import META_KEY, read_archive
from server import create_app
from server.app import reload_model
from server.metrics import merged_exposition, retire_worker
from server.model import MODEL_ID_LENGTH, file_sha256

CLIENTS = 4
MAX_REQUESTS = 3000  # per client: bounds the loop even if the swap never shows


class LoadLoop:
    """CLIENTS threads POSTing /predict until stopped; every answer and failure is kept."""

    def __init__(self, base: str):
        self.url = base + "/predict"
        self.png = digit_png()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self.models: list[str] = []
        self.pool = ThreadPoolExecutor(CLIENTS)
        self.futures = [self.pool.submit(self._client) for _ in range(CLIENTS)]

    def _client(self) -> None:
        for _ in range(MAX_REQUESTS):
            if self.stop.is_set():
                return
            try:
                status, body = request(self.url, self.png, {"Content-Type": "image/png"})
            except OSError as exc:  # refused, reset, timed out: a dropped request
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with self.lock:
                self.statuses.append(status)
                if status == 200:
                    self.models.append(json.loads(body)["model"])
                else:
                    self.failures.append(f"HTTP {status}: {body[:200]!r}")

    def wait_for(self, count: int, seconds: float = 30) -> None:
        """Until ``count`` answers in all have arrived."""
        deadline = time.monotonic() + seconds
        while len(self.statuses) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.statuses) >= count, f"only {len(self.statuses)} answers in {seconds} s"

    def finish(self) -> int:
        """Stop the clients; the number of requests sent."""
        self.stop.set()
        for future in self.futures:
            future.result(timeout=30)
        self.pool.shutdown()
        return len(self.statuses) + len(self.failures)


def model_id(path: Path) -> str:
    return file_sha256(path)[:MODEL_ID_LENGTH]


def save_model(path: Path, seed: int, weight: float | None = None) -> None:
    """An untrained MLP saved atomically over ``path`` (models.save renames a complete file)."""
    network = DeepNetwork(784, 10, 16, 1, rng=np.random.default_rng(seed))
    mean = 0.1307
    if weight is not None:  # overflowing weights: loads, but fails the self-test
        for parameter in network.parameters():
            parameter.value[...] = weight
        mean = -1.0  # every input positive, so the hidden layer overflows instead of being ReLU'd
    save(network, path, {"preprocessing": preprocessing_config(mean, 0.3081)})


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def get_json(url: str) -> dict:
    status, body = request(url)
    assert status == 200, (url, status, body[:200])
    return json.loads(body)


def wait_until(predicate, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "the reload did not show in time"
        time.sleep(0.05)


@pytest.fixture
def served(tmp_path):
    """gunicorn (2 workers) serving an MLP at tmp_path/model.npz; yields (base, process, path,
    log)."""
    path = tmp_path / "model.npz"
    save_model(path, seed=0)
    log = tmp_path / "gunicorn.log"
    with running_gunicorn(path, log) as (base, process):
        yield base, process, path, log


def test_swap_under_load_drops_nothing_and_serves_the_new_model(served):
    base, process, path, log = served
    old_id = model_id(path)
    load = LoadLoop(base)
    try:
        load.wait_for(100)
        save_model(path, seed=1)
        new_id = model_id(path)
        assert new_id != old_id
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: get_json(base + "/readyz")["model"] == new_id)
        # Keep the load on until the new workers have answered plenty and the old ones are gone.
        wait_until(lambda: load.models.count(new_id) >= 100)
    finally:
        sent = load.finish()
    assert load.failures == [], f"{len(load.failures)} of {sent} failed: {load.failures[:5]}"
    assert set(load.models) == {old_id, new_id}
    assert get_json(base + "/model")["id"] == new_id
    assert get_json(base + "/v2/models/digitgrad")["versions"] == [new_id]
    assert "reload_error" not in get_json(base + "/readyz")
    # Once the swap has shown, no worker answers with the old model any more.
    first_new = load.models.index(new_id)
    later = load.models[first_new:]
    assert later.count(old_id) < CLIENTS * 2, "old workers kept serving after the swap"
    text = log.read_text()
    assert f"now serving {new_id} (was {old_id})" in text and "Traceback" not in text


@pytest.mark.parametrize("replacement", ["garbage", "fails_self_test"])
def test_a_bad_replacement_is_refused_and_the_last_good_model_keeps_serving(served,
                                                                            replacement):
    base, process, path, log = served
    old_id = model_id(path)
    load = LoadLoop(base)
    try:
        load.wait_for(50)
        if replacement == "garbage":
            write_atomically(path, b"PK\x03\x04 not really a zip archive")
        else:
            save_model(path, seed=2, weight=3e38)
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload_error" in get_json(base + "/readyz"))
        load.wait_for(len(load.statuses) + 100)
    finally:
        sent = load.finish()
    assert load.failures == [], f"{len(load.failures)} of {sent} failed: {load.failures[:5]}"
    assert set(load.models) == {old_id}
    ready = get_json(base + "/readyz")
    assert ready["model"] == old_id and ready["reload_error"]["file"] == path.name
    assert get_json(base + "/model")["id"] == old_id
    assert get_json(base + "/v2/models/digitgrad")["versions"] == [old_id]
    refused = [line for line in log.read_text().splitlines() if "reload refused" in line]
    assert len(refused) == 1 and str(path) in refused[0], refused
    assert "Traceback" not in log.read_text()

    # The next good file clears the error.
    save_model(path, seed=3)
    process.send_signal(signal.SIGHUP)
    wait_until(lambda: get_json(base + "/readyz")["model"] == model_id(path))
    assert "reload_error" not in get_json(base + "/readyz")


def architecture_bomb(path: Path) -> None:
    """A small file whose metadata declares a network of 1.2 billion parameters."""
    save_model(path, seed=0)
    arrays, meta = read_archive(path)
    meta["architecture"].update(hidden_dim=20_000, n_layers=4)
    tmp = path.with_name("bomb.npz")
    np.savez(tmp, **arrays, **{META_KEY: np.array(json.dumps(meta))})
    os.replace(tmp, path)


def fifo(path: Path) -> None:
    """A named pipe at ``path``: a plain open() for reading waits for a writer forever."""
    tmp = path.with_name("pipe")
    os.mkfifo(tmp)
    os.replace(tmp, path)


@pytest.mark.parametrize("problem", ["missing", "directory", "garbage", "fifo", "bomb"])
def test_reload_model_keeps_the_current_model_whatever_the_file(tmp_path, problem):
    path = tmp_path / "model.npz"
    save_model(path, seed=0)
    app = create_app({"MODEL_PATH": str(path)})
    old_id = model_id(path)
    path.unlink()
    if problem == "directory":
        path.mkdir()
    elif problem == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif problem == "fifo":
        fifo(path)
    elif problem == "bomb":
        architecture_bomb(path)
    swapped, message = reload_model(app)
    assert not swapped and message.startswith(f"model reload refused, still serving {old_id}: ")
    assert "\n" not in message and str(path) in message
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["model"] == old_id
    # the unauthenticated probe names the file, not where it lives
    assert ready.get_json()["reload_error"]["file"] == "model.npz"
    assert str(tmp_path) not in ready.get_data(as_text=True)


def test_hostile_files_neither_hang_nor_swell_the_master(served):
    """A FIFO at MODEL_PATH used to block the master in open() (a dead worker was then never
    replaced); a file declaring a huge network took it to 4.7 GB."""
    base, process, path, log = served
    for make in (fifo, architecture_bomb):
        make(path)
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload_error" in get_json(base + "/readyz"))
        path.unlink()
        save_model(path, seed=0)  # the good file again, for the next round
    # the master still supervises: a killed worker is replaced
    wait_until(lambda: len(worker_pids(process.pid)) == 2)  # the HUPs' old workers are gone
    killed = worker_pids(process.pid)[0]
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(process.pid)) == 2
               and killed not in worker_pids(process.pid))
    assert get_json(base + "/readyz")["model"] == model_id(path)
    # The file is read to its metadata, no further: the master stays near its start-up size
    # (its peak covers the app and two loads of this small model).
    assert proc_status(process.pid)["VmHWM"] < 150 * 2**20


def test_reloads_keep_the_metrics_directory_small_and_the_totals(tiny_model_path, tmp_path):
    """Each HUP starts new workers; the files of the old ones are folded into one per type
    (server/metrics.py retire_worker), and every count survives."""
    metrics_dir = tmp_path / "prometheus"
    with running_gunicorn(tiny_model_path, tmp_path / "gunicorn.log", metrics_dir) as (
            base, process):
        png = digit_png()
        sent = 0
        for _ in range(4):
            for _ in range(10):
                assert request(base + "/predict", png, {"Content-Type": "image/png"})[0] == 200
                sent += 1
            old = set(worker_pids(process.pid))
            process.send_signal(signal.SIGHUP)
            wait_until(lambda old=old: len(worker_pids(process.pid)) == 2
                       and not old & set(worker_pids(process.pid)))
        # the files of two live workers (a counter and a histogram each, once they have
        # served) and of the retired ones: not one per worker ever started (10 here). The
        # master folds a worker's files just after reaping it, a moment after it is gone.
        wait_until(lambda: len(list(metrics_dir.iterdir())) <= 6)
        files = sorted(path.name for path in metrics_dir.iterdir())
        assert "counter_retired.db" in files, files
        status, body = request(base + "/metrics")
    line = re.search(rb'digitgrad_http_requests_total\{method="POST",route="/predict",'
                     rb'status="200"\} (\S+)', body)
    assert status == 200 and line and float(line.group(1)) == sent


def test_a_scrape_never_sees_a_worker_half_retired(tmp_path):
    """Scrapes while the master folds dead workers' files (the scrape right after a reload):
    each has the exact total. It used to list the files, then find one gone (a 503) or read a
    worker's values both in its file and in the retired one."""
    directory = str(tmp_path)
    key = mmap_key("digitgrad_predictions_total", "digitgrad_predictions_total", ["digit"],
                   ["7"], "Digits predicted.")
    pids = range(1000, 1040)
    for pid in pids:
        values = MmapedDict(os.path.join(directory, f"counter_{pid}.db"))
        values.write_value(key, 1.0, 0.0)
        values.close()
    retiring = threading.Thread(target=lambda: [retire_worker(pid, directory) for pid in pids])
    retiring.start()
    scraped = []
    while retiring.is_alive() or not scraped:
        scraped.append(merged_exposition(directory))
    retiring.join()
    totals = {re.search(rb'digitgrad_predictions_total\{digit="7"\} (\S+)', text).group(1)
              for text in scraped}
    assert totals == {b"40.0"}, (len(scraped), totals)
    assert os.listdir(directory) == ["counter_retired.db"]
