"""Writes results/adversarial_training.md from finished `experiment=adversarial_training` runs.

    python scripts/sweep.py -m experiment=adversarial_training seed=0,1,2 hydra.sweep.dir=multirun/adversarial_training
    python scripts/report_adversarial_training.py multirun/adversarial_training [--out results/adversarial_training.md]

Per regularizer (mean ± sample std over the runs, i.e. seeds): clean test error, the L-BFGS
attack's success and mean per-pixel RMS distortion on the test set, each layer's Lipschitz upper
bound (adv_jax.lipschitz.layer_table) and their product, training time; then transfer to and from
the weight-decay model (the normally trained FC100-100-10); then the full matrices
(adv_jax.aggregate). Every number is read from the runs' matrix.json and models/<key>/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from adv_jax import lipschitz
from adv_jax.aggregate import aggregate, find_runs
from adv_jax.runner import load_run
from adv_jax.transfer import markdown

REFERENCE = "weight_decay"  # the normally trained model transfer is measured against
PAPER_TEST_ERROR = {"weight_decay": "1.6", "dropout": "~1.3", "input_pool": "< 1.2 (pool)",
                    "layer_pools": "< 1.2 (pool)"}


def _cell(values, digits: int = 2) -> str:
    values = np.asarray(values, float)
    text = f"{values.mean():.{digits}f}"
    return text + (f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else "")


def collect(runs: list[Path]) -> tuple[list[str], dict[str, str], dict[str, dict[str, list]]]:
    """keys, labels, and per key a dict of per-run value lists."""
    results = [json.loads((r / "matrix.json").read_text()) for r in runs]
    keys, labels = results[0]["keys"], dict(zip(results[0]["keys"], results[0]["models"]))
    ref = keys.index(REFERENCE) if REFERENCE in keys else None
    table: dict[str, dict[str, list]] = {k: {} for k in keys}
    for run, res in zip(runs, results):
        noise = {r["source"]: r["errors"] for r in res["rows"] if r["kind"] == "noise"}
        for j, key in enumerate(keys):
            m = res["models_metrics"][key]
            row = table[key]
            layers = lipschitz.layer_table(*_model(run / "models" / key))
            values = {
                "seed": res["seed"],
                "test": 100 * m["error/test"], "train": 100 * m["error/train"],
                "success": 100 * m["attack/success_rate"], "distortion": m["attack/mean_distortion"],
                "bound": float(np.prod([r["bound"] for r in layers])),
                "seconds": m["train/seconds"], "cached": bool(m.get("train/cached", False)),
                **{f"layer{r['index']}": r["bound"] for r in layers},
            }
            if ref is not None:
                values["to_ref"] = res["matrix"][j][ref]  # ref model on this model's adversarials
                values["from_ref"] = res["matrix"][ref][j]  # this model on ref's adversarials
                values["noise_ref"] = noise[j][ref]  # ref model on matched-stddev noise
            for name, value in values.items():
                row.setdefault(name, []).append(value)
    return keys, labels, table


def _model(run_dir: Path):
    run = load_run(run_dir)
    return run.model, run.params, run.model.input_shape


def report(paths: list[Path]) -> str:
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no finished experiment (matrix.json) under {[str(p) for p in paths]}")
    keys, labels, table = collect(runs)
    layer_names = sorted(k for k in table[keys[0]] if k.startswith("layer"))
    body = [[labels[k], PAPER_TEST_ERROR.get(k, "-"), _cell(table[k]["test"]),
             " / ".join(f"{v:.2f}" for v in table[k]["test"]), _cell(table[k]["train"]),
             _cell(table[k]["success"], 1), _cell(table[k]["distortion"], 4),
             *(_cell(table[k][n], 3) for n in layer_names), _cell(table[k]["bound"], 1),
             _cell(table[k]["seconds"], 0)] for k in keys]
    main = markdown(["model", "paper test err.", "test error", "per seed", "train error",
                     "L-BFGS success", "min. distortion", *(f"L{n[5:]}" for n in layer_names),
                     "L product", "train s"], body)
    parts = [f"Runs: {', '.join(f'`{r}`' for r in runs)} (seeds "
             f"{table[keys[0]]['seed']}). Errors in percent; distortion = mean per-pixel RMS of the "
             "successful L-BFGS adversarials of all 10000 test images (random wrong target); "
             "L<i> = layer i's Lipschitz upper bound ||W_i|| x activation slope; train s = training "
             "wall seconds on the shared 2-core machine (compilation included).\n", main]
    if "to_ref" in table[keys[0]]:
        ref = labels[REFERENCE]
        rows = [[labels[k], _cell(table[k]["to_ref"], 1), _cell(table[k]["noise_ref"], 1),
                 _cell(table[k]["from_ref"], 1)] for k in keys if k != REFERENCE]
        parts += [f"\nTransfer with the normally trained model ({ref}): error (percent) of the "
                  f"{ref} model on each model's adversarials, of the same model on Gaussian noise "
                  f"of the same stddev, and of each model on the {ref} model's adversarials:\n",
                  markdown(["model", f"its adversarials -> {ref}", f"matched noise -> {ref}",
                            f"{ref}'s adversarials -> it"], rows)]
    text, _ = aggregate(paths, with_paper=False)
    return "\n".join(parts) + "\n\n" + text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="experiment run or sweep directories")
    parser.add_argument("--out", type=Path, help="markdown file (default: print only)")
    parser.add_argument("--note", action="append", default=[], help="a paragraph under the title")
    args = parser.parse_args(argv)
    command = ("python scripts/report_adversarial_training.py " + " ".join(map(str, args.paths))
               + (f" --out {args.out}" if args.out else "")
               + (" --note ... (the paragraphs below)" if args.note else ""))
    text = "\n".join(["# Adversarial training with a refreshed pool (paper section 4.2)", "",
                      f"Tables generated by `{command}`.", "", *sum(([n, ""] for n in args.note), []),
                      report(args.paths)])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
