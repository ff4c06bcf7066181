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
    UNTARGETED,
    Attack,
    LogitsFn,
    attack_batch,
    batched_logits,
    is_adversarial,
    rms_distortion,
)
from adv_jax.attacks.targets import TARGET_MODES, attack_all_targets, choose_targets

__all__ = ["Adversarials", "Generated", "check_inputs", "generate", "num_classes_of", "summarize"]


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


def generate(attack, logits_fn: LogitsFn, x, y, *, key: jax.Array, target=None,
             chunk_size: int | None = None, index=None, progress: bool = True) -> Generated:
    """Attacks every image of x (N, 28, 28, 1), pixels in [0, 1], with true labels y (N,) in
    [0, K), against the batched logits_fn ((B, 28, 28, 1) -> (B, K), any JAX callable; e.g.
    `adv_jax.models.logits_fn`).

    attack: an attack object (`PGD(epsilon=0.1)`, `LBFGS()`, a `make_attack` result) or an attack
    config (`compose(["attack=lbfgs"]).attack`: name, params, target, chunk_size).
    target: "untargeted" (any label but y), "random" (a uniform wrong label), "next" (the most
    likely wrong label), "all" (every wrong label, the closest success kept) or targets (N,) int
    (-1 = untargeted). Default: the config's target; for an attack object "untargeted", as in
    torchattacks and foolbox. chunk_size: examples per jitted call (default: the config's, else
    the attack's own). index (N,): the images' positions in their split (default 0..N-1).
    Returns Generated: adversarials (x, x_adv, y, target, index, success; numpy), seconds,
    diagnostics. Bad inputs raise ValueError before any work (`check_inputs`).
    """
    attack, target, chunk_size = _resolve(attack, target, chunk_size)
    x = jnp.asarray(x, jnp.float32)
    check_inputs(x, y, target, num_classes_of(logits_fn, x))
    y = jnp.asarray(y, jnp.int32)
    start = time.perf_counter()
    x_adv, target, diagnostics = _attack(attack, logits_fn, x, y, target, key=key,
                                         chunk_size=chunk_size, progress=progress)
    x_adv = jax.block_until_ready(x_adv)
    seconds = time.perf_counter() - start
    success = is_adversarial(batched_logits(logits_fn, x_adv), y, target)
    index = np.arange(len(x)) if index is None else np.asarray(index)
    adversarials = Adversarials(*(np.asarray(a) for a in (x, x_adv, y, target, index, success)))
    return Generated(adversarials, seconds, diagnostics)


def _resolve(attack, target, chunk_size: int | None) -> tuple[Attack, object, int]:
    """(attack object, target, chunk size) from an attack object or an attack config; explicit
    target and chunk_size win over the config's."""
    if not callable(attack):
        if not hasattr(attack, "params"):
            raise TypeError(f"generate: attack must be an attack object (e.g. PGD()) or an attack "
                            f"config (name, params, target, chunk_size), got {type(attack).__name__}")
        target = attack.target if target is None else target
        chunk_size = chunk_size or attack.chunk_size
        attack = make_attack(attack.name, attack.params)
    target = "untargeted" if target is None else target
    return attack, target, chunk_size or getattr(attack, "chunk_size", 1000)


def _attack(attack: Attack, logits_fn: LogitsFn, x, y, target, *, key: jax.Array,
            chunk_size: int, progress: bool):
    """(x_adv (N, *shape), the targets (N,) int32, diagnostics {name: (N,)}) for a target mode
    or explicit targets; key is split into the targets' key and the attack's."""
    target_key, attack_key = jax.random.split(key)
    if isinstance(target, str) and target == "all":
        return attack_all_targets(attack, logits_fn, x, y, key=attack_key, chunk_size=chunk_size,
                                  progress=progress)
    if isinstance(target, str):
        target = choose_targets(target, batched_logits(logits_fn, x), y, key=target_key)
    target = jnp.asarray(target, jnp.int32)
    x_adv, diagnostics = attack_batch(attack, logits_fn, x, y, target, key=attack_key,
                                      chunk_size=chunk_size, progress=progress)
    return x_adv, target, diagnostics


def num_classes_of(logits_fn: LogitsFn, x) -> int | None:
    """K, the width of logits_fn's output for images shaped like x's (N, *shape) (traced, not
    run); None where x is not a batch (check_inputs says so)."""
    if np.ndim(x) < 2:
        return None
    image = jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), jnp.float32)
    return int(jax.eval_shape(logits_fn, image).shape[-1])


def check_inputs(x, y, target=None, num_classes: int | None = None, *,
                 caller: str = "generate") -> None:
    """Raises one ValueError line, naming the argument, unless x (N, *shape) is a non-empty batch
    of finite pixels in [0, 1], y (N,) holds labels in [0, num_classes), and target is None, a
    mode of TARGET_MODES or targets (N,) in [0, num_classes) or -1 (untargeted). num_classes
    None: upper bounds unchecked. caller: the function named in the message."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    _check_shapes(x, y, target, caller)
    _check_pixels(x, caller)
    _check_classes("y", y, num_classes, 0, caller)
    if isinstance(target, str):
        if target not in TARGET_MODES:
            raise ValueError(f"{caller}: unknown target mode {target!r}; choose one of "
                             f"{list(TARGET_MODES)} or pass targets (N,) int")
    elif target is not None:
        _check_classes("target", jnp.asarray(target), num_classes, UNTARGETED, caller)


def _check_shapes(x: jax.Array, y: jax.Array, target, caller: str) -> None:
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{caller}: x is empty or not a batch (shape {x.shape}); pass images "
                         f"(N, *shape) with N >= 1")
    arrays = [("y", y)] if isinstance(target, str) or target is None else [
        ("y", y), ("target", jnp.asarray(target))]
    for name, values in arrays:
        if values.shape != (len(x),):
            what = "label" if name == "y" else name
            raise ValueError(f"{caller}: {name} has shape {values.shape} but x has {len(x)} "
                             f"examples; pass one {what} per image, shape ({len(x)},)")


def _check_pixels(x: jax.Array, caller: str) -> None:
    rows = x.reshape(len(x), -1)
    bad = ~jnp.isfinite(rows)
    if count := int(bad.sum()):
        raise ValueError(f"{caller}: x has {count} non-finite values (first at example "
                         f"{int(jnp.argmax(bad.any(1)))}); images must be finite, in [0, 1]")
    low, high = float(rows.min()), float(rows.max())
    if low < 0 or high > 1:
        first = int(jnp.argmax(((rows < 0) | (rows > 1)).any(1)))
        hint = " (0-255 images: divide by 255)" if high > 1 else " (undo any mean/std normalization)"
        raise ValueError(f"{caller}: x has values in [{low:g}, {high:g}] (first outside [0, 1] at "
                         f"example {first}); images must be in [0, 1]{hint}")


def _check_classes(name: str, values: jax.Array, num_classes: int | None, lowest: int,
                   caller: str) -> None:
    bad = values < lowest
    if num_classes is not None:
        bad = bad | (values >= num_classes)
    if count := int(bad.sum()):
        first = int(jnp.argmax(bad))
        allowed = f"[0, {'K' if num_classes is None else num_classes})"
        allowed += " or -1 (untargeted)" if lowest == UNTARGETED else ""
        raise ValueError(f"{caller}: {name} has {count} values outside {allowed} (first at example "
                         f"{first}: {values[first].item()}); {name} must be class indices of "
                         f"logits_fn's outputs")


def summarize(generated: Generated) -> dict[str, float]:
    """Flat metrics: success rate, mean and median per-pixel RMS distortion over successes, the
    largest pixel change, speed; with diagnostics "evals", their mean and max (evaluations per
    example); "queries", their mean; "robust_after_<stage>" (AutoAttack), the robust accuracy
    after each stage and at the end; and with "c", its mean over the examples where some c
    succeeded (c > 0)."""
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
    if "queries" in diagnostics and n:
        metrics["attack/queries_mean"] = float(np.mean(diagnostics["queries"]))
    stages = {k.removeprefix("robust_after_"): v for k, v in diagnostics.items() if k.startswith("robust_after_")}
    for stage, robust in stages.items():  # AutoAttack: accuracy left after each stage, the last its result
        metrics[f"attack/robust_accuracy/{stage}"] = float(np.mean(robust)) if n else float("nan")
    if stages and n:
        metrics["attack/robust_accuracy"] = float(np.mean(list(stages.values())[-1]))
    if "c" in diagnostics:
        c = np.asarray(diagnostics["c"])
        metrics["attack/c_mean"] = float(c[c > 0].mean()) if (c > 0).any() else float("nan")
    return metrics
