"""The single-run job (adv_jax.jobs.single): split errors, run directories, caching and cache keys,
checkpoints, wandb offline, the sweep script and attack runs."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adv_jax
from adv_jax import checkpoint
from adv_jax.config import compose
from adv_jax.data import Dataset, load_splits
from adv_jax.model_set import clean_errors
from adv_jax.models import build_model
from adv_jax.run_files import CONFIG_FILE, LOG_FILE, METRICS_FILE, METRICS_LOG_FILE, PARAMS_FILE
from adv_jax.train import TrainingDiverged, evaluate


@pytest.mark.parametrize("limit", [None, 500])
def test_full_and_train_errors_reuse_the_halves(mnist_dir, limit):
    cfg = compose([f"data.mnist_dir={mnist_dir}", "data=p2", f"data.train_limit={limit or 'null'}",
                   "model=fc10"])
    splits = load_splits(cfg.data)
    model = build_model(cfg.model)
    params = model.init(jax.random.key(0))  # untrained: errors far from 0, any miscount shows
    errors = clean_errors(model, params, splits, cfg.data)
    direct = evaluate(model, params, {s: splits[s] for s in ("full", "train")})
    assert errors["full"] == pytest.approx(direct["full"], abs=1e-6)
    assert errors["train"] == pytest.approx(direct["train"], abs=1e-6)
    assert (errors["train"] == errors["p2"]) == (limit is None)


def test_clean_errors_are_remembered_for_the_same_model_params_and_images_only(mnist_dir, tmp_path, monkeypatch):
    """Measured once per (model, params, evaluated images): the second call evaluates nothing;
    another model with the same params, other params, other images or an unreadable entry are
    measured again; without a cache directory nothing is written."""
    import dataclasses

    import adv_jax.model_set as model_set

    cfg = compose([f"data.mnist_dir={mnist_dir}", "data.train_limit=500", "model=fc10"])
    splits = {name: Dataset(d.x[:1000], d.y[:1000]) for name, d in load_splits(cfg.data).items()}
    model = build_model(cfg.model)
    params = model.init(jax.random.key(0))
    calls = []
    monkeypatch.setattr(model_set, "evaluate", lambda *a: calls.append(1) or evaluate(*a))
    first = clean_errors(model, params, splits, cfg.data, str(tmp_path))
    per_measure = len(calls)
    assert clean_errors(model, params, splits, cfg.data, str(tmp_path)) == first and len(calls) == per_measure
    relu = dataclasses.replace(model, layers=tuple(dataclasses.replace(layer, activation="relu") for layer in model.layers))
    clean_errors(relu, params, splits, cfg.data, str(tmp_path))
    assert len(calls) == 2 * per_measure
    other = model.init(jax.random.key(1))
    assert clean_errors(model, other, splits, cfg.data, str(tmp_path)) != first and len(calls) == 3 * per_measure
    flipped = {**splits, "test": Dataset(splits["test"].x, (splits["test"].y + 1) % 10)}
    assert clean_errors(model, params, flipped, cfg.data, str(tmp_path))["test"] != first["test"]
    assert len(calls) == 4 * per_measure
    for entry in (tmp_path / "errors").iterdir():
        entry.write_text("{")
    assert clean_errors(model, params, splits, cfg.data, str(tmp_path)) == first and len(calls) == 5 * per_measure
    cache_off = cfg.copy()
    cache_off.train.cache = False
    assert model_set.errors_cache(cache_off) is None and model_set.errors_cache(cfg) == cfg.cache_dir


def test_run_writes_a_self_describing_directory_and_loads_back(tmp_path, private_overrides):
    cfg = compose(["model=fc100"] + private_overrides)
    metrics = adv_jax.run(cfg, tmp_path / "run")
    for name in (CONFIG_FILE, METRICS_FILE, METRICS_LOG_FILE, PARAMS_FILE, LOG_FILE):
        assert (tmp_path / "run" / name).exists(), name
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert {"error/p1", "error/p2", "error/full", "error/test", "error/train",
            "train/seconds", "model/num_params"} <= set(saved)
    assert metrics["train/cached"] is False and metrics["data/train_size"] == 2000

    run = adv_jax.load_run(tmp_path / "run")
    test = load_splits(run.config.data)["test"]
    predictions = jnp.argmax(run.logits_fn(test.x), -1)
    assert float(jnp.mean(predictions != test.y)) == pytest.approx(metrics["error/test"], abs=1e-6)


def test_second_run_hits_the_cache_with_identical_params(tmp_path, private_overrides):
    tiny_overrides = private_overrides
    cfg = compose(["model=fc10"] + tiny_overrides)
    first = adv_jax.run(cfg, tmp_path / "a")
    second = adv_jax.run(cfg, tmp_path / "b")
    assert second["train/cached"] is True and second["error/test"] == first["error/test"]
    a, b = (adv_jax.load_run(tmp_path / d) for d in "ab")
    assert checkpoint.params_to_bytes(a.params) == checkpoint.params_to_bytes(b.params)
    again = adv_jax.run(cfg, tmp_path / "b")  # a finished run directory is not redone
    assert again == second and "metrics.json" in {p.name for p in (tmp_path / "b").iterdir()}
    uncached = adv_jax.run(compose(["model=fc10", "train.cache=false"] + tiny_overrides), tmp_path / "c")
    assert uncached["train/cached"] is False
    assert checkpoint.cache_key(cfg) != checkpoint.cache_key(compose(["model=fc10", "seed=1"] + tiny_overrides))
    assert checkpoint.cache_key(cfg) == checkpoint.cache_key(compose(["model=fc10", "train.cache=false"] + tiny_overrides))


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = adv_jax.build_model(compose(["model=conv"]).model)
    params = model.init(jax.random.key(3))
    checkpoint.save_params(tmp_path / "p.msgpack", params)
    restored = checkpoint.load_params(tmp_path / "p.msgpack", model)
    x = jax.random.uniform(jax.random.key(4), (5, 28, 28, 1))
    np.testing.assert_array_equal(model.apply(params, x), model.apply(restored, x))
    with pytest.raises(ValueError, match="holds 5 layers, the model has 3"):
        checkpoint.load_params(tmp_path / "p.msgpack", adv_jax.build_model(compose(["model=fc100"]).model))
    fc100 = adv_jax.build_model(compose(["model=fc100"]).model)
    checkpoint.save_params(tmp_path / "fc100.msgpack", fc100.init(jax.random.key(0)))
    with pytest.raises(ValueError, match=r"layer 0 '[wb]' has shape \((784, )?100,?\)"):
        checkpoint.load_params(tmp_path / "fc100.msgpack", adv_jax.build_model(compose(["model=fc200"]).model))


def test_unknown_attack_is_rejected_before_training(tmp_path, tiny_overrides):
    cfg = compose(tiny_overrides)
    cfg.attack.name = "magic"
    with pytest.raises(ValueError, match=r"unknown attack .magic.; choose one of.*lbfgs"):
        adv_jax.run(cfg, tmp_path / "run")


def test_wandb_offline_run_closes_even_when_the_job_fails(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["wandb.mode=offline"]
    adv_jax.run(compose(["model=fc10"] + overrides), tmp_path / "ok")
    assert list((tmp_path / "ok" / "wandb").glob("offline-run-*"))
    with pytest.raises(TrainingDiverged):
        adv_jax.run(compose(["model=fc10", "train=adam", "train.learning_rate=1e30", "train.cache=false"]
                            + overrides), tmp_path / "bad")
    import wandb
    assert wandb.run is None


def test_sweep_script_single_run(tmp_path, tiny_overrides):
    """The script's single run (multiruns: tests/test_wandb.py, test_experiment.py, test_launchers.py)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "sweep.py")
    single = subprocess.run(
        [sys.executable, script, "model=fc10", "attack=none", f"hydra.run.dir={tmp_path / 'single'}"]
        + tiny_overrides + ["cpu_devices=auto"], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    assert adv_jax.load_run(tmp_path / "single").metrics["error/test"] < 0.2
    if "xla_force_host_platform_device_count" not in env.get("XLA_FLAGS", "") and "JAX_NUM_CPU_DEVICES" not in env:
        cores = len(os.sched_getaffinity(0))  # cpu_devices=auto: one JAX CPU device per core
        assert f"JAX CPU devices: {cores} (cpu_devices=auto)" in (tmp_path / "single" / "run.log").read_text()


def test_attack_run_writes_adversarials_and_bounds(tmp_path, tiny_overrides):
    from adv_jax.attacks.generate import Adversarials

    cfg = compose(["model=fc10", "attack=lbfgs", "attack.num_examples=40"] + tiny_overrides)
    metrics = adv_jax.run(cfg, tmp_path / "run")
    adv = Adversarials.load(tmp_path / "run" / "adversarials.npz")
    assert adv.x.shape == adv.x_adv.shape == (40, 28, 28, 1)
    assert adv.x_adv.min() >= 0.0 and adv.x_adv.max() <= 1.0
    assert (adv.target != adv.y).all() and (adv.index == np.arange(40)).all()
    assert metrics["attack/success_rate"] == 1.0 and adv.success.all()
    assert 0.0 < metrics["attack/mean_distortion"] < 0.2
    assert (tmp_path / "run" / "adversarials.png").exists()
    # The product of layer norms bounds every measured local slope from above.
    assert metrics["lipschitz/pair_ratio_lower_bound"] <= metrics["lipschitz/upper_bound"] * (1 + 1e-5)
    assert metrics["lipschitz/jacobian_lower_bound"] <= metrics["lipschitz/upper_bound"] * (1 + 1e-5)
    table = json.loads((tmp_path / "run" / "lipschitz.json").read_text())["layers"]
    assert [row["kind"] for row in table] == ["dense"]


def test_unknown_attack_parameter_is_rejected(tmp_path, tiny_overrides):
    cfg = compose(["attack=lbfgs", "+attack.params.c_start=3"] + tiny_overrides)
    with pytest.raises(ValueError, match="bad attack.params for 'lbfgs'.*c_start"):
        adv_jax.run(cfg, tmp_path / "run")


def test_cache_key_ignores_fields_left_at_their_defaults(tiny_overrides):
    from adv_jax.checkpoint import model_identity

    identity = model_identity(compose(["model=fc100"] + tiny_overrides))
    assert not {"lipschitz_penalty", "optimizer"} & set(identity["train"]) and "autoencoder" not in identity["model"]
    adam = model_identity(compose(["model=fc100", "train=adam"] + tiny_overrides))
    assert adam["train"]["optimizer"] == "adam"  # differs from the schema's default (lbfgs)
    penalized = model_identity(compose(["model=fc100", "train.lipschitz_penalty=0.1"] + tiny_overrides))
    assert penalized["train"]["lipschitz_penalty"] == 0.1


def test_an_autoencoder_is_pretrained_once_for_every_way_of_training_its_head(private_overrides):
    """The pretrained autoencoder has its own cache entry: a model that differs only in its head's
    decay or its classifier training reuses it; another autoencoder objective pretrains anew."""
    from adv_jax.trained import train_or_load

    ae = ["model=ae400", "model.hidden=[32]", "model.autoencoder.lbfgs_steps=5", "train.lbfgs_steps=10",
          *private_overrides]
    cfg = compose(ae)
    splits = load_splits(cfg.data)
    _, first, m1 = train_or_load(cfg, splits)
    _, other_head, m2 = train_or_load(compose([*ae, "model.weight_decay=1e-2", "train.lbfgs_steps=12"]), splits)
    _, other_ae, m3 = train_or_load(compose([*ae, "model.autoencoder.sparsity_weight=1.0"]), splits)
    assert [m["train/autoencoder_cached"] for m in (m1, m2, m3)] == [False, True, False]
    np.testing.assert_array_equal(first[0]["w"], other_head[0]["w"])
    assert not np.allclose(first[1]["w"], other_head[1]["w"])  # the head trained otherwise
    assert not np.allclose(first[0]["w"], other_ae[0]["w"])
    entries = sorted(p.name.rsplit("-", 1)[0] for p in (checkpoint.cache_entry(cfg).parent).iterdir())
    assert entries == ["ae400"] * 3 + ["ae400-autoencoder"] * 2
