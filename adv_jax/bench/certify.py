"""Seconds per 1000 examples of each Lipschitz bound and of the certified bracket (global and
local), beside the L-BFGS attack's own, on FC100 and FC200 (P1, from the model cache), idle and
with busy processes beside them; and the main command end to end (results/bench_certify.md).

Every stage is timed the same way (`median_seconds`: one untimed call, then the median of
`repeats`). "Loaded" starts `BUSY` processes that spin on the CPU for the whole measurement, so
the bench shares the cores as a run on a busy workstation or cluster node does; the load average
during it is recorded.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import jax

from adv_jax import certify, lipschitz
from adv_jax.attacks.generate import generate
from adv_jax.config import compose
from adv_jax.data import load_splits
from adv_jax.models import logits_fn
from adv_jax.bench.timing import median_seconds
from adv_jax.trained import train_or_load

MODELS = ("fc100", "fc200")
BUSY = 4  # spinning processes beside the bench: a load of about 5 on 2 cores
JACOBIAN_IMAGES = 1000  # lipschitz.images' default


def _spin(parent: int) -> None:
    """Spins until the bench's process is gone (a killed bench leaves no spinner behind)."""
    while os.getppid() == parent:
        for _ in range(10**6):
            pass


@contextlib.contextmanager
def busy(processes: int) -> Iterator[None]:
    """`processes` CPU-bound processes running until the block ends."""
    spawn = multiprocessing.get_context("spawn")  # a fork of a process running JAX may deadlock
    workers = [spawn.Process(target=_spin, args=(os.getpid(),), daemon=True) for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        time.sleep(2 if processes else 0)  # let the load build up
        yield
    finally:
        for w in workers:
            w.terminate()
            w.join()


def _stages(model, params, attacked: dict, test_x) -> dict[str, Any]:
    """name -> a callable timing one stage (the attack's examples in `attacked`)."""
    single = lambda x: model.apply(params, x[None])[0]  # noqa: E731
    key = jax.random.key(0)

    def eclipse():
        with jax.enable_x64(True):
            return certify.eclipse_fast(certify.dense_chain(model, params))

    return {
        "product": lambda: lipschitz.network_bound(lipschitz.layer_table(model, params, model.input_shape)),
        "eclipse_fast": eclipse,
        "jacobian_lower_bound": lambda: lipschitz.max_jacobian_norm(single, test_x[:JACOBIAN_IMAGES], key),
        "bracket_global": lambda: lipschitz.bracket_summary(model, params, attacked, None, False)[0],
        "bracket_local": lambda: lipschitz.bracket_summary(model, params, attacked, None, True)[0],
    }


def measure_model(name: str, examples: int, repeats: int) -> dict[str, Any]:
    """{stage: seconds} for one model on its first `examples` test images, attack included."""
    cfg = compose([f"model={name}", "attack=lbfgs"])
    splits = load_splits(cfg.data, cfg.model.classes)
    model, params, _ = train_or_load(cfg, splits)
    test = splits["test"]
    x, y = test.x[:examples], test.y[:examples]
    run_attack = lambda: generate(cfg.attack, logits_fn(model, params), x, y,  # noqa: E731
                                  key=jax.random.key(1), progress=False)
    seconds = {"attack": median_seconds(run_attack, repeats)[0]}
    attacked = run_attack().adversarials._asdict()
    for stage, fn in _stages(model, params, attacked, test.x).items():
        seconds[stage] = median_seconds(fn, repeats)[0]
    return {"examples": examples, "successes": int(attacked["success"].sum()), "seconds": seconds}


def main_command(model: str, repeats: int) -> dict[str, Any]:
    """The main command (`scripts/sweep.py model=MODEL attack=lbfgs`, all 10000 test images, the
    model from the cache) end to end: median wall seconds and the attack's own seconds."""
    walls, attacks = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as run_dir:
            start = time.perf_counter()
            subprocess.run([sys.executable, "scripts/sweep.py", f"model={model}", "attack=lbfgs",
                            "wandb=disabled", f"hydra.run.dir={run_dir}"], check=True,
                           capture_output=True)
            walls.append(time.perf_counter() - start)
            attacks.append(json.loads((Path(run_dir) / "metrics.json").read_text())["attack/seconds"])
    walls.sort(), attacks.sort()
    return {"wall": walls[len(walls) // 2], "attack": attacks[len(attacks) // 2], "runs": repeats}


def run(examples: int, repeats: int, command_repeats: int) -> dict[str, Any]:
    """Both conditions (idle, loaded) for every model, and the main command on FC100."""
    out: dict[str, Any] = {}
    for condition, processes in (("idle", 0), ("loaded", BUSY)):
        with busy(processes):
            out[condition] = {name: measure_model(name, examples, repeats) for name in MODELS}
            if command_repeats:
                out[condition]["main_command_fc100"] = main_command("fc100", command_repeats)
            out[condition]["load_average"] = os.getloadavg()[0]
    return out
