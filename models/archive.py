"""The archive files models and checkpoints are stored in: arrays by name plus JSON metadata.

Written atomically (temporary file in the same directory, fsync, rename), read with
``allow_pickle=False`` and validated: every way a file can be wrong is a ``ModelFileError``
naming the file and the problem. ``models.serialization`` stores models in these archives;
the trainer stores its checkpoints with ``write_checkpoint`` / ``read_checkpoint``.

Format versions (``format_version`` in the metadata):

- 1: the lab's MLPs (LinearNetwork, DeepNetwork); metadata without class names.
- 2: any architecture ``models.build`` knows (ConvNetwork too); metadata may name the classes
  (``metadata["classes"]``). Version-1 files are still read: nothing they hold changed meaning.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

FORMAT = "digitgrad"
FORMAT_VERSION = 2
META_KEY = "__meta__"
DAMAGED = "not a valid .npz file: truncated or corrupted"


class ModelFileError(ValueError):
    """A model or checkpoint file is missing, unreadable or does not fit."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022  # the usual default where /proc cannot tell (macOS, old kernels)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    Readers see the old file or the complete new one, never a partial write. The file gets the
    permissions any newly created file gets (0666 minus the umask): ``mkstemp`` makes its
    temporary file 0600, which would leave a model unreadable to the service user (a container
    running as another uid), so the mode is set before the rename.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_archive(path, arrays: dict[str, np.ndarray], meta: dict, kind: str) -> None:
    """Atomically write ``arrays`` and ``meta`` (JSON, stamped with format, version and kind)."""
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved for the metadata")
    meta = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind}
    payload = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    payload[META_KEY] = np.array(json.dumps(meta, sort_keys=True, allow_nan=False))
    atomic_write(path, lambda f: np.savez(f, **payload))


def read_archive(path, kind: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and metadata of a file written by ``write_archive``; ModelFileError otherwise.

    With ``kind``, a file of another kind (a checkpoint where a model is expected) is an error.
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # opened here so that it is closed even when numpy fails
    except FileNotFoundError as exc:
        raise ModelFileError(path, "no such file") from exc
    except OSError as exc:  # a directory, or no permission on the file or a folder above it
        problem = ("not a regular file" if isinstance(exc, IsADirectoryError)
                   else f"cannot be read ({exc.strerror})")
        raise ModelFileError(path, problem) from exc
    with f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ModelFileError(path, "not a regular file")
        if f.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
            raise ModelFileError(path, "not an .npz archive (no zip signature at the start): "
                                 "expected a model file written by models.save")
        f.seek(0)
        arrays = _read_members(path, f)
    raw = arrays.pop(META_KEY, None)
    if raw is None or raw.dtype.kind != "U" or raw.shape != ():
        raise ModelFileError(path, f"no {FORMAT} metadata: not written by models.save")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise ModelFileError(path, f"metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(path, f"metadata does not describe a {FORMAT} file")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not (
            1 <= version <= FORMAT_VERSION):
        raise ModelFileError(path, f"format version {version!r} is not supported by this "
                             f"version of digitgrad (supports 1 to {FORMAT_VERSION})")
    found = meta.get("kind", "model")
    if kind is not None and found != kind:
        raise ModelFileError(path, f"is a {found} file, not a {kind}")
    return arrays, meta


def _read_members(path, f) -> dict[str, np.ndarray]:
    """Every array of the open archive ``f``, or a ModelFileError saying what is wrong."""
    try:
        with np.load(f, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ModelFileError(path, "contains pickled objects, which are refused "
                                 "(allow_pickle=False); re-save it with models.save") from exc
        raise ModelFileError(path, f"{DAMAGED} ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise ModelFileError(path, f"{DAMAGED} ({exc})") from exc
    except Exception as exc:  # zlib.error and friends from a damaged archive
        raise ModelFileError(path, f"not a valid .npz file ({type(exc).__name__}: {exc})") from exc


def write_checkpoint(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Atomically write a training checkpoint (arrays by name, JSON-able ``meta``)."""
    write_archive(path, arrays, meta, kind="checkpoint")


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and metadata of a checkpoint; ModelFileError for anything else."""
    return read_archive(path, kind="checkpoint")
