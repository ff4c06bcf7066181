"""Adversarial training (adv_jax.adversarial_training): dropout, refreshing the pools of
adversarial examples at layer inputs, training with them as a regime on train.fit, the choice of
regime, config checks and the experiment's models."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from omegaconf import OmegaConf

from adv_jax import adversarial_training as at
from adv_jax.attacks import is_adversarial, make_attack
from adv_jax.config import compose
from adv_jax.data import Dataset, load_splits
from adv_jax.model_set import model_config
from adv_jax.models import build_model, error_rate
from adv_jax import train as train_lib
from adv_jax.train import train_model
from adv_jax.trained import classifier_regime


@pytest.fixture(scope="module")
def small(mnist_dir):
    cfg = compose([f"data.mnist_dir={mnist_dir}", "data.train_limit=2000"])
    splits = load_splits(cfg.data)
    return splits["train"], Dataset(splits["test"].x[:1000], splits["test"].y[:1000])


@pytest.fixture(scope="module")
def trained(small):
    """FC100 after 4 plain Adam epochs on 2000 images (the model the pools attack)."""
    cfg = compose(["train=adam", "train.epochs=4", "train.learning_rate=1e-2"])
    model = build_model(cfg.model)
    params, _ = train_model(model, cfg.model, cfg.train, small[0], jax.random.key(0))
    return model, params


def _train_cfg(*overrides):
    return compose(["train=adam", *overrides]).train


def test_dropout_only_in_training(trained):
    model, params = trained
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(64, 28, 28, 1)), jnp.float32)
    key = jax.random.key(1)
    plain = model.apply(params, x)
    np.testing.assert_allclose(at.dropout_apply(model, params, x, key, 0.0, 0.0), plain, rtol=1e-6)
    a = at.dropout_apply(model, params, x, key, 0.2, 0.5)
    b = at.dropout_apply(model, params, x, jax.random.key(2), 0.2, 0.5)
    assert not np.allclose(a, b) and not np.allclose(a, plain)
    np.testing.assert_array_equal(a, at.dropout_apply(model, params, x, key, 0.2, 0.5))
    # Inverted dropout keeps each unit's expected input: averaged over many masks, the first
    # hidden layer's pre-activation converges to the deterministic one.
    first = lambda h: h.reshape(len(h), -1) @ params[0]["w"]  # noqa: E731
    keep = jax.vmap(lambda k: jax.random.bernoulli(k, 0.8, x.shape))(jax.random.split(key, 400))
    mean = jnp.mean(jax.vmap(lambda m: first(jnp.where(m, x / 0.8, 0.0)))(keep), 0)
    assert float(jnp.abs(mean - first(x)).max()) < 0.1 * float(jnp.abs(first(x)).max())


@pytest.mark.parametrize("k", [0, 1, 2])
def test_refresh_replaces_only_its_slots_with_adversarials(trained, small, k):
    model, params = trained
    x, y = jnp.asarray(small[0].x), jnp.asarray(small[0].y)
    shape = at.layer_input_shape(model, k)
    pool = at.Pool(jnp.zeros((300, *model.input_shape)), jnp.zeros(300, jnp.int32), jnp.zeros((300, *shape)))
    slots = jnp.arange(50, 250)
    new = jax.jit(lambda p: at.refresh_pool(make_attack("deepfool"), model, params, k, "untargeted",
                                            p, x, y, slots, jax.random.key(3)))(pool)
    untouched = np.setdiff1d(np.arange(300), np.asarray(slots))
    np.testing.assert_array_equal(new.delta[untouched], 0.0)
    np.testing.assert_array_equal(new.x[untouched], 0.0)
    points = at.pool_points(model, params, k, new, slots)
    labels = new.y[slots]
    right = jnp.argmax(model.apply(params, new.x[slots]), -1) == labels
    fooled = is_adversarial(model.apply(params, points, start=k), labels, jnp.full_like(labels, -1))
    assert float(jnp.mean(fooled[right])) > 0.9  # DeepFool crosses the nearest boundary
    assert float(jnp.min(points)) >= 0.0 and float(jnp.max(points)) <= 1.0
    assert float(jnp.mean(jnp.abs(new.delta[slots]))) > 0


def test_pool_training_runs_and_learns(small):
    train, test = small
    pooled = ["train.adversarial.layers=[0,2]", "train.adversarial.pool_size=400",
              "train.adversarial.refresh_size=100", "train.adversarial.refreshes_per_epoch=3",
              "train.adversarial.batch_size=32", "train.adversarial.attack=fgsm",
              "train.adversarial.target=untargeted", "train.dropout.hidden=0.2"]
    model_cfg = compose([]).model
    model = build_model(model_cfg)
    runs = {}
    for name, extra in (("plain", []), ("pooled", pooled)):
        cfg = _train_cfg("train.epochs=3", "train.learning_rate=1e-2", *extra)
        runs[name] = train_model(model, model_cfg, cfg, train, jax.random.key(0),
                                 classifier=classifier_regime(cfg))
    params, metrics = runs["pooled"]
    assert np.isfinite(metrics["train/final_loss"])
    assert metrics["train/steps"] == 3 * 3 * (2000 // 128 // 3)  # whole blocks of batches
    # 3 epochs on 2000 images, the first without the pool: learning, far from chance (90%).
    assert error_rate(model, params, jnp.asarray(test.x), jnp.asarray(test.y)) < 0.25
    # The pool's adversarials are in the loss: a higher loss than clean training, other weights.
    assert metrics["train/final_loss"] > runs["plain"][1]["train/final_loss"]
    assert not np.allclose(params[0]["w"], runs["plain"][0][0]["w"])


def test_pooled_lbfgs_refreshes_between_restarts_and_learns(small, monkeypatch):
    """The paper's optimizer with pools: full-batch L-BFGS in restarts, a clean one first, then
    every pool point in the loss, held fixed within a restart and refreshed between restarts."""
    train, test = small
    model_cfg = compose([]).model
    model = build_model(model_cfg)
    cfg = compose(["train=lbfgs", "train.lbfgs_steps=60", "train.adversarial.layers=[0,2]",
                   "train.adversarial.pool_size=300", "train.adversarial.refresh_size=100",
                   "train.adversarial.lbfgs_restarts=3", "train.adversarial.attack=fgsm",
                   "train.adversarial.target=untargeted"]).train
    restarts = []
    real = train_lib.minimize_lbfgs
    # fit's L-BFGS batch is (x, y, decay, aux); the regime's aux is (pools, their frozen points).
    monkeypatch.setattr(train_lib, "minimize_lbfgs", lambda objective, params, batch, *a, **k: (
        restarts.append((params, batch[3][1])) or real(objective, params, batch, *a, **k)))
    params, metrics = train_model(model, model_cfg, cfg, train, jax.random.key(0),
                                  classifier=at.fit_classifier)
    assert metrics["train/steps"] <= 60 and np.isfinite(metrics["train/final_loss"])
    assert error_rate(model, params, jnp.asarray(test.x), jnp.asarray(test.y)) < 0.25
    assert [len(points) for _, points in restarts] == [0, 2, 2]  # clean, then both pools
    (before, _), (after, _) = restarts[1][1][0], restarts[2][1][0]  # the image pool
    changed = np.any(np.asarray(before != after).reshape(300, -1), axis=1).sum()
    assert 0 < changed <= 100  # the refresh replaced at most refresh_size entries
    # The restart's loss: clean images and every pool point, each counted once.
    start, points = restarts[2]
    loss = at.full_batch_cross_entropy(model, start, [0, 2], points, train.x, train.y)
    by_hand = [optax.softmax_cross_entropy_with_integer_labels(model.apply(start, p, start=k), y).sum()
               for k, (p, y) in zip([0, 2], points)]
    clean = optax.softmax_cross_entropy_with_integer_labels(model.apply(start, train.x), train.y).sum()
    assert float(loss) == pytest.approx(float(clean + sum(by_hand)) / (len(train) + 600), rel=1e-5)


def test_pools_and_dropout_train_through_their_regime_never_the_plain_fit(small):
    """The plain fit refuses what only the regime honours, rather than train a clean model."""
    for extra in (["train.adversarial.layers=[0]"], ["train.dropout.hidden=0.5"]):
        cfg = _train_cfg(*extra)
        assert classifier_regime(cfg) is at.fit_classifier
        with pytest.raises(ValueError, match="adversarial_training.fit_classifier"):
            train_model(build_model(compose([]).model), compose([]).model, cfg, small[0], jax.random.key(0))
    assert classifier_regime(_train_cfg()) is train_lib.fit_classifier


@pytest.mark.parametrize("overrides, message", [
    (["train=lbfgs", "train.dropout.hidden=0.5"], "minibatch optimizer"),
    (["train=lbfgs", "train.adversarial.layers=[0]", "train.adversarial.start_epoch=4"], "lbfgs_restarts"),
    (["train.adversarial.layers=[3]"], "not a layer input"),
    (["model.activation=relu", "train.adversarial.layers=[1]"], "sigmoid"),
    (["train.dropout.input=1.0"], "drop rate"),
    (["train.adversarial.layers=[0]", "train.adversarial.refresh_size=20000"], "refresh_size"),
    (["train.adversarial.layers=[0]", "train.adversarial.attack=nope"], "unknown attack"),
    (["model=conv", "train.dropout.hidden=0.5"], "fully connected"),
])
def test_bad_settings_fail_with_a_clear_message(overrides, message):
    cfg = compose(["train=adam", *overrides])
    with pytest.raises(ValueError, match=message):
        at.check_config(build_model(cfg.model), cfg.train)


def test_experiment_models_differ_only_in_their_regularizer(mnist_dir):
    cfg = compose([f"data.mnist_dir={mnist_dir}", "experiment=adversarial_training"])
    models = {key: model_config(cfg, key) for key in cfg.experiment.models}
    assert list(models) == ["weight_decay", "dropout", "input_pool", "layer_pools"]
    strip = lambda c: OmegaConf.to_container(c.train) | {"dropout": None, "adversarial": None}  # noqa: E731
    assert all(strip(c) == strip(models["weight_decay"]) for c in models.values())
    assert not at.enabled(models["weight_decay"].train)
    assert models["dropout"].train.dropout.hidden > 0
    assert list(models["input_pool"].train.adversarial.layers) == [0]
    assert list(models["layer_pools"].train.adversarial.layers) == [0, 1, 2]
    assert all(c.data.split == "full" and c.model.hidden == [100, 100] for c in models.values())


def test_the_pool_refresh_bench_times_a_refresh_at_every_layer():
    """adv_jax/bench/pool_refresh.py's row, on an untrained FC16-16-10 and random images."""
    from types import SimpleNamespace

    from adv_jax.bench.pool_refresh import refresh_row

    model = build_model(compose(["model=fc100", "model.hidden=[16,16]"]).model)
    run = SimpleNamespace(model=model, params=model.init(jax.random.key(0)))
    x = jax.random.uniform(jax.random.key(1), (32, 28, 28, 1))
    y = jnp.arange(32) % 10
    for layer in range(len(model.layers)):
        row = refresh_row(run, make_attack("fgsm", {"epsilon": 0.1}), "untargeted", layer, x, y, 8, 1)
        assert row["seconds"] > 0 and 0 <= row["success"] <= 1 and row["rms"] > 0
