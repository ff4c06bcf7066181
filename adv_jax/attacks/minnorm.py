"""Minimum-norm attacks at the frontier: DDN (Rony et al. 2019) and FMN (Pintor et al. 2021).

Both keep an adaptive radius epsilon and a perturbation delta (x' = x + delta, pixels in [0, 1]),
and make ONE forward and backward pass per step (`steps` = evaluations). At every step the
current iterate is checked and the smallest adversarial one seen is kept.

  DDN (L2)   delta += alpha * g / |g|_2, g the gradient of CE(label) (untargeted, ascended) or
             -CE(target) (targeted); epsilon *= (1 - gamma) if the iterate was adversarial, else
             (1 + gamma); delta is rescaled onto the epsilon-SPHERE, then x + delta clipped to
             [0, 1]. Starts at epsilon = init_epsilon.
  FMN (L2, L-inf)  loss L = logit-difference margin (`carlini_wagner.margin`, L < 0 iff
             adversarial); delta -= alpha * g / |g|_2, g = grad L; epsilon = min(epsilon (1 -
             gamma), best norm) if adversarial, epsilon (1 + gamma) if not but an adversarial was
             found before, else the first-order boundary estimate |delta|_p + |L| / |g|_dual
             (dual of L2 = L2, of L-inf = L1) or epsilon (1 + gamma), the larger; delta
             projected onto the epsilon-BALL, then the box. gamma is cosine-annealed from
             `gamma` to 0.001, as in the paper and foolbox.

The step size alpha is cosine-annealed from max_step to min_step (Euclidean norm of the whole
perturbation; per-pixel RMS = alpha / 28). Differences from foolbox 3.3.4 (DDNAttack,
L2FMNAttack): a vanishing gradient is replaced by one random direction drawn from the key at the
start (foolbox draws a fresh one each time); foolbox's L2 FMN never shrinks delta onto its ball
(its `project` computes the factor as norms / norms = 1), ours does; before its first
adversarial, the paper's epsilon is the boundary estimate alone, which can stall: on an affine
model the estimate is exact and puts the iterate on the boundary itself (a tie, for hundreds of
steps), and where the box clips the step, the iterate settles at a fixed point short of the
boundary (as on MNIST digits, whose background pixels sit at 0); ours also grows epsilon by
(1 + gamma) per step there, so the radius keeps growing until an iterate crosses; if no
iterate is adversarial,
the last iterate is returned (foolbox: x itself). Defaults: steps 1000 (the DDN paper's MNIST
setting; foolbox's default is 100), gamma 0.05.

Diagnostics: {"evals": steps (int32), "norm": the attack's norm (L2 or L-inf) of the returned
perturbation when it is the kept adversarial, inf if none was found}.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from adv_jax.attacks.carlini_wagner import margin
from adv_jax.attacks.common import LogitsFn, is_adversarial
from adv_jax.attacks.gradient import NORMS, cross_entropy, project

__all__ = ["DDN", "FMN", "cosine_annealed", "lp_norm"]

_TINY = 1e-12


def cosine_annealed(start: float, end: float, step: jax.Array, steps: int) -> jax.Array:
    """start at step 0, decreasing along a half cosine towards end at step = steps."""
    return end + (start - end) * (1.0 + jnp.cos(math.pi * step / steps)) / 2.0


def lp_norm(v: jax.Array, p: str) -> jax.Array:
    """|v|_p of a whole array, p in {"l1", "l2", "linf"} -> scalar."""
    if p == "linf":
        return jnp.max(jnp.abs(v))
    if p == "l1":
        return jnp.sum(jnp.abs(v))
    return jnp.sqrt(jnp.sum(v**2))


def logits_and_gradient(objective, logits_fn: LogitsFn, z: jax.Array, label, target):
    """(logits (K,), d objective(logits, label, target) / dz (*z.shape)): one forward, one backward."""
    logits, pullback = jax.vjp(logits_fn, z)
    (gradient,) = pullback(jax.grad(objective)(logits, label, target))
    return logits, gradient


def ce_objective(logits: jax.Array, label: jax.Array, target: jax.Array) -> jax.Array:
    """DDN's objective, ascended: CE on the label (untargeted, target = -1), -CE on the target."""
    toward = cross_entropy(logits, jnp.maximum(target, 0))
    return jnp.where(target >= 0, -toward, cross_entropy(logits, label))


def unit_direction(gradient: jax.Array, fallback: jax.Array) -> jax.Array:
    """gradient / |gradient|_2, or the unit `fallback` where the gradient vanishes."""
    norm = lp_norm(gradient, "l2")
    return jnp.where(norm > 0, gradient / jnp.maximum(norm, _TINY), fallback)


def random_unit(key: jax.Array, shape) -> jax.Array:
    direction = jax.random.normal(key, shape)
    return direction / lp_norm(direction, "l2")


def keep_best(adversarial, norm, z, best_norm, best):
    """The kept adversarial: z replaces best where it is adversarial and no farther."""
    better = adversarial & (norm < best_norm)
    return jnp.where(better, norm, best_norm), jnp.where(better, z, best)


def starting_point(x, start, p: str, epsilon: float):
    """(delta, epsilon) of the first step: zero and `epsilon`, or `start` - x and its p-norm
    (`epsilon` where start is x, e.g. a first attack that failed)."""
    if start is None:
        return jnp.zeros_like(x), jnp.float32(epsilon)
    delta = jnp.clip(start, 0.0, 1.0) - x
    size = lp_norm(delta, p)
    return delta, jnp.where(size > 0, size, epsilon).astype(jnp.float32)


def finish(last, best, best_norm, steps: int):
    """x_adv (the kept adversarial, or the last iterate if none) and the diagnostics."""
    x_adv = jnp.where(jnp.isfinite(best_norm), best, last)
    return x_adv, {"evals": jnp.int32(steps), "norm": best_norm}


@dataclasses.dataclass(frozen=True)
class DDN:
    """Decoupled Direction and Norm, L2 (Rony et al. 2019). x (28, 28, 1) -> x_adv."""

    steps: int = 1000
    gamma: float = 0.05  # epsilon's relative change per step
    init_epsilon: float = 1.0  # first radius, Euclidean norm of the whole perturbation
    max_step: float = 1.0  # alpha at the first step (Euclidean), cosine-annealed to min_step
    min_step: float = 0.01

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key, start=None):
        """x_adv and {"evals": steps, "norm": L2 norm of the kept adversarial (inf: none)}.
        start: an image to begin from (e.g. another attack's x_adv), radius its distance to x."""
        fallback = random_unit(key, x.shape)
        worst = lp_norm(jnp.maximum(x, 1.0 - x), "l2")

        def step(i, carry):
            delta, epsilon, best_norm, best = carry
            logits, gradient = logits_and_gradient(ce_objective, logits_fn, x + delta, label, target)
            adversarial = is_adversarial(logits, label, target)
            best_norm, best = keep_best(adversarial, lp_norm(delta, "l2"), x + delta, best_norm, best)
            alpha = cosine_annealed(self.max_step, self.min_step, i, self.steps)
            delta = delta + alpha * unit_direction(gradient, fallback)
            epsilon = jnp.minimum(epsilon * jnp.where(adversarial, 1.0 - self.gamma,
                                                      1.0 + self.gamma), worst)
            delta = delta * epsilon / jnp.maximum(lp_norm(delta, "l2"), _TINY)  # onto the sphere
            return jnp.clip(x + delta, 0.0, 1.0) - x, epsilon, best_norm, best

        delta, epsilon = starting_point(x, start, "l2", self.init_epsilon)
        carry = (delta, epsilon, jnp.float32(jnp.inf), x)
        delta, _, best_norm, best = jax.lax.fori_loop(0, self.steps, step, carry)
        return finish(x + delta, best, best_norm, self.steps)


@dataclasses.dataclass(frozen=True)
class FMN:
    """Fast Minimum-Norm, L2 or L-inf (Pintor et al. 2021). x (28, 28, 1) -> x_adv."""

    norm: str = "l2"  # l2 | linf: the norm minimized (and of the epsilon-ball)
    steps: int = 1000
    gamma: float = 0.05  # epsilon's relative change at the first step, annealed to 0.001
    max_step: float = 1.0  # alpha at the first step (Euclidean), cosine-annealed to min_step
    min_step: float = 0.01

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {list(NORMS)}")

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key, start=None):
        """x_adv and {"evals": steps, "norm": `norm` of the kept adversarial (inf: none)}.
        start: an image to begin from (e.g. another attack's x_adv), radius its distance to x."""
        fallback = random_unit(key, x.shape)
        worst = lp_norm(jnp.maximum(x, 1.0 - x), self.norm)

        def step(i, carry):
            delta, epsilon, best_norm, best = carry
            logits, gradient = logits_and_gradient(margin, logits_fn, x + delta, label, target)
            adversarial = is_adversarial(logits, label, target)
            size = lp_norm(delta, self.norm)
            found = jnp.isfinite(best_norm) | adversarial
            best_norm, best = keep_best(adversarial, size, x + delta, best_norm, best)
            epsilon = jnp.minimum(self._next_epsilon(i, epsilon, adversarial, found, size,
                                                     best_norm, margin(logits, label, target),
                                                     gradient), worst)
            alpha = cosine_annealed(self.max_step, self.min_step, i, self.steps)
            x_next = project(x + delta - alpha * unit_direction(gradient, fallback), x,
                             epsilon, self.norm)
            return x_next - x, epsilon, best_norm, best

        delta, epsilon = starting_point(x, start, self.norm, 0.0)
        carry = (delta, epsilon, jnp.float32(jnp.inf), x)
        delta, _, best_norm, best = jax.lax.fori_loop(0, self.steps, step, carry)
        return finish(x + delta, best, best_norm, self.steps)

    def _next_epsilon(self, i, epsilon, adversarial, found, size, best_norm, loss, gradient):
        """Shrink towards the best norm when adversarial; grow by (1 + gamma) when not; before
        the first adversarial, jump ahead to the first-order boundary estimate
        |delta|_p + |L| / |g|_dual where that is larger."""
        gamma = cosine_annealed(self.gamma, 0.001, i, self.steps)
        dual = "l1" if self.norm == "linf" else "l2"
        boundary = size + jnp.abs(loss) / jnp.maximum(lp_norm(gradient, dual), _TINY)
        grown = epsilon * (1.0 + gamma)
        return jnp.where(adversarial, jnp.minimum(epsilon * (1.0 - gamma), best_norm),
                         jnp.where(found, grown, jnp.maximum(grown, boundary)))
