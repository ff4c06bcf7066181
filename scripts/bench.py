"""Scale benchmarks -> results/bench.md and results/figures/bench_*.png.

  1. K FC100-100-10 models trained together (one vmapped program, adv_jax/ensemble.py) against
     the same K trained one after another (train.train_model each), K in --ks; Adam on P1/P2
     (members alternate), compilation included. Every measurement runs in a fresh process, the
     two modes alternate, and each time is the median over --repeats.
  2. Attack throughput (examples per second, compilation excluded) against the number of
     examples and against the hidden width, for the paper's L-BFGS attack and PGD.
  3. The cross-training-set experiment end to end (train=adam, seeds 0-2 in one process, empty
     cache), with and without training the models together.
  4. Why members are not vmapped within a CPU device: GFLOP/s of the first layer's matmuls for
     one model (batch 128) against K = 8 members batched, and against one large matmul.

  --cpu-devices (default auto: one JAX CPU device per core, as adv_jax.run sets) applies to every
  section; ensemble members are split over the devices.

    PYTHONPATH=. ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = "PYTHONPATH=. ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench.py"


def _train_worker(k: int, mode: str, epochs: int, cpu_devices: str) -> dict:
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
            "steady_epoch_seconds": sorted(steady)[len(steady) // 2] if steady else None}


def _run_worker(k: int, mode: str, epochs: int, cpu_devices: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", str(k), mode, str(epochs), cpu_devices],
                         capture_output=True, text=True, cwd=REPO, env=os.environ)
    if out.returncode:
        raise RuntimeError(f"worker {k} {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_training(ks: list[int], epochs: int, repeats: int, cpu_devices: str) -> list[dict]:
    runs = []
    for r in range(repeats):
        for k in ks:
            modes = ("together", "sequential") if r % 2 == 0 else ("sequential", "together")
            for mode in modes:
                runs.append(_run_worker(k, mode, epochs, cpu_devices))
                print(json.dumps(runs[-1]), flush=True)
    return runs


def _median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


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
            generate(attack_cfg, logits_fn(model, params), x[:chunk], y[:chunk], key=jax.random.key(0), progress=False)
            times, success = [], None
            for r in range(repeats):
                adv, seconds, _ = generate(attack_cfg, logits_fn(model, params), x, y, key=jax.random.key(r), progress=False)
                times.append(seconds)
                success = float(adv.success.mean())
            rows.append({"attack": name, "width": width, "examples": n, "seconds": _median(times),
                         "examples_per_second": n / _median(times), "success_rate": success})
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
        jax.block_until_ready(f(*args))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                out = f(*args)
            jax.block_until_ready(out)
            times.append((time.perf_counter() - start) / calls)
        return flops / _median(times) / 1e9

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


def machine(cpu_devices: str) -> dict:
    import jax
    import jaxlib
    import numpy
    import optax

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_devices": cpu_devices,
            "python": platform.python_version(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "optax": optax.__version__,
            "numpy": numpy.__version__, "devices": [str(d) for d in jax.devices()],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def plot(training: list[dict], attacks: list[dict], figures: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    paths = []
    if training:
        ks = sorted({r["k"] for r in training})
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for mode in ("together", "sequential"):
            ax.plot(ks, [_median([r["seconds"] for r in training if r["k"] == k and r["mode"] == mode])
                         for k in ks], "o-", label={"together": "together (vmapped)",
                                                    "sequential": "one after another"}[mode])
        ax.set(xlabel="models K", ylabel="seconds (compilation included)", xscale="log", yscale="log",
               title=f"FC100-100-10, Adam, {training[0]['epochs']} epochs on P1/P2")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.legend()
        fig.tight_layout()
        paths.append(figures / "bench_training.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    if attacks:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        # Left: FC100 (width 100) against the number of examples; right: every width at the
        # number of examples the other widths were attacked with.
        n_w = min((r["examples"] for r in attacks if r["width"] != 100), default=None)
        for name in sorted({r["attack"] for r in attacks}):
            mine = [r for r in attacks if r["attack"] == name]
            by_n = [r for r in mine if r["width"] == 100]
            by_w = sorted((r for r in mine if r["examples"] == n_w), key=lambda r: r["width"])
            axes[0].plot([r["examples"] for r in by_n], [r["examples_per_second"] for r in by_n],
                         "o-", label=name)
            axes[1].plot([r["width"] for r in by_w], [r["examples_per_second"] for r in by_w],
                         "o-", label=name)
        axes[0].set(xlabel="examples attacked", ylabel="examples per second", yscale="log",
                    title="FC100-100-10")
        axes[1].set(xlabel="hidden width (784-w-w-10)", ylabel="examples per second", xscale="log",
                    yscale="log", title=f"{n_w} examples")
        widths = sorted({r["width"] for r in attacks})
        axes[1].set_xticks(widths, [str(w) for w in widths])
        axes[1].minorticks_off()
        for ax in axes:
            ax.legend()
        fig.tight_layout()
        paths.append(figures / "bench_attacks.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _command(sections: dict, name: str) -> str:
    """The section's command line and the JAX devices it ran on."""
    devices = sections[name]["machine"]["devices"]
    return f"`{COMMAND} {sections[name]['argv']}` ({len(devices)} JAX device{'s' * (len(devices) > 1)})"


def report(sections: dict) -> str:
    info = next(iter(sections.values()))["machine"]
    training, attacks, experiment = (sections.get(k, {}).get("rows", [])
                                     for k in ("training", "attacks", "experiment"))
    repeats = {k: v["repeats"] for k, v in sections.items()}
    lines = ["# Scale benchmarks", "",
             "Made by `scripts/bench.py`; each section names the exact command that made its numbers.", "",
             f"Machine: {info['cpu']}, {info['cores']} cores; devices {', '.join(info['devices'])}. "
             f"No GPU was available to this session: every number is CPU. Python {info['python']}, "
             f"jax {info['jax']}, jaxlib {info['jaxlib']}, optax {info['optax']}, numpy {info['numpy']}; "
             f"{info['date']}.", ""]
    if training:
        epochs = training[0]["epochs"]
        lines += ["## K models trained together vs one after another", "",
                  _command(sections, "training"), "",
                  f"FC100-100-10, Adam (batch 128, cosine rate), {epochs} epochs; member k trains on P1 "
                  "(even k) or P2 (odd k), seed k. Both modes run with the JAX CPU devices a run gets "
                  f"(`cpu_devices={sections['training']['machine'].get('cpu_devices', 'auto')}`: "
                  f"{training[0].get('devices', 1)} here). *Together*: `adv_jax.ensemble.train_models`, one "
                  "jitted program for all K, the members split evenly over the devices, each device "
                  "running its own (members per vmapped step: `ensemble.default_vmap_size`, 1 on CPU, "
                  "all of a device's on an accelerator; see the matmul section). *One after another*: "
                  "`adv_jax.train.train_model` per model, as a plain run does (each compiles its own "
                  "program, on one device). Seconds are wall time of the "
                  "training call, compilation included (data loading excluded), each in a fresh "
                  f"process, median of {repeats['training']} runs, modes alternating. Steady epoch: median "
                  "seconds of an epoch after the first, for all K models (sum over models one after "
                  "another).", "",
                  "| K | together (s) | one after another (s) | ratio | steady epoch together (s) | steady epoch one after another (s) | ratio at 40 epochs (extrapolated) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for k in sorted({r["k"] for r in training}):
            t = [r for r in training if r["k"] == k and r["mode"] == "together"]
            s = [r for r in training if r["k"] == k and r["mode"] == "sequential"]
            tt, ts = _median([r["seconds"] for r in t]), _median([r["seconds"] for r in s])
            et = _median([r["steady_epoch_seconds"] for r in t])
            es = k * _median([r["steady_epoch_seconds"] for r in s])
            at40 = (tt + (40 - epochs) * et) / (ts + (40 - epochs) * es)
            lines.append(f"| {k} | {tt:.2f} | {ts:.2f} | {tt / ts:.3f} | {et:.3f} | {es:.3f} | {at40:.3f} |")
        lines += ["", "![training](figures/bench_training.png)", "",
                  "The ratio column is together / one after another in the same run. The last column "
                  "extrapolates both measured times by the measured steady epochs to the default 40 "
                  "epochs: compilation is paid once instead of K times, and the steady epoch shows what "
                  "running the members side by side on the devices gains on its own.", ""]
    if long_rows := sections.get("training_long", {}).get("rows", []):
        t = [r["seconds"] for r in long_rows if r["mode"] == "together"]
        s = [r["seconds"] for r in long_rows if r["mode"] == "sequential"]
        lines += [f"### K = 8 at {long_rows[0]['epochs']} epochs (the default), measured", "",
                  _command(sections, "training_long"), "",
                  "| K | epochs | together (s) | one after another (s) | ratio | runs |",
                  "| --- | --- | --- | --- | --- | --- |",
                  f"| 8 | {long_rows[0]['epochs']} | {_median(t):.2f} | {_median(s):.2f} | "
                  f"{_median(t) / _median(s):.3f} | {len(t)} |", ""]
    if matmul := sections.get("matmul", {}).get("rows", []):
        lines += ["### Where the steady-epoch gain comes from on a CPU", "",
                  _command(sections, "matmul"), "",
                  "A step of FC100 is dominated by its first layer: the forward x W and the weight "
                  "gradient x^T delta, each 2 x 128 x 784 x 100 flops per model. Vmapping K members "
                  "turns them into batched matmuls. GFLOP/s, median of "
                  f"{sections['matmul']['repeats']} timings of 200 jitted calls:", "",
                  "| matmul | GFLOP/s |", "| --- | --- |"]
        lines += [f"| {r['what']} | {r['gflops']:.1f} |" for r in matmul]
        lines += ["", "On two CPU cores one model's minibatch matmuls already run at a large fraction "
                  "of what a large matmul reaches, and batching 8 members' matmuls into one does not "
                  "raise it, so on a CPU the ensemble does not vmap members within a device "
                  "(`vmap_size` 1). What a steady epoch gains comes from the devices: with one JAX "
                  "device per core (`cpu_devices=auto`), each device steps through its own members "
                  "while the other does, and one model's step alone does not keep both cores busy "
                  "(compare the steady-epoch columns above). On an accelerator, where one MNIST MLP "
                  "leaves most of the device idle, vmapping a device's members is where the gain "
                  "would be.", ""]
    if attacks:
        lines += ["## Attack throughput", "",
                  _command(sections, "attacks"), "",
                  "`adv_jax.attacks.generate.generate` (targets random, default hyperparameters of "
                  "`conf/attack/lbfgs.yaml` and `conf/attack/pgd.yaml`) on the first N test images, "
                  "against 784-w-w-10 sigmoid networks trained by Adam for 5 epochs on P1. "
                  f"Compilation excluded (a warm-up call first); median of {repeats['attacks']} runs.", "",
                  "| attack | width | examples | seconds | examples/s | success rate |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in attacks:
            lines.append(f"| {r['attack']} | {r['width']} | {r['examples']} | {r['seconds']:.2f} | "
                         f"{r['examples_per_second']:.0f} | {r['success_rate']:.3f} |")
        lines += ["", "![attacks](figures/bench_attacks.png)", ""]
    if experiment:
        lines += ["## The cross-training-set experiment end to end", "",
                  _command(sections, "experiment"), "",
                  "Three seeds of `experiment=cross_training_set` (two FC100 and one FC123 per seed) "
                  "in one process (Hydra's basic launcher), `train=adam`, from an empty cache, L-BFGS "
                  "adversarials for the first N test images, the whole matrix; wall time of the "
                  "command (Python start-up included), one run each.", "",
                  "| models trained together | seconds | jobs | all structure checks hold | clean test errors (%) |",
                  "| --- | --- | --- | --- | --- |"]
        for r in experiment:
            lines.append(f"| {'yes' if r['together'] else 'no'} | {r['seconds']:.0f} | {r['jobs']} | "
                         f"{all(r['checks'])} | {', '.join(map(str, r['test_errors']))} |")
        lines += ["", "Attacks, evaluation and the matrices are the same work either way, so the "
                  "difference is training: 6 FC100 and 3 FC123 models as two programs instead of "
                  "nine. Clean errors agree to the printed digits.", "",
                  "Commands (`$TMP` a fresh directory; N = `experiment.num_examples`):", ""]
        lines += [f"- `{r['command']}`" for r in experiment]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="1,4,8,16")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--counts", default="1000,2000,5000,10000")
    parser.add_argument("--widths", default="50,100,200,400,800")
    parser.add_argument("--width-examples", type=int, default=2000)
    parser.add_argument("--experiment-seeds", default="0,1,2")
    parser.add_argument("--experiment-examples", type=int, default=2000)
    parser.add_argument("--long-epochs", type=int, default=40, help="epochs of the K=8 long run")
    parser.add_argument("--only", default="training,attacks,experiment,training_long,matmul",
                        help="sections to run (comma-separated); the others keep their numbers")
    parser.add_argument("--out", default="results/bench.md")
    parser.add_argument("--cpu-devices", default="auto",
                        help="JAX CPU devices (adv_jax config cpu_devices): auto = one per core")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        k, mode, epochs, cpu_devices = args.worker
        print(json.dumps(_train_worker(int(k), mode, int(epochs), cpu_devices)))
        return
    from adv_jax import devices

    devices.use_cpu_devices(args.cpu_devices)
    argv = " ".join(sys.argv[1:])
    only = set(args.only.split(","))
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    out = REPO / args.out
    raw = out.with_suffix(".json")
    # Sections not run now keep their earlier numbers (and their own command line).
    sections = json.loads(raw.read_text())["sections"] if raw.exists() else {}
    runners = {
        "training": lambda: bench_training(ints(args.ks), args.epochs, args.repeats, args.cpu_devices),
        "attacks": lambda: bench_attacks(ints(args.counts), ints(args.widths), args.width_examples,
                                         args.repeats),
        "experiment": lambda: bench_experiment(args.experiment_seeds, args.experiment_examples,
                                               args.cpu_devices),
        # The criterion at the default epochs, measured rather than extrapolated.
        "training_long": lambda: bench_training([8], args.long_epochs, args.repeats, args.cpu_devices),
        "matmul": lambda: bench_matmul(args.repeats),
    }
    for name in sorted(only & runners.keys()):  # --only none: redraw the report and plots only
        sections[name] = {"argv": argv, "repeats": args.repeats, "machine": machine(args.cpu_devices),
                          "rows": runners[name]()}
    rows = {name: sections.get(name, {}).get("rows", []) for name in runners}
    plot(rows["training"], rows["attacks"], out.parent / "figures")
    raw.write_text(json.dumps({"sections": sections}, indent=1))
    out.write_text(report(sections))
    print(f"wrote {out} and {raw}")


if __name__ == "__main__":
    main()
