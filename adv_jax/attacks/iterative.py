"""The iterative-FGSM skeleton shared by the feature-level, model-related and ensemble-strategy
attacks: only the gradient changes from one method to the next.

Per step t = 0 .. steps-1, from x_start, with g_t = gradient(x_t, fold_in(key, t)):

  v_{t+1} = momentum v_t + g_t / |g_t|_1       (MI, Dong et al. 2018; momentum 0: I-FGSM)
  x_{t+1} = Proj(x_t + alpha d(v_{t+1}))       d = sign (linf) or v / |v|_2 (l2);
            alpha = relative_step_size * epsilon; Proj onto the epsilon ball around x and [0, 1]

These are MomentumIterative's operations in its order (transfer_enhancing.py), so an attack
whose gradient is the plain one gives MI-FGSM's (or I-FGSM's) x_adv bit for bit; the tests
rely on it. Units: pixels in [0, 1]; epsilon per pixel (linf) or whole-image Euclidean (l2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from adv_jax.attacks.gradient import NORMS, project

__all__ = ["IterativeBudget", "direction", "l1_normalized", "momentum_iterations"]

TINY = 1e-12  # keeps a zero gradient's normalization finite (as transfer_enhancing.TINY)


def l1_normalized(g: jax.Array) -> jax.Array:
    """g / |g|_1 (any shape)."""
    return g / (jnp.sum(jnp.abs(g)) + TINY)


def direction(v: jax.Array, norm: str) -> jax.Array:
    """The unit step along v: sign(v) (linf) or v / |v|_2 (l2)."""
    if norm == "linf":
        return jnp.sign(v)
    return v / (jnp.sqrt(jnp.sum(v ** 2)) + TINY)


def momentum_iterations(gradient: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array,
                        x_start: jax.Array, key: jax.Array, *, epsilon, norm: str, steps: int,
                        step_size, momentum: float) -> jax.Array:
    """`steps` MI-FGSM steps (module docstring) from x_start inside the ball around x; gradient
    (x_adv (*shape), key) -> the ascent direction (*shape) of step t, called with fold_in(key, t)."""
    def step(t, carry):
        x_adv, velocity = carry
        grad = gradient(x_adv, jax.random.fold_in(key, t))
        velocity = momentum * velocity + grad / (jnp.sum(jnp.abs(grad)) + TINY)
        return project(x_adv + step_size * direction(velocity, norm), x, epsilon, norm), velocity

    x_adv, _ = jax.lax.fori_loop(0, steps, step, (x_start, jnp.zeros_like(x)))
    return x_adv


@dataclasses.dataclass(frozen=True)
class IterativeBudget:
    """The fields every attack here shares; subclasses define `perturb` and `evals`."""

    epsilon: float = 0.1  # ball radius: per-pixel (linf) or whole-image Euclidean (l2)
    norm: str = "linf"  # linf | l2
    steps: int = 10  # T = 10 in every paper here (ImageNet, 16/255)
    relative_step_size: float = 0.1  # alpha = epsilon / T
    momentum: float = 1.0  # mu of the outer MI update (0: I-FGSM)

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {list(NORMS)}")

    def __call__(self, logits_fn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn, x, label, target, key):
        """x_adv and {"evals": gradient evaluations per example (`evals(logits_fn)`)}."""
        x_adv = self.perturb(logits_fn, x, label, target, key)
        return x_adv, {"evals": jnp.int32(self.evals(logits_fn))}

    def iterate(self, gradient, x, x_start, key) -> jax.Array:
        """`momentum_iterations` with this attack's budget, steps and momentum."""
        return momentum_iterations(gradient, x, x_start, key, epsilon=self.epsilon, norm=self.norm,
                                   steps=self.steps, step_size=self.relative_step_size * self.epsilon,
                                   momentum=self.momentum)
