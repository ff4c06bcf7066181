"""MNIST from a local directory of IDX files, downloaded IDX files, or tensorflow-datasets, and the
paper's splits.

Images are float32 in [0, 1] shaped (N, 28, 28, 1); labels are int32 (N,). Splits:
  full: all 60000 training images;  p1, p2: the two disjoint halves of 30000 (a random
  partition fixed by `split_seed`, not stratified, as in the paper);  test: the 10000 test images.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import socket
from pathlib import Path
from typing import NamedTuple

import numpy as np

from adv_jax.download import DEFAULT_MIRRORS, HOW_TO_FIX, DownloadError, fetch_mnist

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
_IDX_DTYPES = {0x08: np.uint8}
_EXPECTED_SHAPES = {"train_x": (60000, 28, 28), "train_y": (60000,),
                    "test_x": (10000, 28, 28), "test_y": (10000,)}
MNIST_CLASSES = 10  # labels are the digits 0..9; `classes` selects among them
SPLITS = ("full", "p1", "p2", "test")
SOURCES = ("idx", "tfds")


class DataError(RuntimeError):
    """MNIST could not be loaded; the message names the file and what is wrong."""


class Dataset(NamedTuple):
    x: np.ndarray  # (N, 28, 28, 1) float32 in [0, 1]
    y: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return len(self.y)


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decodes one decompressed IDX file (magic 0x0000TTDD: type TT, DD dimensions)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = raw[2], raw[3]
    if dtype not in _IDX_DTYPES:
        raise DataError(f"{name}: IDX element type 0x{dtype:02x} is not supported (want 0x08, uint8)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated inside its header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{name}: {what}: header says shape {shape} ({expected} bytes), "
                        f"file has {len(raw)} bytes")
    return np.frombuffer(raw, _IDX_DTYPES[dtype], offset=header).reshape(shape)


def check_labels(labels: np.ndarray, name: str, classes: int = MNIST_CLASSES) -> None:
    """Raises DataError naming `name` and the first label outside 0..classes-1."""
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{name}: label {labels[i]} at index {i} is outside the classes 0..{classes - 1} "
                        f"({bad.size} such labels); the file is corrupt or not MNIST")


def _read_checksums(directory: Path) -> dict[str, str]:
    sums = directory / "SHA256SUMS"
    if not sums.exists():
        return {}
    out = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def _read_idx_file(path: Path, checksums: dict[str, str]) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: missing. {HOW_TO_FIX}")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be decompressed ({e}); the file is corrupt or truncated, "
                        "download it again") from e
    want = checksums.get(path.name) or checksums.get(path.name.removesuffix(".gz"))
    if want and hashlib.sha256(raw).hexdigest() != want:
        raise DataError(f"{path}: sha256 of its decompressed bytes does not match SHA256SUMS; "
                        "the file is corrupt or was replaced")
    return parse_idx(raw, str(path))


def load_idx_dir(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """The four IDX arrays (uint8 images, uint8 labels), checked against SHA256SUMS if present,
    their shapes against MNIST's and their labels against its classes."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(f"data.mnist_dir={str(directory)!r} is not a directory. {HOW_TO_FIX}")
    checksums = _read_checksums(directory)
    arrays = {key: _read_idx_file(directory / name, checksums) for key, name in IDX_FILES.items()}
    for key, shape in _EXPECTED_SHAPES.items():
        if arrays[key].shape != shape:
            raise DataError(f"{directory / IDX_FILES[key]}: shape {arrays[key].shape}, "
                            f"MNIST has {shape}")
    for key in ("train_y", "test_y"):
        check_labels(arrays[key], str(directory / IDX_FILES[key]))
    return arrays


def _network_reachable(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_tfds(data_dir: str | None = None) -> dict[str, np.ndarray]:
    """MNIST through tensorflow-datasets (needs TensorFlow; downloads once into data_dir)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"tensorflow-datasets cannot be imported ({e}). Install it with "
                        f"pip install -e '.[tfds]', or: {HOW_TO_FIX}") from e
    builder = tfds.builder("mnist", data_dir=data_dir)
    if not builder.is_prepared() and not _network_reachable():
        raise DataError("MNIST is not in the tfds data directory and the network is unreachable "
                        f"(tfds would retry for minutes). {HOW_TO_FIX}")
    try:
        ds = tfds.load("mnist", data_dir=data_dir, batch_size=-1, as_supervised=True)
        ds = tfds.as_numpy(ds)
    except Exception as e:  # tfds raises many types; all mean "no data"
        raise DataError(f"tfds could not load MNIST ({type(e).__name__}: {e}). tfds needs "
                        f"TensorFlow: pip install -e '.[tfds]'. Or: {HOW_TO_FIX}") from e
    (train_x, train_y), (test_x, test_y) = ds["train"], ds["test"]
    check_labels(train_y, "tfds mnist train labels")
    check_labels(test_y, "tfds mnist test labels")
    return {"train_x": train_x[..., 0], "train_y": train_y, "test_x": test_x[..., 0], "test_y": test_y}


def load_raw(source: str = "idx", mnist_dir: str | None = None, tfds_dir: str | None = None,
             download_dir: str | None = None, mnist_url: str | None = None) -> dict[str, np.ndarray]:
    """The four uint8 arrays: tfds, or IDX files from `mnist_dir`, else downloaded into
    `download_dir` from `mnist_url` (default: the public mirrors) once and reused after."""
    if source == "tfds":
        return load_tfds(tfds_dir)
    if source != "idx":
        raise DataError(f"unknown data.source {source!r}; choose one of {list(SOURCES)}")
    if mnist_dir:
        return load_idx_dir(mnist_dir)
    if not download_dir:
        raise DataError(f"data.download_dir is unset, so MNIST has nowhere to go. {HOW_TO_FIX}")
    try:
        return load_idx_dir(fetch_mnist(download_dir, mnist_url or DEFAULT_MIRRORS))
    except DownloadError as e:
        raise DataError(str(e)) from e


@functools.lru_cache(maxsize=4)
def load_mnist(mnist_dir: str | None = None, tfds_dir: str | None = None, source: str = "idx",
               download_dir: str | None = None, mnist_url: str | None = None) -> dict[str, Dataset]:
    """{"train": 60000 images, "test": 10000} from the source `load_raw` picks."""
    raw = load_raw(source, mnist_dir, tfds_dir, download_dir, mnist_url)
    return {
        split: Dataset(raw[f"{split}_x"][..., None] / np.float32(255),  # float32 (NEP 50), one pass
                       raw[f"{split}_y"].astype(np.int32))
        for split in ("train", "test")
    }


def split_indices(split: str, split_seed: int = 0, n_train: int = 60000) -> np.ndarray:
    """Indices into the training set: full, or p1/p2 (disjoint halves of a seeded permutation)."""
    if split == "full":
        return np.arange(n_train)
    if split not in ("p1", "p2"):
        raise ValueError(f"unknown training split {split!r}; choose one of ['full', 'p1', 'p2']")
    order = np.random.default_rng(split_seed).permutation(n_train)
    half = n_train // 2
    return np.sort(order[:half] if split == "p1" else order[half:])


def _select(data: Dataset, index: np.ndarray | None, classes) -> Dataset:
    """The examples at `index` (None: all, without a copy) of the digits in `classes`."""
    x, y = (data.x, data.y) if index is None else (data.x[index], data.y[index])
    if classes:
        keep = np.isin(y, classes)
        remap = np.full(10, -1, np.int32)
        remap[list(classes)] = np.arange(len(classes))
        x, y = x[keep], remap[y[keep]]
    return Dataset(x, y)


@functools.lru_cache(maxsize=2)
def _evaluation_splits(source: tuple, split_seed: int, classes: tuple | None) -> dict[str, Dataset]:
    """full, p1, p2 and test of the MNIST `load_mnist(*source)` returns, read-only: shared by every
    caller in the process (a half is a 94 MB copy, made once)."""
    mnist = load_mnist(*source)
    n_train = len(mnist["train"])
    out = {s: _select(mnist["train"], None if s == "full" else split_indices(s, split_seed, n_train), classes)
           for s in ("full", "p1", "p2")}
    out["test"] = _select(mnist["test"], None, classes)
    for data in out.values():
        data.x.flags.writeable = data.y.flags.writeable = False
    return out


def load_splits(data_cfg, classes=None) -> dict[str, Dataset]:
    """Every evaluation split plus "train", the (possibly limited) split the model trains on.
    The arrays are read-only (shared within the process).

    `classes` (e.g. [0, 1, 2, 3]) keeps only those digits and relabels them 0..len-1.
    """
    source = (_absolute(data_cfg.mnist_dir), data_cfg.tfds_dir, getattr(data_cfg, "source", "idx"),
              _absolute(getattr(data_cfg, "download_dir", None)), getattr(data_cfg, "mnist_url", None))
    out = dict(_evaluation_splits(source, data_cfg.split_seed, tuple(classes) if classes else None))
    train = out[data_cfg.split] if data_cfg.split in out else None
    if train is None:
        raise ValueError(f"unknown data.split {data_cfg.split!r}; choose one of ['full', 'p1', 'p2']")
    if getattr(data_cfg, "validation", 0):
        train, out["validation"] = hold_out(train, data_cfg.validation, data_cfg.split_seed)
    if data_cfg.train_limit is not None:
        train = Dataset(train.x[: data_cfg.train_limit], train.y[: data_cfg.train_limit])
    out["train"] = train
    return out


def hold_out(data: Dataset, count: int, split_seed: int = 0) -> tuple[Dataset, Dataset]:
    """(rest, held out): `count` images drawn at random (fixed by split_seed, independent of the
    P1/P2 draw), both in their original order."""
    if not 0 < count < len(data):
        raise ValueError(f"data.validation={count}: hold out between 1 and {len(data) - 1} of the "
                         f"split's {len(data)} images")
    chosen = np.zeros(len(data), bool)
    chosen[np.random.default_rng([split_seed, 1]).permutation(len(data))[:count]] = True
    parts = _select(data, np.flatnonzero(~chosen), None), _select(data, np.flatnonzero(chosen), None)
    for part in parts:  # read-only, like every split load_splits returns
        part.x.flags.writeable = part.y.flags.writeable = False
    return parts


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None
