"""Adversarial examples for a set of images against any batched logits_fn: targets, the batched
attack, its diagnostics, metrics, files.

`adversarials.npz` holds x (N, 28, 28, 1), x_adv (N, 28, 28, 1), y (N,) true labels, target (N,)
(-1 = untargeted), index (N,) positions in the source split, and success (N,) bool.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.attacks import make_attack
from adv_jax.attacks.common import (
    LogitsFn,
    attack_batch,
    batched_logits,
    is_adversarial,
    rms_distortion,
)
from adv_jax.attacks.targets import attack_all_targets, choose_targets


class Adversarials(NamedTuple):
    x: np.ndarray
    x_adv: np.ndarray
    y: np.ndarray
    target: np.ndarray
    index: np.ndarray
    success: np.ndarray

    def distortion(self) -> np.ndarray:
        """Per-pixel RMS distortion of each example (N,)."""
        return np.asarray(rms_distortion(jnp.asarray(self.x), jnp.asarray(self.x_adv)))

    def save(self, path: str | Path) -> Path:
        np.savez_compressed(path, **self._asdict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Adversarials":
        with np.load(path) as f:
            return cls(**{k: f[k] for k in cls._fields})


class Generated(NamedTuple):
    """What `generate` returns: the examples, the attack's wall-clock seconds (targets included)
    and the attack's per-example diagnostics {name: (N,)} (e.g. L-BFGS's "evals" and "c")."""
    adversarials: Adversarials
    seconds: float
    diagnostics: dict[str, np.ndarray]


def generate(attack_cfg, logits_fn: LogitsFn, x, y, *, key: jax.Array, index=None,
             progress: bool = True) -> Generated:
    """Attacks every image of x (N, 28, 28, 1) in [0, 1] with labels y (N,) against the batched
    logits_fn ((B, 28, 28, 1) -> (B, K), any JAX callable; e.g. `adv_jax.models.logits_fn`).

    attack_cfg: name, params, target (random | next | all | untargeted), chunk_size. index (N,):
    the images' positions in their split (default 0..N-1), stored with them.
    """
    attack = make_attack(attack_cfg.name, attack_cfg.params)
    chunk = attack_cfg.chunk_size or getattr(attack, "chunk_size", 1000)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    target_key, attack_key = jax.random.split(key)
    start = time.perf_counter()
    if attack_cfg.target == "all":
        x_adv, target, diagnostics = attack_all_targets(attack, logits_fn, x, y, key=attack_key,
                                                        chunk_size=chunk, progress=progress)
    else:
        target = choose_targets(attack_cfg.target, batched_logits(logits_fn, x), y, key=target_key)
        x_adv, diagnostics = attack_batch(attack, logits_fn, x, y, target, key=attack_key,
                                          chunk_size=chunk, progress=progress)
    x_adv = jax.block_until_ready(x_adv)
    seconds = time.perf_counter() - start
    success = is_adversarial(batched_logits(logits_fn, x_adv), y, target)
    index = np.arange(len(x)) if index is None else np.asarray(index)
    adversarials = Adversarials(*(np.asarray(a) for a in (x, x_adv, y, target, index, success)))
    return Generated(adversarials, seconds, diagnostics)


def summarize(generated: Generated) -> dict[str, float]:
    """Flat metrics: success rate, mean and median per-pixel RMS distortion over successes, the
    largest pixel change, speed; with diagnostics "evals", their mean and max (evaluations per
    example), and with "c", its mean over the examples where some c succeeded (c > 0)."""
    adv, seconds, diagnostics = generated
    distortion = adv.distortion()[adv.success]
    n = len(adv.y)
    metrics = {
        "attack/num_examples": n,
        "attack/success_rate": float(adv.success.mean()) if n else float("nan"),
        "attack/mean_distortion": float(distortion.mean()) if distortion.size else float("nan"),
        "attack/median_distortion": float(np.median(distortion)) if distortion.size else float("nan"),
        "attack/max_pixel_change": float(np.abs(adv.x_adv - adv.x).max()) if n else 0.0,
        "attack/seconds": seconds,
        "attack/examples_per_second": n / seconds if seconds > 0 else float("nan"),
    }
    if "evals" in diagnostics and n:
        metrics["attack/evals_mean"] = float(np.mean(diagnostics["evals"]))
        metrics["attack/evals_max"] = int(np.max(diagnostics["evals"]))
    if "c" in diagnostics:
        c = np.asarray(diagnostics["c"])
        metrics["attack/c_mean"] = float(c[c > 0].mean()) if (c > 0).any() else float("nan")
    return metrics
