"""Linear bound propagation (CROWN, Zhang et al. 2018) on dense networks: certified bounds on the
outputs over an L-inf or L2 ball around x intersected with the box [0, 1]^n, and from them a
certified lower bound on each example's minimum distortion (`certified_radius`, a bisection).

Each hidden unit whose pre-activation z lies in [l, u] is held between two lines,
a_lo z + c_lo <= phi(z) <= a_up z + c_up on [l, u]:
  relu     u <= 0: 0; l >= 0: z; else above the chord u (z - l) / (u - l), below s z with s = 1
           where u >= -l, else 0 (CROWN's adaptive choice)
  sigmoid, tanh (convex below 0, concave above)
           u <= 0: above the chord, below the tangent at (l + u) / 2; l >= 0: the reverse;
           else (CROWN) above the tangent at d >= 0 that passes through (l, phi(l)), below the
           tangent at d <= 0 through (u, phi(u)), d by bisection on the side that keeps the line
           a bound; the chord where no such d lies in [l, u]
  identity z
A lower bound on Lambda . h_k + c (h_k layer k's input) passes back through the lines (the lower
line where Lambda > 0, the upper one where < 0) and the weights to the input, where its minimum
over the set is exact for L-inf (coordinate-wise over the ball cut by the box) and, for L2, bounded
from below by Lagrangian duality: for any lam > 0 the minimum over the box of
Lambda x' + lam (|x' - x|^2 - eps^2) is separable (each coordinate a clipped quadratic), and the
best lam is found by bisection on the dual's slope (lam = |Lambda| / (2 eps) gives the ball's own bound,
Lambda x - eps |Lambda|, which the box can only raise). Each hidden
layer's [l, u] come from the same backward pass to the input (full CROWN, O(depth^2) passes).

alpha-CROWN (Xu et al. 2021) as an option (`slope_steps`): each unit has a family of valid lines
(relu: any lower slope in [0, 1] where l < 0 < u; sigmoid, tanh: tangents at any point of the
range where a tangent stays a bound), indexed by t in [0, 1]. Every bound has its own t's: each
end of each hidden unit's interval after the first layer (recomputed from the earlier layers'
lines at its t's, cut by CROWN's interval) and each margin. All are raised together by signed
gradient steps on the sum of the margins' bounds, from CROWN's; each margin keeps its best
iterate (every iterate is a bound, whatever its t's).

Works on a certify.DenseChain (weights (out, in)), one example at a time (vmap for batches),
in the chain's dtype. Distances: L2 of the whole perturbation or L-inf per pixel, pixels in [0, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adv_jax.attacks.gradient import check_norm
from adv_jax.certify import DenseChain
from adv_jax.models.layers import ACTIVATIONS

__all__ = [
    "backward_linear", "certified_radius", "certifies", "default_slopes", "input_minimum", "largest_radius",
    "layer_bounds", "margin_lower_bounds", "margin_rows", "relaxation",
]

Array = jax.Array
RADIUS_STEPS = 14  # bisection steps: the radius to within upper / 2^14
_TINY = 1e-12
SLACK = 1e-6  # added to a mixed-sign tangent's intercept
DUAL_STEPS = 12  # bisection steps for the L2 ball-and-box bound's multiplier (log(lam) to 10 / 4096)
DUAL_RANGE = (-9.0, 1.0)  # log(lam / lam_ball): the box lowers the best lam, never by more than e^9
SLOPE_STEP = 0.2  # alpha-CROWN: each step moves a free slope parameter t in [0, 1] by this much


def _derivative(activation: str, z: Array) -> Array:
    return jax.vmap(jax.grad(ACTIVATIONS[activation]))(z)


def _tangent_through(activation: str, end: Array, lo: Array, hi: Array, upper: bool) -> tuple[Array, Array]:
    """(d, found): the tangent point d in [lo, hi] whose tangent passes through (end, phi(end)),
    by bisection (30 steps) on the side that keeps the tangent a bound (upper: at or above phi(end),
    lower: at or below); found False where no such d lies in [lo, hi]."""
    phi = ACTIVATIONS[activation]

    def gap(d):  # the tangent at d, at `end`, minus phi(end): rises with d on either search range
        return phi(d) + _derivative(activation, d) * (end - d) - phi(end)

    def halve(_, bounds):
        a, b = bounds
        mid = 0.5 * (a + b)
        rising = gap(mid) >= 0
        return jnp.where(rising, a, mid), jnp.where(rising, mid, b)

    a, b = jax.lax.fori_loop(0, 30, halve, (lo, hi))
    return (b, gap(hi) >= 0) if upper else (a, gap(lo) <= 0)


def _s_shaped(activation: str, lo: Array, hi: Array, t_lo: Array, t_up: Array) -> tuple[Array, Array, Array, Array]:
    """Lines of a sigmoid or tanh unit; t_lo, t_up in [0, 1] place the tangent points in the
    ranges where a tangent stays a bound (`default_slopes`: CROWN's)."""
    phi = ACTIVATIONS[activation]
    chord = (phi(hi) - phi(lo)) / jnp.maximum(hi - lo, _TINY)
    chord = jnp.where(hi - lo > _TINY, chord, _derivative(activation, lo))
    chord_c = phi(lo) - chord * lo

    def tangent(d):
        slope = _derivative(activation, d)
        return slope, phi(d) - slope * d

    convex, concave = hi <= 0, lo >= 0
    mixed = ~convex & ~concave
    zero = jnp.zeros_like(lo)
    # mixed signs (CROWN): upper tangents at d >= the one through (lo, phi(lo)), lower ones at
    # d <= the one through (hi, phi(hi)); the chord where no such d lies inside
    up_point, up_found = _tangent_through(activation, lo, zero, jnp.maximum(hi, zero), upper=True)
    lo_point, lo_found = _tangent_through(activation, hi, jnp.minimum(lo, zero), zero, upper=False)
    up_start, lo_end = jnp.where(concave, lo, up_point), jnp.where(convex, hi, lo_point)
    a_up, c_up = tangent(up_start + t_up * (jnp.maximum(hi, up_start) - up_start))
    a_lo, c_lo = tangent(lo + t_lo * (jnp.maximum(lo_end, lo) - lo))
    use_up, use_lo = concave | (mixed & up_found), convex | (mixed & lo_found)
    # SLACK covers the rounding of a line that passes exactly through (end, phi(end))
    a_up, c_up = jnp.where(use_up, a_up, chord), jnp.where(use_up, c_up + jnp.where(mixed, SLACK, 0.0), chord_c)
    a_lo, c_lo = jnp.where(use_lo, a_lo, chord), jnp.where(use_lo, c_lo - jnp.where(mixed, SLACK, 0.0), chord_c)
    return a_lo, c_lo, a_up, c_up


def default_slopes(activation: str, lo: Array, hi: Array) -> tuple[Array, Array]:
    """(t_lo, t_up) of CROWN's own lines: relu's adaptive lower slope (1 where u >= -l); sigmoid
    and tanh: tangents at the midpoint where the interval is one-sided, through the far end where
    it is mixed."""
    if activation == "relu":
        return (hi >= -lo).astype(lo.dtype), jnp.zeros_like(lo)
    return jnp.where(hi <= 0, 0.5, 1.0).astype(lo.dtype), jnp.where(lo >= 0, 0.5, 0.0).astype(lo.dtype)


def relaxation(activation: str, lo: Array, hi: Array, t_lo: Array | None = None,
               t_up: Array | None = None) -> tuple[Array, Array, Array, Array]:
    """(a_lo, c_lo, a_up, c_up) (n,) each: a_lo z + c_lo <= phi(z) <= a_up z + c_up on [lo, hi].
    t_lo, t_up (n,) in [0, 1]: which of the valid lines (alpha-CROWN's free slopes; relu: the
    lower slope where the interval crosses 0); None: CROWN's (`default_slopes`)."""
    if activation == "identity":
        one, zero = jnp.ones_like(lo), jnp.zeros_like(lo)
        return one, zero, one, zero
    if activation not in ("relu", "sigmoid", "tanh"):
        raise ValueError(f"CROWN has lines for relu, sigmoid, tanh and identity, not {activation!r}")
    default_lo, default_up = default_slopes(activation, lo, hi)
    t_lo = default_lo if t_lo is None else t_lo
    t_up = default_up if t_up is None else t_up
    if activation == "relu":
        crossing = (lo < 0) & (hi > 0)
        up = jnp.where(crossing, hi / jnp.where(crossing, hi - lo, 1.0), (lo >= 0).astype(lo.dtype))
        c_up = jnp.where(crossing, -lo * up, 0.0)
        a_lo = jnp.where(crossing, t_lo, (lo >= 0).astype(lo.dtype))
        return a_lo, jnp.zeros_like(lo), up, c_up
    return _s_shaped(activation, lo, hi, t_lo, t_up)


def input_minimum(coef: Array, x: Array, eps: Array, norm: str) -> Array:
    """min over x' in ball(x, eps) cut by [0, 1]^n of coef . x' (coef (m, n)) -> (m,): exact for
    L-inf; for L2 a lower bound, the best Lagrangian dual bound found (`_box_dual`)."""
    if norm == "linf":
        lo, hi = jnp.clip(x - eps, 0.0, 1.0), jnp.clip(x + eps, 0.0, 1.0)
        return jnp.minimum(coef * lo, coef * hi).sum(1)
    return _box_dual(coef, x, eps)


def _box_minimizer(coef: Array, x: Array, lam: Array) -> Array:
    """argmin over the box of coef . x' + lam |x' - x|^2 (m, n): coordinate by coordinate, the
    clipped quadratic's minimum clip(x - coef / (2 lam), 0, 1)."""
    return jnp.clip(x[None] - coef / (2 * lam[:, None]), 0.0, 1.0)


def _box_dual(coef: Array, x: Array, eps: Array) -> Array:
    """A lower bound (m,) on min coef . x' over the L2 ball cut by the box, by weak duality: for
    any lam > 0, g(lam) = min over the box of coef . x' + lam (|x' - x|^2 - eps^2) is one. g is
    concave with slope |x'(lam) - x|^2 - eps^2, falling in lam: bisection on log(lam / lam_ball)
    in DUAL_RANGE for the slope's zero. lam_ball = |coef| / (2 eps) gives the ball's own bound
    coef . x - eps |coef|, which the box can only raise (kept if larger). Where images have many
    pixels at 0 or 1 (MNIST's background), the box blocks half the directions the ball allows."""
    radius = jnp.maximum(eps, _TINY)
    lam_ball = jnp.sqrt(jnp.sum(coef**2, 1)) / (2 * radius) + _TINY

    def value(lam):
        moved = _box_minimizer(coef, x, lam)
        return jnp.sum(coef * moved + lam[:, None] * (moved - x[None]) ** 2, 1) - lam * radius**2

    def halve(_, ends):
        a, b = ends
        mid = 0.5 * (a + b)
        step = _box_minimizer(coef, x, lam_ball * jnp.exp(mid)) - x[None]
        rising = jnp.sum(step**2, 1) > radius**2  # g still rises: the best lam is larger
        return jnp.where(rising, mid, a), jnp.where(rising, b, mid)

    start = (jnp.full_like(lam_ball, DUAL_RANGE[0]), jnp.full_like(lam_ball, DUAL_RANGE[1]))
    a, b = jax.lax.fori_loop(0, DUAL_STEPS, halve, start)
    return jnp.maximum(value(lam_ball * jnp.exp(0.5 * (a + b))), value(lam_ball))


def backward_linear(chain: DenseChain, lines: list, spec: Array, layer: int) -> tuple[Array, Array]:
    """(coef (m, n), const (m,)): coef . x' + const <= spec (m, n_layer) . z_layer at every input x'
    whose earlier layers' pre-activations lie where the relaxations `lines` hold (z_layer layer
    `layer`'s pre-activation)."""
    coef, const = spec @ chain.weights[layer], spec @ chain.biases[layer]
    for k in range(layer - 1, -1, -1):
        a_lo, c_lo, a_up, c_up = lines[k]
        positive, negative = jnp.maximum(coef, 0.0), jnp.minimum(coef, 0.0)
        const = const + positive @ c_lo + negative @ c_up
        coef = positive * a_lo + negative * a_up
        const, coef = const + coef @ chain.biases[k], coef @ chain.weights[k]
    return coef, const


def _backward_lower(chain: DenseChain, lines: list, spec: Array, layer: int, x: Array, eps: Array,
                    norm: str) -> Array:
    """Lower bounds (m,) of spec (m, n_layer) . z_layer over the set, through the relaxations
    `lines` of the layers before it."""
    coef, const = backward_linear(chain, lines, spec, layer)
    return const + input_minimum(coef, x, eps, norm)


def layer_bounds(chain: DenseChain, x: Array, eps: Array, norm: str = "linf") -> list[tuple[Array, Array]]:
    """[(l, u)] of every hidden layer's pre-activation over ball(x, eps) cut by the box; x (n,)."""
    bounds, lines = [], []
    for k, activation in enumerate(chain.activations[:-1]):
        eye = jnp.eye(chain.weights[k].shape[0], dtype=x.dtype)
        lo = _backward_lower(chain, lines, eye, k, x, eps, norm)
        hi = -_backward_lower(chain, lines, -eye, k, x, eps, norm)
        bounds.append((lo, hi))
        lines.append(relaxation(activation, lo, hi))
    return bounds


def _margin_spec(label: Array, k: int, dtype) -> Array:
    """(K, K) rows e_label - e_j: z_label - z_j for every j."""
    return jax.nn.one_hot(label, k, dtype=dtype)[None, :] - jnp.eye(k, dtype=dtype)


def margin_rows(label: Array, target: Array, k: int, dtype) -> tuple[Array, Array, Array]:
    """(rows (K-1, K), others (K-1,), unused (K,)): the margins a certificate bounds from below,
    rows . z for z the logits. Untargeted (target < 0): z_label - z_j, all > 0 certifies the label.
    target >= 0: z_j - z_target, any > 0 certifies that the target never wins. others: the classes
    j of the rows (the reference's own row, 0, left out); unused: the value to report for the
    reference (+inf untargeted, -inf targeted), so that all / any over K still decides."""
    targeted = target >= 0
    reference = jnp.where(targeted, target, label)
    spec = jnp.where(targeted, -1.0, 1.0) * _margin_spec(reference, k, dtype)
    others = (reference + 1 + jnp.arange(k - 1)) % k
    return spec[others], others, jnp.full(k, jnp.where(targeted, -jnp.inf, jnp.inf), dtype)


def certifies(margins: Array, target: Array) -> Array:
    """Whether lower bounds (K,) of `margin_rows`' margins (with `unused` at the reference) certify
    the set: untargeted, all > 0; targeted, any > 0."""
    return jnp.where(target >= 0, jnp.any(margins > 0), jnp.all(margins > 0))


def largest_radius(certified, upper: Array, steps: int = RADIUS_STEPS, lower: Array | None = None) -> Array:
    """The largest radius found by `steps` of bisection on [lower, upper] (lower None: 0) at which
    certified(r) (a scalar bool) holds: at least lower; None: 0 where not even r = 0 is certified
    (the example itself is misclassified)."""
    def halve(_, ends):
        lo, hi = ends
        mid = 0.5 * (lo + hi)
        ok = certified(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    zero = jnp.zeros((), upper.dtype)
    start = zero if lower is None else jnp.asarray(lower, upper.dtype)
    lo, _ = jax.lax.fori_loop(0, steps, halve, (start, upper))
    return lo if lower is not None else jnp.where(certified(zero), lo, zero)


def _row_lower(chain: DenseChain, bounds: list, slopes: list, row: Array, layer: int, x: Array, eps: Array,
               norm: str) -> Array:
    """The lower bound (scalar) of row . z_layer with the lines of the layers before it drawn from
    their intervals `bounds` at the free slopes `slopes` ([(t_lo, t_up)] per layer, (n_k,) each)."""
    lines = [relaxation(a, lo, hi, *t) for a, (lo, hi), t in zip(chain.activations, bounds, slopes)]
    return _backward_lower(chain, lines, row[None], layer, x, eps, norm)[0]


def _rows_lower(chain, bounds, slopes, spec, layer, x, eps, norm) -> Array:
    """`_row_lower` for every row of spec (m, n_layer), each with its own slopes ((m, n_k) each)."""
    return jax.vmap(lambda row, own: _row_lower(chain, bounds, own, row, layer, x, eps, norm))(spec, slopes)


def _start_slopes(chain: DenseChain, bounds: list, spec: Array) -> dict:
    """CROWN's slopes (`default_slopes` on CROWN's intervals), one copy per bound that alpha-CROWN
    optimizes: "hidden"[k-1] for hidden layer k's 2 n_k interval ends (k >= 1), "margins" for
    spec's rows; each a list over the layers before it of (t_lo, t_up), (rows, n_j) each."""
    crown = [default_slopes(a, lo, hi) for a, (lo, hi) in zip(chain.activations, bounds)]

    def copies(rows: int, layers: int) -> list:
        return [tuple(jnp.broadcast_to(t, (rows,) + t.shape) for t in pair) for pair in crown[:layers]]

    hidden = [copies(2 * len(bounds[k][0]), k) for k in range(1, len(bounds))]
    return {"hidden": hidden, "margins": copies(len(spec), len(bounds))}


def _optimized_margins(chain: DenseChain, crown_bounds: list, slopes: dict, spec: Array, x: Array, eps: Array,
                       norm: str) -> Array:
    """Lower bounds (m,) of spec . logits with every hidden layer's interval after the first
    recomputed at its own slopes (cut by CROWN's: both are bounds), then the margins at theirs."""
    bounds = list(crown_bounds[:1])
    for k, own in enumerate(slopes["hidden"], start=1):
        n = len(crown_bounds[k][0])
        eye = jnp.eye(n, dtype=x.dtype)
        ends = _rows_lower(chain, bounds, own, jnp.concatenate([eye, -eye]), k, x, eps, norm)
        bounds.append((jnp.maximum(ends[:n], crown_bounds[k][0]), jnp.minimum(-ends[n:], crown_bounds[k][1])))
    return _rows_lower(chain, bounds, slopes["margins"], spec, len(chain.weights) - 1, x, eps, norm)


def margin_lower_bounds(chain: DenseChain, x: Array, label: Array, eps: Array, norm: str = "linf",
                        slope_steps: int = 0, step_size: float = SLOPE_STEP, target: Array = -1) -> Array:
    """Certified lower bounds (K,) of z_label - z_j over ball(x, eps) cut by the box (+inf at
    j = label): all > 0, no point of the set is misclassified. target >= 0: of z_j - z_target
    instead (-inf at j = target): any > 0, no point of the set is classified as the target. x (n,)
    flattened, pixels in [0, 1]. slope_steps > 0: alpha-CROWN, the free slopes (`relaxation`'s t)
    of every bound, the hidden layers' intervals and the margins, raised together by that many
    signed-gradient steps of `step_size` from CROWN's on the sum of the margins' bounds; each
    margin keeps its best iterate (every iterate is a bound)."""
    check_norm(norm)
    bounds = layer_bounds(chain, x, eps, norm)
    # the reference's own row is 0 (and the L2 bound's |coef| has no gradient there): left out
    rows, others, unused = margin_rows(label, target, chain.weights[-1].shape[0], x.dtype)
    if slope_steps == 0:
        lines = [relaxation(a, lo, hi) for a, (lo, hi) in zip(chain.activations, bounds)]
        values = _backward_lower(chain, lines, rows, len(chain.weights) - 1, x, eps, norm)
        return unused.at[others].set(values)
    start = _start_slopes(chain, bounds, rows)

    def margins(slopes):
        return _optimized_margins(chain, bounds, slopes, rows, x, eps, norm)

    def step(slopes, _):  # the margins at these slopes, then one step up their sum
        values, pullback = jax.vjp(margins, slopes)
        (grad,) = pullback(jnp.ones_like(values))
        slopes = jax.tree_util.tree_map(lambda t, g: jnp.clip(t + step_size * jnp.sign(g), 0.0, 1.0), slopes, grad)
        return slopes, values

    last, history = jax.lax.scan(step, start, None, length=slope_steps)
    return unused.at[others].set(jnp.maximum(margins(last), jnp.max(history, axis=0)))


def certified_radius(chain: DenseChain, x: Array, label: Array, upper: Array, norm: str = "linf",
                     steps: int = RADIUS_STEPS, slope_steps: int = 0, lower: Array | None = None,
                     target: Array = -1) -> Array:
    """The largest radius found (by bisection on [0, upper]) at which CROWN certifies every point
    of ball(x, r) cut by the box as class `label` (target >= 0: as not `target`, whose logit stays
    below some other class's): a lower bound on x's minimum distortion in `norm` (to reach `target`), at
    most `upper` (pass the attack's distortion: the true minimum lies below it). 0 when x itself is
    misclassified. x (n,) flattened. slope_steps > 0: alpha-CROWN's optimized slopes
    (`margin_lower_bounds`), about slope_steps times CROWN's cost. lower: a radius already certified
    (CROWN's, for alpha-CROWN): the bisection runs on [lower, upper] and returns at least lower.
    Compute in float64 (a float64 chain under jax.enable_x64) where the margins are small: the
    backward pass adds no rounding margin."""
    def certified(r):
        return certifies(margin_lower_bounds(chain, x, label, r, norm, slope_steps, target=target), target)

    return largest_radius(certified, jnp.asarray(upper, x.dtype), steps, lower)
