"""Parameters on disk (flax msgpack, never pickle) and the trained-model cache.

A cached model lives in `<cache_dir>/models/<name>-<key>/`, where `key` hashes everything that
determines the trained parameters: the model config, the training split, the training config and
the seed, and a fingerprint of the training images and labels themselves (so another data set in
the same directory layout is never served a model trained on MNIST). Each entry records that
identity and the sha256 of its params in identity.json, both checked on every load: an entry that
is a symlink or holds one, has no identity, records another key's identity (a renamed or copied
entry), fails its checksum or cannot be read is named in a warning, moved aside and trained anew.
Entries are written to a temporary directory and renamed into place, so an interrupted run never
leaves a half-written entry behind (temporaries a killed writer left are removed by the next write
once an hour old); a cache that cannot be written (full or read-only disk) is a warning naming the
path, and the run completes. Entries take the umask's permissions.

A params file outside the cache (a run directory's) gets a sha256 sidecar from `save_params`
(`write_checksum`), checked by `load_params` (`read_verified`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
from omegaconf import OmegaConf

from adv_jax.config import ModelConfig, TrainConfig
from adv_jax.models import Model, Params
from adv_jax.models.external import resolve_target
from adv_jax.run_files import PARAMS_FILE

log = logging.getLogger(__name__)
IDENTITY_FILE = "identity.json"
CHECKSUM_SUFFIX = ".sha256"  # a params file's sidecar: <path>.sha256, in sha256sum's format
STALE_TEMP_S = 3600  # a temporary file or directory this old was left by a killed writer
_TEMP_TAIL = r"[a-z0-9_]{8}"  # the random part tempfile appends to a prefix
CACHE_VERSION = 4  # bump when training code, or a schema default, changes what a config produces
# (4: train.optimizer's default became lbfgs; a version-3 key without it meant adam)


class ParamsError(ValueError):
    """A params file is truncated, corrupt, or fails its checksum; the message names the file."""


def _to_state(node: Any) -> Any:
    """A layer's params as msgpack-able dicts: a tuple (a residual branch) as {"0": ..., ...};
    a flat dict of arrays (every layer but a residual) is as it always was written."""
    if isinstance(node, dict):
        return {k: _to_state(v) for k, v in node.items()}
    if isinstance(node, (tuple, list)):
        return {str(j): _to_state(v) for j, v in enumerate(node)}
    return np.asarray(node)


def params_to_bytes(params: Params) -> bytes:
    return flax.serialization.msgpack_serialize({str(i): _to_state(p) for i, p in enumerate(params)})


def _restore(want: Any, got: Any, where: str, name: str) -> Any:
    """`got` (msgpack dicts) in the structure of `want` (abstract params), every shape checked."""
    if isinstance(want, (dict, tuple, list)):
        keys = list(want) if isinstance(want, dict) else [str(j) for j in range(len(want))]
        if not isinstance(got, dict):
            raise ValueError(f"{name}: {where} is not a dict of parameters")
        values = [_restore(want[k] if isinstance(want, dict) else want[int(k)], got.get(k),
                           f"{where} {k!r}", name) for k in keys]
        return dict(zip(keys, values)) if isinstance(want, dict) else tuple(values)
    if got is None or tuple(got.shape) != want.shape:
        raise ValueError(f"{name}: {where} has shape {None if got is None else got.shape}, "
                         f"model wants {want.shape}")
    return jax.numpy.asarray(got)


def params_from_bytes(model: Model, raw: bytes, name: str = "params") -> Params:
    """Restores params for `model`, checking every shape against the model's own."""
    try:
        state = flax.serialization.msgpack_restore(raw)
    except Exception as e:  # msgpack and flax raise several types on truncated or foreign bytes
        raise ParamsError(f"{name}: cannot be decoded as params ({e}); "
                          "the file is truncated or corrupt") from e
    if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
        raise ParamsError(f"{name}: does not hold params (layer dicts); the file is corrupt")
    expected = jax.eval_shape(model.init, jax.random.key(0))
    if set(state) != {str(i) for i in range(len(expected))}:
        raise ValueError(f"{name}: holds {len(state)} layers, the model has {len(expected)}")
    return tuple(_restore(want, state[str(i)], f"layer {i}", name) for i, want in enumerate(expected))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_new(path: Path, data: bytes) -> None:
    """Creates `path` (never an existing file or a symlink) holding `data`, with the umask's mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def named_os_error(e: OSError, path: Path, doing: str = "write") -> OSError:
    """`e` as one line naming `path` ("[Errno 28] could not write <path>: No space left on
    device"), of the same class (PermissionError, ...)."""
    message = f"could not {doing} {path}: {e.strerror or e}"
    return OSError(e.errno, message) if e.errno is not None else OSError(message)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes via a temporary file and a rename: readers see the old file or the new, never half.
    An OSError names `path` (`named_os_error`); no temporary file is left behind."""
    path, tmp = Path(path), None
    data = data.encode() if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent, re.escape(f".{path.name}.") + _TEMP_TAIL)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        _group_readable(Path(tmp))
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise named_os_error(e, path) from e


def remove_stale_temps(directory: Path, pattern: str) -> None:
    """Removes what a killed writer left in `directory`: files and directories whose name matches
    `pattern` (a regex) and that are older than STALE_TEMP_S. Symlinks and errors are let be."""
    cutoff = time.time() - STALE_TEMP_S
    try:
        items = list(os.scandir(directory))
    except OSError:
        return
    for item in items:
        try:
            if (not re.fullmatch(pattern, item.name) or item.is_symlink()
                    or item.stat(follow_symlinks=False).st_mtime > cutoff):
                continue
            if item.is_dir(follow_symlinks=False):
                shutil.rmtree(item.path)
            else:
                os.unlink(item.path)
            log.info("removed %s, left by an interrupted write", item.path)
        except OSError:
            pass  # gone already (another process swept it), or not ours to remove


def checksum_path(path: str | os.PathLike) -> Path:
    """The sha256 sidecar of a file: `<path>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path: str | os.PathLike, raw: bytes | None = None) -> Path:
    """Writes the sidecar of `path` (sha256sum's format; `raw`: the file's bytes, if at hand) and
    returns it."""
    path = Path(path)
    raw = path.read_bytes() if raw is None else raw
    sidecar = checksum_path(path)
    write_atomic(sidecar, f"{hashlib.sha256(raw).hexdigest()}  {path.name}\n")
    return sidecar


def read_verified(path: str | os.PathLike, required: bool = False) -> bytes:
    """The bytes of `path`, checked against its sidecar when it has one (`required`: it must).
    Raises ParamsError naming the file if they differ (truncated or corrupt)."""
    path = Path(path)
    raw, sidecar = path.read_bytes(), checksum_path(path)
    if not sidecar.exists():
        if required:
            raise ParamsError(f"{path}: has no checksum {sidecar.name} to be verified against")
        return raw
    want = (sidecar.read_text().split() or [""])[0].lower()
    if hashlib.sha256(raw).hexdigest() != want:
        raise ParamsError(f"{path}: sha256 of its {len(raw)} bytes does not match {sidecar.name}; "
                          "the file is truncated or corrupt")
    return raw


def save_params(path: str | os.PathLike, params: Params) -> None:
    """Writes params and their sidecar (the old sidecar removed first: never a stale one)."""
    path, raw = Path(path), params_to_bytes(params)
    try:
        checksum_path(path).unlink(missing_ok=True)
    except OSError as e:
        raise named_os_error(e, checksum_path(path), "remove") from e
    write_atomic(path, raw)
    write_checksum(path, raw)


def load_params(path: str | os.PathLike, model: Model, require_checksum: bool = False) -> Params:
    """Params for `model` from `path`, verified against its sidecar (`read_verified`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no parameters here; was the run interrupted before training ended?")
    return params_from_bytes(model, read_verified(path, require_checksum), str(path))


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


_FROZEN_FINGERPRINTS: dict[tuple[int, int], tuple[weakref.ref, weakref.ref, str]] = {}


def data_fingerprint(data) -> str:
    """sha256 (16 hex digits) of a data set's bytes: images and labels as trained on. Read-only
    numpy arrays (`data.load_splits`' splits, shared within the process) are hashed once per
    process: every model record fingerprints the same splits, hundreds of MB each time."""
    x, y = data.x, data.y
    frozen = all(isinstance(a, np.ndarray) and not a.flags.writeable for a in (x, y))
    if frozen and (known := _FROZEN_FINGERPRINTS.get((id(x), id(y)))) and known[0]() is x and known[1]() is y:
        return known[2]
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    fingerprint = digest.hexdigest()[:16]
    if frozen:
        _FROZEN_FINGERPRINTS[(id(x), id(y))] = (weakref.ref(x), weakref.ref(y), fingerprint)
    return fingerprint


def params_fingerprint(params: Params) -> str:
    """sha256 (16 hex digits) of a model's parameters as saved: which trained model a measurement
    was made on."""
    return hashlib.sha256(params_to_bytes(params)).hexdigest()[:16]


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
    if cfg.model.get("_target_"):  # a user's module: its source file too, so an edit retrains
        identity["model_source"] = module_source_sha256(cfg.model["_target_"])
    if getattr(cfg.data, "validation", 0):  # only when set: older cache keys stay valid
        identity["data"]["validation"] = cfg.data.validation
    if data is not None:
        identity["data"]["fingerprint"] = data_fingerprint(data)
    return identity


def package_source_sha256(package: Any) -> str:
    """sha256 of a package's own *.py files (names and bytes, in name order): what its code
    computes, so a record made by other code is not served (a module edited since)."""
    digest = hashlib.sha256()
    for path in sorted(Path(package.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def module_source_sha256(target: str) -> str:
    """sha256 (16 hex digits) of the source file defining `model._target_`'s class."""
    source = inspect.getsourcefile(resolve_target(target))
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]


def _key(identity: dict) -> str:
    return hashlib.sha256(_canonical(identity).encode()).hexdigest()[:16]


def _canonical(identity: dict) -> str:
    return json.dumps(identity, sort_keys=True)


def cache_key(cfg: Any, data=None) -> str:
    return _key(model_identity(cfg, data))


def config_key(cfg: Any) -> str:
    """cache_key of the model run config `cfg` trains, on the training images its data config
    names (read, or served from the process's copy): known without training it."""
    from adv_jax.data import load_splits

    return cache_key(cfg, load_splits(cfg.data, cfg.model.classes)["train"])


def _entry_path(cfg: Any, key: str) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir)) / "models" / f"{cfg.model.name}-{key}"


def cache_entry(cfg: Any, data=None) -> Path:
    return _entry_path(cfg, cache_key(cfg, data))


def _set_aside(entry: Path, why: str) -> None:
    """Moves a bad cache entry out of the way (kept for inspection), so it is trained anew. A
    symlinked entry: the link is moved, never what it points to."""
    stamp, n = time.strftime("%Y%m%d-%H%M%S"), 0
    aside = entry.with_name(f"{entry.name}.corrupt-{stamp}")
    while os.path.lexists(aside):
        n += 1
        aside = entry.with_name(f"{entry.name}.corrupt-{stamp}-{n}")
    log.warning("cache entry %s %s; moved to %s, training anew", entry, why, aside.name)
    try:
        os.rename(entry, aside)
    except OSError as e:
        log.warning("could not move %s aside: %s", entry, e)


class _Refused(Exception):
    """Why a cache entry cannot be trusted."""


def _check_identity(entry: Path, want: dict) -> str:
    """The params sha256 that `entry` records, once its identity is that of `want` (and no
    symlink is involved); raises _Refused otherwise."""
    if entry.is_symlink():
        raise _Refused(f"is a symlink (to {os.readlink(entry)}); the cache never writes one")
    if links := sorted(p.name for p in entry.iterdir() if p.is_symlink()):
        raise _Refused(f"holds symlinks ({', '.join(links)}); the cache never writes one")
    if not (entry / IDENTITY_FILE).exists():
        raise _Refused(f"has no {IDENTITY_FILE} (written by an older version), so it is unverifiable")
    recorded = json.loads((entry / IDENTITY_FILE).read_text())
    if not isinstance(recorded, dict):
        raise _Refused(f"has an {IDENTITY_FILE} that holds no identity")
    sha = recorded.pop("params_sha256", None)
    if _key(recorded) != _key(want) or _canonical(recorded) != _canonical(want):
        differ = sorted(k for k in {*recorded, *want} if recorded.get(k) != want.get(k))
        raise _Refused(f"records another model's identity (key {_key(recorded)}, not {_key(want)}; "
                       f"differing in {', '.join(differ)}): a renamed or copied entry")
    return sha


def read_cache(cfg: Any, model: Model, data) -> tuple[Params, dict] | None:
    """The cached (params, train metrics) of `cfg` trained on `data`, or None. An entry that is
    not verifiably this model's (`_check_identity`), fails its stored sha256, or cannot be read is
    set aside (None)."""
    want = model_identity(cfg, data)
    entry = _entry_path(cfg, _key(want))
    if not os.path.lexists(entry):
        return None
    try:
        sha = _check_identity(entry, want)
        raw = (entry / PARAMS_FILE).read_bytes()
        if sha != hashlib.sha256(raw).hexdigest():
            raise _Refused("fails its checksum")
        return params_from_bytes(model, raw, str(entry / PARAMS_FILE)), json.loads(
            (entry / "train_metrics.json").read_text())
    except _Refused as e:
        _set_aside(entry, str(e))
    except (OSError, ValueError) as e:
        _set_aside(entry, f"cannot be read ({e})")
    return None


def _group_readable(path: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600; give the umask's permissions instead, so a cache shared
    by a group stays readable."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_cache(cfg: Any, params: Params, metrics: dict, data) -> Path | None:
    """Stores a trained model with its identity and checksum; returns the entry, or None (with a
    one-line warning naming the path and the reason) when the cache cannot be written: the run
    goes on without it. A concurrent writer of the same entry wins without harm. Temporaries a
    killed writer left (`remove_stale_temps`) are removed first."""
    identity = model_identity(cfg, data)
    entry = _entry_path(cfg, _key(identity))
    raw = params_to_bytes(params)
    identity["params_sha256"] = hashlib.sha256(raw).hexdigest()
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(entry.parent, r"\..+-[0-9a-f]{16}\." + _TEMP_TAIL)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}."))
        _group_readable(tmp)
        _write_new(tmp / PARAMS_FILE, raw)
        _write_new(tmp / "train_metrics.json", json.dumps(metrics, indent=1).encode())
        _write_new(tmp / IDENTITY_FILE, json.dumps(identity, indent=1, sort_keys=True).encode())
        os.rename(tmp, entry)
    except OSError as e:
        if not (entry / PARAMS_FILE).exists():
            where = f" ({e.filename})" if e.filename else ""
            log.warning("could not write the model cache entry %s: %s%s; the run goes on without "
                        "caching it", entry, e.strerror or e, where)
            return None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry
