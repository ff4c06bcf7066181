"""The curvature certificate (adv_jax/curvature.py) is sound: its derivative ranges hold the
activation's derivatives, its Hessian bound lies above the curvature of the margin at every sampled
point of the ball (on a vanishing ball, close to one norm of the layers' curvatures together), its
margin bounds lie below every sampled margin and never below CROWN's, and at its certified radius
neither samples nor PGD change the class; on a network with no hidden layer it is the exact minimum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adv_jax import crown, curvature
from adv_jax.attacks.common import is_adversarial
from adv_jax.attacks.gradient import PGD
from adv_jax.certify import DenseChain, chain_logits
from adv_jax.models.layers import ACTIVATIONS
from test_crown import N_IN
from test_crown import chain_of as crown_chain_of


def chain_of(activation: str, seed: int = 0, widths=(N_IN, 24, 16, 10)) -> DenseChain:
    return crown_chain_of(activation, seed, widths, jnp.float64)


def ball_samples(x, eps, count, seed=1):
    rng = np.random.default_rng(seed)
    delta = rng.normal(size=(count, x.size))
    delta *= eps * rng.uniform(0.3, 1, size=(count, 1)) / np.linalg.norm(delta, axis=1, keepdims=True)
    return np.clip(x + delta, 0, 1)


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_derivative_ranges_hold_both_derivatives_on_every_interval(activation):
    rng = np.random.default_rng(2)
    lo = jnp.asarray(rng.uniform(-6, 4, 300))
    hi = lo + jnp.asarray(rng.uniform(0, 6, 300))
    d1_lo, d1_hi, d2_lo, d2_hi = curvature.derivative_ranges(activation, lo, hi)
    z = lo[None] + (hi - lo)[None] * jnp.linspace(0, 1, 2001)[:, None]
    d1 = jax.vmap(jax.vmap(jax.grad(ACTIVATIONS[activation])))(z)
    d2 = jax.vmap(jax.vmap(jax.grad(jax.grad(ACTIVATIONS[activation]))))(z)
    tol = 1e-12
    assert jnp.all((d1 >= d1_lo - tol) & (d1 <= d1_hi + tol) & (d2 >= d2_lo - tol) & (d2 <= d2_hi + tol))
    # and tight: each end is attained on the grid to within its spacing
    assert float(jnp.max(jnp.abs(d1.max(0) - d1_hi))) < 1e-3 and float(jnp.max(jnp.abs(d2.min(0) - d2_lo))) < 1e-3


@pytest.mark.parametrize("activation, widths", [("sigmoid", (N_IN, 24, 16, 10)), ("tanh", (N_IN, 24, 16, 10)),
                                                ("sigmoid", (N_IN, 20, 10)), ("tanh", (N_IN, 16, 12, 12, 10))])
def test_the_hessian_bound_lies_above_the_margins_curvature_at_every_sampled_point(activation, widths):
    chain = chain_of(activation, seed=3, widths=widths)
    x = np.random.default_rng(4).uniform(0, 1, N_IN)
    eps = 1.5
    bounds = crown.layer_bounds(chain, jnp.asarray(x), eps, "l2")
    row = jnp.zeros(10).at[2].set(1.0).at[7].set(-1.0)
    bound = curvature.negative_curvature(chain, bounds, row[None])[0]
    margin = lambda v: row @ chain_logits(chain, v[None])[0]  # noqa: E731
    lowest = jax.vmap(lambda v: jnp.linalg.eigvalsh(jax.hessian(margin)(v))[0])(jnp.asarray(ball_samples(x, eps, 300)))
    assert float(bound) >= -float(lowest.min()) > 0
    assert float(bound) < 50 * -float(lowest.min())  # not vacuous


def negative_part_at(chain, x, row):
    """(lambda_max of sum_k J_k^T diag(n_k) J_k, sum_k of their lambda_max) at x, n_k the negative
    part of v_k phi_k''(a_k): one norm for the layers together, and one per layer added up."""
    activations, pre = chain.activations[:-1], []
    h = x
    for w, b, a in zip(chain.weights, chain.biases, activations):
        pre.append(w @ h + b)
        h = ACTIVATIONS[a](pre[-1])
    d1 = [jax.vmap(jax.grad(ACTIVATIONS[a]))(z) for a, z in zip(activations, pre)]
    d2 = [jax.vmap(jax.grad(jax.grad(ACTIVATIONS[a])))(z) for a, z in zip(activations, pre)]
    v = row @ chain.weights[-1]
    jacobians = [chain.weights[0]]
    for k in range(1, len(pre)):
        jacobians.append(chain.weights[k] @ (d1[k - 1][:, None] * jacobians[-1]))
    layers = []
    for k in range(len(pre) - 1, -1, -1):
        layers.append(jacobians[k].T @ (jnp.maximum(-v * d2[k], 0.0)[:, None] * jacobians[k]))
        v = chain.weights[k].T @ (d1[k] * v)
    largest = lambda m: float(jnp.linalg.eigvalsh(m)[-1])  # noqa: E731
    return largest(sum(layers)), sum(largest(m) for m in layers)


@pytest.mark.parametrize("activation, widths", [("sigmoid", (N_IN, 24, 16, 10)), ("tanh", (N_IN, 16, 12, 12, 10))])
def test_on_a_vanishing_ball_the_hessian_bound_tends_to_one_norm_of_the_layers_curvature_together(activation, widths):
    """The layers' curvatures share one bound (not a sum of norms): on a tiny ball it is within
    the centered bound's weight (1 + 1/8 per layer below the top) and the norm bound's slack of
    its value at x."""
    chain = chain_of(activation, seed=3, widths=widths)
    x = jnp.asarray(np.random.default_rng(4).uniform(0, 1, N_IN))
    row = jnp.zeros(10).at[2].set(1.0).at[7].set(-1.0)
    bound = float(curvature.negative_curvature(chain, crown.layer_bounds(chain, x, 1e-7, "l2"), row[None])[0])
    together, added_up = negative_part_at(chain, x, row)
    assert together * (1 - 1e-6) <= bound <= (1 + min(curvature.TAUS)) ** (len(widths) - 3) * 1.05 * together
    assert bound < added_up


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
@pytest.mark.parametrize("target", [-1, 4])
def test_margin_bounds_lie_below_every_sampled_margin(activation, target):
    chain = chain_of(activation, seed=5)
    x = np.random.default_rng(6).uniform(0, 1, N_IN)
    x[:20] = 0.0  # pixels the box holds on one side
    label = int(jnp.argmax(chain_logits(chain, jnp.asarray(x)[None])[0]))
    target = (label + 4) % 10 if target >= 0 else -1
    rows, others, _ = crown.margin_rows(label, target, 10, jnp.float64)
    for eps in (0.2, 1.0):
        bound = curvature.margin_lower_bounds(chain, jnp.asarray(x), label, eps, target)[others]
        margins = chain_logits(chain, jnp.asarray(ball_samples(x, eps, 2000))) @ rows.T
        assert jnp.all(margins >= bound[None] - 1e-9) and bool(jnp.all(jnp.isfinite(bound)))


def test_the_mixture_with_crowns_linear_bound_is_never_below_crowns_bound():
    chain = chain_of("sigmoid", seed=8)
    x = jnp.asarray(np.random.default_rng(9).uniform(0, 1, N_IN))
    label = int(jnp.argmax(chain_logits(chain, x[None])[0]))
    for target, eps in [(-1, 0.3), ((label + 2) % 10, 1.0)]:
        mixed = curvature.margin_lower_bounds(chain, x, label, eps, target)
        linear = crown.margin_lower_bounds(chain, x, label, eps, "l2", target=target)
        finite = jnp.isfinite(linear)
        assert jnp.all(mixed[finite] >= linear[finite] - 1e-9) and jnp.any(mixed[finite] > linear[finite] + 1e-3)


@pytest.mark.parametrize("target", [-1, 3])
def test_at_the_certified_radius_no_sample_and_no_pgd_point_changes_the_class(target):
    chain = chain_of("sigmoid", seed=4)
    xs = jnp.asarray(np.random.default_rng(5).uniform(0, 1, (3, N_IN)))
    labels = jnp.argmax(chain_logits(chain, xs), 1).astype(jnp.int32)
    targets = jnp.where(target >= 0, (labels + target) % 10, -1).astype(jnp.int32)
    radii = jax.jit(jax.vmap(lambda x, y, t: curvature.certified_radius(chain, x, y, 5.0, t)))(xs, labels, targets)
    assert jnp.all(radii > 0) and jnp.all(radii < 5.0)

    def logits_one(v):
        return chain_logits(chain, v[None])[0]

    for x, y, t, r in zip(xs, labels, targets, radii):
        samples = chain_logits(chain, jnp.asarray(ball_samples(np.asarray(x), float(r), 2000, seed=6)))
        assert not jnp.any(is_adversarial(samples, y, t))
        x_adv = PGD(float(r), "l2", steps=100, relative_step_size=0.05)(logits_one, x, y, t, jax.random.key(0))
        assert not bool(is_adversarial(logits_one(x_adv), y, t))


def test_with_no_hidden_layer_the_radius_is_the_exact_minimum_to_the_nearest_class():
    """A linear model away from the box: the margin's minimum over the ball is exact and its
    curvature 0, so the radius is min_j (z_y - z_j) / |w_y - w_j| to bisection precision."""
    chain = chain_of("identity", seed=7, widths=(N_IN, 10))
    x = jnp.full(N_IN, 0.5)
    label = jnp.argmax(chain_logits(chain, x[None])[0]).astype(jnp.int32)
    w, z = chain.weights[0], chain_logits(chain, x[None])[0]
    others = jnp.arange(10) != label
    exact = jnp.min(((z[label] - z) / jnp.linalg.norm(w[label] - w, axis=1))[others])
    assert float(exact) * float(jnp.max(jnp.abs(w))) < 0.5  # the nearest point stays inside the box
    radius = curvature.certified_radius(chain, x, label, 1.0)
    assert float(exact) - 2**-13 <= float(radius) <= float(exact)


def test_a_relu_network_is_refused_by_name():
    chain = chain_of("relu", seed=0)
    with pytest.raises(ValueError, match="smooth activations.*'relu'"):
        curvature.margin_lower_bounds(chain, jnp.full(N_IN, 0.5), 0, 0.1)
