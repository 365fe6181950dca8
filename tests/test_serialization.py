"""Model files: exact round trips, atomic writes, and one clear error per way a file can be bad."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from autodiff import no_grad
from models import (
    ConvNetwork,
    DeepNetwork,
    LinearNetwork,
    ModelFileError,
    atomic_write,
    load,
    read_checkpoint,
    save,
    write_checkpoint,
)
from models import archive as archive_module
from models.archive import FORMAT_VERSION, META_KEY, read_archive


@pytest.fixture
def model():
    return DeepNetwork(20, 4, 8, 2, rng=np.random.default_rng(0))


@pytest.fixture
def saved(tmp_path, model) -> Path:
    path = tmp_path / "model.npz"
    save(model, path, {"preprocessing": {"mean": 0.1, "std": 0.3}, "note": "hello"})
    return path


def test_round_trip_is_bit_identical(model, saved):
    loaded, metadata = load(saved)
    assert type(loaded) is DeepNetwork and loaded.config() == model.config()
    assert metadata == {"preprocessing": {"mean": 0.1, "std": 0.3}, "note": "hello"}
    x = np.random.default_rng(1).random((5, 20), dtype=np.float32)
    with no_grad():
        np.testing.assert_array_equal(loaded(x).value, model(x).value)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), loaded.named_parameters()):
        assert n1 == n2 and p1.value.dtype == p2.value.dtype
        np.testing.assert_array_equal(p1.value, p2.value)


def test_float64_models_round_trip(tmp_path):
    model = LinearNetwork(3, 2, dtype=np.float64)
    save(model, tmp_path / "m.npz")
    loaded, _ = load(tmp_path / "m.npz")
    assert loaded.W.value.dtype == np.float64
    np.testing.assert_array_equal(loaded.W.value, model.W.value)


def test_file_holds_arrays_by_name_and_one_json_string(saved):
    with np.load(saved, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(
            [META_KEY, "layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b",
             "layers.2.W", "layers.2.b"])
        meta = json.loads(str(archive[META_KEY]))
    assert meta["format"] == "digitgrad" and meta["format_version"] == FORMAT_VERSION == 2
    assert meta["architecture"]["class"] == "DeepNetwork" and meta["kind"] == "model"


def version_1_file(path: Path, model: DeepNetwork, metadata: dict) -> Path:
    """A model file exactly as digitgrad 0.1 wrote it (format version 1), built by hand."""
    meta = {"format": "digitgrad", "format_version": 1, "kind": "model",
            "architecture": model.config(), "dtype": "float32", "metadata": metadata}
    np.savez(path, **model.state_dict(), **{META_KEY: np.array(json.dumps(meta))})
    return path


def test_version_1_files_still_load(tmp_path, model):
    path = version_1_file(tmp_path / "old.npz", model, {"preprocessing": {"mean": 0.1}})
    loaded, metadata = load(path)
    assert loaded.config() == model.config() and metadata == {"preprocessing": {"mean": 0.1}}
    x = np.random.default_rng(1).random((3, 20), dtype=np.float32)
    with no_grad():
        np.testing.assert_array_equal(loaded(x).value, model(x).value)


def test_conv_network_round_trips(tmp_path):
    model = ConvNetwork(channels=(3, 4), kernel_sizes=(3, 5), paddings=(1, 0), hidden_dims=(16,),
                        rng=np.random.default_rng(0))
    save(model, tmp_path / "cnn.npz", {"classes": ["a"] * 10})
    loaded, metadata = load(tmp_path / "cnn.npz")
    assert loaded.config() == model.config() and metadata == {"classes": ["a"] * 10}
    x = np.random.default_rng(1).random((2, 784), dtype=np.float32)
    with no_grad():
        np.testing.assert_array_equal(loaded(x).value, model(x).value)


def test_checkpoint_files_are_not_models_and_vice_versa(tmp_path, saved):
    path = tmp_path / "ck.npz"
    write_checkpoint(path, {"model/W": np.ones(3, np.float32)}, {"config": {"lr": 0.1}})
    arrays, meta = read_checkpoint(path)
    assert list(arrays) == ["model/W"] and meta["config"] == {"lr": 0.1}
    assert meta["kind"] == "checkpoint" and meta["format_version"] == FORMAT_VERSION
    expect_error(path, "is a checkpoint file, not a model")
    with pytest.raises(ModelFileError, match="is a model file, not a checkpoint"):
        read_checkpoint(saved)


def test_atomic_write_gives_the_mode_of_a_normal_file(tmp_path):
    # mkstemp's 0600 made models unreadable to the service user of the Docker image
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        os.umask(0o077)
        atomic_write(tmp_path / "b.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o600


def test_atomic_write_keeps_the_old_file_when_writing_fails(saved):
    before = saved.read_bytes()

    def explode(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(saved, explode)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no temp file left


def test_save_over_an_existing_file_replaces_it(tmp_path, model):
    path = tmp_path / "m.npz"
    save(LinearNetwork(2, 2), path)
    save(model, path)
    assert type(load(path)[0]) is DeepNetwork


# -- every way a file can be bad ------------------------------------------------------------
def rewrite(path: Path, **changes):
    """Re-save a model file with some arrays replaced (None deletes) or the meta changed.

    Written by hand (not by write_archive, which stamps format, version and kind) so that a
    test can write any metadata at all.
    """
    arrays, meta = read_archive(path)
    meta.update(changes.pop("meta", {}))
    for name, value in changes.items():
        name = name.replace("__", ".")
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    np.savez(path, **arrays, **{META_KEY: np.array(json.dumps(meta))})


def expect_error(path, *fragments):
    with pytest.raises(ModelFileError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.npz", "no such file")


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    expect_error(saved, "not a valid .npz file")


def test_corrupted_file(saved):
    data = bytearray(saved.read_bytes())
    for i in range(200, 600):
        data[i] ^= 0xFF
    saved.write_bytes(bytes(data))
    expect_error(saved, "not a valid .npz file")


def test_not_an_archive_at_all(tmp_path):
    path = tmp_path / "model.npz"
    path.write_text("hello, I am text")
    expect_error(path, "not an .npz archive")
    np.save(path.with_suffix(".npy"), np.ones(3))
    expect_error(path.with_suffix(".npy"), "not an .npz archive")


def test_pickled_file_is_refused(tmp_path):
    path = tmp_path / "model.npz"
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("layers.0.W.npy", buffer.getvalue())
    expect_error(path, "pickled objects")


def test_plain_npz_without_metadata(tmp_path, model):
    path = tmp_path / "model.npz"
    np.savez(path, **model.state_dict())
    expect_error(path, "no digitgrad metadata")


def test_wrong_keys(saved):
    rewrite(saved, layers__2__b=None, bogus=np.zeros(20, np.float32))
    expect_error(saved, "Error(s) loading model.npz into DeepNetwork", 'missing "layers.2.b"',
                 'unexpected "bogus"')


def test_wrong_shape(saved):
    rewrite(saved, layers__0__W=np.zeros((20, 9), np.float32))
    expect_error(saved, "size mismatch for layers.0.W: file (20, 9), model (20, 8)")


def test_wrong_dtype(saved):
    rewrite(saved, layers__0__b=np.zeros((1, 8), np.int32))
    expect_error(saved, "layers.0.b has dtype int32; expected float32 or float64")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(saved, bad):
    arrays, _ = read_archive(saved)
    w = arrays["layers.1.W"].copy()
    w[2, 3] = bad
    rewrite(saved, layers__1__W=w)
    expect_error(saved, "layers.1.W contains NaN or Inf values")


def test_unknown_architecture_and_unknown_versions(saved):
    rewrite(saved, meta={"architecture": {"class": "Transformer"}})
    expect_error(saved, "unknown architecture")
    arrays, meta = read_archive(saved)
    for version in (99, 0, "2", True):
        np.savez(saved, **arrays, **{META_KEY: np.array(json.dumps({**meta,
                                                                      "format_version": version}))})
        expect_error(saved, f"format version {version!r} is not supported", "supports 1 to 2")


def test_invalid_json_metadata(saved):
    arrays, _ = read_archive(saved)
    np.savez(saved, **arrays, **{META_KEY: np.array("{not json")})
    expect_error(saved, "metadata is not valid JSON")


def test_checkpoint_kind_is_not_a_model(saved):
    rewrite(saved, meta={"kind": "checkpoint"})
    expect_error(saved, "is a checkpoint file, not a model")


def test_metadata_must_be_json(tmp_path, model):
    with pytest.raises(TypeError):
        save(model, tmp_path / "m.npz", {"bad": object()})
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to read the file as another user")
@pytest.mark.parametrize("locked", ["file", "folder"])
def test_a_file_another_user_cannot_reach_is_one_clear_error(model, tmp_path, locked):
    # what the service user (uid 10001 in the image) meets with a model it may not read
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "model.npz"
    save(model, path)
    tmp_path.chmod(0o755)
    folder.chmod(0o700 if locked == "folder" else 0o755)
    path.chmod(0o600 if locked == "file" else 0o644)
    code = (f"import models\ntry: models.load({str(path)!r})\n"
            "except models.ModelFileError as e: print(e)")
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: cannot be read (Permission denied)"


# --- files that would hang or blow up a loader (a server's master reloads model files) ------


def load_in_thread(path) -> str:
    """load(path)'s error message; fails the test if load does not return within 10 s."""
    outcome = []

    def run():
        try:
            load(path)
        except ModelFileError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "load() blocked"
    return outcome[0]


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    assert load_in_thread(fifo) == f"{fifo}: not a regular file"


def test_devices_and_directories_are_not_model_files(tmp_path):
    for path in (Path("/dev/zero"), tmp_path):
        assert load_in_thread(path) == f"{path}: not a regular file"


def write_member(path: Path, name: str, header_shape: tuple, payload: bytes,
                 compression=zipfile.ZIP_DEFLATED) -> None:
    """A one-member zip whose .npy header declares ``header_shape`` float32, then ``payload``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": header_shape})
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr(name, header.getvalue() + payload)


def test_a_zip_bomb_is_refused_from_its_declared_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(archive_module, "MAX_ARCHIVE_BYTES", 1 << 20)
    path = tmp_path / "model.npz"
    write_member(path, "layers.0.W.npy", (1 << 20,), bytes(4 << 20))  # 4 MB of zeros: ~4 kB
    assert path.stat().st_size < 10_000
    message = load_in_thread(path)
    assert "its arrays would take 4,194," in message and "more than the 1,048,576" in message


def test_an_array_header_larger_than_its_member_is_refused(tmp_path):
    path = tmp_path / "model.npz"
    write_member(path, "layers.0.W.npy", (10**12,), bytes(64), zipfile.ZIP_STORED)
    assert "declares an array of 4,000,000,000,000 bytes in a member of" in load_in_thread(path)


def test_a_huge_central_directory_is_refused(tmp_path, saved, monkeypatch):
    monkeypatch.setattr(archive_module, "MAX_DIRECTORY_BYTES", 100)
    assert "more than the 100 a model file may" in load_in_thread(saved)


@pytest.mark.parametrize(("hidden", "problem"), [
    (200, "its architecture (DeepNetwork) has 125,604 parameters, its arrays hold only 276"),
    # the 6.7 kB file of the review: with hidden_dim 20000 it would take gigabytes to build
    (20_000, "DeepNetwork with 1,200,560,004 parameters: more than the 16,000,000 a model"),
])
def test_an_architecture_bigger_than_its_arrays_is_refused_before_it_is_built(
        saved, hidden, problem):
    _, meta = read_archive(saved)
    rewrite(saved, meta={"architecture": {**meta["architecture"], "hidden_dim": hidden,
                                          "n_layers": 4}})
    assert problem in load_in_thread(saved)


def test_deeply_nested_metadata_is_refused(saved):
    arrays, meta = read_archive(saved)
    nested = "[" * 100_000 + "]" * 100_000
    np.savez(saved, **arrays, **{META_KEY: np.array(json.dumps(meta)[:-1] + f', "x": {nested}}}')})
    assert "metadata is nested too deeply" in load_in_thread(saved)
