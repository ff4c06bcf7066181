"""Runs you can trust: every case of the reliability issue, on small real data. A cache that
cannot be written costs nothing; the cache keys on the training data and verifies each entry;
nonsense values fail at start-up; divergence is caught before caching; resume compares only the
keys that change results; a finished run directory is never overwritten; entries are
group-readable."""

import gzip
import json
import logging
import os
import time

import numpy as np
import pytest

import adv_jax
from adv_jax import checkpoint
from adv_jax.config import compose
from adv_jax.rundir import RunDirectoryInUse
from adv_jax.train import TrainingDiverged
from adv_jax.validate import ConfigError

FAST = ["model=fc10", "train=adam", "attack=none", "lipschitz.images=0"]


@pytest.fixture
def quick(tiny_overrides, tmp_path):
    """Overrides for a seconds-long FC10 run (debug=tiny's 2000 images, 3 epochs) with a cache of
    the test's own."""
    base = [o for o in tiny_overrides if not o.startswith("cache_dir=")]
    return FAST + base + [f"cache_dir={tmp_path / 'cache'}"]


def _entries(cache) -> list:
    models = cache / "models"
    return sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) if models.exists() else []


def test_unwritable_cache_warns_naming_the_path_and_the_run_completes(quick, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    overrides = [o for o in quick if not o.startswith("cache_dir=")] + [f"cache_dir={blocker / 'cache'}"]
    with caplog.at_level(logging.WARNING):
        metrics = adv_jax.run(compose(overrides), tmp_path / "run")
    assert metrics["error/test"] < 0.5 and (tmp_path / "run" / "params.msgpack").exists()
    assert any(str(blocker) in r.getMessage() and "cache" in r.getMessage() for r in caplog.records)


def _inverted_copy(mnist_dir, out):
    """MNIST with every pixel 255 - x, in the same layout, without SHA256SUMS."""
    out.mkdir()
    for path in mnist_dir.glob("*-ubyte.gz"):
        raw = gzip.decompress(path.read_bytes())
        if "images" in path.name:
            raw = raw[:16] + bytes(255 - np.frombuffer(raw[16:], np.uint8))
        (out / path.name).write_bytes(gzip.compress(raw, compresslevel=1))
    return out


def test_the_cache_keys_on_the_training_data_itself(quick, tmp_path, mnist_dir):
    first = adv_jax.run(compose(quick), tmp_path / "mnist")
    inverted = _inverted_copy(mnist_dir, tmp_path / "inverted")
    again = adv_jax.run(compose(quick + [f"data.mnist_dir={inverted}"]), tmp_path / "inverted_run")
    assert not first["train/cached"] and not again["train/cached"]
    assert again["error/train"] < 0.8  # trained on the inverted images (the MNIST model scores ~94%)
    assert len(_entries(tmp_path / "cache")) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupt_entry_is_named_set_aside_and_retrained(quick, tmp_path, caplog, damage):
    first = adv_jax.run(compose(quick), tmp_path / "a")
    (entry,) = _entries(tmp_path / "cache")
    params = tmp_path / "cache" / "models" / entry / "params.msgpack"
    raw = bytearray(params.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2: len(raw) // 2 + 8] = bytes(255 - b for b in raw[len(raw) // 2: len(raw) // 2 + 8])
    else:
        raw = raw[: len(raw) // 3]
    params.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        second = adv_jax.run(compose(quick), tmp_path / "b")
    assert not second["train/cached"] and second["error/test"] == first["error/test"]
    assert any(entry in r.getMessage() and "moved" in r.getMessage() for r in caplog.records)
    assert adv_jax.run(compose(quick), tmp_path / "c")["train/cached"]  # the entry is repaired
    assert any(".corrupt-" in p.name for p in (tmp_path / "cache" / "models").iterdir())


@pytest.mark.parametrize("override, key", [
    ("attack.num_examples=-5", "attack.num_examples"), ("attack.num_examples=0", "attack.num_examples"),
    ("data.train_limit=-1", "data.train_limit"), ("train.epochs=-3", "train.epochs"),
    ("train.learning_rate=-0.1", "train.learning_rate"), ("model.hidden=[0,100]", "model.hidden[0]"),
    ("train.batch_size=0", "train.batch_size"), ("model.classes=[3,11]", "model.classes"),
    ("attack.params.epsilon=-0.1", "attack.params.epsilon"), ("data.split=p3", "data.split"),
])
def test_nonsense_values_fail_at_start_up_naming_the_key(quick, tmp_path, override, key):
    overrides = quick + (["attack=fgsm"] if "attack.params" in override or "num_examples" in override else [])
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        adv_jax.run(compose(overrides + [override]), tmp_path / "run")
    assert time.perf_counter() - start < 5  # before any data is loaded or model trained
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_a_far_too_high_learning_rate_raises_and_is_never_cached(quick, tmp_path):
    with pytest.raises(TrainingDiverged, match="learning rate"):
        adv_jax.run(compose(quick + ["train.learning_rate=1e6"]), tmp_path / "run")
    assert _entries(tmp_path / "cache") == []


def test_resume_ignores_keys_that_do_not_change_results(quick, tmp_path, mnist_dir):
    run_dir = tmp_path / "run"
    first = adv_jax.run(compose(quick), run_dir)
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    again = adv_jax.run(compose(quick + [f"data.mnist_dir={mnist_dir}/", "wandb=disabled"]), run_dir)
    assert again == first and (run_dir / "metrics.json").stat().st_mtime_ns == stamp


def test_an_unreadable_metrics_file_is_named(quick, tmp_path):
    run_dir = tmp_path / "run"
    adv_jax.run(compose(quick), run_dir)
    (run_dir / "metrics.json").write_text('{"error/test": 0.1')
    with pytest.raises(ValueError, match="metrics.json: unreadable"):
        adv_jax.run(compose(quick), run_dir)


def test_a_redone_job_starts_from_clean_records(quick, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"kind": "log", "from": "the killed attempt"}\n')
    (run_dir / "wandb").mkdir()
    (run_dir / "wandb" / "offline-run-killed").mkdir()
    adv_jax.run(compose(quick), run_dir)
    assert "killed attempt" not in (run_dir / "metrics.jsonl").read_text()
    assert not (run_dir / "wandb").exists()  # wandb.mode=disabled: nothing of the old run is left


def test_a_finished_run_is_never_overwritten_by_another_config(quick, tmp_path):
    run_dir = tmp_path / "run"
    adv_jax.run(compose(quick + ["attack=fgsm", "attack.num_examples=20"]), run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(RunDirectoryInUse, match="attack.params.epsilon"):
        adv_jax.run(compose(quick + ["attack=fgsm", "attack.num_examples=20", "attack.params.epsilon=0.2"]),
                    run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_cache_entries_take_the_umask_permissions(quick, tmp_path):
    old = os.umask(0o002)
    try:
        adv_jax.run(compose(quick), tmp_path / "run")
    finally:
        os.umask(old)
    (entry,) = _entries(tmp_path / "cache")
    entry = tmp_path / "cache" / "models" / entry
    assert entry.stat().st_mode & 0o777 == 0o775
    assert all(p.stat().st_mode & 0o777 == 0o664 for p in entry.iterdir())
    assert json.loads((entry / "identity.json").read_text())["data"]["fingerprint"]
    assert checkpoint.CACHE_VERSION >= 3
