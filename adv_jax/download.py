"""MNIST's four IDX .gz files downloaded over HTTP(S) with the standard library, verified, cached.

`fetch_mnist(directory, base_urls)` makes `directory` a local IDX directory (the four .gz files and
a SHA256SUMS beside them, which `adv_jax.data.load_idx_dir` checks on every read). Files already
there are reused without a request. A download is staged in a temporary folder and moved in only
when all four files match the shipped checksums, so a failed or corrupt download leaves nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

# The public mirrors torchvision and keras use; each holds the four files under these names.
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# sha256 of each file's *decompressed* bytes in the original distribution. Decompressed, so that a
# faithfully re-compressed copy verifies too; the mirrors' .gz archives decompress to these.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
CHECKSUM_FILE = "SHA256SUMS"
HOW_TO_FIX = ("Give adv_jax a local copy of the four IDX .gz files with data.mnist_dir=/path/to/mnist "
              "(or the environment variable ADV_JAX_MNIST_DIR), or a reachable mirror with "
              "data.mnist_url=<base URL holding the four files> (or ADV_JAX_MNIST_URL).")


class DownloadError(RuntimeError):
    """MNIST could not be downloaded or did not verify; the message names the file and the fix."""


def decompressed_sha256(path: Path) -> str:
    """sha256 of a .gz file's decompressed bytes (raises OSError/EOFError if it is not gzip)."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(directory: Path, expected: dict[str, str]) -> bool:
    """Whether an earlier download left all the files and their checksum list here."""
    return all((directory / name).is_file() for name in [*expected, CHECKSUM_FILE])


def fetch_mnist(directory: str | os.PathLike, base_urls=DEFAULT_MIRRORS, *,
                expected: dict[str, str] | None = None, timeout_s: float = 30.0) -> Path:
    """`directory` holding the verified MNIST files, downloading them first if any is missing.

    base_urls: one base URL or several tried in turn per file; expected: {file name: sha256 of its
    decompressed bytes}, default MNIST_SHA256; timeout_s bounds each connection and read.
    """
    expected = expected or MNIST_SHA256
    directory = Path(directory).expanduser()
    if is_complete(directory, expected):
        return directory
    base_urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=directory))
    try:
        for name, sha in expected.items():
            download_verified(name, sha, base_urls, staging / name, timeout_s)
        write_local(staging / CHECKSUM_FILE, "".join(f"{sha}  {n}\n" for n, sha in expected.items()).encode())
        for name in [*expected, CHECKSUM_FILE]:  # the checksum list last: it marks completeness
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def download_verified(name: str, sha: str, base_urls: list[str], target: Path, timeout_s: float) -> None:
    """Writes `name` from the first mirror whose copy matches `sha`; raises naming every failure
    (a file that cannot be written locally, e.g. a full disk, at once, naming the file)."""
    failures = []
    for base in base_urls:
        url = base.rstrip("/") + "/" + name
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                body = response.read()  # the largest file is 10 MB
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # refused, cut off...
            failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
            continue
        write_local(target, body)
        got = checksum_or_none(target)
        if got == sha:
            return
        target.unlink(missing_ok=True)
        failures.append(f"{url}: checksum mismatch for {name} (sha256 of its decompressed bytes "
                        f"{got or 'unreadable: not gzip'}, expected {sha}); the file is corrupt or not MNIST")
    raise DownloadError(f"could not download a verified {name}:\n  " + "\n  ".join(failures)
                        + f"\n{HOW_TO_FIX}")


def write_local(path: Path, data: bytes) -> None:
    """Writes a downloaded file; an OSError (disk full, read-only) is a DownloadError naming it."""
    try:
        path.write_bytes(data)
    except OSError as e:
        raise DownloadError(f"could not write {path}: {e.strerror or e}; free some space or choose "
                            "another data.download_dir") from e


def checksum_or_none(path: Path) -> str | None:
    try:
        return decompressed_sha256(path)
    except (OSError, EOFError):  # truncated or not gzip at all
        return None
