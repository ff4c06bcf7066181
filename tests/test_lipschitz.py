"""Lipschitz bounds against explicit matrices, closed forms, worst-case constructions and the
empirical lower bounds of real models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adv_jax import lipschitz as lip
from adv_jax.config import compose
from adv_jax.data import load_splits
from adv_jax.models import Layer, Model, build_model

DIMS = ("NHWC", "HWIO", "NHWC")


def _matrix(linear_fn, in_shape) -> np.ndarray:
    """The dense (out_dim, in_dim) matrix of a linear map on (H, W, C) images, in float64."""
    jac = jax.jit(jax.jacfwd(linear_fn))(jnp.zeros(in_shape))
    return np.asarray(jac, np.float64).reshape(-1, int(np.prod(in_shape)))


def _true_norm(linear_fn, in_shape) -> float:
    return float(np.linalg.svd(_matrix(linear_fn, in_shape), compute_uv=False)[0])


def _zero_padded_conv(kernel, stride, padding):
    return lambda x: jax.lax.conv_general_dilated(x[None], kernel, (stride, stride), padding,
                                                  dimension_numbers=DIMS)[0]


def _kernel(seed, k, c, d, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(k, k, c, d)), dtype)


# (N, k, C, D, stride): 1x1, k > N, C = D = 8, even k, strides 1, 2 and 3, C = 1.
CIRCULAR_CASES = [(4, 1, 3, 5, 1), (4, 5, 2, 2, 2), (5, 3, 8, 8, 1), (6, 2, 3, 2, 2), (9, 2, 1, 3, 3),
                  (16, 3, 3, 4, 2)]


@pytest.mark.parametrize("n, k, c, d, stride", CIRCULAR_CASES)
def test_fft_norm_equals_largest_singular_value_of_circular_conv(n, k, c, d, stride):
    kernel = _kernel(n * 1000 + k * 100 + c * 10 + d, k, c, d)
    expected = _true_norm(lambda x: lip.circular_conv(x, kernel, stride), (n, n, c))
    got = float(lip.conv_operator_norm(kernel, (n, n), stride))
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("n, k, c, d, stride", [(4, 5, 2, 3, 1), (6, 3, 3, 2, 2), (9, 2, 2, 2, 3)])
def test_fft_norm_in_float64_is_exact_to_1e_10(n, k, c, d, stride):
    with jax.enable_x64(True):
        kernel = _kernel(7, k, c, d, jnp.float64)
        expected = _true_norm(lambda x: lip.circular_conv(x, kernel, stride), (n, n, c))
        got = lip.conv_operator_norm(kernel, (n, n), stride)
        assert got.dtype == jnp.float64
        assert float(got) == pytest.approx(expected, rel=1e-10)


def _zero_padding_cases(count=6):
    rng = np.random.default_rng(0)
    cases = []
    while len(cases) < count:
        h, w = rng.integers(4, 11, size=2)
        k, stride = int(rng.choice([1, 2, 3, 5])), int(rng.integers(1, 4))
        padding = ["SAME", "VALID", ((1, 2), (0, 1))][len(cases) % 3]
        if padding == "VALID" and k > min(h, w):
            continue
        cases.append(((int(h), int(w)), k, int(rng.integers(1, 5)), int(rng.integers(1, 5)), stride, padding))
    return cases


@pytest.mark.parametrize("hw, k, c, d, stride, padding", _zero_padding_cases())
def test_zero_padded_conv_norm_is_an_upper_bound(hw, k, c, d, stride, padding):
    kernel = _kernel(hw[0] * 1000 + hw[1] * 100 + k * 10 + stride, k, c, d)
    true_norm = _true_norm(_zero_padded_conv(kernel, stride, padding), hw + (c,))
    assert float(lip.conv_operator_norm(kernel, hw, stride, padding)) >= true_norm * (1 - 1e-5)


def test_one_by_one_kernel_is_the_channel_matrix_at_any_stride_and_padding():
    kernel = _kernel(3, 1, 5, 3)
    expected = np.linalg.svd(np.asarray(kernel[0, 0]), compute_uv=False)[0]
    for stride, padding in [(1, "CIRCULAR"), (2, "CIRCULAR"), (1, "SAME"), (2, "VALID")]:
        assert float(lip.conv_operator_norm(kernel, (8, 8), stride, padding)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_single_channel_delta_kernel_has_norm_one(stride):
    # A shift (stride 1) or a shift followed by subsampling (stride s): both have norm 1.
    kernel = jnp.zeros((3, 3, 1, 1)).at[1, 2, 0, 0].set(1.0)
    assert float(lip.conv_operator_norm(kernel, (6, 6), stride)) == pytest.approx(1.0, rel=1e-6)


def test_single_channel_stride_one_norm_is_max_abs_dft_of_the_kernel():
    kernel = _kernel(11, 3, 1, 1)
    expected = np.abs(np.fft.fft2(np.asarray(kernel[:, :, 0, 0]), s=(10, 10))).max()
    assert float(lip.conv_operator_norm(kernel, (10, 10))) == pytest.approx(expected, rel=1e-6)


def test_circular_norm_needs_the_stride_to_divide_the_grid():
    with pytest.raises(ValueError, match="divide"):
        lip.conv_operator_norm(_kernel(0, 3, 1, 1), (7, 7), stride=2)


def test_power_iteration_matches_svd_for_dense_and_never_overshoots():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.normal(size=(300, 50)))
    v, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    spectrum = np.concatenate([[3.0], np.linspace(2.0, 0.1, 49)])  # gap 3 : 2, fast convergence
    w = jnp.asarray(u @ np.diag(spectrum) @ v.T, jnp.float32)
    assert float(lip.dense_operator_norm(w)) == pytest.approx(3.0, rel=1e-6)
    power = float(lip.dense_operator_norm(w, "power", iters=100, key=jax.random.key(0)))
    assert power == pytest.approx(3.0, rel=1e-5)
    gaussian = jnp.asarray(rng.normal(size=(200, 80)), jnp.float32)
    exact = float(lip.dense_operator_norm(gaussian))
    for seed in range(3):
        estimate = float(lip.dense_operator_norm(gaussian, "power", iters=100, key=jax.random.key(seed)))
        assert exact * 0.98 < estimate <= exact * (1 + 1e-6)
    with pytest.raises(ValueError, match="key"):
        lip.dense_operator_norm(w, "power")


def _maxpool(kernel, stride, padding):
    return jax.jit(jax.vmap(lambda x: jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (kernel, kernel, 1), (stride, stride, 1), padding)))


@pytest.mark.parametrize("kernel, stride, hw, padding", [
    (2, 2, (8, 8), "VALID"), (3, 2, (9, 9), "VALID"), (3, 1, (7, 8), "SAME"),
    (4, 3, (10, 9), "SAME"), (3, 2, (4, 4), "VALID"),
])
def test_maxpool_constant_is_attained_by_a_bump_and_never_exceeded(kernel, stride, hw, padding):
    constant = lip.maxpool_lipschitz(kernel, stride, hw, padding)
    assert constant <= lip.maxpool_lipschitz(kernel, stride) == -(-kernel // stride)
    if kernel > stride and min(hw) >= 2 * kernel:
        assert constant == -(-kernel // stride) > 1  # overlapping pooling expands distances
    # Worst case: x = 0 against a unit bump at each pixel; then 300 random pairs at many scales.
    rng, pixels = np.random.default_rng(0), hw[0] * hw[1]
    x = rng.normal(size=(300,) + hw + (1,))
    y = x + rng.normal(size=x.shape) * np.logspace(-3, 0, 300)[:, None, None, None]
    inputs = np.concatenate([np.zeros((1,) + hw + (1,)), np.eye(pixels).reshape(-1, *hw, 1), x, y])
    pooled = np.asarray(_maxpool(kernel, stride, padding)(jnp.asarray(inputs, jnp.float32)), np.float64)
    pooled = pooled.reshape(len(inputs), -1)
    zero, bumps, px, py = np.split(pooled, [1, 1 + pixels, 1 + pixels + 300])
    assert np.linalg.norm(bumps - zero, axis=1).max() == pytest.approx(constant, rel=1e-6)
    distances = np.linalg.norm((y - x).reshape(300, -1), axis=1)
    assert (np.linalg.norm(py - px, axis=1) / distances).max() <= constant * (1 + 1e-5)


def test_pair_ratio_of_a_linear_map_reaches_its_norm_along_the_top_singular_vector():
    w = jnp.asarray(np.random.default_rng(2).normal(size=(6, 4)), jnp.float32)
    _, _, vt = np.linalg.svd(np.asarray(w).T)  # f(x) = x @ w, so the top input direction is vt[0]
    x = jnp.zeros((3, 6))
    x_adv = jnp.stack([jnp.asarray(vt[0]), jnp.zeros(6), jnp.ones(6)])  # the equal pair is skipped
    ratio = float(lip.pair_ratio_bound(lambda z: z @ w, x, x_adv))
    assert ratio == pytest.approx(float(lip.dense_operator_norm(w)), rel=1e-5)


@pytest.fixture(scope="module")
def images(mnist_dir):
    test = load_splits(compose([f"data.mnist_dir={mnist_dir}", "data.train_limit=10"]).data)["test"]
    return jnp.asarray(test.x[:16])


def _lower_bounds(model, params, x, key):
    single = lambda image: model.apply(params, image[None])[0]
    jacobian = float(lip.max_jacobian_norm(single, x, key, iters=30))
    x_near = x + 1e-2 * jax.random.normal(key, x.shape)
    return jacobian, float(lip.pair_ratio_bound(jax.jit(lambda z: model.apply(params, z)), x, x_near))


@pytest.fixture(scope="module")
def conv_model():
    model = build_model(compose(["model=conv"]).model)
    params = model.init(jax.random.key(0))
    return model, params, lip.layer_table(model, params)


def test_conv_model_table_follows_the_layer_enumeration(conv_model, images):
    model, params, table = conv_model
    assert [r["kind"] for r in table] == ["conv", "maxpool", "conv", "dense", "dense"]
    assert [r["input"] for r in table] == ["28x28x1", "28x28x16", "14x14x16", "7x7x32", "64"]
    assert [r["shape"] for r in table] == ["1x5x5x16", "2x2", "16x3x3x32", "1568x64", "64x10"]
    assert [r["exact"] for r in table] == [False, True, False, True, True]
    assert table[1]["operator_norm"] == 1.0 and table[2]["stride"] == 2
    bound = lip.network_bound(table)
    assert bound == pytest.approx(np.prod([r["operator_norm"] * r["activation"] for r in table]))
    jacobian, pairs = _lower_bounds(model, params, images, jax.random.key(1))
    assert 0 < pairs <= bound and 0 < jacobian <= bound


def test_fc100_product_bound_sits_above_the_empirical_lower_bounds(images):
    model = build_model(compose(["model=fc100"]).model)
    params = model.init(jax.random.key(0))
    table = lip.layer_table(model, params)
    assert [r["activation"] for r in table] == [0.25, 0.25, 1.0]
    jacobian, pairs = _lower_bounds(model, params, images, jax.random.key(1))
    assert 0 < pairs <= lip.network_bound(table) and 0 < jacobian <= lip.network_bound(table)


def test_bounds_are_tight_for_a_linear_model(images):
    model = Model(layers=(Layer("dense", features=10),))
    params = model.init(jax.random.key(3))
    bound = lip.network_bound(lip.layer_table(model, params))
    single = lambda image: model.apply(params, image[None])[0]
    jacobian = float(jax.jit(lambda x, key: lip.jacobian_norm(single, x, key, iters=200))(
        images[0], jax.random.key(4)))
    assert jacobian == pytest.approx(bound, rel=1e-4)


def test_overlapping_pool_and_explicit_zero_padding_in_a_hand_built_model():
    model = Model(layers=(Layer("conv", features=3, kernel=3, padding="VALID", activation="tanh"),
                          Layer("maxpool", kernel=3, stride=2), Layer("dense", features=2)),
                  input_shape=(12, 12, 1))
    params = model.init(jax.random.key(0))
    table = lip.layer_table(model, params, (12, 12, 1))
    assert table[1]["input"] == "10x10x3" and table[1]["operator_norm"] == 2.0
    true_conv = _true_norm(_zero_padded_conv(params[0]["w"], 1, "VALID"), (12, 12, 1))
    assert table[0]["operator_norm"] >= true_conv * (1 - 1e-5)


def test_penalty_is_the_log_bound_and_its_gradient_lowers_it(conv_model):
    model, params, table = conv_model
    penalty_and_grad = jax.jit(jax.value_and_grad(lambda p: lip.lipschitz_penalty(model, p)))
    penalty, grads = penalty_and_grad(params)
    assert float(penalty) == pytest.approx(np.log(lip.network_bound(table)), rel=1e-5)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    stepped = jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, params, grads)
    assert float(penalty_and_grad(stepped)[0]) < float(penalty)


def test_an_attack_with_no_success_leaves_no_pair_bound():
    model = Model(layers=(Layer("dense", features=10),))
    params = model.init(jax.random.key(3))
    none = np.zeros((0, 28, 28, 1), np.float32)  # adv.x[adv.success] when nothing succeeded
    out = lip.measure(model, params, None, (none, none), key=jax.random.key(0), images=0, power_iters=1).metrics()
    assert "lipschitz/pair_ratio_lower_bound" not in out and out["lipschitz/upper_bound"] > 0


def test_jacobian_ascent_climbs_above_the_single_pass_and_stays_below_the_certified_bound():
    """On a linear map it finds ||W||_2 exactly; on a sigmoid MLP it is at least the single pass's
    value at its starts and never above ECLipsE-Fast's certified constant."""
    from adv_jax.certify import dense_chain, eclipse_fast
    from adv_jax.lipschitz import jacobian_ascent, max_jacobian_norm

    w = jax.random.normal(jax.random.key(0), (64, 10)) / 8.0
    linear = lambda x: x.reshape(-1) @ w  # noqa: E731
    starts = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1))
    assert float(jacobian_ascent(linear, starts, jax.random.key(2), 20)) == pytest.approx(
        float(jnp.linalg.norm(w, 2)), rel=1e-4)
    model = Model(layers=(Layer("dense", features=32, activation="sigmoid"), Layer("dense", features=10)),
                  input_shape=(8, 8, 1))
    params = jax.tree_util.tree_map(lambda p: 6.0 * p, model.init(jax.random.key(3)))
    single = lambda x: model.apply(params, x[None])[0]  # noqa: E731
    climbed = float(jacobian_ascent(single, starts, jax.random.key(4), 200))
    assert climbed >= float(max_jacobian_norm(single, starts, jax.random.key(5), 50)) * (1 - 1e-4)
    with jax.enable_x64(True):
        assert climbed <= float(eclipse_fast(dense_chain(model, params))) * (1 + 1e-5)
