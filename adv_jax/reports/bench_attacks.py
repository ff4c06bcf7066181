"""Attack benchmark on FC100-100-10 trained on P1 (results/bench_attacks.md).

(a) our batched, jitted L-BFGS against a per-example scipy L-BFGS-B run of the same objective
    and c search (the way the paper, foolbox 2 and cleverhans 3 run it), on the same images and
    random targets; then the full test set once (left out in quick mode);
(b) our PGD, C&W and DeepFool against foolbox 3.3.4 on the same JAX model (`bench_foolbox`);
(c) a roofline of the full-test-set L-BFGS run: its network arithmetic per second next to a
    fused forward+backward pass over the test set, each repeat timed right after the other's.
Times are medians of `repeats` runs after one warm-up (compilation) run. Every batch is split
over all local devices (the caller sets their count: `devices.use_cpu_devices`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adv_jax
from adv_jax import devices
from adv_jax.attacks import attack_batch, make_attack
from adv_jax.attacks.common import is_adversarial, rms_distortion
from adv_jax.attacks.lbfgs import TRIPS_PER_ROUND
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


def trips(evals: np.ndarray, chunk: int, lanes: int) -> int:
    """Batched evaluations `LBFGSAttack.attack_rows` makes on x split in chunks of `chunk` rows
    (each split over the devices), from the per-example counts it reports, evals (N,): one per
    lane and trip, those of idle lanes included. Its schedule: an example holds a lane for
    ceil((evals + 1) / TRIPS_PER_ROUND) rounds (the + 1: its start at z = x), and the next
    untaken example goes to the lane that frees first (the lowest such lane on ties); a
    device's loop ends when its last lane frees."""
    chunk = devices.round_up(min(chunk, len(evals)))
    per_device = chunk // devices.device_count()
    padded = np.concatenate([evals, np.repeat(evals[-1:], -len(evals) % chunk)])
    total = 0
    for i in range(0, len(padded), per_device):
        rounds = -(-(padded[i:i + per_device] + 1) // TRIPS_PER_ROUND)
        free = np.zeros(min(lanes, len(rounds)), np.int64)  # the round each lane frees at
        for held in rounds:
            free[np.argmin(free)] += held
        total += int(free.max()) * TRIPS_PER_ROUND * len(free)
    return total


FUSED_CALLS = 20  # forward+backward passes over the batch per timed call of `fused_pass`


def fused_pass(model, params, x, label):
    """() -> one jitted call of FUSED_CALLS value_and_grads w.r.t. the batch x (N, 28, 28, 1)
    (one `lax.scan`), its rows split over the local devices as an attack's are."""
    def loss(z):
        return jnp.sum(jax.nn.log_softmax(model.apply(params, z))[jnp.arange(len(label)), label])

    @jax.jit
    def calls(z):
        return jax.lax.scan(lambda c, _: (c + 1e-9 * jax.grad(loss)(c), None), z, None,
                            length=FUSED_CALLS)[0]

    x, label = devices.shard_rows(*(devices.pad_rows(a, devices.round_up(len(a))) for a in (x, label)))
    return lambda: calls(x)


def fused_gflops(model, params, x, label, repeats: int) -> float:
    """GFLOP/s of `fused_pass` over x, median of `repeats` calls."""
    seconds, _ = median_seconds(fused_pass(model, params, x, label), repeats)
    return FUSED_CALLS * len(x) * flops_per_evaluation(params) / seconds / 1e9


def _timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def scipy_distortions(attack, model, params, x, y, t, n: int) -> list[float]:
    """The first n examples one after another through scipy, as the per-example libraries do."""
    logits_fn = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    return [float(rms_distortion(x[i], jnp.asarray(scipy_lbfgs_attack(
        logits_fn, x[i], int(y[i]), int(t[i]), c_init=attack.c_init, c_steps=attack.c_steps,
        loss=attack.loss, confidence=attack.confidence)[0]))) for i in range(n)]


def lbfgs_section(attack, run, x, y, t, scipy_examples: int, repeats: int) -> list[str]:
    """(a) without the full test set: ours against scipy on the same images."""
    model, params = run.model, run.params
    ours_s, (x_adv, _) = median_seconds(lambda: lbfgs_all(attack, model, params, x, y, t), repeats)
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
    return lines


def full_test_set(attack, run, x, y, t, repeats: int) -> dict:
    """The L-BFGS run over x `repeats` times, each right after a timed `fused_pass` over x (so
    both see the same load): x_adv and evals of the last, median seconds of each."""
    fused = fused_pass(run.model, run.params, x, y)
    jax.block_until_ready(fused())  # compiles; the attack's chunk shape is compiled by (a)
    attack_s, fused_s = [], []
    for _ in range(repeats):
        fused_s.append(_timed(fused)[0])
        seconds, (adv, evals) = _timed(lambda: lbfgs_all(attack, run.model, run.params, x, y, t))
        attack_s.append(seconds)
    return {"adv": adv, "evals": np.asarray(evals), "seconds": float(np.median(attack_s)),
            "fused_seconds": float(np.median(fused_s)), "repeats": repeats}


def full_test_set_lines(measured: dict, run, x, y, t) -> list[str]:
    """The full-test-set run's speed, success and distortion."""
    adv, evals, seconds = measured["adv"], measured["evals"], measured["seconds"]
    ok = np.asarray(is_adversarial(run.model.apply(run.params, adv), y, t))
    dist = np.asarray(rms_distortion(x, adv))
    return [f"**Full test set** ({len(x)} images, random targets, median of {measured['repeats']}): "
            f"{seconds:.1f} s, {len(x) / seconds:,.0f} examples/s, success {ok.mean():.2%}, mean "
            f"distortion {dist[ok].mean():.4f} (paper: {paper.TABLE3['distortion'][0]:g} on its "
            f"{paper.TABLE3_MODELS[0]}, Table 3), median {np.median(dist[ok]):.4f}, every pixel in "
            f"[0, 1]: {bool((adv >= 0).all() & (adv <= 1).all())}. Evaluations per example: mean "
            f"{float(np.mean(evals)):.1f}, max {int(np.max(evals))}.", ""]


def roofline_lines(attack, run, x, measured: dict) -> list[str]:
    """(c): the full-test-set run's network arithmetic per second against `fused_pass`'s."""
    per_eval = flops_per_evaluation(run.params)
    fused_rate = FUSED_CALLS * len(x) * per_eval / measured["fused_seconds"]
    rows = [("fused forward+backward pass", FUSED_CALLS * len(x), measured["fused_seconds"]),
            ("L-BFGS, every trip", trips(measured["evals"], attack.chunk_size, attack.lanes),
             measured["seconds"]),
            ("L-BFGS, evaluations used", int(measured["evals"].sum()) + len(x), measured["seconds"])]
    table = [f"| {name} | {n:,} | {per_eval / 1e3:,.0f} | {sec:.2f} | {n * per_eval / sec / 1e9:.1f} "
             f"| {n * per_eval / sec / fused_rate:.1%} |" for name, n, sec in rows]
    return ["## (c) Roofline: achieved arithmetic", "",
            f"The full-test-set run of (a)'s attack (chunks of {attack.chunk_size}, each split over "
            f"{devices.device_count()} device(s), one loop per device with {attack.lanes} examples in "
            "flight, a lane taking the next example when its own is done) against a fused "
            f"forward+backward pass over the same {len(x)} images ({FUSED_CALLS} calls in one "
            "`lax.scan`, split the same way); each timed repeat of one right after the other's, "
            "medians. FLOPs per evaluation: 6 x weights per example (neither needs the weights' "
            "gradient, so both do about 2/3 of that; the fractions do not change). \"every trip\": "
            "one evaluation per lane and trip, idle lanes and the rest of a round of "
            f"{TRIPS_PER_ROUND} trips after an example ends included (`trips`); \"used\": the "
            "evaluations the examples report, plus each one's start at z = x.", "",
            "| pass | evaluations | kFLOP per evaluation | seconds | GFLOP/s | fraction of fused |",
            "| --- | --- | --- | --- | --- | --- |", *table, "",
            "The rest of the loop's time is L-BFGS bookkeeping (two-loop recursion over "
            f"{attack.memory} pairs of 784-vectors per example, line search, masks); the gap between "
            "the two L-BFGS rows is the trips of lanes whose example is done before the round ends "
            "and of idle lanes at the end of a device's loop.", ""]


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
             f"median of {repeats} runs after a warm-up run. JAX devices: {devices.device_count()} "
             f"({jax.devices()[0].platform}), every batch split over them.", ""]
    lines += lbfgs_section(attack, run, x, y, t, scipy_examples, repeats)
    if not quick:
        full = full_test_set(attack, run, x_all, y_all, t_all, repeats)
        lines += full_test_set_lines(full, run, x_all, y_all, t_all)
        lines += roofline_lines(attack, run, x_all, full)
    if foolbox and not quick:
        table, n = bench_foolbox.comparison_table(run, examples, repeats)
        lines += [f"## (b) Against foolbox 3.3.4 (untargeted, first {n} correctly classified test "
                  "images)", "", table,
                  "RMS: mean per-pixel RMS distortion over the images both attacks fool. foolbox's "
                  "C&W returns an all-zero image where it fails; those do not count as successes. "
                  "foolbox runs on `fb.JAXModel` around the jitted forward pass."]
    return "\n".join(lines + [f"Load average at the end: {os.getloadavg()[0]:.1f}."]) + "\n"
