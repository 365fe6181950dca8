"""The archive files models and checkpoints are stored in: arrays by name plus JSON metadata.

Written atomically (temporary file in the same directory, fsync, rename), read with
``allow_pickle=False`` and validated: every way a file can be wrong is a ``ModelFileError``
naming the file and the problem. ``models.serialization`` stores models in these archives;
the trainer stores its checkpoints with ``write_checkpoint`` / ``read_checkpoint``.

Format versions (``format_version`` in the metadata):

- 1: the lab's MLPs (LinearNetwork, DeepNetwork); metadata without class names.
- 2: any architecture ``models.build`` knows (ConvNetwork too); metadata may name the classes
  (``metadata["classes"]``). Version-1 files are still read: nothing they hold changed meaning.

Reading is bounded before any byte is decompressed: only a regular file is opened, never
waiting on it (a FIFO or a device at the path is refused at once), and the sizes every zip
member and every array header declare are checked against MAX_ARCHIVE_BYTES. A server's
master reloads model files: a 2 MB zip bomb must not take it to gigabytes.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

FORMAT = "digitgrad"
FORMAT_VERSION = 2
META_KEY = "__meta__"
DAMAGED = "not a valid .npz file: truncated or corrupted"
#: Bytes an archive may hold, on disk and decompressed: a float64 checkpoint (parameters and
#: momentum) of a model of models.registry.MAX_PARAMETERS parameters. Ours are under 10 MB.
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
#: Bytes of the JSON metadata string (numpy stores it as UTF-32).
MAX_METADATA_BYTES = 4 * 1024 * 1024
#: Bytes of the zip's central directory, which zipfile parses whole into objects (one per
#: member, ~0.5 kB each): ours list a few dozen members in a few kB.
MAX_DIRECTORY_BYTES = 1024 * 1024
_END_OF_DIRECTORY = struct.Struct("<4s4H2LH")  # the zip's end of central directory record


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


def open_regular_file(path, max_bytes: int = MAX_ARCHIVE_BYTES) -> BinaryIO:
    """``path`` opened for reading if it is a regular file of at most ``max_bytes``; else
    ModelFileError. Never waits: a FIFO would block a plain open() until a writer comes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ModelFileError(path, "no such file") from exc
    except OSError as exc:  # no permission on the file or a folder above it
        raise ModelFileError(path, f"cannot be read ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModelFileError(path, "not a regular file")
        if info.st_size > max_bytes:
            raise ModelFileError(path, f"is {info.st_size:,} bytes, more than the "
                                       f"{max_bytes:,} a model file may have")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_archive(path, kind: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and metadata of a file written by ``write_archive``; ModelFileError otherwise.

    With ``kind``, a file of another kind (a checkpoint where a model is expected) is an error.
    """
    path = Path(path)
    with open_regular_file(path) as f:  # closed even when numpy fails
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
    except RecursionError as exc:
        raise ModelFileError(path, "metadata is nested too deeply") from exc
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


def _check_directory(path, f: BinaryIO) -> None:
    """Refuse an archive whose central directory is larger than MAX_DIRECTORY_BYTES (or in
    the zip64 form, which only archives of more than 4 GB or 65,535 members need)."""
    size = f.seek(0, os.SEEK_END)
    tail_size = min(size, _END_OF_DIRECTORY.size + 0xFFFF)  # the record, then a comment
    f.seek(size - tail_size)
    tail = f.read(tail_size)
    start = tail.rfind(b"PK\x05\x06")
    if start < 0 or start + _END_OF_DIRECTORY.size > len(tail):
        return  # not a zip: zipfile says so
    *_, entries, directory_bytes, _, _ = _END_OF_DIRECTORY.unpack_from(tail, start)
    if entries == 0xFFFF or directory_bytes == 0xFFFFFFFF:
        raise ModelFileError(path, "is a zip64 archive, larger than any model file")
    if directory_bytes > MAX_DIRECTORY_BYTES:
        raise ModelFileError(path, f"lists {entries:,} arrays in {directory_bytes:,} bytes, "
                                   f"more than the {MAX_DIRECTORY_BYTES:,} a model file may")
    f.seek(0)


_ARRAY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}


def _check_members(path, archive: zipfile.ZipFile) -> None:
    """Refuse, before decompressing anything, an archive whose members or arrays declare more
    than MAX_ARCHIVE_BYTES, or arrays that do not fill their members exactly.

    zipfile never returns more than a member's declared size, and numpy allocates what an
    array header declares before reading it: both declarations are bounded here.
    """
    members = archive.infolist()
    declared = sum(member.file_size for member in members)
    if declared > MAX_ARCHIVE_BYTES:
        raise ModelFileError(path, f"its arrays would take {declared:,} bytes, more than the "
                                   f"{MAX_ARCHIVE_BYTES:,} a model file may hold")
    for member in members:
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(path, f"{member.filename} is compressed in a way numpy "
                                       "never writes")
        with archive.open(member) as stream:
            read_header = _ARRAY_HEADERS.get(np.lib.format.read_magic(stream))
            if read_header is None:
                raise ModelFileError(path, f"{member.filename} is in an .npy format version "
                                           "numpy never writes for these arrays")
            shape, _, dtype = read_header(stream)
            if dtype.hasobject:
                raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
            size = dtype.itemsize * int(np.prod(shape, dtype=object))
            if stream.tell() + size != member.file_size:
                raise ModelFileError(path, f"{member.filename} declares an array of {size:,} "
                                           f"bytes in a member of {member.file_size:,}")
            if member.filename == META_KEY + ".npy" and size > MAX_METADATA_BYTES:
                raise ModelFileError(path, f"metadata of {size:,} bytes, more than "
                                           f"{MAX_METADATA_BYTES:,}")


def _read_members(path, f) -> dict[str, np.ndarray]:
    """Every array of the open archive ``f``, or a ModelFileError saying what is wrong."""
    try:
        _check_directory(path, f)
        with zipfile.ZipFile(f) as archive:
            _check_members(path, archive)
        f.seek(0)
        with np.load(f, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ModelFileError:
        raise
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
