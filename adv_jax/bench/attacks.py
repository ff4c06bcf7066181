"""Attack benchmark on FC100-100-10 trained on P1: the measurements of results/bench_attacks.md
(`measure` -> a JSON-able dict; the markdown: adv_jax/reports/bench_attacks.py).

(a) our batched, jitted L-BFGS against a per-example scipy L-BFGS-B run of the same objective
    and c search (the way the paper, foolbox 2 and cleverhans 3 run it), on the same images and
    random targets; then the full test set once (left out in quick mode);
(b) our PGD, C&W and DeepFool against foolbox 3.3.4 on the same JAX model (`foolbox_compare`);
(c) a roofline of the full-test-set L-BFGS run: its network arithmetic per second next to a
    fused forward+backward pass over the test set, each repeat timed right after the other's.
Times are medians of `repeats` runs after one warm-up (compilation) run. Every batch is split
over all local devices (the caller sets their count: `devices.use_cpu_devices`).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adv_jax
from adv_jax import devices
from adv_jax.attacks import attack_batch, make_attack
from adv_jax.attacks.common import balanced_chunk, is_adversarial, rms_distortion
from adv_jax.attacks.lbfgs import TRIPS_PER_ROUND
from adv_jax.attacks.scipy_reference import scipy_lbfgs_attack
from adv_jax.attacks.targets import choose_targets
from adv_jax.bench import foolbox_compare
from adv_jax.bench.timing import median_seconds
from adv_jax.models import logits_fn


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
    chunk = balanced_chunk(len(evals), chunk)  # attack_batch's chunks
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


def scipy_distortions(attack, model, params, x, y, t, n: int) -> list[float]:
    """The first n examples one after another through scipy, as the per-example libraries do."""
    logits_fn = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    return [float(rms_distortion(x[i], jnp.asarray(scipy_lbfgs_attack(
        logits_fn, x[i], int(y[i]), int(t[i]), c_init=attack.c_init, c_steps=attack.c_steps,
        loss=attack.loss, confidence=attack.confidence)[0]))) for i in range(n)]


def lbfgs_against_scipy(attack, run, x, y, t, scipy_examples: int, repeats: int) -> dict:
    """(a) without the full test set: ours on x against scipy on its first `scipy_examples`."""
    model, params, n = run.model, run.params, scipy_examples
    ours_s, (x_adv, _) = median_seconds(lambda: lbfgs_all(attack, model, params, x, y, t), repeats)
    dist = np.asarray(rms_distortion(x, x_adv))
    ok = np.asarray(is_adversarial(model.apply(params, x_adv), y, t))
    scipy_s, scipy_dist = median_seconds(lambda: scipy_distortions(attack, model, params, x, y, t, n),
                                         repeats)
    return {"examples": len(x), "seconds": ours_s, "distortion_first": float(dist[:n].mean()),
            "success": float(ok.mean()), "distortion_successes": float(dist[ok].mean()),
            "scipy_examples": n, "scipy_seconds": scipy_s, "scipy_distortion": float(np.mean(scipy_dist))}


def full_test_set(attack, run, x, y, t, repeats: int) -> dict:
    """The L-BFGS run over x `repeats` times, each right after a timed `fused_pass` over x (so
    both see the same load): median seconds of each; success, distortion and evaluations of the
    last; batched evaluations by `trips` and those the examples used."""
    fused = fused_pass(run.model, run.params, x, y)
    jax.block_until_ready(fused())  # compiles; the attack's chunk shape is compiled by (a)
    attack_s, fused_s = [], []
    for _ in range(repeats):
        fused_s.append(median_seconds(fused, 1, warm_up=False)[0])
        seconds, (adv, evals) = median_seconds(lambda: lbfgs_all(attack, run.model, run.params, x, y, t), 1,
                                               warm_up=False)
        attack_s.append(seconds)
    evals = np.asarray(evals)
    ok = np.asarray(is_adversarial(run.model.apply(run.params, adv), y, t))
    dist = np.asarray(rms_distortion(x, adv))
    return {"examples": len(x), "repeats": repeats, "seconds": float(np.median(attack_s)),
            "fused_seconds": float(np.median(fused_s)), "success": float(ok.mean()),
            "mean_distortion": float(dist[ok].mean()), "median_distortion": float(np.median(dist[ok])),
            "in_box": bool((adv >= 0).all() & (adv <= 1).all()), "evals_mean": float(np.mean(evals)),
            "evals_max": int(np.max(evals)), "trips": trips(evals, attack.chunk_size, attack.lanes),
            "evals_used": int(evals.sum()) + len(x)}


def measure(run_dir: Path, examples: int, scipy_examples: int, repeats: int,
            attack_overrides: tuple[str, ...] = (), quick: bool = False, foolbox: bool = True) -> dict:
    """Every section's numbers (quick: (a) on `examples` images only), with the attack's
    settings, the model's test error, the devices and the load average at the end."""
    run = foolbox_compare.load_model(run_dir)
    test = adv_jax.load_splits(run.config.data)["test"]
    x_all, y_all = jnp.asarray(test.x), jnp.asarray(test.y)
    t_all = choose_targets("random", run.model.apply(run.params, x_all), y_all, key=jax.random.key(0))
    attack = make_attack("lbfgs", adv_jax.compose(["attack=lbfgs", *attack_overrides]).attack.params)
    x, y, t = x_all[:examples], y_all[:examples], t_all[:examples]
    out = {"run_dir": str(run_dir), "test_error": run.metrics.get("error/test"), "repeats": repeats,
           "devices": devices.device_count(), "platform": jax.devices()[0].platform,
           "attack": {"text": str(attack), "c_steps": attack.c_steps, "c_init": attack.c_init,
                      "chunk_size": attack.chunk_size, "lanes": attack.lanes, "memory": attack.memory,
                      "trips_per_round": TRIPS_PER_ROUND},
           "flops_per_evaluation": flops_per_evaluation(run.params), "fused_calls": FUSED_CALLS,
           "lbfgs": lbfgs_against_scipy(attack, run, x, y, t, scipy_examples, repeats)}
    if not quick:
        out["full"] = full_test_set(attack, run, x_all, y_all, t_all, repeats)
    if foolbox and not quick:
        out["foolbox"] = foolbox_compare.compare(run, examples, repeats)
    return {**out, "load_average": os.getloadavg()[0]}
