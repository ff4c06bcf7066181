"""Ensemble sources (Liu et al. 2017): attack several models at once, as ONE logits_fn.

`Ensemble(members, reduction)` is a batched logits_fn (B, *shape) -> (B, K) built from member
logits_fns, usable by every attack and by `generate`:

  reduction "logits"  logits = mean_m z_m (the members' logits averaged; Dong et al. 2018).
                      Every attack's objective and success test see these logits.
  reduction "loss"    the attack objective is the mean of the members' losses,
                      mean_m CE(z_m, c), exactly: the CE-based attacks (FGSM, PGD, the
                      MI/DI/TI family through `attack_objective`, L-BFGS) average their loss
                      over `member_logits` (`member_averaged`). Its logits (the success test,
                      the other attacks) are mean_m log_softmax(z_m) (normalized geometric
                      mean of the members' probabilities).

Why "loss" needs the members, not just logits: no logit vector u has CE(u, c) = mean_m CE(z_m, c)
for every c. With u = mean_m log_softmax(z_m),
    CE(u, c) = mean_m CE(z_m, c) + logsumexp(u),   logsumexp(u) <= 0 (AM-GM),
equal only where the members' softmaxes agree; the extra term is label-independent but
depends on x, so its gradient would change the attack.

An ensemble is a pytree (its members' arrays are traced, as for one model), and
`common.single_example` turns it into the per-example ensemble of per-example members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = ["REDUCTIONS", "Ensemble", "ensemble_of", "member_averaged"]

REDUCTIONS = ("logits", "loss")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Ensemble:
    """Member logits_fns, each (..., *shape) -> (..., K), and how they are combined."""

    members: tuple
    reduction: str = "logits"

    def __post_init__(self):
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}; choose one of {list(REDUCTIONS)}")
        if not self.members:
            raise ValueError("an ensemble needs at least one member")

    def member_logits(self, x: jax.Array) -> jax.Array:
        """Every member's logits, stacked on the second-to-last axis: (..., M, K)."""
        return jnp.stack([member(x) for member in self.members], axis=-2)

    def __call__(self, x: jax.Array) -> jax.Array:
        """The ensemble's logits (..., K) (module docstring)."""
        stacked = self.member_logits(x)
        if self.reduction == "logits":
            return stacked.mean(-2)
        return jax.nn.log_softmax(stacked, axis=-1).mean(-2)  # as member_averaged's

    def per_example(self, single: Callable) -> "Ensemble":
        """The same ensemble over single-example members (`single(member)` for each)."""
        return Ensemble(tuple(single(member) for member in self.members), self.reduction)

    def tree_flatten(self):
        return (self.members,), self.reduction

    @classmethod
    def tree_unflatten(cls, reduction, children):
        return cls(tuple(children[0]), reduction)


def member_averaged(loss: Callable[[jax.Array], jax.Array], logits_fn: Callable,
                    x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(loss value, logits (K,)) at x: loss(logits_fn(x)); for an Ensemble with reduction "loss",
    the mean over members of loss(member logits), the exact averaged loss, with the ensemble's
    logits. The logits are computed once either way."""
    if isinstance(logits_fn, Ensemble) and logits_fn.reduction == "loss":
        stacked = logits_fn.member_logits(x)
        values = jnp.stack([loss(stacked[..., m, :]) for m in range(stacked.shape[-2])])
        return jnp.mean(values), jax.nn.log_softmax(stacked, axis=-1).mean(-2)
    logits = logits_fn(x)
    return loss(logits), logits


def ensemble_of(logits_fns: Sequence[Callable], reduction: str = "logits") -> Ensemble:
    """An Ensemble of batched logits_fns (e.g. `adv_jax.models.logits_fn(model, params)` each)."""
    return Ensemble(tuple(logits_fns), reduction)
