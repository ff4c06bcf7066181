"""adv_jax's PGD (L2, L-inf), C&W L2 and DeepFool L2 against foolbox 3.3.4 on one FC100 model.

Same model (the runner's FC100, trained by full-batch L-BFGS and cached), same test images (the
first N the model classifies correctly), matched settings per pair (same epsilon, steps and
relative step for PGD; same steps, binary-search steps, Adam step (0.05 in both: foolbox's default
0.01 leaves about a quarter of the images unsolved in 5 x 100 steps) and initial constant for C&W,
early abort off in both; same steps and overshoot for DeepFool, all 10 classes as candidates).
Untargeted. Prints a markdown table:

  ex/s        examples per second: N / median wall time of `repeats` runs after one warm-up run
              (ours: the jitted `attack_batch` call; foolbox: `attack(fmodel, x, labels, ...)`
              on an `fb.JAXModel` wrapping the jitted batch forward pass, its strongest setup)
  success     fraction of the N images whose attack output is misclassified (checked by us; the
              all-zero image foolbox's C&W returns on failure does not count)
  RMS         mean per-pixel RMS distortion over the images BOTH attacks succeed on

Usage (needs `pip install foolbox==3.3.4`; the first run trains FC100, ~2 min, then cached):
  python scripts/bench_foolbox.py [--run-dir DIR] [--mnist-dir DIR] [--examples 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adv_jax
from adv_jax.attacks.carlini_wagner import CarliniWagnerL2
from adv_jax.attacks.common import attack_batch, is_adversarial, rms_distortion
from adv_jax.attacks.deepfool import DeepFool
from adv_jax.attacks.gradient import PGD

FOOLBOX_LINF_REL_STEP = 0.01 / 0.3  # foolbox LinfPGD's default relative step
DEFAULT_MNIST_DIR = os.environ.get("ADV_JAX_MNIST_DIR") or str(
    Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")  # as tests/conftest.py


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


def median_seconds(fn, repeats: int) -> tuple[float, jax.Array]:
    """Median wall time of `repeats` calls of fn() after one warm-up call (compilation)."""
    out = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def load_model(run_dir: Path, mnist_dir: str):
    if not (run_dir / "params.msgpack").exists():
        adv_jax.run(adv_jax.compose(["model=fc100", "attack=none", "wandb.mode=disabled",
                                     f"data.mnist_dir={mnist_dir}"]), run_dir)
    return adv_jax.load_run(run_dir)


def correctly_classified(run, count: int) -> tuple[jax.Array, jax.Array]:
    test = adv_jax.load_splits(run.config.data)["test"]
    x, y = jnp.asarray(test.x), jnp.asarray(test.y)
    keep = np.flatnonzero(np.asarray(jnp.argmax(jax.jit(run.logits_fn)(x), -1) == y))[:count]
    return x[keep], y[keep]


def succeeded(forward, x_adv: jax.Array, y: jax.Array) -> np.ndarray:
    """Misclassified, and not the all-zero image foolbox's C&W returns where it found nothing
    (a blank image is itself misclassified for most labels, which would count as a success)."""
    misclassified = np.asarray(is_adversarial(forward(x_adv), y, jnp.full_like(y, -1)))
    return misclassified & np.asarray(jnp.any(x_adv != 0, axis=(1, 2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/adv_jax_bench/fc100"))
    parser.add_argument("--mnist-dir", default=DEFAULT_MNIST_DIR)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cw-steps", type=int, default=100)
    parser.add_argument("--cw-search", type=int, default=5)
    # foolbox's default 0.01 leaves about a quarter of the images unsolved in 5 x 100 steps.
    parser.add_argument("--cw-lr", type=float, default=0.05)
    args = parser.parse_args()

    import foolbox as fb

    run = load_model(args.run_dir, args.mnist_dir)
    x, y = correctly_classified(run, args.examples)
    forward = jax.jit(run.logits_fn)
    fmodel = fb.JAXModel(forward, bounds=(0.0, 1.0))
    untargeted = jnp.full_like(y, -1)
    test_error = run.metrics.get("error/test", float("nan"))
    print(f"FC100 from {args.run_dir} (test error {test_error:.4f}); "
          f"{len(y)} correctly classified test images; median of {args.repeats} runs after a "
          f"warm-up; jax {jax.__version__}, foolbox {fb.__version__}, "
          f"{jax.devices()[0].device_kind} x {os.cpu_count()} cores\n")
    rows = ["| attack | matched settings | ours ex/s | foolbox ex/s | speedup | ours success "
            "| foolbox success | ours RMS | foolbox RMS |", "|" + " --- |" * 9]
    for name, settings, ours, theirs, epsilons in pairs(args.cw_steps, args.cw_search, args.cw_lr):
        our_s, our_adv = median_seconds(
            lambda: attack_batch(ours, run.logits_fn, x, y, untargeted, key=jax.random.key(0),
                                 chunk_size=10000, progress=False)[0],
            args.repeats)
        their_s, (_, their_adv, _) = median_seconds(
            lambda: theirs(fmodel, x, y, epsilons=epsilons), args.repeats)
        our_ok, their_ok = succeeded(forward, our_adv, y), succeeded(forward, their_adv, y)
        both = our_ok & their_ok
        our_rms = float(np.mean(np.asarray(rms_distortion(x, our_adv))[both]))
        their_rms = float(np.mean(np.asarray(rms_distortion(x, their_adv))[both]))
        n = len(y)
        rows.append(f"| {name} | {settings} | {n / our_s:,.0f} | {n / their_s:,.0f} | "
                    f"{their_s / our_s:.1f}x | {our_ok.mean():.3f} | {their_ok.mean():.3f} | "
                    f"{our_rms:.4f} | {their_rms:.4f} |")
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
