"""MNIST downloaded with no TensorFlow (adv_jax/download.py), from a loopback HTTP server only.

A thread serves a copy of the local MNIST files on 127.0.0.1 and counts the requests: a download
verifies and is reused with no second request; a corrupt copy fails naming the file and leaves
nothing in the cache; a closed port fails within seconds naming the fix. No other address is used.
"""

import errno
import gzip
import http.server
import os
import shutil
import socket
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from adv_jax import data, download
from adv_jax.checkpoint import model_identity
from adv_jax.config import DataConfig, compose


def sums_of(mnist_dir) -> dict[str, str]:
    """The local copy's SHA256SUMS (decompressed bytes), keyed by the .gz names."""
    lines = (line.split() for line in (mnist_dir / "SHA256SUMS").read_text().splitlines() if line.strip())
    return {name.lstrip("*") + ".gz": sha for sha, name in lines}


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def mirror(tmp_path, mnist_dir):
    """(base URL, served directory, list of requested paths) of a loopback mirror of the local copy."""
    served = tmp_path / "root" / "mnist"  # served under /mnist/, as on the public mirrors
    served.mkdir(parents=True)
    for name in download.MNIST_SHA256:
        shutil.copy(mnist_dir / name, served / name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(CountingHandler, directory=str(served.parent)))
    server.paths = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/mnist/", served, server.paths
    server.shutdown()
    server.server_close()


def data_cfg(url, cache):
    return OmegaConf.structured(DataConfig(mnist_dir=None, mnist_url=url, download_dir=str(cache), train_limit=10))


def test_download_verifies_is_reused_and_equals_the_local_copy(mirror, tmp_path, mnist_dir, monkeypatch):
    url, _, paths = mirror
    # The local copy's training images are not the original distribution's bytes (its README), so
    # the server's copy is verified against its own sums; the mechanism is the same.
    monkeypatch.setattr(download, "MNIST_SHA256", sums_of(mnist_dir))
    cache = tmp_path / "cache" / "mnist"
    got = data.load_splits(data_cfg(url, cache))
    assert sorted(paths) == sorted(f"/mnist/{n}" for n in download.MNIST_SHA256)
    local = data.load_splits(OmegaConf.structured(DataConfig(mnist_dir=str(mnist_dir), train_limit=10)))
    for split in ("train", "test", "p2"):
        np.testing.assert_array_equal(got[split].x, local[split].x)
        np.testing.assert_array_equal(got[split].y, local[split].y)
    assert (cache / download.CHECKSUM_FILE).read_text().count("\n") == 4
    data.load_mnist.cache_clear()  # a new process: reads the cache, no request
    data.load_splits(data_cfg(url, cache))
    assert len(paths) == 4
    assert not list(cache.glob(".download-*"))


def test_shipped_checksums_are_the_originals_where_the_local_copy_is_byte_identical(mnist_dir):
    local = sums_of(mnist_dir)
    identical = ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert {n: download.MNIST_SHA256[n] for n in identical} == {n: local[n] for n in identical}
    assert set(download.MNIST_SHA256) == set(data.IDX_FILES.values())


def flip_one_label(path):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    path.write_bytes(gzip.compress(bytes(raw)))


def truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.parametrize("corrupt", [flip_one_label, truncate])
def test_a_corrupt_copy_fails_naming_the_file_and_keeps_nothing(mirror, tmp_path, mnist_dir, corrupt):
    url, served, _ = mirror
    corrupt(served / "t10k-labels-idx1-ubyte.gz")
    cache = tmp_path / "cache"
    with pytest.raises(download.DownloadError, match="checksum mismatch for t10k-labels-idx1-ubyte.gz"):
        download.fetch_mnist(cache, url, expected=sums_of(mnist_dir))
    assert list(cache.rglob("*")) == []


def test_a_full_disk_fails_at_once_naming_the_file(mirror, tmp_path, mnist_dir, monkeypatch):
    url, _, paths = mirror

    def no_space(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", no_space)
    with pytest.raises(download.DownloadError, match=r"could not write \S*/train-images-idx3-ubyte.gz: "
                                                     "No space left on device; .*data.download_dir"):
        download.fetch_mnist(tmp_path / "cache", [url, url], expected=sums_of(mnist_dir))
    assert len(paths) == 1  # not taken for a bad mirror: the second is never asked
    assert list((tmp_path / "cache").rglob("*")) == []


def closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_mirror_fails_fast_naming_the_fix(tmp_path):
    url = f"http://127.0.0.1:{closed_loopback_port()}/"
    start = time.monotonic()
    with pytest.raises(data.DataError) as e:
        data.load_splits(data_cfg(url, tmp_path / "cache"))
    assert time.monotonic() - start < 10
    for fix in ("data.mnist_dir", "ADV_JAX_MNIST_DIR", "data.mnist_url", url + "train-images-idx3-ubyte.gz"):
        assert fix in str(e.value)
    assert list((tmp_path / "cache").rglob("*")) == []


def test_download_dir_follows_cache_dir_and_the_cache_key_names_the_source(monkeypatch, tmp_path):
    monkeypatch.delenv("ADV_JAX_MNIST_DIR")
    cfg = compose([f"cache_dir={tmp_path}"])
    assert cfg.data.mnist_dir is None and cfg.data.download_dir == f"{tmp_path}/mnist"
    monkeypatch.setenv("ADV_JAX_CACHE_DIR", str(tmp_path / "env"))
    assert OmegaConf.structured(DataConfig()).download_dir == f"{tmp_path}/env/mnist"
    downloaded = model_identity(cfg)["data"]["source"]
    local = model_identity(compose([f"data.mnist_dir={tmp_path}"]))["data"]["source"]
    assert downloaded == local == "idx"
    assert model_identity(compose(["data.source=tfds"]))["data"]["source"] == "tfds"
