"""MNIST reading and downloading: generated IDX files always, real ones when $MNIST_DIR is set."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pickle
import shutil
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from trainer import data as mnist_data
from trainer.data import (
    FILES,
    DataError,
    batch_slices,
    download,
    encode_idx,
    load_idx_dir,
    load_mnist,
    load_pickle,
    parse_idx,
)

NAMES = {role: name for role, (name, _, _) in FILES.items()}


def write_idx_dir(directory: Path, n_train: int = 60, n_test: int = 20, gz: bool = True,
                  seed: int = 0) -> dict[str, bytes]:
    """Four small IDX files; returns name -> decompressed content."""
    rng = np.random.default_rng(seed)
    contents = {
        NAMES["train_images"]: encode_idx(rng.integers(0, 256, (n_train, 28, 28))),
        NAMES["train_labels"]: encode_idx(rng.integers(0, 10, n_train)),
        NAMES["test_images"]: encode_idx(rng.integers(0, 256, (n_test, 28, 28))),
        NAMES["test_labels"]: encode_idx(rng.integers(0, 10, n_test)),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (directory / name).write_bytes(content)
    return contents


def md5s(contents: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.md5(c).hexdigest() for name, c in contents.items()}


# -- IDX parsing ------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_dir_reads_gzipped_or_plain_files(tmp_path, gz):
    contents = write_idx_dir(tmp_path, gz=gz)
    mnist = load_idx_dir(tmp_path, validation_size=10)
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (50, 10, 20)
    assert mnist.train.images.dtype == np.float32 and mnist.train.images.shape == (50, 28, 28)
    assert mnist.train.labels.dtype == np.int64
    assert 0.0 <= mnist.train.images.min() and mnist.train.images.max() <= 1.0
    assert mnist.checksums == md5s(contents)
    # the validation set is the *last* training images, as in the lab
    raw = np.frombuffer(contents[NAMES["train_images"]], np.uint8, offset=16).reshape(-1, 28, 28)
    np.testing.assert_array_equal(mnist.val.images, raw[50:] / np.float32(255))


def test_parse_idx_roundtrip():
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    np.testing.assert_array_equal(parse_idx(encode_idx(array), 0x0803), array)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x00\x00", "too short"),
        (encode_idx(np.zeros(5, np.uint8)), "bad IDX magic number 0x00000801, expected 0x00000803"),
        (struct.pack(">I", 0x0803) + b"\x00" * 6, "truncated IDX header"),
        (encode_idx(np.zeros((2, 28, 28), np.uint8))[:-1], "truncated"),
        (encode_idx(np.zeros((2, 28, 28), np.uint8)) + b"\x00", "trailing bytes"),
        (encode_idx(np.zeros((2, 20, 20), np.uint8)), "20x20, expected 28x28"),
    ],
)
def test_parse_idx_rejects_bad_files(content, match):
    with pytest.raises(DataError, match=match) as info:
        parse_idx(content, 0x0803, "some-file")
    assert str(info.value).startswith("some-file: ")


def test_truncated_gzip_names_the_file(tmp_path):
    write_idx_dir(tmp_path)
    path = tmp_path / f"{NAMES['train_images']}.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=f"{path}: corrupt or truncated gzip"):
        load_idx_dir(tmp_path, validation_size=10)


def test_label_and_image_counts_must_agree(tmp_path):
    write_idx_dir(tmp_path)
    (tmp_path / f"{NAMES['train_labels']}.gz").write_bytes(
        gzip.compress(encode_idx(np.zeros(59, np.uint8))))
    with pytest.raises(DataError, match="60 train images but 59 train labels"):
        load_idx_dir(tmp_path, validation_size=10)


def test_labels_above_nine_are_rejected(tmp_path):
    write_idx_dir(tmp_path)
    (tmp_path / f"{NAMES['test_labels']}.gz").write_bytes(
        gzip.compress(encode_idx(np.full(20, 12, np.uint8))))
    with pytest.raises(DataError, match="label 12 > 9"):
        load_idx_dir(tmp_path, validation_size=10)


def test_too_few_training_images_for_the_validation_split(tmp_path):
    write_idx_dir(tmp_path, n_train=60)
    with pytest.raises(DataError, match="only 60 training images"):
        load_idx_dir(tmp_path)


def test_swapped_files_are_a_clear_error(tmp_path):
    write_idx_dir(tmp_path)
    images, labels = (tmp_path / f"{NAMES[r]}.gz" for r in ("test_images", "test_labels"))
    content = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(content)
    with pytest.raises(DataError, match="is this the right file"):
        load_idx_dir(tmp_path, validation_size=10)


def test_real_mnist(mnist_dir):
    mnist = load_mnist(mnist_dir, allow_download=False)
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (50_000, 10_000, 10_000)
    assert mnist.checksums == {name: md5 for name, _, md5 in FILES.values()}
    assert mnist.train.images.dtype == np.float32
    assert float(mnist.train.images.max()) == 1.0 and float(mnist.train.images.min()) == 0.0
    assert np.bincount(mnist.test.labels).tolist()[:2] == [980, 1135]  # the well-known counts


# -- the lab's pickle --------------------------------------------------------------------------
def write_pickle(path: Path, sizes=(30, 10, 10)) -> None:
    rng = np.random.default_rng(1)
    splits = tuple(
        (rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in sizes
    )
    with gzip.open(path, "wb") as f:
        pickle.dump(splits, f, protocol=2)


def test_load_pickle(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    write_pickle(path)
    mnist = load_pickle(path)
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (30, 10, 10)
    assert mnist.train.images.shape == (30, 28, 28) and mnist.train.images.dtype == np.float32
    assert list(mnist.checksums) == ["mnist.pkl.gz"]


class _Evil:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-digitgrad-test",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(DataError, match="refusing to load shutil.rmtree"):
        load_pickle(path)


def test_pickle_of_wrong_shape(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    write_pickle(path)
    with gzip.open(path, "wb") as f:
        pickle.dump((np.zeros((3, 10)), np.zeros(3, np.int64)), f)
    with pytest.raises(DataError, match=r"expected a \(train, dev, test\) tuple"):
        load_pickle(path)


# -- downloading ---------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields (root dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def test_download_skips_dead_and_wrong_checksum_mirrors(tmp_path, http_root):
    root, base = http_root
    contents = write_idx_dir(root / "good")
    write_idx_dir(root / "bad", seed=99)  # same names, other bytes: checksums differ
    target = tmp_path / "cache" / "mnist"
    messages = []
    mirrors = [closed_port_url(), f"{base}/bad/", f"{base}/good/"]
    mnist = load_mnist(target, mirrors=mirrors, checksums=md5s(contents), log=messages.append,
                       validation_size=10)
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in contents)
    assert mnist.checksums == md5s(contents)
    assert any("does not match" in m and "/bad/" in m for m in messages)
    # a mirror that cannot be reached is tried once, not once per file
    assert sum("failed" in m for m in messages) == 1
    assert sum("downloaded" in m and "/good/" in m for m in messages) == 4


def test_download_fetches_only_missing_files(tmp_path, http_root):
    root, base = http_root
    contents = write_idx_dir(root / "m")
    target = tmp_path / "data"
    write_idx_dir(target)
    missing = NAMES["test_labels"]
    (target / f"{missing}.gz").unlink()
    messages = []
    download(target, [f"{base}/m/"], log=messages.append, checksums=md5s(contents))
    assert messages == [f"downloaded {base}/m/{missing}.gz"]


def test_download_with_progress_bar(tmp_path, http_root, capsys):
    root, base = http_root
    contents = write_idx_dir(root / "m")
    download(tmp_path / "d", [f"{base}/m"], progress=True, checksums=md5s(contents))
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err


def test_real_files_download_and_verify(tmp_path, http_root, mnist_dir):
    """The official checksums against the real files served locally, after a corrupt mirror."""
    root, base = http_root
    shutil.copytree(mnist_dir, root / "mnist")
    (root / "corrupt").mkdir()
    for name in NAMES.values():
        (root / "corrupt" / f"{name}.gz").write_bytes(gzip.compress(b"not mnist"))
    target = tmp_path / "data"
    mnist = load_mnist(target, mirrors=[f"{base}/corrupt/", f"{base}/mnist/"])
    assert mnist.checksums == {name: md5 for name, _, md5 in FILES.values()}


def test_no_network_message_says_what_to_put_where(tmp_path):
    target = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_mnist(target, mirrors=[closed_port_url()])
    message = str(info.value)
    assert f"MNIST not found in {target}" in message
    for name in NAMES.values():
        assert f"{name}.gz" in message
    assert "--data-dir" in message and "--data-file" in message


def test_no_download_flag_fails_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_data, "_fetch", lambda *a: pytest.fail("must not download"))
    with pytest.raises(DataError, match="downloads disabled"):
        load_mnist(tmp_path, allow_download=False)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    assert mnist_data.default_data_dir() == tmp_path
    monkeypatch.delenv("MNIST_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert mnist_data.default_data_dir() == tmp_path / "cache" / "digitgrad" / "mnist"


def test_fashion_mnist_default_dir_and_message(monkeypatch, tmp_path):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert mnist_data.default_data_dir("fashion-mnist") == tmp_path
    monkeypatch.delenv("FASHION_MNIST_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    system = Path(mnist_data.DATASETS["fashion-mnist"].system_dir)
    expected = system if not mnist_data.missing_files(system) else (
        tmp_path / "cache" / "digitgrad" / "fashion-mnist")
    assert mnist_data.default_data_dir("fashion-mnist") == expected
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path / "none", allow_download=False, dataset="fashion-mnist")
    message = str(info.value)
    assert message.startswith(f"fashion-mnist not found in {tmp_path / 'none'}")
    assert "set FASHION_MNIST_DIR" in message and "apt install dataset-fashion-mnist" in message


def test_fashion_mnist_from_debian_has_its_class_names():
    directory = Path(mnist_data.DATASETS["fashion-mnist"].system_dir)
    if mnist_data.missing_files(directory):
        pytest.skip(f"Fashion-MNIST is not installed in {directory}")
    data = load_mnist(directory, allow_download=False, dataset="fashion-mnist")
    assert (len(data.train), len(data.val), len(data.test)) == (50_000, 10_000, 10_000)
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert data.checksums == mnist_data.DATASETS["fashion-mnist"].md5s


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DataError, match="is not a directory"):
        load_mnist(path)


# -- batches -----------------------------------------------------------------------------------
def test_batch_slices_cover_everything_once():
    assert batch_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert batch_slices(8, 4) == [slice(0, 4), slice(4, 8)] and batch_slices(0, 4) == []
