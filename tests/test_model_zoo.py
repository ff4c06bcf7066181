"""The architecture zoo (relu_mlp, conv, resnet_small, vit_small, mixer_small: init, shapes, one
jitted train step on real digits, a PGD attack, Lipschitz rows, checkpoints, the residual layer's
skip and branch for SGM) and models by `model._target_` (flax.linen, flax.nnx and equinox modules
from tests/zoo_modules.py: trained one epoch by adv_jax's trainer, attacked, Lipschitz not
available, weight decay on all weight arrays; a params file used without training)."""

import math
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adv_jax import checkpoint, extras, lipschitz
from adv_jax.attacks import make_attack
from adv_jax.attacks.generate import generate
from adv_jax.config import compose
from adv_jax.data import Dataset, load_splits
from adv_jax.models import Layer, Model, branch_scaled_logits_fn, build_model, logits_fn, num_params
from adv_jax.models.external import adapter_for
from adv_jax.train import TrainState, make_loss, make_train_step
from adv_jax.trained import train_or_load

TESTS = Path(__file__).resolve().parent
# Weights + biases (+ layer norms' scale and bias, position embeddings), counted by hand.
EXPECTED_PARAMS = {
    "relu_mlp": 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10,
    "conv": 5 * 5 * 16 + 16 + 3 * 3 * 16 * 32 + 32 + 7 * 7 * 32 * 64 + 64 + 64 * 10 + 10,
    # stem 3x3x1x16; 2 blocks of two 3x3x16x16; 3x3x16x32 stride 2; 2 blocks of two 3x3x32x32; 32x10
    "resnet_small": 160 + 4 * (9 * 16 * 16 + 16) + (9 * 16 * 32 + 32) + 4 * (9 * 32 * 32 + 32) + 330,
    # patch 7x7x1x64, position 16x64; per layer LN 128, qkv 64x192, out 64x64, LN, MLP 64-128-64
    "vit_small": 3200 + 1024 + 2 * (128 + 64 * 192 + 192 + 64 * 64 + 64 + 128 + 16576) + 128 + 650,
    # per layer LN, token MLP 16-32-16, LN, channel MLP 64-128-64
    "mixer_small": 3200 + 1024 + 2 * (128 + 16 * 32 + 32 + 32 * 16 + 16 + 128 + 16576) + 128 + 650,
}
FRAMEWORK_MODULES = ["zoo_modules.LinenMLP", "zoo_modules.NnxMLP", "zoo_modules.EqxMLP"]


@pytest.fixture(scope="module")
def digits(mnist_dir):
    """(500 training images, their labels, 8 test images, their labels)."""
    splits = load_splits(compose(["data.train_limit=500"]).data)
    return splits["train"].x, splits["train"].y, splits["test"].x[:8], splits["test"].y[:8]


@pytest.fixture
def user_modules(monkeypatch):
    """tests/ on sys.path, as a user's own directory on PYTHONPATH."""
    monkeypatch.syspath_prepend(str(TESTS))


def _pgd_on_two(model, params, x, y):
    """A 5-step L-inf PGD on 2 images: (x, x_adv), checked inside the box and the ball."""
    attack = make_attack("pgd", {"epsilon": 0.1, "steps": 5})
    adv = generate(attack, logits_fn(model, params), x[:2], y[:2], key=jax.random.key(3),
                   progress=False).adversarials
    assert np.all(adv.x_adv >= 0) and np.all(adv.x_adv <= 1)
    assert np.max(np.abs(adv.x_adv - adv.x)) <= 0.1 + 1e-6
    assert np.any(adv.x_adv != adv.x), "the attack's gradient did not reach the image"
    return adv


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_zoo_model_shapes_train_step_and_attack(name, digits):
    x, y, test_x, test_y = digits
    cfg = compose([f"model={name}", "train=adam"])
    model = build_model(cfg.model)
    params = model.init(jax.random.key(0))
    assert num_params(params) == EXPECTED_PARAMS[name]
    assert model.apply(params, test_x).shape == (8, 10)
    optimizer = optax.adam(1e-3)
    step = jax.jit(make_train_step(make_loss(model, cfg.train), optimizer))
    state, metrics = step(TrainState(params, optimizer.init(params)), (x[:16], y[:16]), None)
    assert np.isfinite(float(metrics["loss"]))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, params))
    assert any(moved)
    _pgd_on_two(model, state.params, test_x, test_y)


def test_residual_bound_is_above_the_measured_slope_and_unbounded_layers_say_so(digits):
    _, _, test_x, _ = digits
    resnet = build_model(compose(["model=resnet_small"]).model)
    params = resnet.init(jax.random.key(1))
    table = lipschitz.layer_table(resnet, params)
    rows = [r for r in table if r["kind"] == "residual"]
    assert len(rows) == 4 and all(r["bound"] > 1 and not r["exact"] for r in rows)
    pool = next(r for r in table if r["kind"] == "global_avgpool")
    assert pool["bound"] == pytest.approx(1 / 7)  # the mean of 7 x 7 positions
    single = lambda image: resnet.apply(params, image[None])[0]  # noqa: E731
    slope = float(lipschitz.max_jacobian_norm(single, jnp.asarray(test_x[:2]), jax.random.key(0), 20))
    assert 0 < slope <= lipschitz.network_bound(table)
    for name, unbounded in [("vit_small", {"layernorm", "self_attention"}), ("mixer_small", {"layernorm"})]:
        model = build_model(compose([f"model={name}"]).model)
        table = lipschitz.layer_table(model, model.init(jax.random.key(0)))
        assert math.isinf(lipschitz.network_bound(table))
        # every residual holds a layer norm; the final layer norm too; the rest stay finite
        assert {r["kind"] for r in table if math.isinf(r["bound"])} == {"residual", "layernorm"}
        assert unbounded <= {layer.kind for res in model.layers for layer in res.branch}
        with pytest.raises(ValueError, match="lipschitz_penalty"):
            lipschitz.lipschitz_penalty(model, model.init(jax.random.key(0)))


def test_branch_gradient_scale_keeps_values_and_scales_only_the_branch():
    """SGM's hook: one residual relu(x + relu(x w + b)) then dense: at scale 0 the gradient is the
    skip's alone, at scale 1 the plain model's; the logits never change."""
    model = Model((Layer("residual", branch=(Layer("linear", features=1, activation="relu"),)),
                   Layer("dense", features=10)))
    params = model.init(jax.random.key(0))
    params = ({"branch": ({"w": jnp.full((1, 1), 2.0), "b": jnp.zeros(1)},)}, params[1])
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    plain, skip_only = logits_fn(model, params), branch_scaled_logits_fn(model, params, 0.0)
    np.testing.assert_array_equal(skip_only(x), plain(x))
    grad = lambda fn: jax.grad(lambda x: fn(x)[:, 3].sum())(x)  # noqa: E731
    column = params[1]["w"][:, 3].reshape(1, 28, 28, 1)
    np.testing.assert_allclose(grad(skip_only), jnp.broadcast_to(column, x.shape), rtol=1e-6)
    np.testing.assert_allclose(grad(plain), 3.0 * jnp.broadcast_to(column, x.shape), rtol=1e-5)  # 1 + w
    np.testing.assert_allclose(grad(branch_scaled_logits_fn(model, params, 1.0)), grad(plain))


def test_nested_params_round_trip_and_flat_params_keep_their_bytes():
    resnet = build_model(compose(["model=resnet_small"]).model)
    params = resnet.init(jax.random.key(0))
    back = checkpoint.params_from_bytes(resnet, checkpoint.params_to_bytes(params))
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), back, params)))
    fc = build_model(compose(["model=fc100"]).model)
    flat = fc.init(jax.random.key(0))
    old_format = flax.serialization.msgpack_serialize(
        {str(i): {k: np.asarray(v) for k, v in p.items()} for i, p in enumerate(flat)})
    assert checkpoint.params_to_bytes(flat) == old_format


@pytest.mark.parametrize("target", FRAMEWORK_MODULES)
def test_module_by_target_trains_attacks_and_has_no_lipschitz_bound(target, digits, user_modules, tmp_path):
    if "Eqx" in target:
        pytest.importorskip("equinox", reason="the equinox extra: pip install -e '.[equinox]'")
    x, y, test_x, test_y = digits
    cfg = compose(["model=custom", f"model._target_={target}", "model.kwargs={hidden:8}", "train=adam",
                   "train.epochs=1", "train.batch_size=50", "model.weight_decay=1e-3",
                   "data.train_limit=500", f"cache_dir={tmp_path}"])
    model, params, metrics = train_or_load(cfg, {"train": _dataset(x, y)})
    assert metrics["train/steps"] == 10 and [layer.kind for layer in model.layers] == ["module"]
    assert num_params(params) == 784 * 8 + 8 + 8 * 10 + 10
    kernels = sum(float(jnp.sum(w ** 2)) for w in params[0].values() if w.ndim == 2)
    assert float(model.weight_decay(params)) == pytest.approx(1e-3 * kernels, rel=1e-5)
    (row,) = lipschitz.layer_table(model, params)
    assert row["kind"] == "module" and math.isinf(row["bound"]) and not row["exact"]
    assert math.isinf(lipschitz.network_bound([row]))
    _pgd_on_two(model, params, test_x, test_y)
    again = train_or_load(cfg, {"train": _dataset(x, y)})
    assert again[2]["train/cached"]  # the cache keys on the target, kwargs and the module's source


def _dataset(x, y):
    return Dataset(x, y)


def test_params_file_is_used_without_training(digits, user_modules, tmp_path):
    """A linen module's own variables (trained elsewhere), converted as docs/models.md shows."""
    import zoo_modules

    x, y, test_x, _ = digits
    base = ["model=custom", "model._target_=zoo_modules.LinenMLP", "model.kwargs={hidden:8}",
            f"cache_dir={tmp_path}"]
    model = build_model(compose(base).model)
    variables = zoo_modules.LinenMLP(hidden=8).init(jax.random.key(7), test_x[:1])
    checkpoint.save_params(tmp_path / "given.msgpack", (model.layers[0].module.flat(variables["params"]),))
    cfg = compose(base + [f"model.params_file={tmp_path / 'given.msgpack'}"])
    model, params, metrics = train_or_load(cfg, {"train": _dataset(x, y)})
    assert metrics["train/steps"] == 0
    np.testing.assert_array_equal(model.apply(params, test_x),
                                  zoo_modules.LinenMLP(hidden=8).apply(variables, test_x))
    wrong = compose(base[:2] + ["model.kwargs={hidden:4}", f"model.params_file={tmp_path / 'given.msgpack'}"])
    with pytest.raises(ValueError, match="model wants"):
        train_or_load(wrong, {"train": _dataset(x, y)})


def test_module_errors_name_the_fix(user_modules, monkeypatch):
    with pytest.raises(ValueError, match="PYTHONPATH"):
        adapter_for("not_a_module_anywhere.Net", {})
    with pytest.raises(ValueError, match="no 'Missing'"):
        adapter_for("zoo_modules.Missing", {})
    monkeypatch.setattr(extras, "installed", lambda what: what != "equinox")
    with pytest.raises(extras.MissingExtra, match=r"pip install -e '\.\[equinox\]'"):
        adapter_for("zoo_modules.EqxMLP", {})


def test_models_of_every_framework_are_hashable_static_arguments(user_modules):
    first = [build_model(compose(["model=custom", f"model._target_={t}"]).model) for t in FRAMEWORK_MODULES]
    again = [build_model(compose(["model=custom", f"model._target_={t}"]).model) for t in FRAMEWORK_MODULES]
    assert first == again and len({hash(m) for m in first}) == 3
