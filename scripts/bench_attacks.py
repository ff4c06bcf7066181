"""Attack benchmark on FC100-100-10 trained on P1: writes results/bench_attacks.md.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_attacks.py [--examples 1000] [--scipy 30]

(a) our batched, jitted L-BFGS against a per-example scipy L-BFGS-B run of the same objective and
    c search (the way the paper, foolbox 2 and cleverhans 3 run it), on the same images and
    random targets; then the full 10000-image test set once;
(b) our PGD, C&W and DeepFool against foolbox 3.3.4 on the same JAX model (scripts/bench_foolbox.py);
(c) the L-BFGS loop's achieved GFLOP/s next to a fused forward+backward pass on a 10000-image batch.
Times are medians of --repeats runs after one warm-up (compilation) run.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adv_jax
from adv_jax.attacks import make_attack
from adv_jax.attacks.common import is_adversarial, rms_distortion
from adv_jax.attacks.lbfgs import LBFGSAttack
from adv_jax.attacks.targets import choose_targets
from adv_jax.attacks.scipy_reference import scipy_lbfgs_attack
from adv_jax.models import logits_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_foolbox  # noqa: E402

COMMAND = "ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_attacks.py"


def flops_per_evaluation(model, params) -> float:
    """Forward + backward of a dense network, per example: about 3 x 2 x multiply-adds."""
    return 6.0 * sum(p["w"].size for p in params if "w" in p)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _lbfgs_chunk(attack: LBFGSAttack, model, params, x, label, target):
    logits_fn = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    return jax.vmap(attack.with_diagnostics, in_axes=(None, 0, 0, 0))(logits_fn, x, label, target)


def lbfgs_all(attack, model, params, x, label, target):
    """x_adv and per-example evaluation counts, in chunks of attack.chunk_size (one compilation)."""
    size = attack.chunk_size
    outs, evals = [], []
    for i in range(0, len(x), size):
        x_adv, info = _lbfgs_chunk(attack, model, params, x[i:i + size], label[i:i + size],
                                   target[i:i + size])
        outs.append(x_adv), evals.append(info["evals"])
    return jax.block_until_ready(jnp.concatenate(outs)), jnp.concatenate(evals)


def trips(evals: np.ndarray, chunk: int) -> int:
    """Batched evaluations the loop makes: each chunk runs as long as its slowest example,
    in rounds of 8 trips."""
    return int(sum(8 * np.ceil(evals[i:i + chunk].max() / 8) * len(evals[i:i + chunk])
                   for i in range(0, len(evals), chunk)))


def fused_gflops(model, params, x, label, repeats: int) -> float:
    """GFLOP/s of value_and_grad w.r.t. a (10000, 28, 28, 1) input batch, 20 calls in one scan."""
    def loss(z):
        return jnp.sum(jax.nn.log_softmax(model.apply(params, z))[jnp.arange(len(label)), label])

    @jax.jit
    def twenty(z):
        return jax.lax.scan(lambda c, _: (c + 1e-9 * jax.grad(loss)(c), None), z, None, length=20)[0]

    seconds, _ = bench_foolbox.median_seconds(lambda: twenty(x), repeats)
    return 20 * len(x) * flops_per_evaluation(model, params) / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/models/fc100_p1"))
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--scipy", type=int, default=30, help="examples for the scipy version")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-foolbox", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/bench_attacks.md"))
    args = parser.parse_args()

    run = bench_foolbox.load_model(args.run_dir, os.environ.get("ADV_JAX_MNIST_DIR", bench_foolbox.DEFAULT_MNIST_DIR))
    model, params = run.model, run.params
    test = adv_jax.load_splits(run.config.data)["test"]
    x_all, y_all = jnp.asarray(test.x), jnp.asarray(test.y)
    targets_all = choose_targets("random", model.apply(params, x_all), y_all, key=jax.random.key(0))
    attack = make_attack("lbfgs", adv_jax.compose(["attack=lbfgs"]).attack.params)
    x, y, t = x_all[: args.examples], y_all[: args.examples], targets_all[: args.examples]

    ours_s, (x_adv, evals) = bench_foolbox.median_seconds(
        lambda: lbfgs_all(attack, model, params, x, y, t), args.repeats)
    dist = np.asarray(rms_distortion(x, x_adv))
    ok = np.asarray(is_adversarial(model.apply(params, x_adv), y, t))

    logits_fn = lambda image: model.apply(params, image[None])[0]  # noqa: E731

    def scipy_pass():
        """The first --scipy examples one after another, as the per-example libraries do."""
        return [float(rms_distortion(x[i], jnp.asarray(scipy_lbfgs_attack(
            logits_fn, x[i], int(y[i]), int(t[i]), c_init=attack.c_init, c_steps=attack.c_steps,
            loss=attack.loss)[0]))) for i in range(args.scipy)]

    scipy_seconds, scipy_dist = bench_foolbox.median_seconds(scipy_pass, args.repeats)
    scipy_per_example = scipy_seconds / args.scipy

    start = time.perf_counter()
    full_adv, full_evals = lbfgs_all(attack, model, params, x_all, y_all, targets_all)
    full_s = time.perf_counter() - start  # compiled already: the same chunk shape
    full_ok = np.asarray(is_adversarial(model.apply(params, full_adv), y_all, targets_all))
    full_dist = np.asarray(rms_distortion(x_all, full_adv))
    achieved = trips(np.asarray(evals), attack.chunk_size) * flops_per_evaluation(model, params) / ours_s / 1e9
    fused = fused_gflops(model, params, x_all, y_all, args.repeats)

    n = args.scipy
    lines = [
        "# Attack benchmark: FC100-100-10 trained on P1",
        "",
        f"Made by `{COMMAND}`. Model: `{args.run_dir}` (test error "
        f"{run.metrics.get('error/test', float('nan')):.2%}). Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__}; load average at the end "
        f"{os.getloadavg()[0]:.1f}. Times: median of {args.repeats} runs after a warm-up run.",
        "",
        "## (a) L-BFGS: batched in JAX against per-example scipy",
        "",
        f"Same objective (c * |r|^2 + cross-entropy of the target, box [0, 1]), same c search "
        f"({attack.c_steps} solves from c = {attack.c_init:g}), same random targets. Both: total "
        f"time of a pass over the examples, median of {args.repeats} passes. Ours: "
        f"`{attack}`. scipy: `fmin_l_bfgs_b` per example, its default tolerances, memory 10.",
        "",
        "| | examples | examples/s | mean distortion (first "
        f"{n}) | success |",
        "| --- | --- | --- | --- | --- |",
        f"| ours, batched | {len(x)} | {len(x) / ours_s:,.1f} | {dist[:n].mean():.4f} | {ok.mean():.1%} |",
        f"| scipy, per example | {n} | {1 / scipy_per_example:.2f} | {np.mean(scipy_dist):.4f} | - |",
        "",
        f"Speed ratio: **{len(x) / ours_s * scipy_per_example:,.0f}x** the examples per second; "
        f"distortion ratio ours/scipy on the same {n} examples: "
        f"**{dist[:n].mean() / np.mean(scipy_dist):.4f}**. Mean distortion of all {len(x)}: "
        f"{dist[ok].mean():.4f}.",
        "",
        f"**Full test set** (10000 images, random targets): {full_s:.1f} s, "
        f"{len(x_all) / full_s:,.0f} examples/s, success {full_ok.mean():.2%}, mean distortion "
        f"{full_dist[full_ok].mean():.4f} (paper: 0.062 on its FC100-100-10, Table 3), median "
        f"{np.median(full_dist[full_ok]):.4f}, every pixel in [0, 1]: "
        f"{bool((full_adv >= 0).all() & (full_adv <= 1).all())}. Mean evaluations per example "
        f"{float(np.mean(full_evals)):.0f}.",
        "",
        "## (c) Achieved arithmetic",
        "",
        f"The L-BFGS loop does {achieved:.1f} GFLOP/s of network arithmetic (forward + backward, "
        "counted as 6 x weights per example and evaluation, every trip of each chunk counted), "
        f"against {fused:.1f} GFLOP/s for a fused forward+backward pass over a 10000-image batch "
        "(20 calls in one `lax.scan`). The rest of the loop's time is L-BFGS bookkeeping "
        f"(two-loop recursion over {attack.memory} pairs of 784-vectors per example, line search, "
        "masks), and the trips in which a chunk waits for its slowest example.",
    ]
    if not args.skip_foolbox:
        import foolbox as fb

        xc, yc = bench_foolbox.correctly_classified(run, args.examples)
        forward = jax.jit(run.logits_fn)
        fmodel = fb.JAXModel(forward, bounds=(0.0, 1.0))
        untargeted = jnp.full_like(yc, -1)
        lines += ["", "## (b) Against foolbox 3.3.4 (untargeted, first "
                  f"{len(yc)} correctly classified test images)", "",
                  "| attack | matched settings | ours ex/s | foolbox ex/s | speedup | ours success "
                  "| foolbox success | ours RMS | foolbox RMS |", "|" + " --- |" * 9]
        for name, settings, ours, theirs, eps in bench_foolbox.pairs(100, 5, 0.05):
            our_s, our_adv = bench_foolbox.median_seconds(
                lambda: adv_jax.attacks.attack_batch(ours, logits_fn(model, params), xc, yc, untargeted,
                                                     key=jax.random.key(0), chunk_size=10000,
                                                     progress=False)[0], args.repeats)
            their_s, (_, their_adv, _) = bench_foolbox.median_seconds(
                lambda: theirs(fmodel, xc, yc, epsilons=eps), args.repeats)
            our_ok = bench_foolbox.succeeded(forward, our_adv, yc)
            their_ok = bench_foolbox.succeeded(forward, their_adv, yc)
            both = our_ok & their_ok
            our_rms = float(np.mean(np.asarray(rms_distortion(xc, our_adv))[both]))
            their_rms = float(np.mean(np.asarray(rms_distortion(xc, their_adv))[both]))
            lines.append(f"| {name} | {settings} | {len(yc) / our_s:,.0f} | {len(yc) / their_s:,.0f} "
                         f"| {their_s / our_s:.1f}x | {our_ok.mean():.3f} | {their_ok.mean():.3f} "
                         f"| {our_rms:.4f} | {their_rms:.4f} |")
            print(lines[-1], flush=True)
        lines += ["", "RMS: mean per-pixel RMS distortion over the images both attacks fool. "
                  "foolbox's C&W returns an all-zero image where it fails; those do not count "
                  "as successes. foolbox runs on `fb.JAXModel` around the jitted forward pass."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
