"""Parameters on disk (flax msgpack, never pickle) and the trained-model cache.

A cached model lives in `<cache_dir>/models/<name>-<key>/`, where `key` hashes everything that
determines the trained parameters: the model config, the training split, the training config and
the seed. Entries are written to a temporary directory and renamed into place, so an interrupted
run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
from omegaconf import OmegaConf

from adv_jax.config import ModelConfig, TrainConfig
from adv_jax.models import Model, Params

PARAMS_FILE = "params.msgpack"
CACHE_VERSION = 2  # bump when training code, or a schema default, changes what a config produces


def params_to_bytes(params: Params) -> bytes:
    return flax.serialization.msgpack_serialize(
        {str(i): {k: np.asarray(v) for k, v in p.items()} for i, p in enumerate(params)})


def params_from_bytes(model: Model, raw: bytes, name: str = "params") -> Params:
    """Restores params for `model`, checking every shape against the model's own."""
    state = flax.serialization.msgpack_restore(raw)
    expected = jax.eval_shape(model.init, jax.random.key(0))
    if sorted(state, key=int) != [str(i) for i in range(len(expected))]:
        raise ValueError(f"{name}: holds {len(state)} layers, the model has {len(expected)}")
    params = []
    for i, want in enumerate(expected):
        got = state[str(i)]
        for k, spec in want.items():
            if k not in got or tuple(got[k].shape) != spec.shape:
                shape = None if k not in got else got[k].shape
                raise ValueError(f"{name}: layer {i} {k!r} has shape {shape}, model wants {spec.shape}")
        params.append({k: jax.numpy.asarray(got[k]) for k in want})
    return tuple(params)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=f".{path.name}.") as f:
        f.write(data)
    os.replace(f.name, path)


def save_params(path: str | os.PathLike, params: Params) -> None:
    write_atomic(Path(path), params_to_bytes(params))


def load_params(path: str | os.PathLike, model: Model) -> Params:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no parameters here; was the run interrupted before training ended?")
    return params_from_bytes(model, path.read_bytes(), str(path))


def _changed_fields(node: Any, schema: type) -> dict:
    """The fields of a config node that differ from the schema's defaults.

    Keying on changes only means a field added to a schema later (with a default that keeps the
    old behaviour) leaves every existing cache entry valid. Changing a default's VALUE must bump
    CACHE_VERSION.
    """
    values = OmegaConf.to_container(node, resolve=True)
    defaults = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)
    return {k: v for k, v in values.items() if k not in defaults or v != defaults[k]}


def model_identity(cfg: Any) -> dict:
    """Everything that determines a trained model's parameters (and nothing else)."""
    train = _changed_fields(cfg.train, TrainConfig)
    train.pop("cache", None)
    return {
        "version": CACHE_VERSION,
        "model": _changed_fields(cfg.model, ModelConfig),
        "data": {"source": "idx" if cfg.data.mnist_dir else "tfds", "split": cfg.data.split,
                 "split_seed": cfg.data.split_seed, "train_limit": cfg.data.train_limit},
        "train": train,
        "seed": cfg.seed,
    }


def cache_key(cfg: Any) -> str:
    canonical = json.dumps(model_identity(cfg), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def cache_entry(cfg: Any) -> Path:
    root = Path(os.path.expanduser(cfg.cache_dir))
    return root / "models" / f"{cfg.model.name}-{cache_key(cfg)}"


def read_cache(cfg: Any, model: Model) -> tuple[Params, dict] | None:
    entry = cache_entry(cfg)
    if not (entry / PARAMS_FILE).exists():
        return None
    metrics = json.loads((entry / "train_metrics.json").read_text())
    return load_params(entry / PARAMS_FILE, model), metrics


def write_cache(cfg: Any, params: Params, metrics: dict) -> Path:
    """Stores a trained model; a concurrent writer of the same entry wins without harm."""
    entry = cache_entry(cfg)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}."))
    try:
        (tmp / PARAMS_FILE).write_bytes(params_to_bytes(params))
        (tmp / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
        (tmp / "identity.json").write_text(json.dumps(model_identity(cfg), indent=1, sort_keys=True))
        os.rename(tmp, entry)
    except OSError:
        if not (entry / PARAMS_FILE).exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
