"""Second-order certified bounds on smooth dense networks (sigmoid, tanh and identity layers): a
certified lower bound on each example's minimum L2 distortion from the curvature of its margins,
whose Hessians are bounded on the ball through CROWN's intervals (adv_jax/crown.py).

A margin g = spec . z (z the logits) is smooth, and on the set S = ball(x, r) cut by the box
[0, 1]^n, which is convex, Taylor's theorem with the mean-value form gives for every x + d in S

    g(x + d) >= g(x) + grad g(x) . d - K |d|^2 / 2,    K >= -lambda_min(Hess g) over S,

so min over S of g >= g(x) + min over S of grad g(x) . (x' - x) - K r^2 / 2: the linear part
exact for the ball and raised by the box (crown's Lagrangian dual bound), K below. CROWN's linear
lower bound of g holds on S too, and so does any mixture of the two, theta CROWN + (1 - theta)
second-order, whose linear parts are minimized over S together: the best of a few theta is kept,
never below CROWN's bound (theta = 1) on the same intervals. The second-order idea is the
curvature certificate of Singla & Feizi (2020); here K is local to the ball, so it shrinks with
the radius, and the radius comes from the same bisection as CROWN's.

The Hessian of a dense chain (a_k = W_k h_k + b_k, h_{k+1} = phi_k(a_k), h_0 = x) is

    Hess g = sum_k J_k^T diag(v_k * phi_k''(a_k)) J_k,   J_k = da_k/dx,  v_k = dg/dh_{k+1},

each hidden layer's curvature weighted by the gradient that reaches it from the margin. Over S each
a_k lies in CROWN's interval, which bounds phi_k' (>= 0) and phi_k''; v_k follows by interval
arithmetic backward from the spec row; n_k >= the negative part of v_k phi_k'' entrywise. Then
-lambda_min(Hess g) <= sum_k |diag(sqrt n_k) J_k|^2, and with J_k = W_k D_{k-1} W_{k-1} ... D_0 W_0,
D_i = diag(phi_i'(a_i)) between the ends of phi_i' on the intervals, each D_i is split, from the margin's side, either
evenly between its neighbours (D_i = S_i^1/2 E S_i^1/2, S_i its upper end, 0 <= E <= I) or into its
center and spread (D_i = C_i + R_i^1/2 E R_i^1/2, -I <= E <= I), whichever bound is smaller: each
norm is then one of fixed matrices, bounded through powers of a Gram matrix of hidden-layer size.

Works on a certify.DenseChain, one example at a time (vmap for batches), in the chain's dtype
(float64: the margins compared with 0 are small). Distances: L2 of the whole perturbation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adv_jax import crown
from adv_jax.certify import DenseChain, chain_logits

__all__ = [
    "SMOOTH", "certified_radius", "certifies_at", "derivative_ranges", "margin_lower_bounds", "negative_curvature",
    "row_lower_bounds",
]

Array = jax.Array
SMOOTH = ("sigmoid", "tanh", "identity")  # twice differentiable: Taylor's theorem holds
SQUARINGS = 7  # the norm bound's matrix squarings
MIXTURES = 9  # values of theta in [0, 1] tried for the mixture with CROWN's linear bound
ROUNDING_SLACK = 1e-9  # relative: covers the squarings' float64 rounding by far
_TINY = 1e-300


def _sigmoid_terms(z):
    s = jax.nn.sigmoid(z)
    return s * (1 - s), s * (1 - s) * (1 - 2 * s)


def _tanh_terms(z):
    t = jnp.tanh(z)
    return 1 - t**2, -2 * t * (1 - t**2)


# (phi', phi'') at z; the points where phi' peaks and where phi'' has its extremes (its only
# critical points): on an interval the ranges are attained at its ends or at those points clipped in
_TERMS = {"sigmoid": (_sigmoid_terms, 0.0, (-1.3169578969248166, 1.3169578969248166)),
          "tanh": (_tanh_terms, 0.0, (-0.6584789484624083, 0.6584789484624083))}


def derivative_ranges(activation: str, lo: Array, hi: Array) -> tuple[Array, Array, Array, Array]:
    """(d1_lo, d1_hi, d2_lo, d2_hi) (n,) each: phi' and phi'' over [lo, hi] lie within these."""
    if activation == "identity":
        one, zero = jnp.ones_like(lo), jnp.zeros_like(lo)
        return one, one, zero, zero
    if activation not in _TERMS:
        raise ValueError(f"curvature bounds need smooth activations {SMOOTH}, not {activation!r}")
    terms, peak, extremes = _TERMS[activation]
    d1_ends = jnp.stack([terms(lo)[0], terms(hi)[0]])
    d1_hi = jnp.maximum(terms(jnp.clip(peak, lo, hi))[0], d1_ends.max(0))  # never below an end, whatever the rounding
    d2 = jnp.stack([terms(lo)[1], terms(hi)[1]] + [terms(jnp.clip(e, lo, hi))[1] for e in extremes])
    return d1_ends.min(0), d1_hi, d2.min(0), d2.max(0)


def _times(a_lo: Array, a_hi: Array, b_lo: Array, b_hi: Array) -> tuple[Array, Array]:
    """The interval of a * b for a in [a_lo, a_hi], b in [b_lo, b_hi] (entrywise)."""
    products = jnp.stack([a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi])
    return products.min(0), products.max(0)


def _norm(a: Array) -> Array:
    """Upper bounds (b,) on the spectral norms of a (b, p, q): sqrt of the Gram matrix's largest
    eigenvalue, bounded by tr(G^(2^m))^(2^-m) (m = SQUARINGS; above lambda_max by at most
    p^(2^-m), 4% for p = 100, less where the spectrum decays), matrix products only."""
    gram = a @ jnp.swapaxes(a, 1, 2)
    trace = lambda g: jnp.trace(g, axis1=1, axis2=2)  # noqa: E731
    scale = jnp.maximum(trace(gram), _TINY)
    g, log_bound = gram / scale[:, None, None], jnp.zeros_like(scale)
    for i in range(1, SQUARINGS + 1):  # lambda(g)^(2^i) = prod of the traces divided out, times lambda(g_i) <= 1
        g = g @ g
        t = jnp.maximum(trace(g), _TINY)
        g, log_bound = g / t[:, None, None], log_bound + jnp.log(t) / 2**i
    return jnp.sqrt(scale * jnp.exp(log_bound) * (1 + ROUNDING_SLACK))


def _jacobian_norms(chain: DenseChain, slopes: list, left: Array, j: int) -> Array:
    """Upper bounds (b,) on |left_i D_(j-1) W_(j-1) ... D_0 W_0| over every diagonal D_k with
    entries in slopes[k] = (lo, hi) (phi' of hidden layer k); left (b, p, n) with n the width
    of h_j (j = 0: the input, |left_i|). D_(j-1) is split two ways, each a bound: evenly between
    its neighbours (D = S^1/2 E S^1/2, 0 <= E <= I) or into its center and spread
    (D = C + R^1/2 E R^1/2, -I <= E <= I); the smaller is kept."""
    if j == 0:
        return _norm(left)
    lo, hi = slopes[j - 1]
    center, spread, weight = (lo + hi) / 2, jnp.maximum(hi - lo, 0.0) / 2, chain.weights[j - 1]
    beyond_hi = _jacobian_norms(chain, slopes, (jnp.sqrt(hi)[:, None] * weight)[None], j - 1)
    beyond_spread = _jacobian_norms(chain, slopes, (jnp.sqrt(spread)[:, None] * weight)[None], j - 1)
    even = _norm(left * jnp.sqrt(hi)) * beyond_hi
    centered = (_jacobian_norms(chain, slopes, (left * center) @ weight, j - 1)
                + _norm(left * jnp.sqrt(spread)) * beyond_spread)
    return jnp.minimum(even, centered)


def negative_curvature(chain: DenseChain, bounds: list, rows: Array) -> Array:
    """K (m,) >= -lambda_min of the Hessian of rows . logits (rows (m, K)) over every input whose
    hidden pre-activations lie in `bounds` ([(l, u)] per hidden layer, crown.layer_bounds); >= 0."""
    ranges = [derivative_ranges(a, lo, hi) for a, (lo, hi) in zip(chain.activations, bounds)]
    slopes = [(d1_lo, d1_hi) for d1_lo, d1_hi, _, _ in ranges]
    v_lo = v_hi = rows @ chain.weights[len(bounds)]  # dg/dh at the last hidden layer's output, (m, n)
    total = jnp.zeros(len(rows), rows.dtype)
    for k in range(len(bounds) - 1, -1, -1):
        d1_lo, d1_hi, d2_lo, d2_hi = ranges[k]
        negative = jnp.maximum(-_times(v_lo, v_hi, d2_lo, d2_hi)[0], 0.0)
        total = total + _jacobian_norms(chain, slopes, jnp.sqrt(negative)[:, :, None] * chain.weights[k], k) ** 2
        g_lo, g_hi = _times(v_lo, v_hi, d1_lo, d1_hi)  # dg/da_k
        center, spread = (g_lo + g_hi) / 2, (g_hi - g_lo) / 2
        v_lo = center @ chain.weights[k] - spread @ jnp.abs(chain.weights[k])
        v_hi = center @ chain.weights[k] + spread @ jnp.abs(chain.weights[k])
    return total


def row_lower_bounds(chain: DenseChain, x: Array, rows: Array, eps: Array) -> Array:
    """Certified lower bounds (m,) of rows (m, K) . logits over the L2 ball(x, eps) cut by the box.
    Two lower bounds of each hold on the set: CROWN's linear one and the second-order one (value
    and gradient at x, curvature on the set); so does any mixture theta CROWN + (1 - theta)
    second-order, whose linear parts are minimized together (their worst directions differ). The
    best over MIXTURES values of theta (0: second-order alone, 1: CROWN's) is returned."""
    logits = lambda v: chain_logits(chain, v[None])[0]  # noqa: E731
    values, grads = rows @ logits(x), rows @ jax.jacrev(logits)(x)
    bounds = crown.layer_bounds(chain, x, eps, "l2")
    lines = [crown.relaxation(a, lo, hi) for a, (lo, hi) in zip(chain.activations, bounds)]
    crown_coef, crown_const = crown.backward_linear(chain, lines, rows, len(chain.weights) - 1)
    curvature = negative_curvature(chain, bounds, rows)

    def mixture(theta):
        coef = theta * crown_coef + (1 - theta) * grads
        const = theta * crown_const + (1 - theta) * (values - grads @ x - curvature * eps**2 / 2)
        return crown.input_minimum(coef, x, eps, "l2") + const

    return jnp.max(jax.vmap(mixture)(jnp.linspace(0.0, 1.0, MIXTURES, dtype=x.dtype)), axis=0)


def margin_lower_bounds(chain: DenseChain, x: Array, label: Array, eps: Array, target: Array = -1) -> Array:
    """`row_lower_bounds` of the margins of crown.margin_rows (K,) (untargeted: z_label - z_j, +inf
    at the label; target >= 0: z_j - z_target, -inf at the target). x (n,) flattened, pixels in [0, 1]."""
    rows, others, unused = crown.margin_rows(label, target, chain.weights[-1].shape[0], x.dtype)
    return unused.at[others].set(row_lower_bounds(chain, x, rows, eps))


def certifies_at(chain: DenseChain, x: Array, label: Array, eps: Array, target: Array = -1) -> Array:
    """Whether the set is certified: untargeted, every margin's bound > 0. To a target, any
    positive bound of a mixture of margins z_j - z_target with positive weights keeps the target
    below some class: the margins themselves, each one averaged with the label's, and their mean
    (skipped where target is the int -1: a traced -1 costs the mixtures, which change nothing)."""
    rows, others, _ = crown.margin_rows(label, target, chain.weights[-1].shape[0], x.dtype)
    anchor = rows[jnp.argmax(others == label)]
    untargeted = isinstance(target, int) and target < 0  # known when traced: no mixtures to bound
    mixed = rows if untargeted else jnp.concatenate([rows, (rows + anchor) / 2, rows.mean(0, keepdims=True)])
    bounds = row_lower_bounds(chain, x, mixed, eps)
    return jnp.where(target >= 0, jnp.any(bounds > 0), jnp.all(bounds[: len(rows)] > 0))


def certified_radius(chain: DenseChain, x: Array, label: Array, upper: Array, target: Array = -1,
                     steps: int = crown.RADIUS_STEPS) -> Array:
    """The largest L2 radius found (bisection on [0, upper]) at which the curvature bounds certify
    ball(x, r) cut by the box as class `label` (target >= 0: as never `target`): a lower bound on
    x's minimum L2 distortion, at most `upper` (the attack's); 0 where x is misclassified. x (n,)."""
    def certified(r):
        return certifies_at(chain, x, label, r, target)

    return crown.largest_radius(certified, jnp.asarray(upper, x.dtype), steps)
