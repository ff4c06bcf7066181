"""Writes results/lipschitz.md: per-layer Lipschitz bounds (paper Table 5 layout) of the paper's
models, their empirical lower bounds, and cross-run comparisons over sweeps, with plots.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/report_lipschitz.py [--run-missing]

Reads the run directories of `scripts/report_models.py` (runs/models/<row>) and the sweeps in
SWEEPS (runs/lipschitz_<name>/), made by the commands written next to each table; --run-missing
runs a sweep whose directory does not exist yet (sweep.py skips jobs that already finished).
For each model the table comes from `adv_jax.load_run` + `lipschitz.layer_table`; the lower
bounds are read from the run's lipschitz.json when it has them, otherwise measured here: the
largest local Jacobian norm over the first 1000 test images (50 power iterations) and the largest
||f(x') - f(x)|| / ||x' - x|| over L-BFGS adversarial pairs (attack=lbfgs, random targets) of the
first 100 test images (cached in runs/lipschitz_report/, keyed by a hash of the parameters).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_lipschitz  # noqa: E402

import adv_jax  # noqa: E402
from adv_jax import lipschitz  # noqa: E402
from adv_jax.attacks import single_example  # noqa: E402
from adv_jax.attacks.generate import generate  # noqa: E402

ENV = "ADV_JAX_MNIST_DIR=../shared/data/mnist"
COMMAND = f"{ENV} python scripts/report_lipschitz.py"
# Per-layer tables: report_models.py rows, in this order; conv falls back to a P1 run of ours.
MODEL_ROWS = ("fc10_1e-4", "fc10_1e-2", "fc10_1", "fc100_full", "fc100_p1", "fc123_p1",
              "fc200_full", "ae400_full", "conv_full")
CONV_FALLBACK = ("runs/lipschitz_conv_p1", f"{ENV} python scripts/sweep.py model=conv data=p1 "
                 "train=adam train.epochs=10 attack=none wandb.mode=disabled "
                 "hydra.run.dir=runs/lipschitz_conv_p1")
# OPENBLAS_NUM_THREADS=1: on a loaded 2-core machine OpenBLAS's threads make the SVD of the
# lipschitz penalty ~100x slower (0.7 s instead of 8 ms for 784x100); the results do not change.
# The sweeps ran before the L-BFGS defaults became memory 3 and 10 evaluations: pinned to match.
_SWEEP = (f"{ENV} {{}}python scripts/sweep.py -m model=fc100 data=p1 train=adam train.epochs=20 {{}} "
          "attack=lbfgs attack.params.max_evals=15 attack.params.memory=5 attack.num_examples=500 "
          "wandb.mode=disabled hydra.sweep.dir={}")
_ONE_THREAD = "OPENBLAS_NUM_THREADS=1 "
# name -> (sweep dir, x key, command, what it shows)
SWEEPS = {
    "weight_decay": ("runs/lipschitz_wd", "model.weight_decay",
                     _SWEEP.format("", "model.weight_decay=1e-5,1e-3,1e-2,1e-1,1", "runs/lipschitz_wd"),
                     "FC100-100-10 on P1, one weight decay lambda for all three layers"),
    "penalty": ("runs/lipschitz_penalty", "train.lipschitz_penalty",
                _SWEEP.format(_ONE_THREAD, "train.lipschitz_penalty=0,1e-3,1e-2,1e-1,1",
                              "runs/lipschitz_penalty"),
                "FC100-100-10 on P1 (paper's lambdas), weight of log(product bound) in the loss"),
    "width": ("runs/lipschitz_width", "model.hidden",
              _SWEEP.format(_ONE_THREAD, "'model.hidden=[25,25],[50,50],[100,100],[200,200],[400,400]'",
                            "runs/lipschitz_width"),
              "FC<w>-<w>-10 on P1 (paper's lambdas), hidden width w"),
}
JACOBIAN_IMAGES, PAIR_IMAGES = 1000, 100
# Lower bounds measured here, keyed by a hash of the parameters, so a re-run does not redo them.
MEASURED_CACHE = Path("runs/lipschitz_report")
NOTES = [
    "## Reading the tables", "",
    "- **gap** = product / the larger valid lower bound: how far the layer-by-layer product can be "
    "from the network's true constant, which lies between the two. A linear model (fc10) has "
    "gap ~1; every sigmoid layer lets the product assume slope 1/4 at every unit at once, which "
    "the Jacobian at a real image never reaches.",
    "- **Collapsed models.** The largest weight decay and the largest penalty drive every weight "
    "to ~0: the network outputs its biases, i.e. one class for every image (test error ~89%). "
    "The attack's only \"successes\" are clean images whose random target is that class "
    "(distortion 0, success rate ~0.1; left out of the plots' distortion curve), so there are no "
    "pairs to measure. The penalty weight times log(product) has no floor, so a large enough "
    "weight always ends there.",
    "- **Invalid lower bound.** On a collapsed model (product ~1e-16) the float32 power iteration "
    "of `lipschitz.jacobian_norm` underflows: its normalization squares entries of size ~1e-33, "
    "the norm becomes 0, v is divided by `tiny` instead of its norm, and the returned ||J v|| "
    "overshoots. compare_lipschitz flags a lower bound above the product as invalid.",
    "",
]


# ----------------------------------------------------------------------------- one model

def lower_bounds(run: adv_jax.Run) -> dict[str, float]:
    """Jacobian and pair-ratio lower bounds: from the run's metrics, else measured (see module doc)."""
    found = {k: run.metrics[k] for k in ("lipschitz/jacobian_lower_bound",
                                          "lipschitz/pair_ratio_lower_bound") if k in run.metrics}
    if len(found) == 2:
        return {**found, "source": "run"}
    digest = hashlib.sha256((run.path / "params.msgpack").read_bytes()).hexdigest()[:16]
    cache = MEASURED_CACHE / f"{run.config.model.name}-{digest}-{JACOBIAN_IMAGES}-{PAIR_IMAGES}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    measured = _measure(run, found.get("lipschitz/jacobian_lower_bound"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(measured))
    return measured


def _measure(run: adv_jax.Run, jacobian: float | None = None) -> dict[str, float]:
    """Measures the pair ratio, and the Jacobian bound unless the run already logged it."""
    test = adv_jax.load_splits(run.config.data, run.config.model.classes)["test"]
    apply = jax.jit(lambda x: run.model.apply(run.params, x))
    key = jax.random.key(run.config.seed)
    source = "measured here" if jacobian is None else "Jacobian from the run, pairs measured here"
    if jacobian is None:
        jacobian = lipschitz.max_jacobian_norm(single_example(apply), jnp.asarray(test.x[:JACOBIAN_IMAGES]),
                                               jax.random.fold_in(key, 2), 50)
    attack_cfg = adv_jax.compose(["attack=lbfgs"]).attack
    adv = generate(attack_cfg, run.logits_fn, test.x[:PAIR_IMAGES], test.y[:PAIR_IMAGES],
                   key=jax.random.fold_in(key, 1), progress=False).adversarials
    ok = adv.success
    pairs = lipschitz.pair_ratio_bound(apply, jnp.asarray(adv.x[ok]), jnp.asarray(adv.x_adv[ok]))
    return {"lipschitz/jacobian_lower_bound": float(jacobian),
            "lipschitz/pair_ratio_lower_bound": float(pairs), "source": source,
            "attack/mean_distortion": float(adv.distortion()[ok].mean())}


def table5(rows: list[dict]) -> list[str]:
    """The paper's Table 5 layout, one line per layer of model.layers."""
    lines = ["| layer | kind | shape | input | stride | padding | operator norm | activation "
             "factor | bound L_k |", "|" + " --- |" * 9]
    for r in rows:
        note = "" if r["exact"] else " (upper)"
        lines.append(
            f"| {r['index'] + 1} | {r['kind']} | {r['shape']} | {r['input']} | "
            f"{r['stride'] or '-'} | {r['padding'] or '-'} | {r['operator_norm']:.4g}{note} | "
            f"{r['activation']:g} | {r['bound']:.4g} |")
    return lines


def model_section(name: str, run_dir: Path, command: str) -> tuple[list[str], dict]:
    run = adv_jax.load_run(run_dir)
    rows = lipschitz.layer_table(run.model, run.params, run.model.input_shape)
    product = lipschitz.network_bound(rows)
    low = lower_bounds(run)
    jac, pairs = low["lipschitz/jacobian_lower_bound"], low["lipschitz/pair_ratio_lower_bound"]
    cfg = run.config
    summary = dict(name=name, model=cfg.model.name, split=cfg.data.split, product=product,
                   jacobian=jac, pairs=pairs, gap=product / max(jac, pairs),
                   error=run.metrics.get("error/test"), source=low["source"],
                   distortion=low.get("attack/mean_distortion", run.metrics.get("attack/mean_distortion")))
    lines = [f"### {name}: {cfg.model.name} on {cfg.data.split} ({cfg.train.optimizer})", "",
             f"Run directory `{run_dir}`, made by `{command}`.", "", *table5(rows), "",
             f"Network product (upper bound on the logits' L2 Lipschitz constant): **{product:.4g}**. "
             f"Lower bounds ({low['source']}): Jacobian {jac:.4g}, adversarial pairs {pairs:.4g}; "
             f"upper / lower = {summary['gap']:.3g}.", ""]
    return lines, summary


def summary_table(summaries: list[dict]) -> list[str]:
    lines = ["| row | model | trained on | product (upper) | Jacobian (lower) | pairs (lower) "
             "| gap upper/lower | test error % | mean distortion (L-BFGS, 100 images) |",
             "|" + " --- |" * 9]
    for s in summaries:
        err = "-" if s["error"] is None else f"{100 * s['error']:.2f}"
        dist = "-" if s["distortion"] is None else f"{s['distortion']:.4f}"
        lines.append(f"| {s['name']} | {s['model']} | {s['split']} | {s['product']:.4g} | "
                     f"{s['jacobian']:.4g} | {s['pairs']:.4g} | {s['gap']:.3g} | {err} | {dist} |")
    return lines


# ----------------------------------------------------------------------------- sweeps

def sweep_section(name: str, run_missing: bool, figures: Path) -> list[str]:
    sweep_dir, x_key, command, what = SWEEPS[name]
    if not Path(sweep_dir).exists() and run_missing:
        subprocess.run(command, shell=True, check=True)
    lines = [f"### {name.replace('_', ' ')}: {what}", "", f"    {command}", ""]
    if not Path(sweep_dir).exists():
        return lines + ["Not run yet.", ""]
    figure = figures / f"lipschitz_{name}.png"
    table, entries, _ = compare_lipschitz.compare([sweep_dir], x_key, figure, title=what)
    return lines + [table, "", f"![{name}]({figure.relative_to(figures.parent)})", "",
                    f"Table and plot: `python scripts/compare_lipschitz.py {sweep_dir} --x {x_key} "
                    f"--plot {figure}`; run ids are the job numbers under `{sweep_dir}/`.", ""]


# ----------------------------------------------------------------------------- the report

def header() -> list[str]:
    return [
        "# Per-layer Lipschitz bounds (Szegedy et al. 2014, section 4.3)", "",
        f"Generated by `{COMMAND}` from the run directories named below; every number is computed "
        "from a run's saved parameters or read from its metrics. Machine: "
        f"{platform.machine()}, 2 shared CPU cores, jax {jax.__version__}.", "",
        "For phi = phi_K o ... o phi_1 (image -> logits), ||phi(x) - phi(x + r)|| <= L ||r|| with "
        "L = prod_k L_k, L_k = ||W_k|| (largest singular value) x the activation's largest slope "
        "(sigmoid 1/4, ReLU 1). Dense norms are exact (SVD); a zero-padded convolution's norm is the "
        "exact FFT norm of a circular convolution on an enlarged grid, a guaranteed upper bound "
        "(marked `(upper)`); max-pooling with non-overlapping windows is 1. Inputs are images in "
        "[0, 1]^784, so L is in logits per unit L2 distance in pixel space. The lower bounds are "
        "measured slopes of the same map: the largest local Jacobian norm over test images (power "
        "iteration) and the largest ||f(x') - f(x)|| / ||x' - x|| over adversarial pairs; both must "
        "sit below the product, and their ratio (gap) says how loose the product is.", "",
    ]


def build(runs: Path, run_missing: bool, figures: Path) -> str:
    lines = header() + [
        "## The paper's models", "",
        "Tables in the layout of the paper's Table 5 (which lists AlexNet on ImageNet: conv1 2.75, "
        "conv2 10, conv3 7, conv5 11, FC2 4, FC3 4; each row there is ||W_k||, ReLU slope 1). "
        "Layer shapes are in x out for dense layers and C x k x k x D for convolutions, as there.", ""]
    sections, summaries, missing = [], [], []
    for name in MODEL_ROWS:
        run_dir, command = runs / name, f"{ENV} python scripts/report_models.py"
        if name == "conv_full" and not (run_dir / "metrics.json").exists():
            # conv on all 60000 images (Adam, 40 epochs) takes an hour on 2 busy cores.
            name, run_dir, command = "conv_p1", Path(CONV_FALLBACK[0]), CONV_FALLBACK[1]
            if not (run_dir / "metrics.json").exists() and run_missing:
                subprocess.run(command, shell=True, check=True)
        if not (run_dir / "metrics.json").exists():
            print(f"skipping {name}: {run_dir} has not finished", file=sys.stderr)
            missing.append(f"`{run_dir}`")
            continue
        print(f"== {name}", file=sys.stderr)
        section, summary = model_section(name, run_dir, command)
        sections += section
        summaries.append(summary)
    if missing:
        lines += [f"Not finished when this report was made, so left out: {', '.join(missing)}.", ""]
    lines += ["Summary (one row per model; per-layer tables below):", "", *summary_table(summaries), "",
              *sections, "## Comparisons across runs", "",
              "Each sweep trains with Adam for 20 epochs (batch 128, learning rate 1e-3, cosine "
              "decay) instead of the paper's L-BFGS, for speed; the minimum distortion is the "
              "L-BFGS attack's (random wrong target per image) mean per-pixel RMS distortion over "
              "the first 500 test images (a subset of the 10000), and the lower bounds come from "
              "those 500 pairs and the first 1000 test images.", ""]
    for name in SWEEPS:
        lines += sweep_section(name, run_missing, figures)
    return "\n".join(lines + NOTES) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/models"))
    parser.add_argument("--out", type=Path, default=Path("results/lipschitz.md"))
    parser.add_argument("--run-missing", action="store_true", help="run sweeps not run yet")
    args = parser.parse_args(argv)
    figures = args.out.parent / "figures"
    text = build(args.runs, args.run_missing, figures)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
