"""Scale benchmarks' measurements (results/bench.md; the report is adv_jax.reports.bench).

  training    K FC100-100-10 models trained together (adv_jax/ensemble.py) against one after
              another, each measurement in a fresh process (`python -m adv_jax.reports.bench_runs`)
  attacks     examples per second of L-BFGS and PGD against examples and hidden width
  experiment  the cross-training-set study end to end, with and without training together
  matmul      GFLOP/s of FC100's first-layer matmuls, one model against K members batched
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adv_jax.reports.timing import median, median_seconds

REPO = Path(__file__).resolve().parents[2]


def train_worker(k: int, mode: str, epochs: int, cpu_devices: str) -> dict:
    """One measurement, in this (fresh) process: K models together or one after another."""
    from adv_jax import devices

    devices.use_cpu_devices(cpu_devices)  # before JAX's first operation, as adv_jax.run does
    import jax
    import jax.numpy as jnp

    from adv_jax import ensemble
    from adv_jax.config import compose
    from adv_jax.data import load_splits
    from adv_jax.models import build_model
    from adv_jax.train import train_model

    cfg = compose(["model=fc100", "train=adam", f"train.epochs={epochs}"])
    halves = [load_splits(compose([f"data={s}"]).data)["train"] for s in ("p1", "p2")]
    data = [halves[i % 2] for i in range(k)]
    model = build_model(cfg.model)
    jax.block_until_ready(jax.jit(lambda a: a + 1)(jnp.zeros(3)))  # runtime start-up, not timed
    stamps: list[float] = []
    on_epoch = lambda *_: stamps.append(time.perf_counter())  # noqa: E731
    start = time.perf_counter()
    if mode == "together":
        ensemble.train_models([model] * k, cfg.train, data, [jax.random.key(s) for s in range(k)],
                              on_epoch=on_epoch)
    else:
        for s in range(k):
            train_model(model, cfg.model, cfg.train, data[s], jax.random.key(s), on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    # Steady epochs: every epoch but each program's first (which holds its compilation).
    firsts = set(range(0, len(stamps), epochs))
    edges = [start] + stamps
    steady = [edges[i + 1] - edges[i] for i in range(len(stamps)) if i not in firsts]
    return {"k": k, "mode": mode, "epochs": epochs, "seconds": seconds, "devices": jax.device_count(),
            "steady_epoch_seconds": median(steady) if steady else None}


def run_worker(k: int, mode: str, epochs: int, cpu_devices: str) -> dict:
    """`train_worker` in a fresh process: compilation and start-up are each measurement's own."""
    out = subprocess.run([sys.executable, "-m", "adv_jax.reports.bench_runs", str(k), mode, str(epochs), cpu_devices],
                         capture_output=True, text=True, cwd=REPO, env=os.environ)
    if out.returncode:
        raise RuntimeError(f"worker {k} {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_training(ks: list[int], epochs: int, repeats: int, cpu_devices: str) -> list[dict]:
    """Every K both ways, `repeats` times, the order of the modes alternating between repeats."""
    runs = []
    for r in range(repeats):
        for k in ks:
            modes = ("together", "sequential") if r % 2 == 0 else ("sequential", "together")
            for mode in modes:
                runs.append(run_worker(k, mode, epochs, cpu_devices))
                print(json.dumps(runs[-1]), flush=True)
    return runs


def bench_attacks(counts: list[int], widths: list[int], width_examples: int, repeats: int) -> list[dict]:
    """Examples per second (median over repeats, compilation excluded) of L-BFGS and PGD."""
    import jax

    from adv_jax.attacks import make_attack
    from adv_jax.attacks.generate import generate
    from adv_jax.config import compose
    from adv_jax.data import load_splits
    from adv_jax.models import build_model, logits_fn
    from adv_jax.train import train_model

    cfg = compose(["model=fc100", "train=adam", "train.epochs=5"])
    splits = load_splits(cfg.data)
    attacks = {name: compose([f"attack={name}"]).attack for name in ("lbfgs", "pgd")}
    rows = []

    def measure(model, params, n, width):
        x, y = splits["test"].x[:n], splits["test"].y[:n]
        for name, attack_cfg in attacks.items():
            # Warm-up on one chunk: the same compiled shape as every chunk of the timed calls.
            chunk = attack_cfg.chunk_size or getattr(make_attack(name, attack_cfg.params), "chunk_size", 1000)
            fn = logits_fn(model, params)
            generate(attack_cfg, fn, x[:chunk], y[:chunk], key=jax.random.key(0), progress=False)
            times, success = [], None
            for r in range(repeats):
                made = generate(attack_cfg, fn, x, y, key=jax.random.key(r), progress=False)
                times.append(made.seconds)
                success = float(made.adversarials.success.mean())
            rows.append({"attack": name, "width": width, "examples": n, "seconds": median(times),
                         "examples_per_second": n / median(times), "success_rate": success})
            print(json.dumps(rows[-1]), flush=True)

    for width in widths:
        model_cfg = compose(["model=fc100", f"model.hidden=[{width},{width}]"]).model
        model = build_model(model_cfg)
        params, _ = train_model(model, model_cfg, cfg.train, splits["train"], jax.random.key(0))
        for n in (counts if width == 100 else [width_examples]):
            measure(model, params, n, width)
    return rows


def bench_experiment(seeds: str, num_examples: int, cpu_devices: str) -> list[dict]:
    """The cross-training-set study for several seeds, one process, empty cache, each way."""
    rows = []
    for together in (True, False):
        scratch = Path(tempfile.mkdtemp(prefix="bench_cts_"))
        command = [sys.executable, "scripts/sweep.py", "-m", "experiment=cross_training_set",
                   "train=adam", f"seed={seeds}", f"experiment.ensemble_seeds=[{seeds}]",
                   f"experiment.train_together={str(together).lower()}",
                   f"experiment.num_examples={num_examples}", f"cpu_devices={cpu_devices}", "wandb.mode=disabled",
                   f"cache_dir={scratch / 'cache'}", f"hydra.sweep.dir={scratch / 'sweep'}"]
        start = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=os.environ)
        seconds = time.perf_counter() - start
        if out.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
        matrices = sorted((scratch / "sweep").glob("*/matrix.json"))
        results = [json.loads(p.read_text()) for p in matrices]
        rows.append({"together": together, "seconds": seconds, "jobs": len(results),
                     "checks": [all(r["checks"].values()) for r in results],
                     "test_errors": [round(v["test"], 2) for r in results for v in r["clean"].values()],
                     "command": "python " + " ".join(command[1:]).replace(str(scratch), "$TMP")})
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def bench_matmul(repeats: int, calls: int = 200) -> list[dict]:
    """GFLOP/s of FC100's first-layer matmuls, forward (x W) and weight gradient (x^T delta), for
    one model's minibatch, for K = 8 members vmapped (a batched dot), and a 10000-row forward."""
    import jax
    import jax.numpy as jnp

    def gflops(f, flops, *args):
        def calls_in_a_row():
            for _ in range(calls):
                out = f(*args)
            return out

        return flops / (median_seconds(calls_in_a_row, repeats)[0] / calls) / 1e9

    k, b, n_in, n_out = 8, 128, 784, 100
    x, w, delta = jnp.ones((k, b, n_in)), jnp.ones((k, n_in, n_out)), jnp.ones((k, b, n_out))
    one = 2 * b * n_in * n_out
    forward = jax.jit(lambda x, w: x @ w)
    weight_grad = jax.jit(lambda x, d: jnp.swapaxes(x, -1, -2) @ d)
    rows = [
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
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def device_names() -> list[str]:
    import jax

    return [str(d) for d in jax.devices()]


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


# Section name -> measurement from the command line's parameters (scripts/bench.py's flags).
SECTIONS = {
    "training": lambda p: bench_training(ints(p["ks"]), p["epochs"], p["repeats"], p["cpu_devices"]),
    "attacks": lambda p: bench_attacks(ints(p["counts"]), ints(p["widths"]), p["width_examples"],
                                       p["repeats"]),
    "experiment": lambda p: bench_experiment(p["experiment_seeds"], p["experiment_examples"],
                                             p["cpu_devices"]),
    # The criterion at the default epochs, measured rather than extrapolated.
    "training_long": lambda p: bench_training([8], p["long_epochs"], p["repeats"], p["cpu_devices"]),
    "matmul": lambda p: bench_matmul(p["repeats"]),
}


def main(argv: list[str]) -> None:
    """Worker entry: K MODE EPOCHS CPU_DEVICES -> one JSON line on stdout."""
    k, mode, epochs, cpu_devices = argv
    print(json.dumps(train_worker(int(k), mode, int(epochs), cpu_devices)))


if __name__ == "__main__":
    main(sys.argv[1:])
