"""Several perturbation budgets in one batched run, and minimum-norm perturbations rescaled to a
budget.

`AcrossBudgets(attack, budgets)` is an attack whose output per example is (E, *shape): the inner
attack's `perturb(logits_fn, x, label, target, key, epsilon)` vmapped over the E budgets, with
the same key for every budget. `attack_batch` runs it like any attack: x_adv (N, E, *shape).
Budgets are in the inner attack's norm: the largest per-pixel change (linf) or the Euclidean
norm of the whole perturbation (l2; per-pixel RMS = epsilon / 28 on MNIST). Pixels in [0, 1].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adv_jax.attacks.common import LogitsFn

__all__ = ["AcrossBudgets", "perturbation_norm", "rescale_to_budget"]


@dataclasses.dataclass(frozen=True)
class AcrossBudgets:
    """The inner attack (FGSM, PGD, MomentumIterative: anything with `perturb`) at each budget."""

    attack: object
    budgets: tuple[float, ...]

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        """x (*shape) -> x_adv (E, *shape), row e at budgets[e]."""
        def at(epsilon):
            return self.attack.perturb(logits_fn, x, label, target, key, epsilon)

        return jax.vmap(at)(jnp.asarray(self.budgets, jnp.float32))


def perturbation_norm(delta: jax.Array, norm: str) -> jax.Array:
    """|delta| per example of a (N, ...) batch -> (N,): max |.| (linf) or Euclidean (l2)."""
    flat = delta.reshape(len(delta), -1)
    if norm == "linf":
        return jnp.max(jnp.abs(flat), axis=1)
    return jnp.sqrt(jnp.sum(flat ** 2, axis=1))


def rescale_to_budget(x: jax.Array, x_adv: jax.Array, epsilon: float, norm: str) -> jax.Array:
    """x + epsilon * delta / |delta|_norm, clipped to [0, 1], for a (N, ...) batch: a
    minimum-norm attack's direction (e.g. L-BFGS's) at a fixed budget. Where x_adv == x (no
    direction) the image stays x. Clipping can only shrink the perturbation."""
    delta = x_adv - x
    size = perturbation_norm(delta, norm).reshape((-1,) + (1,) * (x.ndim - 1))
    scale = jnp.where(size > 0, epsilon / jnp.where(size > 0, size, 1.0), 0.0)
    return jnp.clip(x + scale * delta, 0.0, 1.0)
