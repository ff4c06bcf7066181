"""Vmapped ensembles: K members trained as one program end where one-by-one training ends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import on_fake_cpu_devices
from omegaconf import OmegaConf

from adv_jax import ensemble
from adv_jax.config import as_config, compose
from adv_jax.data import load_splits
from adv_jax.models import build_model
from adv_jax.train import TrainingDiverged, train_model
from adv_jax.trained import group_key, train_or_load, train_or_load_all

# Reassociation only: XLA fuses the batched program differently, so the last bits differ. After
# 2 Adam epochs (16 steps) the largest parameter difference measured 7e-7 of the largest weight.
RELATIVE_TOLERANCE = 1e-5


def _relative_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_ensemble_of_seeds_splits_and_decays_matches_one_by_one_and_fills_the_cache(tmp_path, mnist_dir):
    base = [f"data.mnist_dir={mnist_dir}", "data.train_limit=1000", "model=fc100", "train=adam",
            "train.epochs=2", f"cache_dir={tmp_path}"]
    members = [(0, "p1", "[1e-5,1e-5,1e-6]"), (1, "p2", "1e-3"), (2, "p1", "[0.1,0.0,0.01]")]
    cfgs = [as_config(compose(base + [f"seed={s}", f"data={split}", f"model.weight_decay={wd}"]))
            for s, split, wd in members]
    together = train_or_load_all(cfgs)
    assert len(list((tmp_path / "models").iterdir())) == 3  # one entry per member, its own key
    splits = {split: load_splits(cfg.data) for cfg, (_, split, _) in zip(cfgs, members)}
    for cfg, (_, handed, _) in zip(cfgs, together):
        model, params, metrics = train_or_load(cfg, splits[cfg.data.split])
        assert metrics["train/cached"] and metrics["train/ensemble_size"] == 3
        assert _relative_difference(handed, params) == 0.0  # handed over directly = what was cached
        alone, alone_metrics = train_model(model, cfg.model, cfg.train, splits[cfg.data.split]["train"],
                                           jax.random.key(cfg.seed))
        assert _relative_difference(params, alone) < RELATIVE_TOLERANCE
        assert metrics["train/final_loss"] == pytest.approx(alone_metrics["train/final_loss"], rel=1e-5)
        assert metrics["train/steps"] == alone_metrics["train/steps"]
    assert all(m["train/cached"] for _, _, m in train_or_load_all(cfgs))  # all cached now


def test_any_vmap_size_trains_the_same_members(mnist_dir):
    """Members batched per step (all, groups of 2 with a remainder, one at a time) change only the
    floating-point association, not what each member learns."""
    cfg = compose([f"data.mnist_dir={mnist_dir}", "data.train_limit=500", "model=fc100",
                   "model.hidden=[16,16]", "train=adam", "train.epochs=1"])
    data = load_splits(cfg.data)["train"]
    models = [build_model(OmegaConf.merge(cfg.model, {"weight_decay": lam})) for lam in (1e-5, 1e-3, 0.1)]
    keys = [jax.random.key(s) for s in range(3)]
    runs = {size: ensemble.train_models(models, cfg.train, [data] * 3, keys, vmap_size=size)
            for size in (1, 2, 3)}
    assert ensemble.default_vmap_size(3) == (1 if jax.default_backend() == "cpu" else 3)
    for size in (2, 3):
        for (params, metrics), (reference, reference_metrics) in zip(runs[size], runs[1]):
            assert _relative_difference(params, reference) < RELATIVE_TOLERANCE
            assert metrics["train/final_loss"] == pytest.approx(reference_metrics["train/final_loss"], rel=1e-5)


def test_members_start_from_the_bits_train_model_draws():
    model = ensemble.architecture(build_model(compose(["model=fc100"]).model))
    keys = jnp.stack([jax.random.key(s) for s in (0, 1, 7)])
    params, fit_keys = ensemble.init_members(model, keys)
    for k, key in enumerate(keys):
        init_key, _, fit_key = jax.random.split(key, 3)
        for member, alone in zip(jax.tree.leaves(params), jax.tree.leaves(model.init(init_key))):
            np.testing.assert_array_equal(member[k], alone)
        assert jnp.array_equal(jax.random.key_data(fit_keys[k]), jax.random.key_data(fit_key))


def test_lbfgs_ensemble_matches_one_by_one_on_a_convex_model(mnist_dir):
    cfg = compose([f"data.mnist_dir={mnist_dir}", "data.train_limit=1000", "model=fc10", "train=lbfgs",
                   "train.lbfgs_steps=40", "train.lbfgs_tolerance=1e-2"])
    data = load_splits(cfg.data)["train"]
    models = [build_model(OmegaConf.merge(cfg.model, {"weight_decay": lam})) for lam in (1e-4, 1.0)]
    trained = ensemble.train_models(models, cfg.train, [data, data], [jax.random.key(0), jax.random.key(1)])
    for k, (model, (params, metrics)) in enumerate(zip(models, trained)):
        alone, alone_metrics = train_model(model, cfg.model, cfg.train, data, jax.random.key(k))
        # Each member stops on its own: the strongly decayed one converges in fewer iterations.
        assert metrics["train/steps"] == alone_metrics["train/steps"]
        assert _relative_difference(params, alone) < 1e-4
    assert trained[1][1]["train/steps"] < trained[0][1]["train/steps"]


def test_members_must_share_architecture_and_data_size(mnist_dir):
    cfg = compose([f"data.mnist_dir={mnist_dir}", "data.train_limit=300", "model=fc100", "train=adam"])
    data = load_splits(cfg.data)["train"]
    narrow = build_model(OmegaConf.merge(cfg.model, {"hidden": [50, 50]}))
    with pytest.raises(ValueError, match="another architecture"):
        ensemble.train_models([build_model(cfg.model), narrow], cfg.train, [data, data],
                              [jax.random.key(0)] * 2)
    with pytest.raises(ValueError, match="one size"):
        ensemble.train_models([narrow, narrow], cfg.train, [data, data.__class__(data.x[:100], data.y[:100])],
                              [jax.random.key(0)] * 2)


def test_a_diverging_member_is_named(mnist_dir):
    cfg = compose([f"data.mnist_dir={mnist_dir}", "data.train_limit=300", "model=fc10", "train=adam",
                   "train.epochs=1"])
    data = load_splits(cfg.data)["train"]
    bad = data.__class__(np.where(np.arange(len(data))[:, None, None, None] == 5, np.nan, data.x), data.y)
    model = build_model(cfg.model)
    with pytest.raises(TrainingDiverged, match="ensemble member 1: .*epoch 0"):
        ensemble.train_models([model, model], cfg.train, [data, bad], [jax.random.key(0)] * 2)


def test_adversarial_pools_and_dropout_are_never_grouped():
    """Pools and dropout (their refreshes are not vmapped) and L-BFGS (vmapped, slower than one by
    one on CPU) are never grouped into an ensemble by trained.train_or_load_all."""
    plain = compose(["model=fc10", "train=adam"])
    assert group_key(plain) is not None
    for override in ("train.dropout.hidden=0.2", "train.adversarial.layers=[0]", "train=lbfgs"):
        assert group_key(compose(["model=fc10", "train=adam", override])) is None


SPLIT_JOB = r'''
import jax, numpy as np
from omegaconf import OmegaConf
from adv_jax import devices, ensemble
from adv_jax.config import compose
from adv_jax.data import load_splits
from adv_jax.models import build_model


def train(overrides, decays, splits):
    cfg = compose(["data.train_limit=500"] + overrides)
    data = {s: load_splits(compose([f"data={s}", "data.train_limit=500"]).data)["train"] for s in set(splits)}
    models = [build_model(OmegaConf.merge(cfg.model, {"weight_decay": lam})) for lam in decays]
    trained = ensemble.train_models(models, cfg.train, [data[s] for s in splits],
                                    [jax.random.key(k) for k in range(len(models))])
    return [np.concatenate([np.ravel(a) for a in jax.tree.leaves(p)]) for p, _ in trained], \
        [m["train/steps"] for _, m in trained]


def job():
    # 5 members on 4 devices: 3 devices hold 2 each, the sixth a padding copy.
    adam, _ = train(["model=fc10", "train=adam", "train.epochs=1"],
                    [1e-5, 1e-3, 0.1, 1e-5, 1e-2], ["p1", "p2", "p1", "p1", "p2"])
    lbfgs, steps = train(["model=fc10", "train=lbfgs", "train.lbfgs_steps=30", "train.lbfgs_tolerance=1e-2"],
                         [1e-4, 1.0, 1e-2, 1e-3, 1e-1], ["p1", "p2", "p1", "p2", "p2"])
    return dict(adam=np.stack(adam), lbfgs=np.stack(lbfgs), lbfgs_steps=np.array(steps),
                mesh=np.array([devices.member_mesh(k).size for k in (1, 3, 4, 5, 9)]),
                devices=jax.device_count())
'''


def test_members_split_over_four_devices_train_as_on_one(tmp_path, mnist_dir):
    split = on_fake_cpu_devices(SPLIT_JOB, tmp_path)
    namespace: dict = {}
    exec(SPLIT_JOB, namespace)
    here = namespace["job"]()
    assert split["devices"] == 4 and list(split["mesh"]) == [1, 3, 4, 3, 3]
    assert here["devices"] == jax.device_count()
    # The bounds of the one-by-one comparisons above: L-BFGS's line search amplifies reassociation.
    for name, tolerance in (("adam", RELATIVE_TOLERANCE), ("lbfgs", 1e-4)):
        scale = np.abs(here[name]).max(1)
        assert (np.abs(split[name] - here[name]).max(1) / scale < tolerance).all(), name
    np.testing.assert_array_equal(split["lbfgs_steps"], here["lbfgs_steps"])
    assert len(set(here["lbfgs_steps"])) > 1  # members stopped on their own
