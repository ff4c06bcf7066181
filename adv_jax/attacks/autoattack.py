"""AutoAttack (Croce & Hein 2020), the standard version: APGD-CE, APGD-T (targeted DLR over the 9
most likely wrong classes), FAB-T (9 classes) and Square (5000 queries), in that order, each on
the examples every earlier one left correctly classified; an example is robust only if all four
fail, so the robust accuracy is the worst case over them.

Per example, `AutoAttack` is one pure function (each stage runs only while the example is still
robust). Batched, `attack_batch` runs it stage by stage instead (`staged_batch`): each stage on the
examples still robust, compacted, so a model that APGD-CE breaks almost everywhere costs little
more than APGD-CE. The two give the same x_adv per example: each stage of example i draws from
the same key in both (split from its own key, `stage_keys`); exactly so where the model's outputs
do not depend on the batch's size (CPU), while on a GPU a point on the boundary can fall either way.
Square runs with its reference schedule (rescale_schedule=False), as the reference AutoAttack.

Diagnostics: "evals" (gradient evaluations of the stages run), "queries" (Square's forward
passes), and "robust_after_<stage>" (1: still correctly classified after that stage), from which
`generate.summarize` reports attack/robust_accuracy and the accuracy after each stage.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.attacks.apgd import APGD
from adv_jax.attacks.common import LogitsFn, attack_batch, batched_logits, is_adversarial, run_attack
from adv_jax.attacks.common import example_keys as per_example_keys  # the parameter below takes the name
from adv_jax.attacks.fab import FAB
from adv_jax.attacks.gradient import check_norm
from adv_jax.attacks.square import Square

__all__ = ["AutoAttack", "staged_batch", "stage_keys"]

STAGES = ("apgd_ce", "apgd_t", "fab_t", "square")


def stage_keys(key: jax.Array) -> jax.Array:
    """One example's key -> its stages' keys (len(STAGES),)."""
    return jax.random.split(key, len(STAGES))


@dataclasses.dataclass(frozen=True)
class AutoAttack:
    """The standard AutoAttack at budget epsilon; `stages` a subset of STAGES, in STAGES' order."""

    epsilon: float = 0.3
    norm: str = "linf"  # linf | l2
    apgd_steps: int = 100
    target_classes: int = 9
    fab_steps: int = 100
    square_queries: int = 5000
    stages: tuple[str, ...] = STAGES

    def __post_init__(self):
        check_norm(self.norm)
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown AutoAttack stages {unknown}; choose from {list(STAGES)}")
        object.__setattr__(self, "stages", tuple(self.stages))  # a YAML list: hashable for jit

    def components(self) -> list[tuple[int, str, object]]:
        """(index in STAGES, name, attack) of each stage this AutoAttack runs."""
        build = {"apgd_ce": APGD(self.epsilon, self.norm, self.apgd_steps, loss="ce"),
                 "apgd_t": APGD(self.epsilon, self.norm, self.apgd_steps, loss="dlr",
                                target_classes=self.target_classes),
                 "fab_t": FAB(self.epsilon, self.norm, self.fab_steps, target_classes=self.target_classes),
                 "square": Square(self.epsilon, self.norm, self.square_queries, rescale_schedule=False)}
        return [(i, name, build[name]) for i, name in enumerate(STAGES) if name in self.stages]

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key):
        """One example: each stage while it is still robust; x (28, 28, 1) -> (x_adv, diagnostics)."""
        keys = stage_keys(key)
        x_adv, robust = x, ~is_adversarial(logits_fn(x), label, target)
        diagnostics = {"evals": jnp.int32(0), "queries": jnp.int32(0)}
        for i, name, attack in self.components():
            def run(attack=attack, i=i):
                out, d = run_attack(attack, logits_fn, x, label, target, keys[i])
                return out, d.get("evals", jnp.int32(0)), d.get("queries", jnp.int32(0))

            def skip():
                return x, jnp.int32(0), jnp.int32(0)

            out, evals, queries = jax.lax.cond(robust, run, skip)
            fooled = robust & is_adversarial(logits_fn(out), label, target)
            x_adv, robust = jnp.where(fooled, out, x_adv), robust & ~fooled
            diagnostics = {**diagnostics, "evals": diagnostics["evals"] + evals,
                           "queries": diagnostics["queries"] + queries,
                           f"robust_after_{name}": robust.astype(jnp.float32)}
        return x_adv, diagnostics

    def attack_batch(self, logits_fn: LogitsFn, x, y, target, *, key, chunk_size: int, progress: bool = True,
                     example_keys=None):
        return staged_batch(self, logits_fn, x, y, target, key=key, chunk_size=chunk_size, progress=progress,
                            example_keys=example_keys)


def staged_batch(attack: AutoAttack, logits_fn: LogitsFn, x, y, target, *, key: jax.Array, chunk_size: int,
                 progress: bool = True, example_keys=None) -> tuple[jax.Array, dict[str, np.ndarray]]:
    """`attack` on every example, stage by stage on those still robust; the same x_adv (N, ...) and
    diagnostics {name: (N,)} as its per-example function (exactly where the model's outputs do not
    depend on the batch's size, as on CPU; on a GPU a point at the boundary can fall either way).
    example_keys (N,): each example's key (default: key folded with its index)."""
    x, y, target = jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.asarray(target, jnp.int32)
    keys = jax.vmap(stage_keys)(per_example_keys(key, len(x)) if example_keys is None else example_keys)
    x_adv = np.array(x)
    robust = ~np.asarray(is_adversarial(batched_logits(logits_fn, x), y, target))
    diagnostics = {"evals": np.zeros(len(x), np.int32), "queries": np.zeros(len(x), np.int32)}
    for i, name, stage in attack.components():
        rows = np.flatnonzero(robust)
        if rows.size:
            out, d = attack_batch(stage, logits_fn, x[rows], y[rows], target[rows], key=key, example_keys=keys[rows, i],
                                  chunk_size=chunk_size, progress=progress)
            fooled = np.asarray(is_adversarial(batched_logits(logits_fn, out), y[rows], target[rows]))
            x_adv[rows[fooled]] = np.asarray(out)[fooled]
            robust[rows[fooled]] = False
            for k in ("evals", "queries"):
                diagnostics[k][rows] += np.asarray(d.get(k, 0), np.int32)
        diagnostics[f"robust_after_{name}"] = robust.astype(np.float32)
    return jnp.asarray(x_adv), diagnostics
