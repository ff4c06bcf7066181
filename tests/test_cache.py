"""The model cache verifies each entry's identity (adv_jax/checkpoint.py): a symlinked, copied or
renamed entry, or one without a recorded identity, is named, moved aside and trained anew;
temporaries a killed writer left are removed; OS errors name the path; a params file's sha256
sidecar catches truncation and corruption, naming the file."""

import errno
import logging
import os
import shutil
import time

import jax
import numpy as np
import pytest

from adv_jax import checkpoint
from adv_jax.config import compose
from adv_jax.data import Dataset, load_splits
from adv_jax.models import build_model
from adv_jax.trained import train_or_load

FAST = ["model=fc10", "train=adam", "train.epochs=2", "data.train_limit=500"]
DATA = Dataset(np.zeros((4, 28, 28, 1), np.float32), np.arange(4, dtype=np.int32))


@pytest.fixture
def two(private_overrides):
    """Two configs of one architecture that differ only in the seed: (cfg0, cfg1)."""
    return tuple(compose(FAST + private_overrides + [f"seed={s}"]) for s in (0, 1))


def _cached(cfg, data=DATA):
    """Writes an entry for `cfg` holding its model's initial params; (entry, params)."""
    params = build_model(cfg.model).init(jax.random.key(cfg.seed))
    return checkpoint.write_cache(cfg, params, {"train/seconds": 1.0}, data), params


def _asides(entry):
    return [p for p in entry.parent.iterdir() if p.name.startswith(entry.name + ".corrupt-")]


def _symlinked_entry(own, other):
    shutil.rmtree(own)
    own.symlink_to(other, target_is_directory=True)


def _copied_entry(own, other):
    shutil.rmtree(own)
    shutil.copytree(other, own)


def _symlinked_file(own, other):
    """The entry's own params, moved out and linked back: identity and checksum still match."""
    moved = own.parent.parent / "elsewhere.msgpack"
    (own / checkpoint.PARAMS_FILE).rename(moved)
    (own / checkpoint.PARAMS_FILE).symlink_to(moved)


def _no_identity(own, other):
    (own / "identity.json").unlink()


@pytest.mark.parametrize("damage, why", [
    (_symlinked_entry, "is a symlink"), (_copied_entry, "records another model's identity"),
    (_symlinked_file, "holds symlinks (params.msgpack)"),
    (_no_identity, "has no identity.json (written by an older version), so it is unverifiable")])
def test_an_untrusted_entry_is_named_and_moved_aside(two, caplog, damage, why):
    other, _ = _cached(two[0])
    own, _ = _cached(two[1])
    damage(own, other)
    model = build_model(two[1].model)
    with caplog.at_level(logging.WARNING):
        assert checkpoint.read_cache(two[1], model, DATA) is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert str(own) in message and why in message and "moved to" in message and "\n" not in message
    assert not os.path.lexists(own) and len(_asides(own)) == 1
    assert checkpoint.read_cache(two[0], model, DATA) is not None  # what the link pointed to: kept
    assert _cached(two[1])[0] == own and checkpoint.read_cache(two[1], model, DATA) is not None


def test_a_copied_entry_says_which_identity_it_records(two, caplog):
    other, _ = _cached(two[0])
    own = checkpoint.cache_entry(two[1], DATA)
    shutil.copytree(other, own)
    with caplog.at_level(logging.WARNING):
        checkpoint.read_cache(two[1], build_model(two[1].model), DATA)
    keys = other.name.rsplit("-", 1)[1], own.name.rsplit("-", 1)[1]
    assert f"key {keys[0]}, not {keys[1]}; differing in seed)" in caplog.text


def test_train_or_load_retrains_instead_of_loading_a_copied_entry(two, caplog):
    """The end to end case: a copy of seed 0's entry under seed 1's key is never served."""
    splits = load_splits(two[1].data)
    other, first = _cached(two[0], splits["train"])
    shutil.copytree(other, checkpoint.cache_entry(two[1], splits["train"]))
    with caplog.at_level(logging.INFO):
        _, params, metrics = train_or_load(two[1], splits)
    assert metrics["train/cached"] is False and "from the cache" not in caplog.text
    assert not np.array_equal(params[0]["w"], first[0]["w"])
    _, again, metrics = train_or_load(two[1], splits)  # the entry is repaired
    assert metrics["train/cached"] is True and np.array_equal(again[0]["w"], params[0]["w"])


def _stale(path, is_dir=False):
    """A temporary a killed writer left: mode 0600/0700, two hours old."""
    if is_dir:
        path.mkdir(mode=0o700)
        (path / checkpoint.PARAMS_FILE).write_bytes(b"half")
    else:
        path.write_bytes(b"half")
        path.chmod(0o600)
    old = time.time() - 2 * 3600
    os.utime(path, (old, old))
    return path


def test_temporaries_of_a_killed_writer_are_removed_at_the_next_write(two, tmp_path):
    entry, _ = _cached(two[0])
    models = entry.parent
    stale = [_stale(models / f".{entry.name}.k1ll3d_x", True),
             _stale(models / ".fc100-0123456789abcdef.a_b_c_d1")]
    fresh = models / f".{entry.name}.wr1t1ng0"
    fresh.mkdir()  # a writer at work now
    kept = [fresh, _stale(models / ".notes.txt"), _stale(models / "fc10-old.corrupt-20240101-000000", True)]
    _cached(two[1])
    assert [p.exists() for p in stale] == [False, False] and all(p.exists() for p in kept)

    run = tmp_path / "run"
    run.mkdir()
    orphan, recent = _stale(run / ".params.msgpack.zz9_ab12"), run / ".params.msgpack.now12345"
    recent.write_bytes(b"in progress")
    checkpoint.save_params(run / checkpoint.PARAMS_FILE, _cached(two[0])[1])
    assert not orphan.exists() and recent.exists()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("call", ["write", "replace"])
def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch, call):
    target = tmp_path / "run" / "metrics.json"
    target.parent.mkdir()
    target.write_text("old")
    monkeypatch.setattr(os, call, _no_space)
    with pytest.raises(OSError) as e:
        checkpoint.write_atomic(target, "new")
    monkeypatch.undo()
    assert str(e.value) == f"[Errno 28] could not write {target}: No space left on device"
    assert e.value.errno == errno.ENOSPC
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"] and target.read_text() == "old"


def test_a_cache_that_cannot_be_written_warns_in_one_line_and_the_run_goes_on(two, monkeypatch, caplog):
    params = build_model(two[0].model).init(jax.random.key(0))
    monkeypatch.setattr(os, "write", _no_space)
    with caplog.at_level(logging.WARNING):
        assert checkpoint.write_cache(two[0], params, {}, DATA) is None
    monkeypatch.undo()
    entry = checkpoint.cache_entry(two[0], DATA)
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"could not write the model cache entry {entry}: No space left on device")
    assert "\n" not in message and list(entry.parent.iterdir()) == []


def test_a_truncated_params_file_without_sidecar_is_named(tmp_path):
    model = build_model(compose(["model=fc10"]).model)
    path = tmp_path / checkpoint.PARAMS_FILE
    checkpoint.save_params(path, model.init(jax.random.key(0)))
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)  # as in an older run directory
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{path}: cannot be decoded as params .*truncated or corrupt"):
        checkpoint.load_params(path, model)


def test_params_sidecar_names_a_truncated_or_corrupt_file(tmp_path):
    model = build_model(compose(["model=fc10"]).model)
    path = tmp_path / checkpoint.PARAMS_FILE
    checkpoint.save_params(path, model.init(jax.random.key(0)))
    raw = path.read_bytes()
    sidecar = checkpoint.checksum_path(path)
    assert sidecar == path.with_name("params.msgpack.sha256")
    assert sidecar.read_text().endswith(f"  {checkpoint.PARAMS_FILE}\n")  # sha256sum -c reads it
    checkpoint.load_params(path, model, require_checksum=True)
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(checkpoint.ParamsError, match=f"{path}: sha256 .* does not match .*truncated or corrupt"):
        checkpoint.load_params(path, model)
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(checkpoint.ParamsError, match=f"{path}: sha256"):
        checkpoint.load_params(path, model)
    sidecar.unlink()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(checkpoint.ParamsError, match=f"{path}: has no checksum"):
        checkpoint.load_params(path, model, require_checksum=True)
    assert checkpoint.write_checksum(path) == sidecar and checkpoint.read_verified(path) == raw[: len(raw) // 2]


def test_a_read_only_data_set_is_fingerprinted_once_and_a_writeable_one_every_time():
    x = np.random.default_rng(0).random((50, 28, 28, 1), np.float32)
    y = np.arange(50) % 10
    writeable = Dataset(x.copy(), y.copy())
    frozen = Dataset(x.copy(), y.copy())
    frozen.x.flags.writeable = frozen.y.flags.writeable = False
    first = checkpoint.data_fingerprint(frozen)
    assert checkpoint.data_fingerprint(frozen) == first == checkpoint.data_fingerprint(writeable)
    writeable.x[0, 0, 0, 0] += 1.0  # a writeable array can change: hashed again
    assert checkpoint.data_fingerprint(writeable) != first
    other = Dataset(frozen.x.copy(), frozen.y.copy())  # other arrays, the same bytes
    other.y[0] = (other.y[0] + 1) % 10
    other.x.flags.writeable = other.y.flags.writeable = False
    assert checkpoint.data_fingerprint(other) != first
