"""A first attack's adversarial, moved closer to x by a minimum-norm attack started from it.

L-BFGS (the paper's method) reaches the boundary in ~100 evaluations but stops short of the
closest point on it; DDN or FMN from x needs ~1000 steps to get there from afar. Started from
L-BFGS's result, at its radius, a few hundred FMN steps walk along the boundary towards x: as
close as 1000 steps of DDN or FMN or closer, with under half of their evaluations
(results/bench_minnorm.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from adv_jax.attacks.common import Attack, LogitsFn, run_attack, run_rows
from adv_jax.attacks.minnorm import DDN, FMN

__all__ = ["Refined"]


@dataclasses.dataclass(frozen=True)
class Refined:
    """`first`, then `refine` (DDN or FMN) from first's x_adv. x (28, 28, 1) -> x_adv.

    Diagnostics: "evals" (both stages' gradient evaluations, per example), "first_evals", and
    refine's "norm" (L2 or L-inf of the returned perturbation; inf where no adversarial was
    found). Where `refine` finds none (first failed and so did it), first's x_adv is returned.
    """

    first: Attack
    refine: DDN | FMN

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key):
        first_key, refine_key = jax.random.split(key)
        start, first = run_attack(self.first, logits_fn, x, label, target, first_key)
        return self._refine(logits_fn, x, label, target, refine_key, start, first)

    def attack_rows(self, logits_fn: LogitsFn, x, label, target, keys):
        """A device's rows (N, ...): first's own batching (`attack_rows`) where it has one."""
        first_keys, refine_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        starts, first = run_rows(self.first, logits_fn, x, label, target, first_keys)
        return jax.vmap(lambda *a: self._refine(logits_fn, *a))(
            x, label, target, refine_keys, starts, first)

    def _refine(self, logits_fn, x, label, target, key, start, first: dict[str, Any]):
        x_adv, found = self.refine.with_diagnostics(logits_fn, x, label, target, key, start=start)
        x_adv = jnp.where(jnp.isfinite(found["norm"]), x_adv, start)
        first_evals = first.get("evals", 0)
        return x_adv, {"evals": first_evals + found["evals"], "first_evals": first_evals,
                       "norm": found["norm"]}
