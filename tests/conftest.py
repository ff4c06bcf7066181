"""Shared fixtures. Tests read the local MNIST copy at ../shared/data/mnist, found relative to
the repository (or wherever ADV_JAX_MNIST_DIR points), and never touch the network."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Absolute, so subprocesses started in other directories (Hydra jobs) find it too.
MNIST_DIR = Path(os.environ.get("ADV_JAX_MNIST_DIR") or REPO.parent / "shared" / "data" / "mnist").resolve()
os.environ["ADV_JAX_MNIST_DIR"] = str(MNIST_DIR)
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST IDX files not found in {MNIST_DIR}; set ADV_JAX_MNIST_DIR")
    return MNIST_DIR


@pytest.fixture
def tiny_overrides(tmp_path, mnist_dir) -> list[str]:
    """Overrides for a seconds-long real run: 2000 P1 images, 3 epochs (or 100 L-BFGS steps, the
    default optimizer's), no W&B, private cache."""
    return [f"data.mnist_dir={mnist_dir}", "data.train_limit=2000", "train.epochs=3",
            "train.lbfgs_steps=100",
            "wandb.mode=disabled", f"cache_dir={tmp_path / 'cache'}"]
