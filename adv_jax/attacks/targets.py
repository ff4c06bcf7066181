"""Which label each example is attacked toward: `attack.target` = random | next | untargeted | all.

random, next and untargeted give one target per example (`choose_targets`); "all" attacks every
wrong label and keeps the closest success (`attack_all_targets`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.attacks.common import (UNTARGETED, Attack, LogitsFn, attack_batch, batched_logits,
                                    is_adversarial, rms_distortion)

__all__ = ["TARGET_MODES", "attack_all_targets", "choose_targets"]

TARGET_MODES = ("random", "next", "untargeted", "all")


def choose_targets(mode: str, logits: jax.Array, labels: jax.Array, *, key: jax.Array) -> jax.Array:
    """Target labels (N,) int32 for logits (N, K) and true labels (N,).

    random:     uniform over the K - 1 wrong labels (from `key`)
    next:       the most likely wrong label (the second-highest logit when the model is right)
    untargeted: -1 everywhere (leave the true label)
    all:        not a single target: use `attack_all_targets`, which tries all K - 1 wrong labels
                and keeps per example the closest success.
    """
    num_classes = logits.shape[-1]
    labels = labels.astype(jnp.int32)
    if mode == "random":
        offset = jax.random.randint(key, labels.shape, 1, num_classes)
        return (labels + offset) % num_classes
    if mode == "next":
        is_label = jnp.arange(num_classes) == labels[:, None]
        return jnp.argmax(jnp.where(is_label, -jnp.inf, logits), -1).astype(jnp.int32)
    if mode == "untargeted":
        return jnp.full(labels.shape, UNTARGETED, jnp.int32)
    if mode == "all":
        raise ValueError("target mode 'all' has no single target per example; "
                         "call attack_all_targets(attack, logits_fn, x, label, key=...)")
    raise ValueError(f"unknown target mode {mode!r}; choose one of {list(TARGET_MODES)}")


def attack_all_targets(attack: Attack, logits_fn: LogitsFn, x: jax.Array, label: jax.Array, *,
                       key: jax.Array, chunk_size: int | None = None, progress: bool = False
                       ) -> tuple[jax.Array, jax.Array, dict[str, np.ndarray]]:
    """Attacks each example toward each of the K - 1 wrong labels (one `attack_batch` per offset
    1..K-1, with key folded in from the offset) and keeps per example the closest success.

    logits_fn: batched, (B, *shape) -> (B, K); x (N, *shape) in [0, 1], label (N,). Returns x_adv
    (N, *shape) (x where all failed), the target it reaches (N,) (-1 where all failed) and the
    kept attack's diagnostics {name: (N,)} (the first target's where all failed), except "evals",
    summed over the K - 1 targets (what the example cost).
    """
    chunk_size = chunk_size or getattr(attack, "chunk_size", 10000)
    label = jnp.asarray(label, jnp.int32)
    num_classes = jax.eval_shape(logits_fn, x[:1]).shape[-1]
    best_x, best_target = x, jnp.full(label.shape, UNTARGETED, jnp.int32)
    best_dist, best_diagnostics = jnp.full(label.shape, jnp.inf), None
    for offset in range(1, num_classes):
        target = (label + offset) % num_classes
        x_adv, diagnostics = attack_batch(attack, logits_fn, x, label, target, chunk_size=chunk_size,
                                          key=jax.random.fold_in(key, offset), progress=progress)
        success = is_adversarial(batched_logits(logits_fn, x_adv), label, target)
        dist = jax.vmap(rms_distortion)(x, x_adv)
        better = success & (dist < best_dist)
        best_x = jnp.where(better.reshape((-1,) + (1,) * (x.ndim - 1)), x_adv, best_x)
        best_target = jnp.where(better, target, best_target)
        best_dist = jnp.where(better, dist, best_dist)
        best_diagnostics = diagnostics if best_diagnostics is None else {
            k: best_diagnostics[k] + v if k == "evals" else np.where(better, v, best_diagnostics[k])
            for k, v in diagnostics.items()}
    return best_x, best_target, best_diagnostics or {}
