"""The scale harness: training together against one by one, attack throughput and a study end to
end, at a named size. scripts/bench.py measures at `cpu` (results/bench.md), scripts/gpu_check.sh
at `gpu` (results/gpu.md) and, on a CPU, at `tiny` (the same code at test sizes,
tests/test_gpu_check.py). Each section is a list of JSON rows; adv_jax.reports.bench writes the
markdown and figures from them.

  training       K FC100-100-10 models trained together (`ensemble.train_models`) against one
                 after another (`train.train_model`), each measurement in a fresh process (tiny: in this one)
  training_long  the same at K = 8 and `long_epochs`
  attacks        examples per second of each attack against examples and hidden width
  sweeps         a 2-job sweep sharing the device: joblib (both at once) against basic
  experiment     the cross-training-set study end to end (scripts/sweep.py), with and without
                 training together
  matmul         GFLOP/s of FC100's first-layer matmuls, one model against K members batched

    python -m adv_jax.bench.harness '{"k": 2, "mode": "together", ...}'   (one training worker)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from adv_jax.bench.timing import median_seconds

REPO = Path(__file__).resolve().parents[2]
# `tiny` only, beside conf/debug/tiny.yaml's sizes (which leave models and attacks as chosen): one
# solve of a few evaluations per example, and FC8-8-10 in place of the FC100-100-10 / FC123-456-10
# widths (the same code paths, a fraction of the compile and run time).
TINY_ATTACK = ["attack.params.c_steps=1", "attack.params.max_evals=2", "attack.params.extra_solves=0"]
TINY_MODEL = ["model.hidden=[8,8]"]
TINY_STUDY = [f"experiment.models.{key}.hidden=[8,8]" for key in ("fc100_p1", "fc123_p1", "fc100_p2")]


@dataclasses.dataclass(frozen=True)
class Size:
    """What each section measures. Counts of examples and images; epochs of Adam on P1/P2."""
    sections: tuple[str, ...]  # measured when the command names none
    ks: tuple[int, ...]  # ensemble sizes K
    modes: tuple[str, ...]  # "together", "sequential"
    epochs: int | None  # None: the configs' (train=adam's, or the debug config's)
    long_epochs: int | None  # training_long's epochs
    repeats: int
    counts: tuple[int, ...]  # examples attacked on the model of width `count_width`
    widths: tuple[int, ...]  # hidden widths w of 784-w-w-10 networks
    count_width: int
    width_examples: int  # examples attacked on the other widths
    attacks: tuple[str, ...]
    experiment_seeds: str
    experiment_examples: int
    experiment_modes: tuple[bool, ...]  # experiment.train_together
    sweep_examples: int
    sweep_launchers: tuple[str, ...]  # "basic", "joblib"
    debug: str | None = None  # conf/debug/<name>.yaml: data, epochs and example counts
    timeout_s: float | None = None  # of each child process
    cpu_devices: str = "auto"
    tiny: bool = False  # the TINY_* overrides
    fresh_processes: bool = True  # each training measurement in a process of its own


SIZES = {
    "cpu": Size(sections=("training", "attacks", "experiment", "training_long", "matmul"), ks=(1, 4, 8, 16),
                modes=("together", "sequential"), epochs=5, long_epochs=40, repeats=3,
                counts=(1000, 2000, 5000, 10000), widths=(50, 100, 200, 400, 800), count_width=100,
                width_examples=2000, attacks=("lbfgs", "pgd"), experiment_seeds="0,1,2",
                experiment_examples=2000, experiment_modes=(True, False), sweep_examples=1000,
                sweep_launchers=("basic", "joblib")),
    # One accelerator in at most 8 minutes: K = 1 is the one-model baseline of training together.
    "gpu": Size(sections=("training", "attacks", "sweeps", "experiment"), ks=(1, 16, 64), modes=("together",),
                epochs=5, long_epochs=40, repeats=1, counts=(10000,), widths=(100,), count_width=100,
                width_examples=1000, attacks=("lbfgs",), experiment_seeds="0", experiment_examples=1000,
                experiment_modes=(True,), sweep_examples=1000, sweep_launchers=("basic", "joblib"),
                timeout_s=120),
    # debug=tiny's sizes. cpu_devices=1 (debug=tiny's too) in this process and its children, so
    # that they reuse its compiled programs through the persistent cache gpu_check.sh --cpu-short
    # sets (same shapes, same device).
    "tiny": Size(sections=("training", "attacks", "sweeps", "experiment"), ks=(1, 2),
                 modes=("together", "sequential"), epochs=None, long_epochs=None, repeats=1, counts=(5,),
                 widths=(8,), count_width=8, width_examples=5, attacks=("lbfgs",), experiment_seeds="0",
                 experiment_examples=5, experiment_modes=(True,), sweep_examples=5, sweep_launchers=("joblib",),
                 debug="tiny", timeout_s=120, cpu_devices="1", tiny=True, fresh_processes=False),
}


def sized(size: Size, epochs: int | None = None) -> list[str]:
    """The size's config overrides: its debug config, then `epochs` (None: the configs')."""
    return [*([f"debug={size.debug}"] if size.debug else []), *([f"train.epochs={epochs}"] if epochs else [])]


def train_worker(job: dict) -> dict:
    """One training measurement in this (fresh) process: K models together or one after another.
    job: k, mode, cpu_devices, overrides (size, epochs and model)."""
    from adv_jax import devices

    devices.use_cpu_devices(job["cpu_devices"])  # before JAX's first operation, as adv_jax.run does
    import jax
    import jax.numpy as jnp

    from adv_jax import ensemble
    from adv_jax.config import compose
    from adv_jax.data import load_splits
    from adv_jax.models import build_model
    from adv_jax.train import train_model

    cfg = compose(["model=fc100", "train=adam", *job["overrides"]])
    k, epochs = job["k"], cfg.train.epochs
    halves = [load_splits(compose([f"data={s}", *job["overrides"]]).data)["train"] for s in ("p1", "p2")]
    data, model = [halves[i % 2] for i in range(k)], build_model(cfg.model)
    jax.block_until_ready(jax.jit(lambda a: a + 1)(jnp.zeros(3)))  # runtime start-up, not timed
    stamps: list[float] = []
    on_epoch = lambda *_: stamps.append(time.perf_counter())  # noqa: E731
    start = time.perf_counter()
    if job["mode"] == "together":
        trained = ensemble.train_models([model] * k, cfg.train, data, [jax.random.key(s) for s in range(k)],
                                        on_epoch=on_epoch)
    else:
        trained = [train_model(model, cfg.model, cfg.train, data[s], jax.random.key(s), on_epoch=on_epoch)
                   for s in range(k)]
    jax.block_until_ready(trained[-1][0])
    seconds = time.perf_counter() - start
    # Steady epochs: every epoch but each program's first (which holds its compilation).
    firsts, edges = set(range(0, len(stamps), epochs)), [start] + stamps
    steady = [edges[i + 1] - edges[i] for i in range(len(stamps)) if i not in firsts]
    return {"k": k, "mode": job["mode"], "epochs": epochs, "seconds": seconds, "devices": jax.device_count(),
            "steady_epoch_seconds": statistics.median(steady) if steady else None,
            "images": len(halves[0]), "final_loss": float(trained[0][1]["train/final_loss"])}


def child(command: list[str], timeout_s: float | None) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, the finished process) of a command run from the repository, which must
    succeed (the error names its last lines)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               TQDM_DISABLE="1")
    run = lambda: subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env,  # noqa: E731
                                 timeout=timeout_s)
    seconds, done = median_seconds(run, 1, warm_up=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done


def worker(size: Size, job: dict) -> dict:
    """`train_worker` in a fresh process (compilation and start-up are each measurement's own),
    or in this one where the size says so (tiny: the code path without the start-ups)."""
    if not size.fresh_processes:
        return train_worker(job)
    done = child([sys.executable, "-m", "adv_jax.bench.harness", json.dumps(job)], size.timeout_s)[1]
    return json.loads(done.stdout.strip().splitlines()[-1])


def training(size: Size, ks: tuple[int, ...], epochs: int | None) -> list[dict]:
    """Every K each way of size.modes, `repeats` times, the order of the modes alternating."""
    overrides = sized(size, epochs) + (TINY_MODEL if size.tiny else [])
    rows = []
    for r in range(size.repeats):
        for k in ks:
            for mode in size.modes if r % 2 == 0 else size.modes[::-1]:
                rows.append(worker(size, {"k": k, "mode": mode, "cpu_devices": size.cpu_devices,
                                          "overrides": overrides}))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def attack_rows(size: Size, splits, model, params, n: int, width: int) -> list[dict]:
    """Examples per second (median over repeats, compilation excluded) of every attack on the
    first n test images."""
    import jax

    from adv_jax.attacks import make_attack
    from adv_jax.attacks.generate import generate
    from adv_jax.config import compose
    from adv_jax.models import logits_fn

    x, y, fn, rows = splits["test"].x[:n], splits["test"].y[:n], logits_fn(model, params), []
    for name in size.attacks:
        cfg = compose([f"attack={name}", *(TINY_ATTACK if size.tiny and name == "lbfgs" else [])]).attack
        # Warm-up on one chunk: the same compiled shape as every chunk of the timed calls.
        chunk = cfg.chunk_size or getattr(make_attack(name, cfg.params), "chunk_size", 1000)
        generate(cfg, fn, x[:chunk], y[:chunk], key=jax.random.key(0), progress=False)
        made = [generate(cfg, fn, x, y, key=jax.random.key(r), progress=False) for r in range(size.repeats)]
        seconds = statistics.median(m.seconds for m in made)
        rows.append({"attack": name, "width": width, "examples": n, "seconds": seconds,
                     "examples_per_second": n / seconds,
                     "success_rate": float(made[-1].adversarials.success.mean())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def attacks(size: Size) -> list[dict]:
    """`attack_rows` on a 784-w-w-10 network per width (Adam, size.epochs on P1), at every count
    for count_width and at width_examples for the others."""
    import jax

    from adv_jax.config import compose
    from adv_jax.data import load_splits
    from adv_jax.models import build_model
    from adv_jax.train import train_model

    cfg = compose(["model=fc100", "train=adam", *sized(size, size.epochs)])
    splits, rows = load_splits(cfg.data), []
    for width in size.widths:
        model_cfg = compose(["model=fc100", f"model.hidden=[{width},{width}]"]).model
        model = build_model(model_cfg)
        params, _ = train_model(model, model_cfg, cfg.train, splits["train"], jax.random.key(0))
        for n in (size.counts if width == size.count_width else (size.width_examples,)):
            rows += attack_rows(size, splits, model, params, n, width)
    return rows


def sweep(args: list[str], size: Size, name: str) -> tuple[float, list[dict], str]:
    """scripts/sweep.py -m with `args` in a fresh directory: (wall seconds, every job's result
    file, the command with that directory written $TMP)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"bench_{name}_"))
    try:
        command = [sys.executable, "scripts/sweep.py", "-m", *args, f"cpu_devices={size.cpu_devices}",
                   "wandb.mode=disabled", f"cache_dir={scratch / 'cache'}", f"hydra.sweep.dir={scratch / 'sweep'}"]
        seconds, _ = child(command, size.timeout_s)
        files = sorted((scratch / "sweep").glob("*/matrix.json")) or sorted((scratch / "sweep").glob("*/metrics.json"))
        results = [json.loads(p.read_text()) for p in files]
        return seconds, results, "python " + " ".join(command[1:]).replace(str(scratch), "$TMP")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def experiment(size: Size) -> list[dict]:
    """The cross-training-set study for size.experiment_seeds, one process, empty cache, each
    way of size.experiment_modes."""
    seeds, rows = size.experiment_seeds, []
    for together in size.experiment_modes:
        args = ["experiment=cross_training_set", "train=adam", f"seed={seeds}", f"experiment.ensemble_seeds=[{seeds}]",
                f"experiment.train_together={str(together).lower()}",
                f"experiment.num_examples={size.experiment_examples}"]
        args += sized(size) + (TINY_ATTACK + TINY_STUDY if size.tiny else [])
        seconds, results, command = sweep(args, size, "cts")
        rows.append({"together": together, "seconds": seconds, "jobs": len(results),
                     "checks": [all(r["checks"].values()) for r in results],
                     "test_errors": [round(v["test"], 2) for r in results for v in r["clean"].values()],
                     "command": command})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def sweeps(size: Size) -> list[dict]:
    """The same 2-job sweep (FC100, Adam, L-BFGS; seeds 0 and 1) with each of
    size.sweep_launchers: basic (one job after another), joblib (both at once on the device)."""
    args = ["model=fc100", "train=adam", "attack=lbfgs", f"attack.num_examples={size.sweep_examples}",
            "lipschitz.images=0", "seed=0,1", *sized(size, size.epochs), *(TINY_ATTACK + TINY_MODEL if size.tiny else [])]
    launchers = {"basic": [], "joblib": ["hydra/launcher=joblib_local", "hydra.launcher.n_jobs=2"]}
    rows = []
    for name in size.sweep_launchers:
        seconds, results, command = sweep(args + launchers[name], size, name)
        rows.append({"launcher": name, "seconds": seconds, "jobs": len(results),
                     "test_errors": [r["error/test"] for r in results], "command": command})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def matmul(size: Size, calls: int = 200) -> list[dict]:
    """GFLOP/s of FC100's first-layer matmuls, forward (x W) and weight gradient (x^T delta), for
    one model's minibatch, for K = 8 members vmapped (a batched dot), and a 10000-row forward."""
    import jax
    import jax.numpy as jnp

    def gflops(f, flops, *args):
        def calls_in_a_row():
            for _ in range(calls):
                out = f(*args)
            return out

        return flops / (median_seconds(calls_in_a_row, size.repeats)[0] / calls) / 1e9

    k, b, n_in, n_out = 8, 128, 784, 100
    x, w, delta = jnp.ones((k, b, n_in)), jnp.ones((k, n_in, n_out)), jnp.ones((k, b, n_out))
    one = 2 * b * n_in * n_out
    forward = jax.jit(lambda x, w: x @ w)
    weight_grad = jax.jit(lambda x, d: jnp.swapaxes(x, -1, -2) @ d)
    return [
        {"what": "one model: x W, (128, 784) @ (784, 100)", "gflops": gflops(forward, one, x[0], w[0])},
        {"what": "one model: x^T delta, (784, 128) @ (128, 100)",
         "gflops": gflops(weight_grad, one, x[0], delta[0])},
        {"what": "8 members vmapped: x W, (8, 128, 784) @ (8, 784, 100)",
         "gflops": gflops(forward, k * one, x, w)},
        {"what": "8 members vmapped: x^T delta, (8, 784, 128) @ (8, 128, 100)",
         "gflops": gflops(weight_grad, k * one, x, delta)},
        {"what": "one large matmul: (10000, 784) @ (784, 100)",
         "gflops": gflops(forward, 2 * 10000 * n_in * n_out, jnp.ones((10000, n_in)), w[0])},
    ]


SECTIONS: dict[str, Callable[[Size], list[dict]]] = {
    "training": lambda s: training(s, s.ks, s.epochs),
    # The criterion at the default epochs, measured rather than extrapolated.
    "training_long": lambda s: training(s, (8,), s.long_epochs),
    "attacks": attacks, "sweeps": sweeps, "experiment": experiment, "matmul": matmul,
}


def measure(name: str, size_name: str, size: Size, argv: str) -> dict:
    """One section's record: its rows (none, and the error, when a child process failed or timed
    out: the other sections still run, as one try on a lent accelerator should), the command
    line, the machine and its JAX devices."""
    import jax

    from adv_jax.reports import provenance

    record = {"argv": argv, "repeats": size.repeats, "size": size_name, "rows": [],
              "machine": {**provenance.machine(), "date": provenance.today(), "cpu_devices": size.cpu_devices,
                          "devices": [str(d) for d in jax.devices()]}}
    try:
        record["rows"] = SECTIONS[name](size)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        record["error"] = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
        print(f"[bench] {name} failed: {record['error']}", file=sys.stderr, flush=True)
    return record


def update(out: Path, only: set[str], size_name: str, size: Size, argv: str) -> dict:
    """Measures the sections in `only` at `size`, keeps the others' numbers from out's .json, and
    after each section writes the .json, the figures and `out` (adv_jax.reports.bench)."""
    from adv_jax.reports import bench

    raw = out.with_suffix(".json")
    sections = json.loads(raw.read_text())["sections"] if raw.exists() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(only & SECTIONS.keys())  # none: the report redrawn from the .json
    for name in names or [None]:
        if name is not None:
            sections[name] = measure(name, size_name, size, argv)
        if sections:
            raw.write_text(json.dumps({"sections": sections}, indent=1))
            bench.write(sections, out)
    return sections

if __name__ == "__main__":
    print(json.dumps(train_worker(json.loads(sys.argv[1]))))
