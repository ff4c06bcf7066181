"""The GPU check (scripts/gpu_check.sh): a few minutes of measurements on one accelerator -> a
markdown report.

Sections: K FC100-100-10 models trained together (Adam) against one; L-BFGS adversarials on
FC100; a 2-job sweep sharing the device (joblib, both at once) against the basic launcher (one
after another); the cross-training-set study with train=adam. `SIZES["gpu"]` is the real check;
`SIZES["cpu_short"]` the same code at tiny sizes, which tests/test_gpu_check.py runs on a CPU.

    python -m adv_jax.reports.gpu [--cpu-short] --out results/gpu.md --work DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from adv_jax.reports.provenance import header, machine

REPO = Path(__file__).resolve().parents[2]
COMMAND = "scripts/gpu_check.sh"
SIZES = {
    "gpu": {"ks": [1, 16, 64], "epochs": 5, "train_limit": None, "attack_examples": 10000,
            "sweep_examples": 1000, "study_examples": 1000, "study_limit": None, "timeout_s": 120},
    "cpu_short": {"ks": [1, 2], "epochs": 1, "train_limit": 300, "attack_examples": 5,
                  "sweep_examples": 5, "study_examples": 5, "study_limit": 300, "timeout_s": 120},
}
# cpu_short only: one solve of a few evaluations per example, and FC8-8-10 in place of the
# FC100-100-10 / FC123-456-10 widths (the same code paths, a fraction of the compile and run time).
TINY_ATTACK = ["attack.params.c_steps=1", "attack.params.max_evals=2", "attack.params.extra_solves=0"]
TINY_MODEL = ["model.hidden=[8,8]"]
# cpu_short's sweep jobs: one CPU device, as in this process, so that they reuse its compiled
# programs through the persistent cache gpu_check.sh --cpu-short sets (same shapes, same device).
TINY_SWEEP = ["cpu_devices=1"]
TINY_STUDY = [f"experiment.models.{key}.hidden=[8,8]" for key in ("fc100_p1", "fc123_p1", "fc100_p2")]


def train_together(ks: list[int], epochs: int, train_limit: int | None, tiny: bool = False) -> list[dict]:
    """Seconds (compilation included) to train K FC100s together on P1/P2, for each K; K=1 is
    the one-model baseline."""
    import jax

    from adv_jax import ensemble
    from adv_jax.config import compose
    from adv_jax.data import load_splits
    from adv_jax.models import build_model

    limit = [f"data.train_limit={train_limit}"] if train_limit else []
    cfg = compose(["model=fc100", "train=adam", f"train.epochs={epochs}"] + limit + (TINY_MODEL if tiny else []))
    halves = [load_splits(compose([f"data={s}"] + limit).data)["train"] for s in ("p1", "p2")]
    model, rows = build_model(cfg.model), []
    for k in ks:
        start = time.perf_counter()
        trained = ensemble.train_models([model] * k, cfg.train, [halves[i % 2] for i in range(k)],
                                        [jax.random.key(s) for s in range(k)])
        jax.block_until_ready(trained[-1][0])
        rows.append({"k": k, "seconds": time.perf_counter() - start, "images": len(halves[0]),
                     "final_loss": float(trained[0][1]["train/final_loss"])})
    return rows


def attack_fc100(examples: int, epochs: int, train_limit: int | None, tiny: bool) -> dict:
    """L-BFGS adversarials of `examples` test images on an Adam-trained FC100: seconds (after a
    warm-up on the first chunk), success rate, mean RMS distortion of the successes."""
    import jax
    import numpy as np

    from adv_jax.attacks.generate import generate
    from adv_jax.config import compose
    from adv_jax.data import load_splits
    from adv_jax.models import build_model, logits_fn
    from adv_jax.train import train_model

    limit = [f"data.train_limit={train_limit}"] if train_limit else []
    cfg = compose(["model=fc100", "train=adam", f"train.epochs={epochs}", "attack=lbfgs"] + limit
                  + (TINY_ATTACK + TINY_MODEL if tiny else []))
    splits, model = load_splits(cfg.data), build_model(cfg.model)
    params, _ = train_model(model, cfg.model, cfg.train, splits["train"], jax.random.key(0))
    fn, test = logits_fn(model, params), splits["test"]
    warm = min(10, examples)
    generate(cfg.attack, fn, test.x[:warm], test.y[:warm], key=jax.random.key(1), progress=False)
    made = generate(cfg.attack, fn, test.x[:examples], test.y[:examples], key=jax.random.key(0),
                    progress=False)
    adv = made.adversarials
    rms = np.sqrt(np.mean((np.asarray(adv.x_adv) - np.asarray(adv.x)) ** 2, axis=(1, 2, 3)))
    ok = np.asarray(adv.success)
    return {"examples": examples, "seconds": made.seconds, "examples_per_second": examples / made.seconds,
            "success_rate": float(ok.mean()), "mean_distortion": float(rms[ok].mean()) if ok.any() else None}


def run_sweep(args: list[str], work: Path, name: str, timeout_s: float) -> dict:
    """scripts/sweep.py with `args` in a fresh process: wall seconds and its jobs' metrics."""
    sweep = work / name
    command = [sys.executable, str(REPO / "scripts" / "sweep.py"), *args, "wandb=disabled",
               f"cache_dir={sweep / 'cache'}", f"hydra.sweep.dir={sweep / 'sweep'}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               TQDM_DISABLE="1")
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {timeout_s:.0f} s"}
    seconds = time.perf_counter() - start
    if done.returncode:
        return {"name": name, "error": done.stderr[-1500:]}
    jobs = sorted((sweep / "sweep").glob("*/metrics.json")) + sorted((sweep / "sweep").glob("*/matrix.json"))
    return {"name": name, "seconds": seconds, "jobs": len(jobs),
            "results": [json.loads(p.read_text()) for p in jobs]}


def shared_device_sweeps(sizes: dict, work: Path, tiny: bool) -> list[dict]:
    """The same 2-job sweep (FC100, Adam, L-BFGS attack; seeds 0 and 1) both at once on the one
    device (joblib) and, unless tiny, one job after another (basic launcher)."""
    limit = [f"data.train_limit={sizes['train_limit']}"] if sizes["train_limit"] else []
    args = ["-m", "model=fc100", "train=adam", f"train.epochs={sizes['epochs']}", "attack=lbfgs",
            f"attack.num_examples={sizes['sweep_examples']}", "lipschitz.images=0", "seed=0,1"]
    args += limit + (TINY_ATTACK + TINY_MODEL + TINY_SWEEP if tiny else [])
    joblib = ["hydra/launcher=joblib_local", "hydra.launcher.n_jobs=2"]
    rows = [run_sweep(args + joblib, work, "joblib", sizes["timeout_s"])]
    return rows if tiny else [run_sweep(args, work, "basic", sizes["timeout_s"])] + rows


def cross_training_set(sizes: dict, work: Path, tiny: bool) -> dict:
    """The study run in this process (adv_jax.run, as one sweep job would): wall seconds, its
    matrix.md."""
    import adv_jax
    from adv_jax.config import compose

    limit = [f"data.train_limit={sizes['study_limit']}"] if sizes["study_limit"] else []
    cfg = compose(["experiment=cross_training_set", "train=adam", f"train.epochs={sizes['epochs']}",
                   f"experiment.num_examples={sizes['study_examples']}", "wandb=disabled",
                   f"cache_dir={work / 'study' / 'cache'}"] + limit + (TINY_ATTACK + TINY_STUDY if tiny else []))
    start = time.perf_counter()
    adv_jax.run(cfg, str(work / "study" / "run"))
    matrix = work / "study" / "run" / "matrix.md"
    return {"seconds": time.perf_counter() - start, "matrix": matrix.read_text() if matrix.exists() else None}


def measure(mode: str, work: Path) -> dict:
    """Every section at `mode`'s sizes (SIZES), with the devices it ran on."""
    import jax

    sizes, tiny = SIZES[mode], mode == "cpu_short"
    return {"mode": mode, "sizes": sizes, "devices": [str(d) for d in jax.devices()],
            "machine": machine(),
            "training": train_together(sizes["ks"], sizes["epochs"], sizes["train_limit"], tiny),
            "attack": attack_fc100(sizes["attack_examples"], sizes["epochs"], sizes["train_limit"], tiny),
            "sweeps": shared_device_sweeps(sizes, work, tiny),
            "study": cross_training_set(sizes, work, tiny)}


def sweep_line(row: dict) -> str:
    if "error" in row:
        return f"| {row['name']} | failed: {row['error'].strip().splitlines()[-1][:200]} | | |"
    errors = ", ".join(f"{r['error/test']:.4f}" for r in row["results"] if "error/test" in r)
    return f"| {row['name']} | {row['seconds']:.1f} | {row['jobs']} | {errors} |"


def report(measured: dict) -> str:
    """The markdown of one `measure` result."""
    lines = header("GPU check", COMMAND + (" --cpu-short" if measured["mode"] == "cpu_short" else ""),
                   measured["machine"])
    lines += [f"Devices: {', '.join(measured['devices'])}. Sizes: `{json.dumps(measured['sizes'])}`.", "",
              "## K FC100-100-10 models trained together (Adam, P1/P2 alternating)", "",
              "| K | seconds | seconds per model | images per model | member 0 final loss |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['k']} | {r['seconds']:.2f} | {r['seconds'] / r['k']:.3f} | {r['images']} | "
              f"{r['final_loss']:.4f} |" for r in measured["training"]]
    a = measured["attack"]
    lines += ["", "Seconds include compilation; K = 1 is the one-model baseline.", "",
              "## L-BFGS adversarials on FC100 (the paper's attack, random targets)", "",
              f"{a['examples']} test images in {a['seconds']:.2f} s ({a['examples_per_second']:.1f} "
              f"examples/s, compiled beforehand); success {a['success_rate']:.3f}, mean RMS distortion "
              f"of the successes {a['mean_distortion']}.", "",
              "## A 2-job sweep sharing the device (seeds 0 and 1)", "",
              "| launcher | wall seconds | jobs | test errors |", "| --- | --- | --- | --- |"]
    lines += [sweep_line(r) for r in measured["sweeps"]]
    study = measured["study"]
    lines += ["", "`basic`: one job after another; `joblib`: both at once (`hydra.launcher.n_jobs=2`, "
              "XLA_PYTHON_CLIENT_PREALLOCATE=false).", "", "## The cross-training-set study, train=adam", "",
              f"In one process, training included: {study['seconds']:.1f} s.", "", study["matrix"] or ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-short", action="store_true", help="tiny sizes, for a CPU (the test)")
    parser.add_argument("--out", type=Path, required=True, help="the markdown report to write")
    parser.add_argument("--work", type=Path, required=True, help="scratch directory for the sweeps")
    args = parser.parse_args(argv)
    measured = measure("cpu_short" if args.cpu_short else "gpu", args.work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(measured, indent=1))
    args.out.write_text(report(measured))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
