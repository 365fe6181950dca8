"""MNIST and Fashion-MNIST: IDX reading, checksums, download from mirrors, the lab's pickle,
splits and batches.

Everything a user can get wrong (a missing directory, a truncated file, no network) raises
``DataError`` with a message that names the file and says what to do; the CLI prints it on one
line and exits with status 2.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import atomic_write

#: The official files: role -> (name without .gz, IDX magic, MD5 of the decompressed content).
FILES = {
    "train_images": ("train-images-idx3-ubyte", 0x00000803, "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": ("train-labels-idx1-ubyte", 0x00000801, "a25bea736e30d166cdddb491f175f624"),
    "test_images": ("t10k-images-idx3-ubyte", 0x00000803, "2646ac647ad5339dbf082846283269ea"),
    "test_labels": ("t10k-labels-idx1-ubyte", 0x00000801, "27ae3e4e09519cfbb04c329615203637"),
}

#: Official mirrors of the gzipped files, tried in turn (yann.lecun.com itself now refuses bots).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DOWNLOAD_TIMEOUT = 30.0  # seconds without a byte before a mirror is given up


@dataclass(frozen=True)
class Dataset:
    """A 28x28, ten-class IDX data set: where to find it, its checksums, its class names."""

    name: str
    md5s: dict[str, str]  # file name (without .gz) -> MD5 of the decompressed content
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    env: str  # the environment variable naming its directory
    system_dir: str | None = None  # where a distribution package installs it

    def default_dir(self) -> Path:
        """``$ENV`` if set, else the system copy if installed, else the per-user cache."""
        env = os.environ.get(self.env)
        if env:
            return Path(env).expanduser()
        if self.system_dir and not missing_files(Path(self.system_dir)):
            return Path(self.system_dir)
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(cache) / "digitgrad" / self.name


DATASETS = {
    "mnist": Dataset("mnist", {name: md5 for name, _, md5 in FILES.values()}, MIRRORS,
                     classes=tuple(str(d) for d in range(10)), env="MNIST_DIR"),
    # Debian's dataset-fashion-mnist installs the files; the MD5s are of the decompressed
    # files (Debian recompresses them, so the gzip MD5s in Zalando's README differ)
    "fashion-mnist": Dataset(
        "fashion-mnist",
        {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
         "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
         "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
         "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
        env="FASHION_MNIST_DIR", system_dir="/usr/share/datasets/fashion-mnist"),
}

#: The lab keeps the last 10,000 training images for validation; so do we.
VALIDATION_SIZE = 10_000
IMAGE_SHAPE = (28, 28)


class DataError(Exception):
    """The data cannot be found, fetched or read; the message tells the user what to do."""


@dataclass
class Split:
    """Images as float32 in [0, 1], shape (N, 28, 28), and int64 labels, shape (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class MNIST:
    """The three splits, where they came from, file name -> MD5 of the decompressed content, and
    the class names (label i is ``classes[i]``)."""

    train: Split
    val: Split
    test: Split
    source: str
    checksums: dict[str, str] = field(default_factory=dict)
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))


# -- locating the files ---------------------------------------------------------------------------
def default_data_dir(dataset: str = "mnist") -> Path:
    """``$MNIST_DIR`` if set, else the per-user cache ``$XDG_CACHE_HOME/digitgrad/mnist``
    (for Fashion-MNIST: ``$FASHION_MNIST_DIR``, Debian's copy, the cache)."""
    return DATASETS[dataset].default_dir()


def find_file(directory: Path, name: str) -> Path | None:
    """``directory/name.gz`` or ``directory/name`` (the gzipped one first), or None."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def missing_files(directory: Path) -> list[str]:
    """Names (without .gz) of the official files that are in neither form in ``directory``."""
    return [name for name, _, _ in FILES.values() if find_file(directory, name) is None]


# -- reading ------------------------------------------------------------------------------------
def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed if it is gzip (recognised by its magic, not its name)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{path}: corrupt or truncated gzip file ({exc}); delete it and download it again"
        ) from exc


def parse_idx(data: bytes, expected_magic: int, name: str = "<bytes>") -> np.ndarray:
    """uint8 array from IDX bytes: magic (0x0801 labels, 0x0803 images), big-endian sizes, data."""
    if len(data) < 8:
        raise DataError(f"{name}: too short to be an IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        kind = "labels" if expected_magic == 0x0801 else "images"
        raise DataError(
            f"{name}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(MNIST {kind}); is this the right file?"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{name}: images are {shape[1]}x{shape[2]}, expected 28x28")
    expected = int(np.prod(shape))
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {what}: header promises {expected} bytes of data for shape {shape}, "
            f"file holds {actual}; delete it and download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (the inverse of ``parse_idx``; tests and tools use it)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    sizes = b"".join(n.to_bytes(4, "big") for n in array.shape)
    return (0x0800 | array.ndim).to_bytes(4, "big") + sizes + array.tobytes()


def to_float_images(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (the contract of models.preprocessing)."""
    return pixels.astype(np.float32) / np.float32(255)


def load_idx_dir(directory: Path, validation_size: int = VALIDATION_SIZE) -> MNIST:
    """Read and validate the four IDX files of ``directory``; split train into train/validation."""
    arrays, checksums = {}, {}
    for role, (name, magic, _) in FILES.items():
        path = find_file(directory, name)
        if path is None:
            raise DataError(f"{directory}: {name}.gz is missing")
        data = read_bytes(path)
        checksums[name] = hashlib.md5(data).hexdigest()
        arrays[role] = parse_idx(data, magic, str(path))
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if len(images) != len(labels):
            raise DataError(
                f"{directory}: {len(images)} {part} images but {len(labels)} {part} labels; "
                "the files do not belong together"
            )
        if part == "train" and len(images) <= validation_size:
            raise DataError(
                f"{directory}: only {len(images)} training images; need more than "
                f"{validation_size} (the last {validation_size} are the validation set)"
            )
    for role in ("train_labels", "test_labels"):
        if arrays[role].size and arrays[role].max() > 9:
            raise DataError(f"{directory}: {FILES[role][0]} holds label {arrays[role].max()} > 9")
    images = to_float_images(arrays["train_images"])
    labels = arrays["train_labels"].astype(np.int64)
    cut = len(labels) - validation_size
    return MNIST(
        train=Split(images[:cut], labels[:cut]),
        val=Split(images[cut:], labels[cut:]),
        test=Split(to_float_images(arrays["test_images"]), arrays["test_labels"].astype(np.int64)),
        source=str(directory),
        checksums=checksums,
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and tuples only: a data file must not be able to run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol 2 stores bytes when written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "_codecs":
            return codecs.encode
        if name == "_reconstruct":
            # numpy 2 moved numpy.core to numpy._core; importing the old name warns
            return np._core.multiarray._reconstruct if hasattr(np, "_core") else (
                np.core.multiarray._reconstruct
            )
        return getattr(np, name)


def _pickle_split(obj, name: str, path: Path) -> Split:
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise DataError(f"{path}: the {name} split is not an (images, labels) pair")
    images, labels = (np.asarray(a) for a in obj)
    if images.ndim != 2 or images.shape[1] != 784 or labels.shape != (len(images),):
        raise DataError(
            f"{path}: the {name} split has images {images.shape} and labels {labels.shape}; "
            "expected (N, 784) and (N,)"
        )
    if images.dtype.kind != "f" or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: the {name} split has dtypes {images.dtype}/{labels.dtype}")
    if len(images) and (images.min() < 0 or images.max() > 1 or labels.min() < 0
                        or labels.max() > 9):
        raise DataError(f"{path}: the {name} split has pixels outside [0, 1] or labels outside 0-9")
    return Split(images.astype(np.float32).reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64))


def load_pickle(path: Path) -> MNIST:
    """The lab's ``mnist.pkl.gz``: a pickled (train, dev, test) tuple of (images, labels)."""
    data = read_bytes(path)
    try:
        # latin1: the file was pickled by Python 2, whose byte strings hold the array data
        splits = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # any unpickling failure means "not the lab's file"
        raise DataError(
            f"{path}: not a readable mnist.pkl.gz ({type(exc).__name__}: {exc})"
        ) from exc
    if not (isinstance(splits, (tuple, list)) and len(splits) == 3):
        raise DataError(f"{path}: expected a (train, dev, test) tuple")
    train, val, test = (
        _pickle_split(s, n, path) for s, n in zip(splits, ("train", "dev", "test"))
    )
    return MNIST(train, val, test, source=str(path),
                 checksums={path.name: hashlib.md5(data).hexdigest()})


# -- downloading --------------------------------------------------------------------------------
def _fetch(url: str, timeout: float, progress: bool) -> bytes:
    """The body at ``url``, with a tqdm byte counter on stderr when ``progress``."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        chunks = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                       file=sys.stderr, leave=False)
        try:
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    return b"".join(chunks)


def no_data_message(directory: Path, missing: list[str], reasons: list[str],
                    dataset: str = "mnist") -> str:
    """What to put where (or which flag to pass) when the files cannot be downloaded."""
    files = ", ".join(f"{name}.gz" for name in missing)
    why = f" ({reasons[-1]})" if reasons else ""
    if dataset == "mnist":
        title, extra = "MNIST", ", or --data-file mnist.pkl.gz for the lab's pickle"
    else:
        title, extra = dataset, (f" (Debian: apt install dataset-{dataset})"
                                 if DATASETS[dataset].system_dir else "")
    return (
        f"{title} not found in {directory} and the download failed{why}: put {files} "
        f"into {directory}, or pass --data-dir DIR (or set {DATASETS[dataset].env}) for a "
        f"directory holding the four {title} IDX files{extra}"
    )


def download(
    directory: Path,
    mirrors: tuple[str, ...] | list[str] = MIRRORS,
    timeout: float = DOWNLOAD_TIMEOUT,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    checksums: dict[str, str] | None = None,
    dataset: str = "mnist",
) -> None:
    """Fetch every missing official file into ``directory``, trying each mirror in turn.

    Each body is decompressed and its MD5 checked before it is written (atomically), so a bad
    mirror is skipped rather than trusted. Raises DataError telling the user what to do when
    some file could be fetched from no mirror.
    """
    log = log or (lambda message: None)
    missing = missing_files(directory)
    if not missing:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the data directory {directory} ({exc.strerror or exc}); "
                        "pass --data-dir DIR") from exc
    md5s = checksums or DATASETS[dataset].md5s
    failed, reasons = [], []
    unreachable = set()  # offline, each mirror costs a timeout once, not once per file
    for name in missing:
        for mirror in mirrors:
            if mirror in unreachable:
                continue
            url = mirror.rstrip("/") + f"/{name}.gz"
            try:
                body = _fetch(url, timeout, progress)
                content = gzip.decompress(body)
            # URLError and timeouts are OSErrors; a bad gzip body is EOFError or zlib.error
            except (OSError, EOFError, zlib.error, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                if isinstance(exc, urllib.error.URLError) and not isinstance(
                    exc, urllib.error.HTTPError
                ) or isinstance(exc, TimeoutError):
                    unreachable.add(mirror)  # no connection at all (an HTTP error may be per file)
                reasons.append(f"{url}: {reason}")
                log(f"download of {url} failed ({reason})")
                continue
            digest = hashlib.md5(content).hexdigest()
            if digest != md5s[name]:
                reasons.append(f"{url}: checksum mismatch")
                log(f"{url}: MD5 {digest} does not match the official {md5s[name]}; skipped")
                continue
            try:
                atomic_write(directory / f"{name}.gz", lambda f, body=body: f.write(body))
            except OSError as exc:
                raise DataError(f"cannot write {directory / name}.gz ({exc.strerror or exc}); "
                                "pass --data-dir DIR for a writable directory") from exc
            log(f"downloaded {url}")
            break
        else:
            failed.append(name)
    if failed:
        raise DataError(no_data_message(directory, failed, reasons, dataset))


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    data_file: str | os.PathLike | None = None,
    allow_download: bool = True,
    mirrors: tuple[str, ...] | list[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    checksums: dict[str, str] | None = None,
    validation_size: int = VALIDATION_SIZE,
    dataset: str = "mnist",
) -> MNIST:
    """MNIST from ``data_file`` (the lab's pickle), else ``data_dir``, else ``default_data_dir()``.

    Missing IDX files are downloaded (unless ``allow_download`` is false) from ``mirrors``
    (default: the data set's official ones) and checked against ``checksums`` (name -> MD5 of
    the decompressed file; default: the official ones). ``dataset`` is a key of ``DATASETS``:
    it picks the default directory, mirrors, checksums and class names.
    """
    spec = DATASETS[dataset]
    if data_file is not None:
        path = Path(data_file).expanduser()
        if not path.is_file():
            raise DataError(f"--data-file {path}: no such file")
        return load_pickle(path)
    directory = Path(data_dir).expanduser() if data_dir is not None else spec.default_dir()
    if directory.exists() and not directory.is_dir():
        raise DataError(f"{directory} is not a directory; pass --data-dir DIR")
    missing = missing_files(directory)
    if missing:
        if not allow_download:
            raise DataError(no_data_message(directory, missing, ["downloads disabled"], dataset))
        download(directory, mirrors or spec.mirrors, progress=progress, log=log,
                 checksums=checksums or spec.md5s, dataset=dataset)
    data = load_idx_dir(directory, validation_size)
    data.classes = spec.classes
    return data


# -- batches ------------------------------------------------------------------------------------
def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices covering range(n); the last batch may be smaller."""
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
