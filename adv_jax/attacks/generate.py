"""Adversarial examples for a set of images: targets, the batched attack, metrics, files.

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
from adv_jax.attacks.common import attack_batch, is_adversarial, rms_distortion
from adv_jax.attacks.lbfgs import attack_all_targets, choose_targets
from adv_jax.models import Model, Params


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


def generate(attack_cfg, model: Model, params: Params, x, y, key: jax.Array,
             index=None, progress: bool = True) -> tuple[Adversarials, float]:
    """Attacks every image of x (N, 28, 28, 1) with labels y (N,); returns them and the seconds.

    attack_cfg: name, params, target (random | next | all | untargeted), chunk_size.
    """
    attack = make_attack(attack_cfg.name, attack_cfg.params)
    chunk = attack_cfg.chunk_size or getattr(attack, "chunk_size", 1000)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    target_key, attack_key = jax.random.split(key)
    start = time.perf_counter()
    if attack_cfg.target == "all":
        x_adv, target = attack_all_targets(attack, model, params, x, y, attack_key, chunk)
    else:
        logits = jnp.concatenate([model.apply(params, x[i:i + 10000]) for i in range(0, len(x), 10000)])
        target = choose_targets(attack_cfg.target, logits, y, target_key)
        x_adv = attack_batch(attack, model, params, x, y, target, attack_key, chunk, progress=progress)
    x_adv = jax.block_until_ready(x_adv)
    seconds = time.perf_counter() - start
    success = is_adversarial(model.apply(params, x_adv), y, target)
    index = np.arange(len(x)) if index is None else np.asarray(index)
    return Adversarials(*(np.asarray(a) for a in (x, x_adv, y, target, index, success))), seconds


def summarize(adv: Adversarials, seconds: float) -> dict[str, float]:
    """Flat metrics: success rate, mean and median per-pixel RMS distortion over successes, speed."""
    distortion = adv.distortion()[adv.success]
    n = len(adv.y)
    return {
        "attack/num_examples": n,
        "attack/success_rate": float(adv.success.mean()) if n else float("nan"),
        "attack/mean_distortion": float(distortion.mean()) if distortion.size else float("nan"),
        "attack/median_distortion": float(np.median(distortion)) if distortion.size else float("nan"),
        "attack/max_pixel_change": float(np.abs(adv.x_adv - adv.x).max()) if n else 0.0,
        "attack/seconds": seconds,
        "attack/examples_per_second": n / seconds if seconds > 0 else float("nan"),
    }
