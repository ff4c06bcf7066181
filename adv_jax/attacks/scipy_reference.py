"""A per-example reference for `LBFGSAttack`: scipy's L-BFGS-B on the same objective and c search.

    minimize_z  c * ||z - x||_2^2 + attack_loss(f(z), t)    subject to  z in [0, 1]^n

Each solve is `scipy.optimize.fmin_l_bfgs_b` from z = x with bounds [0, 1] (scipy's defaults:
generalized Cauchy point, More-Thuente line search, factr 1e7, pgtol 1e-5); value and gradient
come from one jitted float32 JAX function. The c search is written out in Python, independently
of the JAX one: x10 (success) or /10 (failure) until bracketed, then the geometric mean of the
largest successful and the smallest failed c. Slow (host round trip per evaluation): for tests
and benchmarks only.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import fmin_l_bfgs_b

from adv_jax.attacks.common import LogitsFn, is_adversarial
from adv_jax.attacks.lbfgs import attack_loss

__all__ = ["scipy_lbfgs_attack"]


def scipy_lbfgs_attack(logits_fn: LogitsFn, x, label: int, target: int, *, c_init: float = 1.0,
                       c_steps: int = 10, loss: str = "xent", confidence: float = 0.0,
                       memory: int = 10, pgtol: float = 1e-5, factr: float = 1e7,
                       maxiter: int = 15000) -> tuple[np.ndarray, dict]:
    """x (28, 28, 1) in [0, 1] -> (x_adv, {"evals": function evaluations, "c": largest
    successful c}); x_adv is the closest success over the c search, x itself where none."""
    shape = np.shape(x)
    x_flat = np.asarray(x, np.float64).reshape(-1)
    x_jax, label, target = jnp.asarray(x_flat, jnp.float32), jnp.int32(label), jnp.int32(target)

    def value_and_grad(z, c):
        return _value_and_grad(logits_fn, loss, confidence, shape, jnp.asarray(z, jnp.float32),
                               jnp.float32(c), x_jax, label, target)

    def success_of(z):
        return bool(value_and_grad(z, 0.0)[2])

    if success_of(x_flat):
        return np.asarray(x, np.float32), {"evals": 1, "c": math.inf}
    best, best_dist, c, c_success, c_failure, evals = None, math.inf, c_init, 0.0, math.inf, 0
    for _ in range(c_steps):
        def fun(z, c=c):
            value, grad, _ = value_and_grad(z, c)
            return float(value), np.asarray(grad, np.float64)

        z, _, info = fmin_l_bfgs_b(fun, x_flat.copy(), bounds=[(0.0, 1.0)] * x_flat.size,
                                   m=memory, factr=factr, pgtol=pgtol, maxiter=maxiter)
        evals += info["funcalls"]
        dist = float(np.sum((z - x_flat) ** 2))
        if success_of(z):
            c_success = max(c_success, c)
            if dist < best_dist:
                best, best_dist = z, dist
        else:
            c_failure = min(c_failure, c)
        if c_success > 0 and math.isfinite(c_failure):
            c = math.sqrt(c_success * c_failure)
        else:
            c = c_success * 10 if c_success > 0 else c_failure / 10
    x_adv = x_flat if best is None else np.clip(best, 0.0, 1.0)
    return x_adv.reshape(shape).astype(np.float32), {"evals": evals, "c": c_success}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _value_and_grad(logits_fn, loss, confidence, shape, z, c, x, label, target):
    """Objective value, gradient (n,) and success at z (n,); compiled once per logits_fn."""
    def objective(z):
        logits = logits_fn(z.reshape(shape))
        penalty = c * jnp.sum((z - x) ** 2)
        return penalty + attack_loss(logits, label, target, loss, confidence), logits

    (value, logits), grad = jax.value_and_grad(objective, has_aux=True)(z)
    return value, grad, is_adversarial(logits, label, target)
