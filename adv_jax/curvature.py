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
arithmetic backward from the spec row; n_k >= the negative part of v_k phi_k'' entrywise, so
-Hess g <= W_0^T P_0 W_0 (Loewner order) with, from the top hidden layer down (B = 0 there),

    P_k = diag(n_k) + B_k,   B_k >= D_k W_(k+1)^T P_(k+1) W_(k+1) D_k  for every D_k,

D_k = diag(phi_k'(a_k)) between the ends of phi_k' on the intervals. B_k is a fixed matrix:
D_k's upper end S_k scaling the curvature evenly (lambda_max(S^1/2 A S^1/2) S), or D_k split into
its center and spread, the center kept exactly ((1 + tau) C A C + (1 + 1/tau) lambda_max(R^1/2 A R^1/2)
R for A = W^T P W); per margin the one whose next norm looks smallest (power iteration chooses:
every choice is a bound). K = lambda_max(W_0^T P_0 W_0) = lambda_max(T P_0 T^T) with T^T T = W_0 W_0^T (QR of W_0^T),
one eigenvalue of a matrix of hidden-layer size, bounded through its powers (matrix products
only): the layers' curvatures share one bound rather than adding up theirs.

Works on a certify.DenseChain, one example at a time (vmap for batches), in the chain's dtype
(float64: the margins compared with 0 are small). Distances: L2 of the whole perturbation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adv_jax import crown
from adv_jax.certify import DenseChain, chain_logits

__all__ = [
    "SMOOTH", "certified_radius", "derivative_ranges", "first_order", "margin_lower_bounds", "negative_curvature",
    "row_lower_bounds",
]

Array = jax.Array
SMOOTH = ("sigmoid", "tanh", "identity")  # twice differentiable: Taylor's theorem holds
SQUARINGS = 7  # the norm bound's matrix squarings
TAUS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # weights of the centered slope bound tried
POWER_STEPS = 30  # power iterations that choose among the Hessian bounds
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


def _largest_eigenvalues(sym: Array) -> Array:
    """Upper bounds (b,) on the largest |eigenvalue| of symmetric sym (b, p, p): tr(sym^(2^m))^(2^-m)
    (m = SQUARINGS; above it by at most p^(2^-m), 4% for p = 100, less where the spectrum decays),
    matrix products only."""
    trace = lambda g: jnp.trace(g, axis1=1, axis2=2)  # noqa: E731
    g = (sym + jnp.swapaxes(sym, 1, 2)) / 2
    scale = jnp.maximum(jnp.sqrt(jnp.sum(g * g, axis=(1, 2))), _TINY)  # not the trace: rounding can make it <= 0
    g, log_bound = g / scale[:, None, None], jnp.zeros_like(scale)
    for i in range(1, SQUARINGS + 1):  # lambda(g)^(2^i) = prod of the traces divided out, times lambda(g_i) <= 1
        g = g @ g
        t = jnp.maximum(trace(g), _TINY)
        g, log_bound = g / t[:, None, None], log_bound + jnp.log(t) / 2**i
    return scale * jnp.exp(log_bound) * (1 + ROUNDING_SLACK)


def _estimated_eigenvalues(root: Array, sym: Array) -> Array:
    """Estimates (c, m) (power iteration: not bounds) of lambda_max(root sym root^T) for sym
    (c, m, n, n) PSD and root (p, n): they only choose which bound to carry, so need not hold."""
    def image(v):  # root sym root^T v, as matrix-vector products
        return jnp.einsum("cmjk,cmk->cmj", sym, v @ root) @ root.T

    def step(v, _):
        w = image(v)
        return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), _TINY), None

    v, _ = jax.lax.scan(step, jnp.ones(sym.shape[:2] + root.shape[:1], sym.dtype), None, length=POWER_STEPS)
    return jnp.sum(v * image(v), axis=-1)


def _scaled(d: Array, a: Array) -> Array:
    """diag(d) a diag(d) for d (n,), a (m, n, n)."""
    return d[None, :, None] * a * d[None, None, :]


def _slope_bounds(curv: Array, lo: Array, hi: Array) -> Array:
    """Matrices (c, m, n, n), each above D curv D (Loewner order) for every diagonal D with entries
    in [lo, hi] (n,), 0 <= lo (slopes phi' >= 0): curv (m, n, n) PSD. Evenly, |curv^1/2 D u|^2 <= c_S u.S u with S = diag(hi),
    c_S = lambda_max(S^1/2 curv S^1/2); centered, D = C + Delta with |Delta| <= R (center and
    spread), |curv^1/2 D u|^2 <= (1 + tau) u.C curv C u + (1 + 1/tau) c_R u.R u for each tau > 0."""
    center, spread = (lo + hi) / 2, jnp.maximum(hi - lo, 0.0) / 2
    even = _largest_eigenvalues(_scaled(jnp.sqrt(hi), curv))
    wide = _largest_eigenvalues(_scaled(jnp.sqrt(spread), curv))
    core = _scaled(center, curv)
    taus = jnp.asarray(TAUS, curv.dtype)[:, None, None, None]
    centered = (1 + taus) * core + (1 + 1 / taus) * wide[:, None, None] * jnp.diag(spread)
    return jnp.concatenate([(even[:, None, None] * jnp.diag(hi))[None], centered])


def negative_curvature(chain: DenseChain, bounds: list, rows: Array) -> Array:
    """K (m,) >= -lambda_min of the Hessian of rows . logits (rows (m, K)) over every input whose
    hidden pre-activations lie in `bounds` ([(l, u)] per hidden layer, crown.layer_bounds); >= 0.
    From the top hidden layer down, P_k >= the negative curvature carried to a_k (Loewner order):
    P_k = diag(n_k) + a bound on D_k W_(k+1)^T P_(k+1) W_(k+1) D_k over the slopes D_k
    (`_slope_bounds`, per row the one whose lambda_max(W_k^T P_k W_k) looks smallest);
    K = lambda_max(W_0^T P_0 W_0)."""
    if not bounds:  # a linear model: no curvature
        return jnp.zeros(len(rows), rows.dtype)
    ranges = [derivative_ranges(a, lo, hi) for a, (lo, hi) in zip(chain.activations, bounds)]
    v_lo = v_hi = rows @ chain.weights[len(bounds)]  # dg/dh at the last hidden layer's output, (m, n)
    carried = None
    for k in range(len(bounds) - 1, -1, -1):
        d1_lo, d1_hi, d2_lo, d2_hi = ranges[k]
        own = jax.vmap(jnp.diag)(jnp.maximum(-_times(v_lo, v_hi, d2_lo, d2_hi)[0], 0.0))[None]
        candidates = own if carried is None else own + _slope_bounds(carried, d1_lo, d1_hi)
        root = jnp.linalg.qr(chain.weights[k].T, mode="r")  # root^T root = W_k W_k^T
        choice = 0 if carried is None else jnp.argmin(_estimated_eigenvalues(root, candidates), axis=0)
        best = candidates[choice, jnp.arange(len(rows))]
        if k == 0:
            return _largest_eigenvalues(root @ best @ root.T)
        carried = chain.weights[k].T @ best @ chain.weights[k]  # on h_k, the output of hidden layer k - 1
        g_lo, g_hi = _times(v_lo, v_hi, d1_lo, d1_hi)  # dg/da_k
        center, spread = (g_lo + g_hi) / 2, (g_hi - g_lo) / 2
        v_lo = center @ chain.weights[k] - spread @ jnp.abs(chain.weights[k])
        v_hi = center @ chain.weights[k] + spread @ jnp.abs(chain.weights[k])


def first_order(chain: DenseChain, x: Array, rows: Array) -> tuple[Array, Array]:
    """(values (m,), gradients (m, n)) of rows (m, K) . logits at x (n,): the Taylor expansion's
    point, the same at every radius."""
    logits = lambda v: chain_logits(chain, v[None])[0]  # noqa: E731
    return rows @ logits(x), rows @ jax.jacrev(logits)(x)


def row_lower_bounds(chain: DenseChain, x: Array, rows: Array, eps: Array,
                     taylor: tuple[Array, Array] | None = None) -> Array:
    """Certified lower bounds (m,) of rows (m, K) . logits over the L2 ball(x, eps) cut by the box.
    Two lower bounds of each hold on the set: CROWN's linear one and the second-order one (value
    and gradient at x, `taylor` = `first_order` if given, curvature on the set); so does any mixture
    theta CROWN + (1 - theta) second-order, whose linear parts are minimized together (their worst
    directions differ). The best over MIXTURES values of theta (0: second-order alone, 1: CROWN's)."""
    values, grads = first_order(chain, x, rows) if taylor is None else taylor
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


def _certifying_rows(label: Array, target: Array, k: int, dtype, mixtures: bool) -> tuple[Array, Array, Array]:
    """crown.margin_rows' (rows (m, K), others, unused), its K - 1 margins followed, with
    `mixtures`, by mixtures of them with positive weights (each margin averaged with the label's,
    and their mean): to a target, one positive bound of any of them keeps the target below some class."""
    rows, others, unused = crown.margin_rows(label, target, k, dtype)
    if not mixtures:
        return rows, others, unused
    anchor = rows[jnp.argmax(others == label)]
    return jnp.concatenate([rows, (rows + anchor) / 2, rows.mean(0, keepdims=True)]), others, unused


def certified_radius(chain: DenseChain, x: Array, label: Array, upper: Array, target: Array = -1,
                     steps: int = crown.RADIUS_STEPS, mixtures: bool = True) -> Array:
    """The largest L2 radius found (bisection on [0, upper]) at which the curvature bounds certify
    ball(x, r) cut by the box as class `label` (target >= 0: as never `target`): a lower bound on
    x's minimum L2 distortion, at most `upper` (the attack's); 0 where x is misclassified. x (n,).
    mixtures (static): also bound mixtures of the margins, which only targeted certificates use
    (False saves their cost where every target is -1)."""
    rows, others, unused = _certifying_rows(label, target, chain.weights[-1].shape[0], x.dtype, mixtures)
    taylor = first_order(chain, x, rows)
    count = len(others)

    def certified(r):
        bounds = row_lower_bounds(chain, x, rows, r, taylor)
        margins = crown.certifies(unused.at[others].set(bounds[:count]), target)
        return margins | ((target >= 0) & jnp.any(bounds[count:] > 0))

    return crown.largest_radius(certified, jnp.asarray(upper, x.dtype), steps)
