"""Certified Lipschitz bounds (adv_jax/certify.py, adv_jax/lipsdp.py) and the certified distortion
bracket: exact on a linear model, between a strong gradient-ascent lower bound and the product on
small random networks, above the exact constant of an enumerable ReLU network, the Schur-complement
check against the full LMI, local constants against sampled slopes, and certified distortions of a
trained model never above what L-BFGS and PGD-min found; lipschitz.json carries every bound."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adv_jax
from adv_jax import certify, lipschitz, lipsdp
from adv_jax.attacks.generate import Adversarials, generate
from adv_jax.config import compose
from adv_jax.models import Layer, Model

pytest.importorskip("cvxpy")


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _model(sizes, activation, seed):
    """An MLP on (sizes[0],) inputs with hidden widths sizes[1:-1] and sizes[-1] logits."""
    layers = tuple(Layer("dense", features=n, activation=activation) for n in sizes[1:-1])
    model = Model(layers=layers + (Layer("dense", features=sizes[-1]),), input_shape=(sizes[0],))
    params = model.init(jax.random.key(seed))
    # Nonzero biases, so that slopes differ between units at a given input.
    params = tuple({**p, "b": 0.5 * jax.random.normal(jax.random.key(seed + i), p["b"].shape)}
                   for i, p in enumerate(params))
    return model, params


def _all_bounds(model, params):
    found = lipschitz.certified_bounds(model, params, lipschitz.METHODS, lipsdp_max_size=1000)
    assert not found["skipped"]
    return found["bounds"]


def _ascent_lower_bound(model, params, n_in, seed, starts=64, steps=300):
    """max over x of ||J(x)||_2 found by Adam from `starts` random points (float64)."""
    f = lambda x: model.apply(params, x[None])[0]  # noqa: E731
    sigma = lambda x: jnp.linalg.svd(jax.jacfwd(f)(x), compute_uv=False)[0]  # noqa: E731
    grad = jax.jit(jax.vmap(jax.value_and_grad(sigma)))
    x = 2 * jax.random.normal(jax.random.key(seed), (starts, n_in))
    m = v = jnp.zeros_like(x)
    best = 0.0
    for i in range(1, steps + 1):
        value, g = grad(x)
        best = max(best, float(value.max()))
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g ** 2
        x = x + 0.05 * (m / (1 - 0.9 ** i)) / (jnp.sqrt(v / (1 - 0.999 ** i)) + 1e-12)
    return best


def test_every_bound_of_a_linear_model_is_its_norm():
    model = Model(layers=(Layer("dense", features=10),))
    params = model.init(jax.random.key(0))
    norm = float(np.linalg.svd(np.asarray(params[0]["w"], np.float64), compute_uv=False)[0])
    for method, value in _all_bounds(model, params).items():
        assert value == pytest.approx(norm, rel=1e-6), method
    # Pair constants are the row differences, and the certified radius is the distance to the
    # hyperplane z_j = z_t (the bound is attained without the box).
    w = np.asarray(params[0]["w"], np.float64)
    pairs = np.asarray(lipschitz.pair_lipschitz(model, params))
    assert pairs == pytest.approx(np.linalg.norm(w.T[:, None] - w.T[None], axis=-1), rel=1e-9)
    x = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1), jnp.float64)
    logits = model.apply(params, x)
    y, t = jnp.argmax(logits, 1), (jnp.argmax(logits, 1) + 1) % 10
    radius = certify.certified_distortion(logits, y, t, pairs)
    gap = logits[jnp.arange(5), y] - logits[jnp.arange(5), t]
    assert np.all(np.asarray(radius) >= np.asarray(gap / pairs[np.asarray(y), np.asarray(t)]) * (1 - 1e-12))


@pytest.mark.parametrize("sizes, activation, seed", [
    ((5, 8, 8, 3), "sigmoid", 0), ((5, 8, 8, 3), "tanh", 1), ((4, 10, 6, 6, 3), "relu", 2),
    ((6, 12, 4), "sigmoid", 3),
])
def test_certified_bounds_sit_between_gradient_ascent_and_the_product(sizes, activation, seed):
    model, params = _model(sizes, activation, seed)
    bounds = _all_bounds(model, params)
    lower = _ascent_lower_bound(model, params, sizes[0], seed)
    for method in ("eclipse_fast", "lipsdp"):
        assert lower <= bounds[method] * (1 + 1e-9) and bounds[method] <= bounds["product"] * (1 + 1e-9), method
    assert bounds["lipsdp"] < bounds["eclipse_fast"] < bounds["product"]  # each is tighter here


def test_the_checked_lipsdp_bound_is_the_solvers_optimum():
    with jax.enable_x64(True):
        model, params = _model((6, 10, 10, 3), "sigmoid", 7)
        result = lipsdp.lipsdp(certify.dense_chain(model, params))
    assert result["status"] == "optimal"
    assert result["bound"] == pytest.approx(result["solver_bound"], rel=2e-3)


def test_every_bound_is_above_the_exact_constant_of_an_enumerable_relu_network():
    """f = W2 relu(W1 x + b1): over R^n its constant is the max over realizable activation
    patterns D of ||W2 D W1||; the relaxations allow every D in {0, 1}^h, whose max is above."""
    model, params = _model((4, 8, 3), "relu", 11)
    w1, b1, w2 = (np.asarray(params[0]["w"]).T, np.asarray(params[0]["b"]), np.asarray(params[1]["w"]).T)
    norm = lambda d: np.linalg.svd(w2 @ (np.asarray(d)[:, None] * w1), compute_uv=False)[0]  # noqa: E731
    every = max(norm(d) for d in itertools.product([0, 1], repeat=8))
    xs = 5 * np.random.default_rng(0).normal(size=(200000, 4))
    realized = {tuple(p) for p in (xs @ w1.T + b1 > 0).astype(int)}
    exact = max(norm(d) for d in realized)
    assert len(realized) > 20 and exact <= every * (1 + 1e-12)
    for method, value in _all_bounds(model, params).items():
        assert value >= every * (1 - 1e-6) >= exact * (1 - 1e-6), method


def test_schur_bound_is_the_smallest_rho_of_the_full_lmi():
    model, params = _model((5, 7, 6, 3), "sigmoid", 5)
    chain = certify.dense_chain(model, params)
    w0, w1, w2 = (np.asarray(w) * s for w, s in zip(chain.weights, (0.25, 0.25, 1.0)))
    rng = np.random.default_rng(0)
    _, _, fast_t = certify.output_gram(chain)
    t1, t2 = (np.asarray(t) * rng.uniform(0.7, 1.3, t.shape) for t in fast_t)
    bound = float(certify.schur_bound(chain, [jnp.asarray(t1), jnp.asarray(t2)]))

    def lmi(rho):
        n0, n1, n2 = 5, 7, 6
        m = np.zeros((n0 + n1 + n2,) * 2)
        m[:n0, :n0] = np.eye(n0)  # the LMI with rho on the output: T = (rho-at-input T) / rho
        m[n0:n0 + n1, n0:n0 + n1], m[n0 + n1:, n0 + n1:] = 2 * np.diag(t1), 2 * np.diag(t2) - w2.T @ w2 / rho
        m[n0:n0 + n1, :n0] = -np.diag(t1) @ w0
        m[n0 + n1:, n0:n0 + n1] = -np.diag(t2) @ w1
        m = np.tril(m) + np.tril(m, -1).T
        return np.linalg.eigvalsh(m)[0]

    assert lmi(bound ** 2 * (1 + 1e-9)) >= -1e-9 and lmi(bound ** 2 * (1 - 1e-4)) < 0


def test_local_constants_hold_on_the_ball_and_never_exceed_the_global_ones():
    model, params = _model((6, 10, 10, 4), "sigmoid", 9)
    chain = certify.dense_chain(model, params)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(0.2, 0.8, (8, 6)))
    eps = jnp.full(8, 0.15)
    grams, certified = certify.local_output_gram(chain, x, eps, chunk_size=3)  # chunks, one padded
    local = np.asarray(certify.pair_constants(grams))
    global_ = np.asarray(certify.pair_constants(certify.output_gram(chain)[0]))
    assert np.all(certified) and grams.shape == (8, 4, 4)
    assert np.all(local <= global_ * (1 + 1e-9)) and np.mean(local < 0.9 * global_) > 0.5
    # Sampled pairs inside the ball (and the box) never beat the local constant.
    for i in range(8):
        d = rng.normal(size=(4000, 6))
        pts = np.clip(np.asarray(x[i]) + 0.15 * rng.uniform(size=(4000, 1)) ** (1 / 6) * d
                      / np.linalg.norm(d, axis=1, keepdims=True), 0, 1)
        z, z0 = np.asarray(certify.chain_logits(chain, jnp.asarray(pts))), np.asarray(certify.chain_logits(chain, x[i:i + 1]))
        dist = np.linalg.norm(pts - np.asarray(x[i]), axis=1)
        slopes = np.abs((z - z0)[:, :, None] - (z - z0)[:, None, :]) / dist[:, None, None]
        assert np.all(slopes.max(0) <= local[i] * (1 + 1e-7))


def test_an_uncertified_local_layer_falls_back_to_the_global_constants():
    """Power iteration from the diagonal of G = s^2 [[1, -1], [-1, 1]] (equal slopes s) stays in
    its null space:
    the estimate is 0, X = 2 t I - t^2 G is not positive definite, and the Cholesky that would
    certify it fails. That example then keeps the global P, flagged as not certified locally."""
    chain = certify.DenseChain((jnp.array([[1.0, 0.0], [-1.0, 0.0]]), jnp.eye(2)),
                               (jnp.array([0.0, 0.5]), jnp.zeros(2)), ("sigmoid", "identity"))
    x = jnp.array([[0.25, 0.5], [0.0, 0.5]])  # equal slopes (z = 0.25, 0.25), then unequal ones
    grams, certified = certify.local_output_gram(chain, x, jnp.full(2, 0.1))
    global_p = certify.output_gram(chain)[0]
    assert not certified[0] and np.allclose(grams[0], global_p)
    assert certified[1] and np.all(np.asarray(certify.pair_constants(grams[1]))
                                   <= np.asarray(certify.pair_constants(global_p)) * (1 + 1e-9))


def test_local_constants_on_a_subset_leave_the_global_bound_for_the_rest():
    model, params = _model((6, 10, 10, 4), "sigmoid", 4)
    chain = certify.dense_chain(model, params)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(0.2, 0.8, (8, 6)))
    y, target = jnp.argmax(certify.chain_logits(chain, x), 1), jnp.full(8, -1)
    pair_l = certify.pair_constants(certify.output_gram(chain)[0])
    global_ = certify.certified_distortion(certify.chain_logits(chain, x), y, target, pair_l)
    d = rng.normal(size=(8, 6))  # "adversarials" just past the global bound: room to tighten it
    x_adv = x + 1.3 * global_[:, None] * d / np.linalg.norm(d, axis=1, keepdims=True)
    every = certify.bracket(chain, x, x_adv, y, target, pair_l)
    first = certify.bracket(chain, x, x_adv, y, target, pair_l, local_examples=3)
    assert np.allclose(first["local"][:3], every["local"][:3]) and np.all(first["local_certified"][:3])
    assert np.array_equal(first["local"][3:], first["global"][3:]) and not np.any(first["local_certified"][3:])
    assert np.any(every["local"][3:] > every["global"][3:])  # so the subset did leave something out


def test_a_trained_runs_lipschitz_json_and_certified_distortions(tmp_path, tiny_overrides):
    """One tiny trained run (FC32-32-10 on 2000 P1 images, 3 epochs, the shared model cache),
    attacked by L-BFGS, every certified method on: lipschitz.json names every bound and its time,
    the product bound is the layers' product and above the lower bounds, the table read back from
    the saved parameters is the logged one, and the certified distortions are never above what
    L-BFGS or PGD-min found. One test, so the
    run is made once (a module fixture is made again on every xdist worker that needs it)."""
    cfg = compose([*tiny_overrides, "train=adam", "train.learning_rate=1e-2", "model=fc100",
                   "model.hidden=[32,32]", "attack=lbfgs",
                   "attack.num_examples=12", "lipschitz.images=12",
                   "lipschitz.methods=[product,eclipse_fast,lipsdp]"])
    run_dir = tmp_path / "run"
    with jax.enable_x64(False):  # a run as the CLI makes it (L-BFGS is float32)
        metrics = adv_jax.run(cfg, run_dir)

    stored = json.loads((run_dir / "lipschitz.json").read_text())
    assert metrics["error/test"] < 0.3  # it did learn something: real data, real training
    assert set(stored["bounds"]) == {"product", "eclipse_fast", "lipsdp"}
    assert stored["bounds"]["product"] == pytest.approx(stored["lipschitz/upper_bound"])
    upper = metrics["lipschitz/upper_bound"]
    assert upper == pytest.approx(math.prod(row["bound"] for row in stored["layers"]), rel=1e-6)
    for key in ("lipschitz/jacobian_lower_bound", "lipschitz/pair_ratio_lower_bound"):
        assert 0 < metrics[key] <= upper * (1 + 1e-5), key
    assert stored["certified"] == min(stored["bounds"].values()) == metrics["lipschitz/certified"]
    assert set(stored["seconds"]) >= {"product", "eclipse_fast", "lipsdp", "jacobian", "pair_ratio"}
    low = max(stored["lower_bounds"].values())
    assert 0 < low <= stored["certified"] < stored["lipschitz/upper_bound"]
    bracket = stored["bracket"]
    assert 0 < bracket["mean_lower_rms_global"] <= bracket["mean_lower_rms_local"] <= bracket["mean_attack_rms"]
    assert bracket["local_examples"] == bracket["examples"] >= 10  # fewer than lipschitz.local_examples

    run = adv_jax.load_run(run_dir)
    again = lipschitz.layer_table(run.model, run.params, run.model.input_shape)  # from the saved params
    assert [r["bound"] for r in again] == pytest.approx([r["bound"] for r in stored["layers"]], rel=1e-6)
    found = [Adversarials.load(run_dir / "adversarials.npz")]
    test = adv_jax.load_splits(run.config.data)["test"]
    pgd = compose(["attack=pgd_min", "attack.params.steps=20"]).attack
    found.append(generate(pgd, run.logits_fn, test.x[:12], test.y[:12], key=jax.random.key(3),
                          progress=False).adversarials)
    for adv in found:
        assert adv.success.sum() >= 10
        _, per = lipschitz.bracket_summary(run.model, run.params, adv._asdict())
        assert np.all(per["global"] <= per["local"]) and np.all(per["local"] <= per["attack"] * (1 + 1e-9))
        assert np.any(per["local"] > per["global"] * (1 + 1e-6))  # the local bound is tighter somewhere


def test_rank_correlations_say_which_bound_orders_the_runs_by_distortion():
    from adv_jax.reports.lipschitz_compare import correlation_line, rank_correlations

    # The product misorders runs 1 and 2; the tightest bound orders all four by distortion.
    entries = [{"upper": u, "certified": c, "metrics": {"attack/mean_distortion": d, "attack/success_rate": 1.0}}
               for u, c, d in ((10, 8, 0.02), (20, 5, 0.04), (15, 4, 0.05), (30, 2, 0.09))]
    rho = rank_correlations(entries)
    assert rho["certified"] == pytest.approx(-1.0) and rho["product"] == pytest.approx(0.8)
    assert "product 0.800, tightest certified bound -1.000" in correlation_line(entries)
    assert rank_correlations(entries[:2]) == {"product": None, "certified": None, "runs": 2}
    collapsed = {"upper": 1e-13, "certified": 1e-13, "metrics": {"attack/mean_distortion": 0.0,
                                                                 "attack/success_rate": 0.1}}
    assert rank_correlations(entries + [collapsed]) == rho  # its distortion means nothing
    assert "(1 collapsed left out)" in correlation_line(entries + [collapsed])


def test_an_unknown_method_is_refused_before_the_run_and_a_conv_net_keeps_the_product():
    from adv_jax.validate import ConfigError, check

    with pytest.raises(ConfigError, match=r"lipschitz.methods\[1\]='lipsd'"):
        check(compose(["lipschitz.methods=[product,lipsd]"]))
    model = adv_jax.build_model(compose(["model=conv"]).model)
    found = lipschitz.certified_bounds(model, model.init(jax.random.key(0)), lipschitz.METHODS)
    assert list(found["bounds"]) == ["product"] and set(found["skipped"]) == {"eclipse_fast", "lipsdp"}
    assert "dense layers only" in found["skipped"]["lipsdp"]


def test_lipsdp_above_the_size_limit_is_skipped_with_its_reason():
    model, params = _model((20, 30, 30, 3), "sigmoid", 4)
    found = lipschitz.certified_bounds(model, params, lipschitz.METHODS, lipsdp_max_size=50)
    assert "lipsdp" not in found["bounds"] and "size 80" in found["skipped"]["lipsdp"]
    assert found["bounds"]["eclipse_fast"] <= found["bounds"]["product"]
