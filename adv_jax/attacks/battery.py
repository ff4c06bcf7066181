"""Several fixed-budget attacks, each at several budgets, as ONE per-example attack: a transfer
benchmark's family on one source is one compiled program (`attack_batch` jits and vmaps it like
any attack), not one job per attack and budget.

`Battery(attacks, budgets)`: attacks are frozen dataclasses with `epsilon` (per-pixel for linf,
whole-image Euclidean for l2; pixels in [0, 1]), budgets (A, E) their E budgets each (an L-inf
and an L2 form of one attack are two rows). Each attack runs at its budgets by vmapping over
epsilon (a traced field, `dataclasses.replace`), with the same key for every attack and budget,
so a row equals that attack run alone with `epsilon=budget` and that key. Per example:
x (*shape) -> (A, E, *shape), row [a, e] = attacks[a] at budgets[a][e].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adv_jax.attacks.common import LogitsFn

__all__ = ["Battery", "gradient_evals"]


def gradient_evals(attack, logits_fn: LogitsFn) -> int:
    """Backward passes per example of one run of `attack` on `logits_fn` (its "evals")."""
    if hasattr(attack, "evals"):
        return int(attack.evals(logits_fn))
    return int(attack.gradient_evals)


@dataclasses.dataclass(frozen=True)
class Battery:
    """attacks (A,), each at its budgets (A, E), on one source (module docstring)."""

    attacks: tuple
    budgets: tuple[tuple[float, ...], ...]

    def __post_init__(self):
        if len(self.budgets) != len(self.attacks) or len({len(b) for b in self.budgets}) > 1:
            raise ValueError(f"a Battery needs one row of E budgets per attack; got {self.budgets} "
                             f"for {len(self.attacks)} attacks")

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        """x (*shape) -> x_adv (A, E, *shape)."""
        def at_budgets(attack, budgets):
            def at(epsilon):
                return dataclasses.replace(attack, epsilon=epsilon)(logits_fn, x, label, target, key)

            return jax.vmap(at)(jnp.asarray(budgets, jnp.float32))

        return jnp.stack([at_budgets(a, b) for a, b in zip(self.attacks, self.budgets)])
