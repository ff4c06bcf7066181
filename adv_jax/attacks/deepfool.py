"""DeepFool L2 (Moosavi-Dezfooli et al. 2016): repeatedly step to the nearest linearized boundary.

At the current iterate x_i, with logits Z and source class s, each other class k gives a
linearized boundary  f_k + g_k . r = 0,  f_k = Z_k - Z_s,  g_k = grad_x (Z_k - Z_s),  at L2
distance |f_k| / |g_k|. DeepFool takes the nearest one, k*, and accumulates the step onto it:

    r_i = (|f_k*| / |g_k*| + 1e-4) * g_k* / |g_k*|,
    x_{i+1} = clip(x + (1 + overshoot) * (r_0 + ... + r_i), 0, 1)

until the iterate is adversarial or `steps` run out (foolbox's L2DeepFoolAttack, the 1e-4 for
numerical stability included). Untargeted: s is the true label and every k != s is a candidate.
Targeted: only the boundary between the target and the current prediction s = argmax Z is
linearized. For an affine two-class model one step lands on the exact closest point of the
boundary, times (1 + overshoot).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adv_jax.attacks.common import LogitsFn, is_adversarial

__all__ = ["DeepFool"]

_TINY = 1e-8


def _logits_and_jacobian(logits_fn: LogitsFn, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Logits (K,) and their input Jacobian (K, *x.shape): one forward pass, K backward."""
    logits, pullback = jax.vjp(logits_fn, x)
    (jacobian,) = jax.vmap(pullback)(jnp.eye(logits.shape[0], dtype=logits.dtype))
    return logits, jacobian


@dataclasses.dataclass(frozen=True)
class DeepFool:
    """DeepFool L2; returns the last iterate (adversarial unless `steps` ran out)."""

    steps: int = 50
    overshoot: float = 0.02  # the accumulated step is scaled by 1 + overshoot to cross

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key):
        """The last iterate, {"steps": DeepFool steps taken (int32), "evals": backward passes,
        K (one Jacobian) per step}."""
        del key  # deterministic
        targeted = target >= 0

        def step(carry):
            i, x_adv, total, _ = carry
            logits, jacobian = _logits_and_jacobian(logits_fn, x_adv)
            source = jnp.where(targeted, jnp.argmax(logits), label)
            offsets = logits - logits[source]  # f_k
            normals = jacobian - jacobian[source]  # g_k
            norms = jnp.sqrt(jnp.sum(normals**2, axis=tuple(range(1, normals.ndim))))
            distances = jnp.abs(offsets) / (norms + _TINY)
            classes = jnp.arange(logits.shape[0])
            candidate = jnp.where(targeted, classes == target, classes != source)
            nearest = jnp.argmin(jnp.where(candidate, distances, jnp.inf))
            r = (distances[nearest] + 1e-4) / (norms[nearest] + _TINY) * normals[nearest]
            total = total + r
            x_adv = jnp.clip(x + (1.0 + self.overshoot) * total, 0.0, 1.0)
            return i + 1, x_adv, total, is_adversarial(logits_fn(x_adv), label, target)

        def going(carry):
            return (carry[0] < self.steps) & ~carry[3]

        done = is_adversarial(logits_fn(x), label, target)
        carry = (0, x, jnp.zeros_like(x), done)
        steps, x_adv, _, _ = jax.lax.while_loop(going, step, carry)
        num_classes = jax.eval_shape(logits_fn, x).shape[0]
        return x_adv, {"steps": steps, "evals": steps * num_classes}
