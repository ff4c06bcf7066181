"""Models (adv_jax.models): parameter counts and logit shapes per config, the layer list driving
the forward pass, weight decay, per-layer lambdas, bad-setting errors, and hashability for jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adv_jax.config import compose
from adv_jax.models import Layer, Model, build_model, num_params
from adv_jax.models.layers import weight_decay

# Exact parameter counts: weights + biases of each dense/conv layer.
EXPECTED_PARAMS = {
    "fc10": 784 * 10 + 10,
    "fc100": 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10,
    "fc200": 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10,
    "fc123": 784 * 123 + 123 + 123 * 456 + 456 + 456 * 10 + 10,
    "ae400": 784 * 400 + 400 + 400 * 10 + 10,
    # 5x5x1x16 conv, pool 2 -> 14x14x16, 3x3x16x32 stride 2 -> 7x7x32, dense 64, dense 10
    "conv": 5 * 5 * 16 + 16 + 3 * 3 * 16 * 32 + 32 + 7 * 7 * 32 * 64 + 64 + 64 * 10 + 10,
    "bottleneck2d": 784 * 50 + 50 + 50 * 20 + 20 + 20 * 2 + 2 + 2 * 4 + 4,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_counts_and_logit_shapes(name):
    model = build_model(compose([f"model={name}"]).model)
    params = model.init(jax.random.key(0))
    assert num_params(params) == EXPECTED_PARAMS[name]
    logits = model.apply(params, jnp.zeros((3, 28, 28, 1)))
    assert logits.shape == (3, 4 if name == "bottleneck2d" else 10)


def test_layer_enumeration_drives_forward_pass():
    model = build_model(compose(["model=conv"]).model)
    assert [l.kind for l in model.layers] == ["conv", "maxpool", "conv", "dense", "dense"]
    assert model.layers[2].stride == 2 and model.layers[0].activation == "relu"
    params = model.init(jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (2, 28, 28, 1))
    hidden = model.apply(params, x, stop=3)
    assert hidden.shape == (2, 7, 7, 32)
    np.testing.assert_allclose(model.apply(params, hidden, start=3), model.apply(params, x), rtol=1e-6)


def test_weight_decay_on_hand_built_model():
    layers = (Layer("dense", features=2, weight_decay=0.5), Layer("dense", features=4, weight_decay=2.0))
    params = ({"w": jnp.full((3, 2), 2.0), "b": jnp.ones(2)}, {"w": jnp.ones((2, 4)), "b": jnp.ones(4)})
    # 0.5 * (6 * 4) / 2 + 2.0 * 8 / 4 = 6 + 4; biases are not decayed.
    assert float(weight_decay(layers, params)) == pytest.approx(10.0)


def test_per_layer_lambdas_follow_the_config():
    model = build_model(compose(["model=fc100"]).model)
    assert [l.weight_decay for l in model.layers] == [1e-5, 1e-5, 1e-6]
    with pytest.raises(ValueError, match="3 weighted layers"):
        build_model(compose(["model=fc100", "model.weight_decay=[1e-5,1e-5]"]).model)


def test_bad_layer_settings_list_the_choices():
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*sigmoid"):
        Layer("dense", features=3, activation="swish")
    with pytest.raises(ValueError, match="unknown layer kind"):
        Layer("attention")


def test_model_is_hashable_for_jit():
    model = build_model(compose(["model=fc10"]).model)
    assert hash(model) == hash(build_model(compose(["model=fc10"]).model))
    assert isinstance(model, Model)


@pytest.mark.parametrize("size, kernel", [(24, 2), (25, 2), (7, 3)])
def test_non_overlapping_max_pool_is_reduce_windows_values_and_gradient(size, kernel):
    """The reshape-and-max pool (adv_jax.models.layers._max_pool) against lax.reduce_window,
    including inputs whose size the window does not divide (VALID drops the remainder)."""
    from adv_jax.models.layers import apply_layer

    x = jax.random.normal(jax.random.key(size), (3, size, size, 4))
    pool = Layer("maxpool", kernel=kernel, stride=kernel)
    window = (1, kernel, kernel, 1)
    reference = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")  # noqa: E731
    np.testing.assert_array_equal(apply_layer(pool, {}, x), reference(x))
    grad = jax.grad(lambda x: (apply_layer(pool, {}, x) ** 2).sum())(x)
    np.testing.assert_allclose(grad, jax.grad(lambda x: (reference(x) ** 2).sum())(x))


@pytest.mark.parametrize("size, kernel, stride, padding, channels", [
    (28, 5, 1, "SAME", 1), (14, 3, 2, "SAME", 3), (13, 3, 2, "VALID", 2), (9, 4, 3, "SAME", 2)])
def test_patch_matmul_conv_is_lax_conv_values_and_gradients(size, kernel, stride, padding, channels):
    """The conv layer (adv_jax.models.layers._conv: XLA's value, derivatives through a matmul of
    patches; all patches for one channel) and `_conv_patches` against lax.conv_general_dilated:
    values, both gradients, forward mode with either argument still, a second derivative."""
    from adv_jax.models.layers import _conv_patches, apply_layer

    layer = Layer("conv", features=5, kernel=kernel, stride=stride, padding=padding)
    x = jax.random.normal(jax.random.key(size), (3, size, size, channels))
    params = {"w": jax.random.normal(jax.random.key(1), (kernel, kernel, channels, 5)),
              "b": jnp.arange(5.0)}

    def reference(params, x):
        return jax.lax.conv_general_dilated(x, params["w"], (stride, stride), padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["b"]

    np.testing.assert_allclose(apply_layer(layer, params, x), reference(params, x), rtol=1e-5, atol=1e-5)
    ours = jax.grad(lambda p, x: (apply_layer(layer, p, x) ** 2).sum(), argnums=(0, 1))(params, x)
    theirs = jax.grad(lambda p, x: (reference(p, x) ** 2).sum(), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_conv_patches(x, params["w"], stride, padding) + params["b"], reference(params, x),
                               rtol=1e-5, atol=1e-5)
    dx, dw = jax.random.normal(jax.random.key(2), x.shape), jax.random.normal(jax.random.key(3), params["w"].shape)
    for tangent in ({"w": dw, "b": params["b"]}, {"w": 0 * dw, "b": 0 * params["b"]}):
        ours = jax.jvp(lambda p, x: apply_layer(layer, p, x), (params, x), (tangent, dx))[1]
        np.testing.assert_allclose(ours, jax.jvp(reference, (params, x), (tangent, dx))[1], rtol=1e-4, atol=1e-4)
    still_w = jax.jvp(lambda x: apply_layer(layer, params, x), (x,), (dx,))[1]
    np.testing.assert_allclose(still_w, jax.jvp(lambda x: reference(params, x), (x,), (dx,))[1], rtol=1e-4, atol=1e-4)
    assert apply_layer(layer, params, x.astype(jnp.bfloat16)).dtype == jnp.float32  # promoted, as a matmul does
    tangent = {"w": dw, "b": params["b"]}
    still_x = jax.jvp(lambda p: apply_layer(layer, p, x), (params,), (tangent,))[1]
    np.testing.assert_allclose(still_x, jax.jvp(lambda p: reference(p, x), (params,), (tangent,))[1], rtol=1e-4, atol=1e-4)
    hvp = jax.jvp(jax.grad(lambda x: (apply_layer(layer, params, x) ** 2).sum()), (x,), (dx,))[1]
    reference_hvp = jax.jvp(jax.grad(lambda x: (reference(params, x) ** 2).sum()), (x,), (dx,))[1]
    np.testing.assert_allclose(hvp, reference_hvp, rtol=1e-4, atol=1e-3)
