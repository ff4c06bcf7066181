"""Shared fixtures. Tests read the local MNIST copy at ../shared/data/mnist, found relative to
the repository (or wherever ADV_JAX_MNIST_DIR points), and never touch the network.

Hermetic: the caller's WANDB_* and ADV_JAX_* settings are removed first (but ADV_JAX_MNIST_DIR).

Speed: trained tiny models are shared through one model cache for the whole run (every xdist
worker and every subprocess), and so are compiled XLA programs (JAX's persistent compilation
cache, in a directory made for this run and removed after it)."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Tests check what the code computes, not how well XLA optimizes it, and most of a tiny test's
# time is compiling: without LLVM's optimization passes and with XLA's loop emitters instead of
# its newer fusion emitters, the suite compiles about 3x faster (docs/development.md). Set here,
# before JAX starts, so the workers and the subprocesses tests start inherit it; an XLA_FLAGS
# that names either flag is left as it is.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_flags = os.environ.get("XLA_FLAGS", "")
if not any(flag.split("=")[0] in _flags for flag in FAST_COMPILE_FLAGS):
    os.environ["XLA_FLAGS"] = " ".join((*FAST_COMPILE_FLAGS, _flags)).strip()

# Hermetic: W&B's and adv_jax's settings in the caller's shell (WANDB_MODE, WANDB_PROJECT,
# ADV_JAX_CACHE_DIR, ...) never reach a test, nor the workers and subprocesses tests start. Kept:
# ADV_JAX_MNIST_DIR (CI points it at its MNIST copy) and, where it exists, the directory of the
# run that started this one (ADV_JAX_TEST_SHARED, below).
KEPT_ENV = ("ADV_JAX_MNIST_DIR",) + (("ADV_JAX_TEST_SHARED",) if os.path.isdir(os.environ.get(
    "ADV_JAX_TEST_SHARED", "")) else ())
for _name in [n for n in os.environ if n.startswith(("WANDB_", "ADV_JAX_")) and n not in KEPT_ENV]:
    del os.environ[_name]

# Bytecode is cached (in the ignored __pycache__ folders) even where the environment says not to:
# the workers and the subprocesses tests start would otherwise each compile adv_jax and the
# tests from source again.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

from adv_jax import devices  # noqa: E402  (after XLA_FLAGS)

# One CPU device in test processes, whichever test starts JAX first (the default, one per core,
# would otherwise hold or not depending on test order); XLA_FLAGS or JAX_NUM_CPU_DEVICES still win.
devices.use_cpu_devices(1)

REPO = Path(__file__).resolve().parents[1]
# Absolute, so subprocesses started in other directories (Hydra jobs) find it too.
MNIST_DIR = Path(os.environ.get("ADV_JAX_MNIST_DIR") or REPO.parent / "shared" / "data" / "mnist").resolve()
os.environ["ADV_JAX_MNIST_DIR"] = str(MNIST_DIR)
os.environ.setdefault("WANDB_SILENT", "true")


_CREATED: list[str] = []


def pytest_configure(config):
    """Runs first in the controller, before xdist starts its workers, which inherit the directory
    (as do the subprocesses tests start)."""
    if "ADV_JAX_TEST_SHARED" not in os.environ:
        shared = tempfile.mkdtemp(prefix="adv_jax_tests_")
        _CREATED.append(shared)
        os.environ["ADV_JAX_TEST_SHARED"] = shared
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(shared) / "xla"))
        # Every program, however quick to compile: the workers and subprocesses share them all.
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
    for path in _CREATED:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    """One model cache for every test of the run: a tiny model trained by one test is loaded by
    the next (cache entries are written atomically, so workers can share it)."""
    return Path(os.environ["ADV_JAX_TEST_SHARED"]) / "models"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST IDX files not found in {MNIST_DIR}; set ADV_JAX_MNIST_DIR")
    return MNIST_DIR


@pytest.fixture(scope="module")
def affine_digits(mnist_dir):
    """Eight real test digits (many pixels exactly 0 or 1: the box binds), an affine model and
    its predictions as the labels (every digit starts correctly classified):
    (model, params, x (8, 28, 28, 1), labels (8,))."""
    import jax.numpy as jnp

    from adv_jax.config import compose
    from adv_jax.data import load_splits
    from closed_form import affine_model

    test = load_splits(compose(["data.train_limit=10"]).data)["test"]
    model, params, *_ = affine_model(10, seed=3)
    x = test.x[:8]
    return model, params, x, np.asarray(jnp.argmax(model.apply(params, x), -1), np.int32)


@pytest.fixture
def tiny_overrides(shared_cache, mnist_dir) -> list[str]:
    """Overrides for a seconds-long real run: the debug size (conf/debug/tiny.yaml: 2000 P1
    images, 3 epochs or 100 L-BFGS steps, no W&B, ...) and the run's shared model cache. MNIST
    comes from ADV_JAX_MNIST_DIR (set above; the fixture fails first when it is missing)."""
    return ["debug=tiny", f"cache_dir={shared_cache}"]


@pytest.fixture
def private_overrides(tiny_overrides, tmp_path) -> list[str]:
    """tiny_overrides with a cache of the test's own (for tests of the cache itself)."""
    return [o for o in tiny_overrides if not o.startswith("cache_dir=")] + [f"cache_dir={tmp_path / 'cache'}"]


def on_fake_cpu_devices(job_source: str, out_dir: Path, count: int = 4) -> dict[str, np.ndarray]:
    """Runs `job()` from `job_source` (it returns a dict of arrays) in a subprocess whose JAX has
    `count` CPU devices; XLA_FLAGS must be set before jax is imported, hence the subprocess."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", TQDM_DISABLE="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = out_dir / "on_fake_devices.npz"
    main = "\nimport sys\nimport numpy\nnumpy.savez(sys.argv[1], **job())\n"
    done = subprocess.run([sys.executable, "-c", job_source + main, str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}
