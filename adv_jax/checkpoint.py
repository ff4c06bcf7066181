"""Parameters on disk (flax msgpack, never pickle) and the trained-model cache.

A cached model lives in `<cache_dir>/models/<name>-<key>/`, where `key` hashes everything that
determines the trained parameters: the model config, the training split, the training config and
the seed, and a fingerprint of the training images and labels themselves (so another data set in
the same directory layout is never served a model trained on MNIST). Each entry stores the sha256
of its params, checked on every load: a corrupt or unreadable entry is named in a warning, moved
aside and trained anew. Entries are written to a temporary directory and renamed into place, so an
interrupted run never leaves a half-written entry behind; a cache that cannot be written (full or
read-only disk) is a warning, and the run completes. Entries take the umask's permissions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
from omegaconf import OmegaConf

from adv_jax.config import ModelConfig, TrainConfig
from adv_jax.models import Model, Params

log = logging.getLogger(__name__)
PARAMS_FILE = "params.msgpack"
CACHE_VERSION = 3  # bump when training code, or a schema default, changes what a config produces


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


def write_atomic(path: Path, data: bytes | str) -> None:
    """Writes via a temporary file and a rename: readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data.encode() if isinstance(data, str) else data
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=f".{path.name}.") as f:
        f.write(data)
    _group_readable(Path(f.name))
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
    return _changes(values, defaults)


def _changes(values: dict, defaults: dict) -> dict:
    """values' entries that differ from defaults, recursing into nested blocks (train.adversarial,
    train.dropout): a field added to a nested dataclass keys nothing either."""
    out = {}
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            if nested := _changes(value, default):
                out[key] = nested
        elif key not in defaults or value != default:
            out[key] = value
    return out


def data_fingerprint(data) -> str:
    """sha256 (16 hex digits) of a training set's bytes: images and labels as trained on."""
    digest = hashlib.sha256(np.ascontiguousarray(data.x).tobytes())
    digest.update(np.ascontiguousarray(data.y).tobytes())
    return digest.hexdigest()[:16]


def model_identity(cfg: Any, data=None) -> dict:
    """Everything that determines a trained model's parameters (and nothing else): the changed
    model and training fields, the split, the seed, and (given `data`, the training set) a
    fingerprint of the very images and labels it is trained on."""
    train = _changed_fields(cfg.train, TrainConfig)
    train.pop("cache", None)
    identity = {
        "version": CACHE_VERSION,
        "model": _changed_fields(cfg.model, ModelConfig),
        "data": {"source": getattr(cfg.data, "source", "idx"), "split": cfg.data.split,
                 "split_seed": cfg.data.split_seed, "train_limit": cfg.data.train_limit},
        "train": train,
        "seed": cfg.seed,
    }
    if getattr(cfg.data, "validation", 0):  # only when set: older cache keys stay valid
        identity["data"]["validation"] = cfg.data.validation
    if data is not None:
        identity["data"]["fingerprint"] = data_fingerprint(data)
    return identity


def cache_key(cfg: Any, data=None) -> str:
    canonical = json.dumps(model_identity(cfg, data), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def cache_entry(cfg: Any, data=None) -> Path:
    root = Path(os.path.expanduser(cfg.cache_dir))
    return root / "models" / f"{cfg.model.name}-{cache_key(cfg, data)}"


def _set_aside(entry: Path, why: str) -> None:
    """Moves a bad cache entry out of the way (kept for inspection), so it is trained anew."""
    aside = entry.with_name(f"{entry.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    log.warning("cache entry %s %s; moved to %s, training anew", entry, why, aside.name)
    try:
        os.rename(entry, aside)
    except OSError as e:
        log.warning("could not move %s aside: %s", entry, e)


def read_cache(cfg: Any, model: Model, data) -> tuple[Params, dict] | None:
    """The cached (params, train metrics) of `cfg` trained on `data`, or None. An entry whose
    params fail their stored sha256, or that cannot be read, is set aside (None)."""
    entry = cache_entry(cfg, data)
    if not (entry / PARAMS_FILE).exists():
        return None
    try:
        raw = (entry / PARAMS_FILE).read_bytes()
        stored = json.loads((entry / "identity.json").read_text()).get("params_sha256")
        if stored != hashlib.sha256(raw).hexdigest():
            _set_aside(entry, "fails its checksum")
            return None
        return params_from_bytes(model, raw, str(entry / PARAMS_FILE)), json.loads(
            (entry / "train_metrics.json").read_text())
    except (OSError, ValueError) as e:
        _set_aside(entry, f"cannot be read ({e})")
        return None


def _group_readable(path: Path) -> None:
    """mkdtemp/NamedTemporaryFile create 0700/0600; give the umask's permissions instead, so a
    cache shared by a group stays readable."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_cache(cfg: Any, params: Params, metrics: dict, data) -> Path | None:
    """Stores a trained model with its identity and checksum; returns the entry, or None (with a
    warning naming the path) when the cache cannot be written: the run goes on without it. A
    concurrent writer of the same entry wins without harm."""
    entry = cache_entry(cfg, data)
    raw = params_to_bytes(params)
    identity = {**model_identity(cfg, data), "params_sha256": hashlib.sha256(raw).hexdigest()}
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}."))
        (tmp / PARAMS_FILE).write_bytes(raw)
        (tmp / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
        (tmp / "identity.json").write_text(json.dumps(identity, indent=1, sort_keys=True))
        for path in (tmp, *tmp.iterdir()):
            _group_readable(path)
        os.rename(tmp, entry)
    except OSError as e:
        if not (entry / PARAMS_FILE).exists():
            log.warning("could not write the model cache entry %s (%s); the run goes on without "
                        "caching it", entry, e)
            return None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry
