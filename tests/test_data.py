"""MNIST loading (adv_jax.data): IDX parsing, checksum and shape errors, the disjoint deterministic
splits, train limits and classes, and failing fast when TFDS has no network."""

import gzip
import hashlib

import numpy as np
import pytest
from omegaconf import OmegaConf

from adv_jax import data
from adv_jax.config import DataConfig


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(directory, n_train=60000, n_test=10000, checksums=True):
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": rng.integers(0, 10, n_train),
              "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": rng.integers(0, 10, n_test)}
    lines = []
    for key, name in data.IDX_FILES.items():
        raw = _idx_bytes(arrays[key])
        (directory / name).write_bytes(gzip.compress(raw))
        lines.append(f"{hashlib.sha256(raw).hexdigest()}  {name.removesuffix('.gz')}")
    if checksums:
        (directory / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return arrays


def test_idx_round_trip(tmp_path):
    arrays = _write_mnist(tmp_path)
    loaded = data.load_idx_dir(tmp_path)
    for key, array in arrays.items():
        np.testing.assert_array_equal(loaded[key], array)


def test_parse_idx_rejects_bad_magic_and_truncation():
    raw = _idx_bytes(np.zeros((3, 2), np.uint8))
    with pytest.raises(data.DataError, match="not an IDX file"):
        data.parse_idx(b"\x12\x34" + raw[2:], "f")
    with pytest.raises(data.DataError, match="truncated"):
        data.parse_idx(raw[:-1], "f")
    with pytest.raises(data.DataError, match="longer than its header"):
        data.parse_idx(raw + b"\x00", "f")
    with pytest.raises(data.DataError, match="element type"):
        data.parse_idx(bytes([0, 0, 0x0D]) + raw[3:], "f")


def test_corrupted_files_are_named(tmp_path):
    _write_mnist(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 10])))
    with pytest.raises(data.DataError, match="t10k-labels.*sha256"):
        data.load_idx_dir(tmp_path)
    labels.write_bytes(gzip.compress(raw)[:50])  # a cut-off download
    with pytest.raises(data.DataError, match="t10k-labels.*decompressed"):
        data.load_idx_dir(tmp_path)
    labels.unlink()
    with pytest.raises(data.DataError, match="t10k-labels.*missing.*ADV_JAX_MNIST_DIR"):
        data.load_idx_dir(tmp_path)


def test_wrong_shape_and_missing_directory(tmp_path):
    _write_mnist(tmp_path, n_test=10, checksums=False)
    with pytest.raises(data.DataError, match=r"t10k-images.*shape \(10, 28, 28\)"):
        data.load_idx_dir(tmp_path)
    with pytest.raises(data.DataError, match="not a directory"):
        data.load_idx_dir(tmp_path / "nope")


def test_real_mnist_checksums_and_range(mnist_dir):
    mnist = data.load_mnist(str(mnist_dir))
    train, test = mnist["train"], mnist["test"]
    assert train.x.shape == (60000, 28, 28, 1) and test.x.shape == (10000, 28, 28, 1)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int32
    assert train.x.min() == 0.0 and train.x.max() == 1.0
    assert abs(float(train.x.mean()) - 0.1307) < 1e-3
    assert np.bincount(test.y).tolist()[:2] == [980, 1135]


def test_splits_are_disjoint_halves_and_deterministic():
    p1, p2 = data.split_indices("p1", 0), data.split_indices("p2", 0)
    assert len(p1) == len(p2) == 30000
    assert not np.intersect1d(p1, p2).size
    assert np.array_equal(np.union1d(p1, p2), np.arange(60000))
    np.testing.assert_array_equal(p1, data.split_indices("p1", 0))
    assert not np.array_equal(p1, data.split_indices("p1", 1))
    with pytest.raises(ValueError, match="choose one of"):
        data.split_indices("p3")


def test_load_splits_limit_and_classes(mnist_dir):
    cfg = OmegaConf.structured(DataConfig(split="p2", mnist_dir=str(mnist_dir), train_limit=500))
    splits = data.load_splits(cfg)
    assert len(splits["train"]) == 500 and len(splits["p2"]) == 30000 and len(splits["test"]) == 10000
    np.testing.assert_array_equal(splits["train"].x, splits["p2"].x[:500])
    four = data.load_splits(cfg, classes=[0, 1, 2, 3])
    assert set(np.unique(four["test"].y)) == {0, 1, 2, 3}
    assert len(four["test"]) == 980 + 1135 + 1032 + 1010


def test_validation_images_are_held_out_of_the_training_split(mnist_dir):
    cfg = OmegaConf.structured(DataConfig(split="p1", mnist_dir=str(mnist_dir), validation=1000))
    splits = data.load_splits(cfg)
    train, held = splits["train"], splits["validation"]
    assert (len(train), len(held)) == (29000, 1000)
    rows = lambda d: sorted(row.tobytes() for row in d.x.reshape(len(d), -1))  # noqa: E731
    assert sorted(rows(train) + rows(held)) == rows(splits["p1"])  # a partition of P1
    other_draw = data.hold_out(splits["p1"], 1000, split_seed=1)[1]
    assert rows(other_draw) != rows(held)  # split_seed fixes the draw (the run's seed plays no part)
    with pytest.raises(ValueError, match="data.validation=30000"):
        data.hold_out(splits["p1"], 30000)


def test_tfds_without_network_fails_fast_with_advice(monkeypatch, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data, "_network_reachable", lambda *a, **k: False)
    with pytest.raises(data.DataError, match="ADV_JAX_MNIST_DIR"):
        data.load_tfds(str(tmp_path))


@pytest.fixture(scope="module")
def blank_mnist(tmp_path_factory):
    """A full-size IDX directory of blank images (quick to compress) and valid labels, no SHA256SUMS."""
    directory = tmp_path_factory.mktemp("blank")
    for key, name in data.IDX_FILES.items():
        array = np.zeros(data._EXPECTED_SHAPES[key], np.uint8) if key.endswith("_x") \
            else np.arange(data._EXPECTED_SHAPES[key][0]) % 10
        (directory / name).write_bytes(gzip.compress(_idx_bytes(array), compresslevel=1))
    return directory


@pytest.mark.parametrize("key, index, label", [("train_y", 7, 200), ("test_y", 3, 11), ("test_y", 9999, 255)])
def test_labels_outside_the_classes_name_the_file_and_index(blank_mnist, tmp_path, key, index, label):
    for path in blank_mnist.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    labels = tmp_path / data.IDX_FILES[key]
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[8 + index] = label
    labels.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    with pytest.raises(data.DataError, match=f"{labels}: label {label} at index {index} is outside the classes 0..9"):
        data.load_idx_dir(tmp_path)
    if key == "train_y":  # the run's own path: an error at loading, not TrainingDiverged after training
        with pytest.raises(data.DataError, match=f"{labels}: label 200 at index 7"):
            data.load_splits(OmegaConf.structured(DataConfig(mnist_dir=str(tmp_path), train_limit=100)))
