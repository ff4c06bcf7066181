"""CROWN (adv_jax/crown.py) is sound: every relaxation holds its activation between its lines,
every sampled point of the ball cut by the box lies inside the layer bounds and above the margin
bounds, and at the certified radius neither samples nor PGD change the class."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adv_jax import crown
from adv_jax.attacks.common import is_adversarial
from adv_jax.attacks.gradient import PGD
from adv_jax.certify import DenseChain
from adv_jax.models.layers import ACTIVATIONS

N_IN = 64  # an 8x8 image


def chain_of(activation: str, seed: int = 0, widths=(N_IN, 24, 16, 10), dtype=jnp.float32) -> DenseChain:
    rng = np.random.default_rng(seed)
    weights = tuple(jnp.asarray(rng.normal(size=(o, i)) * 2.0 / np.sqrt(i), dtype)
                    for i, o in zip(widths[:-1], widths[1:]))
    biases = tuple(jnp.asarray(rng.normal(size=o) * 0.1, dtype) for o in widths[1:])
    return DenseChain(weights, biases, (activation,) * (len(widths) - 2) + ("identity",))


def forward(chain: DenseChain, x):
    """Pre-activations of every layer and the logits, for points x (S, n)."""
    pre, h = [], x
    for w, b, act in zip(chain.weights, chain.biases, chain.activations):
        z = h @ w.T + b
        pre.append(z)
        h = ACTIVATIONS[act](z)
    return pre, h


def ball_samples(x, eps, norm, count, seed=1):
    rng = np.random.default_rng(seed)
    if norm == "linf":  # many corners: where the extremes of a near-linear map lie
        delta = eps * rng.choice([-1.0, 1.0], size=(count, x.size)) * rng.uniform(0.5, 1, size=(count, 1))
    else:
        delta = rng.normal(size=(count, x.size))
        delta *= eps * rng.uniform(0.5, 1, size=(count, 1)) ** (1 / x.size) / np.linalg.norm(delta, axis=1, keepdims=True)
    return np.clip(x + delta, 0, 1).astype(np.float32)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_each_relaxation_holds_its_activation_between_its_lines(activation):
    rng = np.random.default_rng(2)
    lo = jnp.asarray(rng.uniform(-6, 4, 300), jnp.float32)
    hi = lo + jnp.asarray(rng.uniform(0, 6, 300), jnp.float32)
    a_lo, c_lo, a_up, c_up = crown.relaxation(activation, lo, hi)
    z = lo[None] + (hi - lo)[None] * jnp.linspace(0, 1, 401)[:, None]
    phi = ACTIVATIONS[activation](z)
    assert jnp.all(a_lo * z + c_lo <= phi + 1e-5) and jnp.all(phi <= a_up * z + c_up + 1e-5)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_every_free_slope_gives_lines_that_hold(activation):
    """alpha-CROWN's family: any t_lo, t_up in [0, 1] is a valid pair of lines; t = CROWN's
    defaults reproduces CROWN's lines."""
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        lo = jnp.asarray(rng.uniform(-6, 4, 300), jnp.float64)
        hi = lo + jnp.asarray(rng.uniform(0, 6, 300), jnp.float64)
        z = lo[None] + (hi - lo)[None] * jnp.linspace(0, 1, 401)[:, None]
        phi = ACTIVATIONS[activation](z)
        for t in (0.0, 0.3, 1.0):
            t_lo, t_up = jnp.full_like(lo, t), jnp.full_like(lo, 1 - t)
            a_lo, c_lo, a_up, c_up = crown.relaxation(activation, lo, hi, t_lo, t_up)
            assert jnp.all(a_lo * z + c_lo <= phi + 1e-9) and jnp.all(phi <= a_up * z + c_up + 1e-9)
        defaults = crown.relaxation(activation, lo, hi, *crown.default_slopes(activation, lo, hi))
        for got, want in zip(defaults, crown.relaxation(activation, lo, hi)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("activation, norm, eps", [("sigmoid", "l2", 0.6), ("relu", "linf", 0.03)])
def test_optimized_slopes_tighten_the_margins_and_stay_sound(activation, norm, eps):
    with jax.enable_x64(True):
        chain = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), chain_of(activation, seed=6))
        x = np.random.default_rng(8).uniform(0, 1, N_IN)
        label = int(jnp.argmax(forward(chain, x[None])[1][0]))
        plain = crown.margin_lower_bounds(chain, jnp.asarray(x), label, eps, norm)
        optimized = crown.margin_lower_bounds(chain, jnp.asarray(x), label, eps, norm, slope_steps=20)
        logits = forward(chain, ball_samples(x, eps, norm, 4000).astype(np.float64))[1]
    others = np.arange(10) != label
    assert np.all(np.asarray(optimized)[others] >= np.asarray(plain)[others])
    assert np.any(np.asarray(optimized)[others] > np.asarray(plain)[others] + 1e-3)
    margins = np.asarray(logits[:, label:label + 1] - logits)
    assert np.all(margins[:, others] >= np.asarray(optimized)[None, others] - 1e-6)


@pytest.mark.parametrize("activation, norm, eps", [("relu", "linf", 0.02), ("sigmoid", "linf", 0.05),
                                                   ("tanh", "l2", 0.3), ("relu", "l2", 0.3)])
def test_bounds_contain_every_sampled_point(activation, norm, eps):
    chain = chain_of(activation)
    x = np.random.default_rng(3).uniform(0, 1, N_IN).astype(np.float32)
    x[:10] = 0.0  # pixels on the box's edge
    samples = ball_samples(x, eps, norm, 4000)
    pre, logits = forward(chain, samples)
    for (lo, hi), z in zip(crown.layer_bounds(chain, jnp.asarray(x), eps, norm), pre):
        assert jnp.all(z >= lo - 1e-4) and jnp.all(z <= hi + 1e-4)
    label = int(jnp.argmax(forward(chain, x[None])[1][0]))
    margins = logits[:, label:label + 1] - logits
    bound = crown.margin_lower_bounds(chain, jnp.asarray(x), label, eps, norm)
    others = jnp.arange(10) != label
    assert jnp.all(margins[:, others] >= bound[None, others] - 1e-4) and bool(jnp.all(jnp.isfinite(bound[others])))


@pytest.mark.parametrize("activation, norm", [("relu", "linf"), ("sigmoid", "l2")])
def test_at_the_certified_radius_no_sample_and_no_pgd_point_changes_the_class(activation, norm):
    chain = chain_of(activation, seed=4)
    xs = np.random.default_rng(5).uniform(0, 1, (4, N_IN)).astype(np.float32)
    labels = jnp.argmax(forward(chain, xs)[1], 1)
    upper = 0.5 if norm == "linf" else 5.0
    radii = jax.vmap(lambda x, y: crown.certified_radius(chain, x, y, upper, norm))(jnp.asarray(xs), labels)
    assert jnp.all(radii > 0) and jnp.all(radii < upper)

    def logits_one(v):
        return forward(chain, v[None])[1][0]

    for x, y, r in zip(xs, labels, radii):
        samples = ball_samples(x, float(r), norm, 2000, seed=6)
        assert not jnp.any(is_adversarial(forward(chain, samples)[1], y, -1))
        x_adv = PGD(float(r), norm, steps=100, relative_step_size=0.05)(logits_one, jnp.asarray(x), y, jnp.int32(-1),
                                                                       jax.random.key(0))
        assert not bool(is_adversarial(logits_one(x_adv), y, -1))
        # and the bound is not vacuous: four times the radius, PGD or the margin bound gives way
        assert not bool(jnp.all(crown.margin_lower_bounds(chain, jnp.asarray(x), y, 4 * r, norm) > 0))


def test_the_l2_bound_over_ball_and_box_is_sound_and_beats_the_ball_alone():
    """On an image with pixels at 0 and 1, the dual bound on min coef . x' over the L2 ball cut
    by the box lies below every sampled point of that set and at or above the ball's own bound,
    strictly above it for some rows (the box blocks directions)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        x = np.clip(rng.uniform(-0.5, 1.5, N_IN), 0, 1)
        coef = jnp.asarray(rng.normal(size=(30, N_IN)))
        eps = 0.8
        bound = np.asarray(crown.input_minimum(coef, jnp.asarray(x), eps, "l2"))
        ball = np.asarray(coef @ x - eps * jnp.linalg.norm(coef, axis=1))
        samples = ball_samples(x, eps, "l2", 20000).astype(np.float64)
        inside = samples[np.linalg.norm(samples - x, axis=1) <= eps]
        assert np.all(np.asarray(coef) @ inside.T >= bound[:, None] - 1e-9)
        assert np.all(bound >= ball - 1e-9) and np.any(bound > ball + 0.1)


@pytest.mark.parametrize("activation, norm, eps", [("sigmoid", "l2", 0.6), ("relu", "linf", 0.04)])
def test_any_slopes_of_every_layer_bound_every_sampled_margin(activation, norm, eps):
    """alpha-CROWN's whole family: with random free slopes for the hidden layers' intervals and
    for the margins (three hidden layers, so intervals depend on earlier slopes), the margins'
    bounds stay below every sampled point's; the start slopes give CROWN's bounds."""
    with jax.enable_x64(True):
        chain = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                       chain_of(activation, seed=9, widths=(N_IN, 20, 16, 12, 10)))
        x = np.random.default_rng(10).uniform(0, 1, N_IN)
        label = int(jnp.argmax(forward(chain, x[None])[1][0]))
        bounds = crown.layer_bounds(chain, jnp.asarray(x), eps, norm)
        spec = crown._margin_spec(label, 10, jnp.float64)[np.arange(10) != label]
        start = crown._start_slopes(chain, bounds, spec)
        at_start = crown._optimized_margins(chain, bounds, start, spec, jnp.asarray(x), eps, norm)
        plain = crown.margin_lower_bounds(chain, jnp.asarray(x), label, eps, norm)
        np.testing.assert_allclose(at_start, np.asarray(plain)[np.arange(10) != label], rtol=1e-9, atol=1e-9)
        leaves, tree = jax.tree_util.tree_flatten(start)
        rng = np.random.default_rng(12)
        margins = forward(chain, ball_samples(x, eps, norm, 4000).astype(np.float64))[1]
        margins = np.asarray(margins[:, label:label + 1] - margins)[:, np.arange(10) != label]
        for _ in range(3):
            slopes = jax.tree_util.tree_unflatten(tree, [jnp.asarray(rng.uniform(0, 1, t.shape)) for t in leaves])
            bound = crown._optimized_margins(chain, bounds, slopes, spec, jnp.asarray(x), eps, norm)
            assert np.all(margins >= np.asarray(bound)[None] - 1e-9)


def test_alpha_crown_radius_from_crowns_is_above_it_and_no_pgd_point_within_it_changes_the_class():
    def logits_one(v):
        return forward(chain, v[None])[1][0]

    with jax.enable_x64(True):
        chain = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), chain_of("sigmoid", seed=9))
        x = jnp.asarray(np.random.default_rng(5).uniform(0, 1, N_IN))
        y = jnp.argmax(forward(chain, x[None])[1][0]).astype(jnp.int32)
        plain = crown.certified_radius(chain, x, y, 5.0, "l2")
        alpha = crown.certified_radius(chain, x, y, 2 * plain, "l2", steps=10, slope_steps=10, lower=plain)
        x_adv = PGD(float(alpha), "l2", steps=100, relative_step_size=0.05)(logits_one, x, y, jnp.int32(-1),
                                                                           jax.random.key(0))
        assert float(alpha) > 1.02 * float(plain)
        assert not bool(is_adversarial(logits_one(x_adv), y, -1))


def test_to_a_target_the_certified_radius_is_at_least_the_untargeted_one_and_pgd_does_not_reach_it():
    """Certifying that a target is never the answer needs one class above it (the label or any
    other), which all of the label's margins give: the radius can only be larger."""
    chain = chain_of("sigmoid", seed=4)
    xs = jnp.asarray(np.random.default_rng(5).uniform(0, 1, (4, N_IN)).astype(np.float32))
    labels = jnp.argmax(forward(chain, xs)[1], 1).astype(jnp.int32)
    targets = ((labels + 3) % 10).astype(jnp.int32)
    radius = jax.vmap(lambda x, y, t: crown.certified_radius(chain, x, y, 5.0, "l2", target=t))
    untargeted, targeted = radius(xs, labels, jnp.full(4, -1)), radius(xs, labels, targets)
    assert jnp.all(targeted >= untargeted) and jnp.any(targeted > 1.05 * untargeted)

    def logits_one(v):
        return forward(chain, v[None])[1][0]

    for x, y, t, r in zip(xs, labels, targets, targeted):
        x_adv = PGD(float(r), "l2", steps=100, relative_step_size=0.05)(logits_one, x, y, t, jax.random.key(0))
        assert int(jnp.argmax(logits_one(x_adv))) != int(t)
