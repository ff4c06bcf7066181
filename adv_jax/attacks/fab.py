"""FAB-T, the targeted fast adaptive boundary attack (Croce & Hein 2020, "Minimally distorted
adversarial examples with a fast adaptive boundary attack"), AutoAttack's third stage.

Toward a target class t of an example x_0 with label c, each step linearizes g = z_c - z_t at the
iterate x_i (gradient w) and projects both x_i and x_0 onto the hyperplane {z : g(x_i) + <w, z - x_i>
= 0} intersected with the box [0, 1] in the attack's norm (d_i, d_0: the smallest steps that reach
it). Then, with eta = 1.05 (overshoot) and alpha = min(|d_i| / (|d_i| + |d_0|), alpha_max),

    x_{i+1} = clip((1 - alpha)(x_i + eta d_i) + alpha (x_0 + eta d_0), 0, 1),

and an adversarial x_{i+1} is kept if it is the closest so far, then pulled back toward x_0:
x_{i+1} = x_0 + beta (x_{i+1} - x_0). Success is any misclassification, as AutoAttack counts it.
Restarts after the first start at a random point on the sphere of radius min(epsilon, closest) / 2
(the paper's; the reference code always takes epsilon / 2). With target_classes = k, a class is
tried only while no adversarial within epsilon has been found (epsilon = inf: every class, the
closest over all kept).

The box-constrained projections are solved by bisection on the step's radius (L-inf) or on the
log of its Lagrange multiplier (L2), to float precision, where the official code sorts: same
points, simpler code. With target_classes = k and no target given, the attack runs toward each
of the k most likely wrong classes (at most K - 1).

An attack at a budget: the closest adversarial if its distance is at most epsilon, else x
(epsilon = inf: the minimum-norm attack, the closest found or x). Evaluations: steps per restart
and target class. Units: pixels in [0, 1]; epsilon per pixel (linf) or Euclidean (l2).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adv_jax.attacks.common import LogitsFn, is_adversarial
from adv_jax.attacks.gradient import check_norm

__all__ = ["FAB", "box_projection", "distance"]

BISECTION_STEPS = 50
_TINY = 1e-12


def distance(delta: jax.Array, norm: str) -> jax.Array:
    """|delta|_inf or |delta|_2 of one perturbation."""
    return jnp.max(jnp.abs(delta)) if norm == "linf" else jnp.sqrt(jnp.sum(delta**2))


def box_projection(p: jax.Array, w: jax.Array, b: jax.Array, norm: str) -> jax.Array:
    """The smallest d (in `norm`) with <w, p + d> = b and p + d in [0, 1] (flattened p, w (n,));
    where the box cannot reach the hyperplane, the step that gets closest."""
    residual = jnp.dot(w, p) - b
    w = w * jnp.sign(residual + _TINY)  # now <w, p> - b >= 0, and d must lower <w, .> by |residual|
    room = jnp.where(w > 0, p, 1.0 - p)  # how far each pixel can move in its helpful direction
    need = jnp.abs(residual)
    if norm == "linf":
        def reach(t):
            return jnp.sum(jnp.abs(w) * jnp.minimum(t, room))

        low, high = need / (jnp.sum(jnp.abs(w)) + _TINY), jnp.max(room)
        t = _bisect(lambda s: reach(s) >= need, low, high, log=False)
        return -jnp.sign(w) * jnp.minimum(t, room)

    def reach(lam):
        return jnp.sum(jnp.abs(w) * jnp.minimum(lam * jnp.abs(w), room))

    low = need / (jnp.sum(w**2) + _TINY)
    high = jnp.max(jnp.where(jnp.abs(w) > _TINY, room / (jnp.abs(w) + _TINY), 0.0))
    lam = _bisect(lambda s: reach(s) >= need, low, jnp.maximum(high, low), log=True)
    return -jnp.sign(w) * jnp.minimum(lam * jnp.abs(w), room)


def _bisect(enough, low, high, log: bool):
    """The smallest value in [low, high] where `enough` holds (monotone), from above; `high` if it
    never does. log: bisect the logarithm (a multiplier spanning many decades)."""
    to, back = (jnp.log, jnp.exp) if log else ((lambda v: v), (lambda v: v))
    low, high = to(jnp.maximum(low, _TINY)), to(jnp.maximum(high, _TINY))

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = enough(back(mid))
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    _, high = jax.lax.fori_loop(0, BISECTION_STEPS, halve, (low, high))
    return back(high)


@dataclasses.dataclass(frozen=True)
class FAB:
    """FAB-T; AutoAttack runs FAB(target_classes=9) with one restart."""

    epsilon: float = 0.3  # budget; inf: minimum norm
    norm: str = "linf"  # linf | l2
    steps: int = 100
    restarts: int = 1
    target_classes: int = 9
    overshoot: float = 1.05  # eta
    alpha_max: float = 0.1
    beta: float = 0.9

    def __post_init__(self):
        check_norm(self.norm)

    @property
    def gradient_evals(self) -> int:
        return self.steps * self.restarts * max(self.target_classes, 1)

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key):
        """x (28, 28, 1) -> (x_adv, {"evals", "distance": the closest adversarial's, inf: none})."""
        x_adv, closest = self.perturb(logits_fn, x, label, target, key, self.epsilon)
        return x_adv, {"evals": jnp.int32(self.gradient_evals), "distance": closest}

    def perturb(self, logits_fn: LogitsFn, x, label, target, key, epsilon) -> tuple[jax.Array, jax.Array]:
        """(x_adv at a given epsilon, the closest adversarial's distance)."""
        logits = logits_fn(x)
        ranked = jnp.argsort(jnp.where(jnp.arange(logits.shape[-1]) == label, -jnp.inf, logits))[::-1]
        count = max(min(self.target_classes, logits.shape[-1] - 1), 1)
        aims = jnp.where(target >= 0, jnp.full(count, target), ranked[:count])

        def toward(carry, aim_and_key):
            # as the reference code: a class is tried only while nothing within epsilon was found
            aim, key = aim_and_key
            tried = carry
            for r in range(self.restarts):
                tried = self._run(logits_fn, x, label, target, aim, jax.random.fold_in(key, r), r > 0, epsilon, tried)
            done = jnp.isfinite(epsilon) & (carry[1] <= epsilon)  # epsilon = inf: try every class
            return (jnp.where(done, carry[0], tried[0]), jnp.where(done, carry[1], tried[1])), None

        (best, closest), _ = jax.lax.scan(toward, (x, jnp.float32(jnp.inf)), (aims, jax.random.split(key, count)))
        kept = closest <= epsilon
        return jnp.where(kept, best, x), closest

    def _run(self, logits_fn, x, label, target, aim, key, random_start: bool, epsilon, carry):
        """One run toward `aim` from x (or a random point), updating (closest x_adv, its distance)."""
        shape = x.shape
        gap_and_grad = jax.value_and_grad(lambda z: (lambda z_: z_[label] - z_[aim])(logits_fn(z)))
        flat0 = x.reshape(-1)
        start = x
        if random_start:
            diameter = 1.0 if self.norm == "linf" else float(x.size) ** 0.5
            radius = 0.5 * jnp.minimum(jnp.minimum(carry[1], epsilon), diameter)
            t = (jax.random.uniform(key, shape, minval=-1.0, maxval=1.0) if self.norm == "linf"
                 else jax.random.normal(key, shape))
            start = jnp.clip(x + radius * t / distance(t, self.norm), 0.0, 1.0)

        def step(_, state):
            current, best, closest = state
            gap, w = gap_and_grad(current)
            w = w.reshape(-1)
            b = jnp.dot(w, current.reshape(-1)) - gap
            d_now = box_projection(current.reshape(-1), w, b, self.norm)
            d_orig = box_projection(flat0, w, b, self.norm)
            a_now, a_orig = (jnp.maximum(distance(d, self.norm), 1e-8) for d in (d_now, d_orig))
            alpha = jnp.clip(a_now / (a_now + a_orig), 0.0, self.alpha_max)
            moved = (1.0 - alpha) * (current.reshape(-1) + self.overshoot * d_now) \
                + alpha * (flat0 + self.overshoot * d_orig)
            moved = jnp.clip(moved, 0.0, 1.0).reshape(shape)
            fooled = is_adversarial(logits_fn(moved), label, target)
            dist = distance(moved - x, self.norm)
            closer = fooled & (dist < closest)
            best, closest = jnp.where(closer, moved, best), jnp.where(closer, dist, closest)
            current = jnp.where(fooled, x + self.beta * (moved - x), moved)
            return current, best, closest

        _, best, closest = jax.lax.fori_loop(0, self.steps, step, (start, *carry))
        return best, closest
