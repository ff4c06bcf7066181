"""Attack benchmark on FC100-100-10 trained on P1 (results/bench_attacks.md).

(a) our batched, jitted L-BFGS against a per-example scipy L-BFGS-B run of the same objective
    and c search (the way the paper, foolbox 2 and cleverhans 3 run it), on the same images and
    random targets; then the full test set once (left out in quick mode);
(b) our PGD, C&W and DeepFool against foolbox 3.3.4 on the same JAX model (`bench_foolbox`);
(c) the L-BFGS loop's achieved GFLOP/s next to a fused forward+backward pass on the test set.
Times are medians of `repeats` runs after one warm-up (compilation) run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adv_jax
from adv_jax.attacks import attack_batch, make_attack
from adv_jax.attacks.common import is_adversarial, rms_distortion
from adv_jax.attacks.scipy_reference import scipy_lbfgs_attack
from adv_jax.attacks.targets import choose_targets
from adv_jax.models import logits_fn
from adv_jax.reports import bench_foolbox, paper, provenance
from adv_jax.reports.timing import median_seconds


def flops_per_evaluation(params) -> float:
    """Forward + backward of a dense network, per example: about 3 x 2 x multiply-adds."""
    return 6.0 * sum(p["w"].size for p in params if "w" in p)


def lbfgs_all(attack, model, params, x, label, target):
    """x_adv and per-example evaluation counts, from the batch call's diagnostics."""
    x_adv, diagnostics = attack_batch(attack, logits_fn(model, params), x, label, target,
                                      key=jax.random.key(0), chunk_size=attack.chunk_size, progress=False)
    return jax.block_until_ready(x_adv), jnp.asarray(diagnostics["evals"])


def trips(evals: np.ndarray, chunk: int) -> int:
    """Batched evaluations the loop makes: each chunk runs as long as its slowest example,
    in rounds of 8 trips."""
    return int(sum(8 * np.ceil(evals[i:i + chunk].max() / 8) * len(evals[i:i + chunk])
                   for i in range(0, len(evals), chunk)))


def fused_gflops(model, params, x, label, repeats: int) -> float:
    """GFLOP/s of value_and_grad w.r.t. an input batch x (N, 28, 28, 1), 20 calls in one scan."""
    def loss(z):
        return jnp.sum(jax.nn.log_softmax(model.apply(params, z))[jnp.arange(len(label)), label])

    @jax.jit
    def twenty(z):
        return jax.lax.scan(lambda c, _: (c + 1e-9 * jax.grad(loss)(c), None), z, None, length=20)[0]

    seconds, _ = median_seconds(lambda: twenty(x), repeats)
    return 20 * len(x) * flops_per_evaluation(params) / seconds / 1e9


def scipy_distortions(attack, model, params, x, y, t, n: int) -> list[float]:
    """The first n examples one after another through scipy, as the per-example libraries do."""
    logits_fn = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    return [float(rms_distortion(x[i], jnp.asarray(scipy_lbfgs_attack(
        logits_fn, x[i], int(y[i]), int(t[i]), c_init=attack.c_init, c_steps=attack.c_steps,
        loss=attack.loss, confidence=attack.confidence)[0]))) for i in range(n)]


def lbfgs_section(attack, run, x, y, t, scipy_examples: int, repeats: int) -> tuple[list[str], dict]:
    """(a) without the full test set: ours against scipy on the same images; and the raw numbers."""
    model, params = run.model, run.params
    ours_s, (x_adv, evals) = median_seconds(lambda: lbfgs_all(attack, model, params, x, y, t), repeats)
    dist = np.asarray(rms_distortion(x, x_adv))
    ok = np.asarray(is_adversarial(model.apply(params, x_adv), y, t))
    n = scipy_examples
    scipy_s, scipy_dist = median_seconds(lambda: scipy_distortions(attack, model, params, x, y, t, n),
                                         repeats)
    per_scipy = scipy_s / n
    lines = [
        "## (a) L-BFGS: batched in JAX against per-example scipy", "",
        f"Same objective (c * |r|^2 + cross-entropy of the target, box [0, 1]), same c search "
        f"({attack.c_steps} solves from c = {attack.c_init:g}), same random targets. Both: total "
        f"time of a pass over the examples, median of {repeats} passes. Ours: `{attack}`. scipy: "
        "`fmin_l_bfgs_b` per example, its default tolerances, memory 10.", "",
        f"| | examples | examples/s | mean distortion (first {n}) | success |",
        "| --- | --- | --- | --- | --- |",
        f"| ours, batched | {len(x)} | {len(x) / ours_s:,.1f} | {dist[:n].mean():.4f} | {ok.mean():.1%} |",
        f"| scipy, per example | {n} | {1 / per_scipy:.2f} | {np.mean(scipy_dist):.4f} | - |", "",
        f"Speed ratio: **{len(x) / ours_s * per_scipy:,.0f}x** the examples per second; distortion "
        f"ratio ours/scipy on the same {n} examples: **{dist[:n].mean() / np.mean(scipy_dist):.4f}**. "
        f"Mean distortion of all {len(x)}: {dist[ok].mean():.4f}.", ""]
    return lines, {"seconds": ours_s, "evals": np.asarray(evals)}


def full_test_set_lines(attack, run, x, y, t) -> list[str]:
    """The whole test set once (compiled already: the same chunk shape as in (a))."""
    model, params = run.model, run.params
    start = time.perf_counter()
    adv, evals = lbfgs_all(attack, model, params, x, y, t)
    seconds = time.perf_counter() - start
    ok = np.asarray(is_adversarial(model.apply(params, adv), y, t))
    dist = np.asarray(rms_distortion(x, adv))
    return [f"**Full test set** ({len(x)} images, random targets): {seconds:.1f} s, "
            f"{len(x) / seconds:,.0f} examples/s, success {ok.mean():.2%}, mean distortion "
            f"{dist[ok].mean():.4f} (paper: {paper.TABLE3['distortion'][0]:g} on its "
            f"{paper.TABLE3_MODELS[0]}, Table 3), median {np.median(dist[ok]):.4f}, every pixel in "
            f"[0, 1]: {bool((adv >= 0).all() & (adv <= 1).all())}. Mean evaluations per example "
            f"{float(np.mean(evals)):.0f}.", ""]


def arithmetic_lines(attack, run, x, y, measured: dict, repeats: int) -> list[str]:
    """(c): achieved GFLOP/s of the L-BFGS loop of (a) against a fused pass over x."""
    achieved = (trips(measured["evals"], attack.chunk_size) * flops_per_evaluation(run.params)
                / measured["seconds"] / 1e9)
    fused = fused_gflops(run.model, run.params, x, y, repeats)
    return ["## (c) Achieved arithmetic", "",
            f"The L-BFGS loop does {achieved:.1f} GFLOP/s of network arithmetic (forward + backward, "
            "counted as 6 x weights per example and evaluation, every trip of each chunk counted), "
            f"against {fused:.1f} GFLOP/s for a fused forward+backward pass over a {len(x)}-image "
            "batch (20 calls in one `lax.scan`). The rest of the loop's time is L-BFGS bookkeeping "
            f"(two-loop recursion over {attack.memory} pairs of 784-vectors per example, line "
            "search, masks), and the trips in which a chunk waits for its slowest example.", ""]


def report(run_dir: Path, examples: int, scipy_examples: int, repeats: int, command: str,
           attack_overrides: tuple[str, ...] = (), quick: bool = False, foolbox: bool = True) -> str:
    """The markdown of results/bench_attacks.md; quick: section (a) on `examples` images only."""
    run = bench_foolbox.load_model(run_dir)
    test = adv_jax.load_splits(run.config.data)["test"]
    x_all, y_all = jnp.asarray(test.x), jnp.asarray(test.y)
    t_all = choose_targets("random", run.model.apply(run.params, x_all), y_all, key=jax.random.key(0))
    attack = make_attack("lbfgs", adv_jax.compose(["attack=lbfgs", *attack_overrides]).attack.params)
    x, y, t = x_all[:examples], y_all[:examples], t_all[:examples]
    lines = [*provenance.header("Attack benchmark: FC100-100-10 trained on P1", command),
             f"Model: `{run_dir}` (test error {run.metrics.get('error/test', float('nan')):.2%}). Times: "
             f"median of {repeats} runs after a warm-up run.", ""]
    section, measured = lbfgs_section(attack, run, x, y, t, scipy_examples, repeats)
    lines += section
    if not quick:
        lines += full_test_set_lines(attack, run, x_all, y_all, t_all)
        lines += arithmetic_lines(attack, run, x_all, y_all, measured, repeats)
    if foolbox and not quick:
        table, n = bench_foolbox.comparison_table(run, examples, repeats)
        lines += [f"## (b) Against foolbox 3.3.4 (untargeted, first {n} correctly classified test "
                  "images)", "", table,
                  "RMS: mean per-pixel RMS distortion over the images both attacks fool. foolbox's "
                  "C&W returns an all-zero image where it fails; those do not count as successes. "
                  "foolbox runs on `fb.JAXModel` around the jitted forward pass."]
    return "\n".join(lines + [f"Load average at the end: {os.getloadavg()[0]:.1f}."]) + "\n"
