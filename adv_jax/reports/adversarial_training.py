"""results/adversarial_training_regularizers.md from finished `experiment=adversarial_training` runs.

Per regularizer (mean ± sample std over the runs, i.e. seeds): clean test error, the L-BFGS
attack's success and mean per-pixel RMS distortion on the test set, each layer's Lipschitz upper
bound and their product, training time; then transfer to and from the reference model (the
normally trained FC100-100-10); then the full matrices (`aggregate`). Every number is read from
the runs' matrix.json and models/<key>/, except the per-layer bounds, which the study does not
store: adv_jax/bench/layer_bounds.py computes them from the models' params beforehand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from adv_jax.reports import paper, provenance, settings
from adv_jax.reports.aggregate import aggregate
from adv_jax.reports.runs import find_studies, read_json
from adv_jax.reports.tables import markdown, mean_std
from adv_jax.run_files import MATRIX_FILE, MODELS_DIR
from adv_jax.transfer_rows import reads_as

# How the paper states each of its numbers (section 4.2): an upper bound, about, or exactly.
PAPER_FORMS = {"pool": "< {:g}", "dropout": "about {:g}", "weight_decay": "{:g}"}


def paper_cell(key: str, paper_keys: dict[str, str]) -> str:
    name = paper_keys.get(key)
    return "-" if name is None else PAPER_FORMS[name].format(paper.ADVERSARIAL_TRAINING_TEST_ERROR[name])


def model_values(metrics: dict, bounds: dict | None) -> dict[str, float]:
    """One trained model's numbers: errors (percent), attack, training time and, when measured
    (adv_jax/bench/layer_bounds.py), per-layer bounds and their product."""
    layers = {} if bounds is None else {"bound": bounds["product"],
                                         **{f"layer{i}": b for i, b in enumerate(bounds["layers"])}}
    return {"test": 100 * metrics["error/test"], "train": 100 * metrics["error/train"],
            "success": 100 * metrics["attack/success_rate"], "distortion": metrics["attack/mean_distortion"],
            "seconds": metrics["train/seconds"], **layers}


def collect(runs: Sequence[Path], reference: str,
            bounds: dict[str, dict]) -> tuple[list[str], dict[str, str], dict[str, dict[str, list]]]:
    """keys, labels, and per key a dict of per-run value lists (transfer columns when the runs
    hold the `reference` model); bounds: {model directory: its layer bounds}, all or none."""
    results = [read_json(r / MATRIX_FILE, required=True) for r in runs]
    keys, labels = results[0]["keys"], dict(zip(results[0]["keys"], results[0]["models"]))
    ref = keys.index(reference) if reference in keys else None
    table: dict[str, dict[str, list]] = {k: {} for k in keys}
    for run, res in zip(runs, results):
        noise = {r["source"]: r["errors"] for r in res["rows"] if r["kind"] == "noise" and reads_as(r)}
        for j, key in enumerate(keys):
            values = {"seed": res["seed"],
                      **model_values(res["models_metrics"][key], bounds.get(str(run / MODELS_DIR / key)))}
            if ref is not None:
                values["to_ref"] = res["matrix"][j][ref]  # ref model on this model's adversarials
                values["from_ref"] = res["matrix"][ref][j]  # this model on ref's adversarials
                values["noise_ref"] = noise[j][ref]  # ref model on matched-stddev noise
            for name, value in values.items():
                table[key].setdefault(name, []).append(value)
    return keys, labels, table


def main_table(keys, labels, table, paper_keys: dict[str, str]) -> str:
    layer_names = sorted(k for k in table[keys[0]] if k.startswith("layer"))
    bound = ["bound"] if "bound" in table[keys[0]] else []  # the product, with the layers
    body = [[labels[k], paper_cell(k, paper_keys), mean_std(table[k]["test"], digits=2),
             " / ".join(f"{v:.2f}" for v in table[k]["test"]), mean_std(table[k]["train"], digits=2),
             mean_std(table[k]["success"]), mean_std(table[k]["distortion"], digits=4),
             *(mean_std(table[k][n], digits=3) for n in layer_names), *(mean_std(table[k][n]) for n in bound),
             mean_std(table[k]["seconds"], digits=0)] for k in keys]
    return markdown(["model", "paper test err.", "test error", "per seed", "train error",
                     "L-BFGS success", "min. distortion", *(f"L{n[5:]}" for n in layer_names),
                     *(["L product"] if bound else []), "train s"], body)


def transfer_table(keys, labels, table, reference: str) -> str:
    ref = labels[reference]
    rows = [[labels[k], mean_std(table[k]["to_ref"]), mean_std(table[k]["noise_ref"]),
             mean_std(table[k]["from_ref"])] for k in keys if k != reference]
    return (f"Transfer with the normally trained model ({ref}): error (percent) of the {ref} model "
            f"on each model's adversarials, of the same model on Gaussian noise of the same stddev, "
            f"and of each model on the {ref} model's adversarials:\n\n"
            + markdown(["model", f"its adversarials -> {ref}", f"matched noise -> {ref}",
                        f"{ref}'s adversarials -> it"], rows))


def report(paths: Sequence[Path], command: str, conf: dict, bounds: dict[str, dict] | None = None) -> str:
    """The whole results file: header, notes of `conf`, the tables, then `aggregate`'s. bounds:
    adv_jax/bench/layer_bounds.py's `of_studies` (None, or one model missing: no bound columns,
    and a line that says so)."""
    runs = find_studies(paths)
    if not runs:
        raise FileNotFoundError(f"no finished experiment (matrix.json) under {[str(p) for p in paths]}")
    dirs = [str(r / MODELS_DIR / k) for r in runs for k in read_json(r / MATRIX_FILE, required=True)["keys"]]
    bounds = bounds if bounds is not None and all(d in bounds for d in dirs) else {}
    keys, labels, table = collect(runs, conf["reference"], bounds)
    parts = [*provenance.header(conf["title"], command), *settings.paragraphs(conf.get("notes")),
             f"Runs: {', '.join(f'`{r}`' for r in runs)} (seeds {table[keys[0]]['seed']}). Errors in "
             "percent; distortion = mean per-pixel RMS of the successful L-BFGS adversarials of the "
             "test images (random wrong target); L<i> = layer i's Lipschitz upper bound ||W_i|| x "
             "activation slope; train s = training wall seconds, compilation included, on the "
             "machine that ran it.", "", main_table(keys, labels, table, conf["paper"])]
    if not bounds:
        parts += ["Per-layer bounds missing (`python scripts/report_adversarial_training.py` computes them).", ""]
    if "to_ref" in table[keys[0]]:
        parts += [transfer_table(keys, labels, table, conf["reference"])]
    return "\n".join(parts) + "\n" + aggregate(paths, with_paper=False)[0] + "\n"
