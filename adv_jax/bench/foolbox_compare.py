"""adv_jax's PGD (L2, L-inf), C&W L2 and DeepFool L2 against foolbox 3.3.4 on one FC100 model.

Same model, same test images (the first N the model classifies correctly), matched settings per
pair (same epsilon, steps and relative step for PGD; same steps, binary-search steps, Adam step
and initial constant for C&W, early abort off in both; same steps and overshoot for DeepFool,
all 10 classes as candidates). Untargeted. Per pair (the table: adv_jax/reports/bench_foolbox.py):

  seconds     median wall time of `repeats` runs after one warm-up run (ours: the jitted
              `attack_batch` call; foolbox: `attack(fmodel, x, labels, ...)` on an `fb.JAXModel`
              wrapping the jitted batch forward pass, its strongest setup)
  success     fraction of the N images whose attack output is misclassified (checked by us; the
              all-zero image foolbox's C&W returns on failure does not count)
  rms         mean per-pixel RMS distortion over the images BOTH attacks succeed on

Needs `pip install foolbox==3.3.4`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adv_jax
from adv_jax.attacks.carlini_wagner import CarliniWagnerL2
from adv_jax.attacks.common import attack_batch, is_adversarial, rms_distortion
from adv_jax.attacks.deepfool import DeepFool
from adv_jax.attacks.gradient import PGD
from adv_jax.bench.timing import median_seconds

FOOLBOX_LINF_REL_STEP = 0.01 / 0.3  # foolbox LinfPGD's default relative step


def pairs(cw_steps: int, cw_search: int, cw_lr: float):
    """(row name, settings, our attack, foolbox attack, foolbox epsilons) with matched settings."""
    import foolbox as fb

    return [
        ("PGD L-inf", "eps=0.1, 40 steps, step 0.033 eps, random start",
         PGD(0.1, "linf", 40, FOOLBOX_LINF_REL_STEP),
         fb.attacks.LinfPGD(rel_stepsize=FOOLBOX_LINF_REL_STEP, steps=40, random_start=True), 0.1),
        ("PGD L2", "eps=1.5 (RMS 0.054), 50 steps, step 0.025 eps, random start",
         PGD(1.5, "l2", 50, 0.025),
         fb.attacks.L2PGD(rel_stepsize=0.025, steps=50, random_start=True), 1.5),
        ("C&W L2", f"{cw_search} x {cw_steps} Adam steps, lr {cw_lr:g}, c0 1e-3, kappa 0, no abort",
         CarliniWagnerL2(steps=cw_steps, binary_search_steps=cw_search, learning_rate=cw_lr,
                         abort_early=False),
         fb.attacks.L2CarliniWagnerAttack(binary_search_steps=cw_search, steps=cw_steps,
                                          stepsize=cw_lr, confidence=0.0, initial_const=1e-3,
                                          abort_early=False), None),
        ("DeepFool L2", "50 steps, overshoot 0.02, all 10 classes",
         DeepFool(steps=50, overshoot=0.02),
         fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02, loss="logits"), None),
    ]


def load_model(run_dir: Path) -> adv_jax.Run:
    """The FC100 of `run_dir`, trained there first (default data, from the cache) if absent."""
    if not (run_dir / "params.msgpack").exists():
        adv_jax.run(adv_jax.compose(["model=fc100", "attack=none", "wandb.mode=disabled"]), run_dir)
    return adv_jax.load_run(run_dir)


def split_images(run, split: str = "test") -> tuple[jax.Array, jax.Array]:
    """(images (N, 28, 28, 1), labels (N,)) of the run's data split `split`."""
    splits = adv_jax.load_splits(run.config.data)
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(splits)}")
    return jnp.asarray(splits[split].x), jnp.asarray(splits[split].y)


def correctly_classified(run, count: int, split: str = "test", with_indices: bool = False):
    """The first `count` images (and labels) of `split` the run's model classifies correctly; and
    their indices in the split (N,) where `with_indices`."""
    x, y = split_images(run, split)
    keep = np.flatnonzero(np.asarray(jnp.argmax(jax.jit(run.logits_fn)(x), -1) == y))[:count]
    return (x[keep], y[keep], keep) if with_indices else (x[keep], y[keep])


def succeeded(forward, x_adv: jax.Array, y: jax.Array) -> np.ndarray:
    """Misclassified, and not the all-zero image foolbox's C&W returns where it found nothing
    (a blank image is itself misclassified for most labels, which would count as a success)."""
    misclassified = np.asarray(is_adversarial(forward(x_adv), y, jnp.full_like(y, -1)))
    return misclassified & np.asarray(jnp.any(x_adv != 0, axis=(1, 2, 3)))


def comparison_row(run, name: str, settings: str, ours, theirs, epsilons, x, y, repeats: int) -> dict:
    """One attack pair on images x (N, 28, 28, 1), labels y (N,): seconds, success rate and RMS
    distortion (over the images both fool) of each."""
    import foolbox as fb

    forward = jax.jit(run.logits_fn)
    fmodel = fb.JAXModel(forward, bounds=(0.0, 1.0))
    our_s, (our_adv, _) = median_seconds(lambda: attack_batch(
        ours, run.logits_fn, x, y, jnp.full_like(y, -1), key=jax.random.key(0),
        chunk_size=getattr(ours, "chunk_size", 1000), progress=False), repeats)
    their_s, (_, their_adv, _) = median_seconds(lambda: theirs(fmodel, x, y, epsilons=epsilons), repeats)
    our_ok, their_ok = succeeded(forward, our_adv, y), succeeded(forward, their_adv, y)
    both = our_ok & their_ok
    rms = lambda adv: float(np.mean(np.asarray(rms_distortion(x, adv))[both]))  # noqa: E731
    return {"attack": name, "settings": settings, "examples": len(y),
            "ours": {"seconds": our_s, "success": float(our_ok.mean()), "rms": rms(our_adv)},
            "foolbox": {"seconds": their_s, "success": float(their_ok.mean()), "rms": rms(their_adv)}}


def compare(run, examples: int, repeats: int, cw_steps: int = 100, cw_search: int = 5,
            cw_lr: float = 0.05) -> list[dict]:
    """`comparison_row` of every pair on the first `examples` correctly classified test images.
    cw_lr 0.05 in both: foolbox's default 0.01 leaves about a quarter unsolved in 5 x 100 steps."""
    x, y = correctly_classified(run, examples)
    rows = []
    for pair in pairs(cw_steps, cw_search, cw_lr):
        rows.append(comparison_row(run, *pair, x, y, repeats))
        print(rows[-1], flush=True)
    return rows
