"""Trains the paper's MNIST models (Tables 1 and 3) and writes results/models.md.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/report_models.py [--runs runs/models] [--only fc100_p1 ...]

Each row is one `adv_jax.run` into <runs>/<row>; a row whose run directory already holds
metrics.json is read back instead of run again, so an interrupted report resumes. Models come
from the shared cache when trained before; add --no-cache to retrain (for fresh timings).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import jax

import adv_jax

# row name -> (overrides, paper's (train error %, test error %) or None, paper table)
ROWS = {
    "fc10_1e-4": (["model=fc10", "model.weight_decay=1e-4", "data=full"], (6.7, 7.4), "Table 1"),
    "fc10_1e-2": (["model=fc10", "model.weight_decay=1e-2", "data=full"], (10.0, 9.4), "Table 1"),
    "fc10_1": (["model=fc10", "model.weight_decay=1", "data=full"], (21.2, 20.0), "Table 1"),
    "fc100_full": (["model=fc100", "data=full"], (0.0, 1.64), "Table 1"),
    "fc200_full": (["model=fc200", "data=full"], (0.0, 1.54), "Table 1"),
    "ae400_full": (["model=ae400", "data=full"], (0.57, 1.9), "Table 1"),
    "fc100_p1": (["model=fc100", "data=p1"], (0.0, 2.0), "Table 3"),
    "fc123_p1": (["model=fc123", "data=p1"], (0.0, 2.1), "Table 3"),
    "fc100_p2": (["model=fc100", "data=p2"], (0.0, 2.1), "Table 3"),
    "conv_p1": (["model=conv", "data=p1", "train=adam", "train.epochs=10"], None, "-"),
    "bottleneck2d_full": (["model=bottleneck2d", "data=full"], None, "essay 000"),
}
COMMON = ["attack=none", "wandb.mode=disabled"]
COMMAND = "ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/report_models.py"


def run_row(name: str, runs: Path, cache: bool) -> dict:
    run_dir = runs / name
    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "metrics.json").read_text())
    overrides = ROWS[name][0] + COMMON + ([] if cache else ["train.cache=false"])
    return adv_jax.run(adv_jax.compose(overrides), run_dir)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown(results: dict[str, dict], runs: Path) -> str:
    lines = [
        "# The paper's MNIST models, trained by adv_jax",
        "",
        f"Made by `{COMMAND}` (run directories under `{runs}/<row>`; "
        "every number below is read from their `metrics.json`).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, 2 CPU cores, jax {jax.__version__}, "
        f"Python {platform.python_version()}. Errors in percent. P1/P2: the two disjoint random "
        "halves of MNIST's training set (data.split_seed=0); train = all 60000. Training: full-batch "
        "L-BFGS until the gradient norm falls below 1e-5 (at most 2000 iterations), as the paper "
        "did, except conv (Adam, 10 epochs, cosine decay, on P1). Loss: mean cross-entropy + "
        "3.0 * lambda * sum(w^2) / k per layer (train.decay_scale, see README). "
        "bottleneck2d is trained and evaluated on digits 0-3 only.",
        "",
        "| row | model | trained on | error P1 | error P2 | error train | error test "
        "| paper train / test | train time (s) | optimizer steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in results.items():
        overrides, paper, table = ROWS[name]
        cfg = adv_jax.load_run(runs / name).config
        label = cfg.model.name + (f"({cfg.model.weight_decay:g})" if cfg.model.name == "fc10" else "")
        paper_cell = f"{paper[0]:g} / {paper[1]:g} ({table})" if paper else table
        lines.append(
            f"| {name} | {label} | {cfg.data.split} | {_pct(m['error/p1'])} | {_pct(m['error/p2'])} "
            f"| {_pct(m['error/full'])} | {_pct(m['error/test'])} | {paper_cell} "
            f"| {m['train/seconds']:.0f} | {m.get('train/steps', '-')} ({cfg.train.optimizer}) |")
    lines += [
        "",
        "Train time is the training itself (compilation included, data loading and evaluation "
        "excluded), measured once, while other jobs shared the two cores unless stated.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/models"))
    parser.add_argument("--out", type=Path, default=Path("results/models.md"))
    parser.add_argument("--only", nargs="*", choices=sorted(ROWS), default=None)
    parser.add_argument("--no-cache", action="store_true", help="retrain even if cached")
    args = parser.parse_args(argv)
    names = args.only or list(ROWS)
    for name in names:
        print(f"== {name}", file=sys.stderr)
        run_row(name, args.runs, cache=not args.no_cache)
    done = {n: json.loads((args.runs / n / "metrics.json").read_text())
            for n in ROWS if (args.runs / n / "metrics.json").exists()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(done, args.runs))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
