"""results/robustness.md from the robustness benchmark's numbers (adv_jax/bench/robustness.py):
clean error and AutoAttack's robust accuracy per model and budget (mean +- std over seeds), the
PGD sanity check beside it with the cells where AutoAttack was weaker, the accuracy after each of
AutoAttack's stages, and its speed.
"""

from __future__ import annotations

import numpy as np

from adv_jax.reports import provenance, settings
from adv_jax.reports.tables import markdown, mean_std

STAGE_NAMES = {"apgd_ce": "APGD-CE", "apgd_t": "APGD-T", "fab_t": "FAB-T", "square": "Square"}


def budget_name(budget: dict) -> str:
    return f"{'L-inf' if budget['norm'] == 'linf' else 'L2'} {budget['epsilon']:g}"


def per_seed(model: dict, value) -> list[float]:
    """value(seed's measurements) over the model's seeds."""
    return [value(m) for m in model["seeds"].values()]


def accuracy_table(conf: dict, measured: dict, key: str) -> str:
    """Rows: models; columns: clean error (%) and the robust accuracy (%) under `key`'s attack
    (autoattack or pgd) at each budget, mean +- std over seeds."""
    rows = []
    for model in measured["models"].values():
        cells = [mean_std(per_seed(model, lambda m, i=i: 100 * m["budgets"][i][key]))
                 for i in range(len(conf["budgets"]))]
        label = model["label"] if len(model["seeds"]) == len(conf["seeds"]) else \
            f"{model['label']} ({len(model['seeds'])} of {len(conf['seeds'])} seeds)"
        rows.append([label, model["kind"], mean_std(per_seed(model, lambda m: m["clean_error"]), digits=2),
                     *cells])
    return markdown(["model", "training", "clean error %", *map(budget_name, conf["budgets"])], rows)


def weaker_cells(measured: dict) -> tuple[int, int, int]:
    """(cells where AutoAttack left more images robust than PGD, cells in all, images PGD fooled
    that AutoAttack did not), over every model, seed and budget."""
    weaker = cells = images = 0
    for model in measured["models"].values():
        for seed in model["seeds"].values():
            for b in seed["budgets"]:
                cells += 1
                weaker += b["autoattack"] > b["pgd"]
                images += int(np.sum(np.asarray(b["robust"]) & ~np.asarray(b["pgd_robust"])))
    return weaker, cells, images


def stage_table(conf: dict, measured: dict, index: int) -> str:
    """At one budget: each model's accuracy (%) after each AutoAttack stage, mean over seeds."""
    stages = list(next(iter(next(iter(measured["models"].values()))["seeds"].values()))["budgets"][index]["stages"])
    rows = [[model["label"], *[f"{np.mean(per_seed(model, lambda m, s=s: 100 * m['budgets'][index]['stages'][s])):.1f}"
                               for s in stages],
             f"{np.mean(per_seed(model, lambda m: m['budgets'][index]['evals'])):.0f}",
             f"{np.mean(per_seed(model, lambda m: m['budgets'][index]['queries'])):.0f}",
             f"{np.mean(per_seed(model, lambda m: m['budgets'][index]['seconds'])):.0f}"]
            for model in measured["models"].values()]
    heads = ["model", *[f"after {STAGE_NAMES.get(s, s)}" for s in stages], "evals / image", "queries / image",
             "seconds"]
    return f"### {budget_name(conf['budgets'][index])}\n\n" + markdown(heads, rows)


def speed_lines(measured: dict) -> list[str]:
    if not measured.get("speed"):
        return []
    rows = [[measured["models"][name]["label"], budget_name(s["budget"]), s["examples"], f"{s['seconds']:.2f}",
             f"{s['ex_per_s']:.0f}"] for name, s in measured["speed"].items()]
    return ["## Speed", "", "AutoAttack's whole batched run (every stage, on the images still robust), "
            "the median of repeated calls after an untimed one that compiles it, first seed:", "",
            markdown(["model", "budget", "images", "seconds", "ex/s"], rows).rstrip(), ""]


def measured_by_lines(measured: dict, command: str) -> list[str]:
    """The line naming the earlier commands whose measurements were kept (--keep), with what each
    measured: none where every measurement is this command's."""
    by = {f"{model['label']} seed {seed}": m.get("measured_by", command)
          for model in measured["models"].values() for seed, m in model["seeds"].items()}
    return provenance.measured_in_parts(by, command)


def pending_lines(measured: dict) -> list[str]:
    """The models and seeds a run stopped before (--stop-after): a later run with --keep adds them."""
    pending = measured.get("pending") or {}
    if not pending:
        return []
    what = "; ".join(f"{label} seeds {', '.join(map(str, seeds))}" for label, seeds in pending.items())
    return [f"**Not measured yet** (the run stopped at its time limit; a run with `--keep` this file's "
            f".json measures only these): {what}. Tables give the seeds measured.", ""]


def report(conf: dict, measured: dict, command: str) -> str:
    """The markdown of results/robustness.md."""
    weaker, cells, images = weaker_cells(measured)
    sanity = (f"AutoAttack left more images robust than PGD in **{weaker} of {cells}** cells (model, seed, "
              f"budget); {images} images over all cells were fooled by PGD but not by AutoAttack.")
    machines = {f"{model['label']} seed {seed}": m.get("machine")
                for model in measured["models"].values() for seed, m in model["seeds"].items()}
    lines = [*provenance.header(conf["title"], command, parts=machines if any(machines.values()) else None),
             *measured_by_lines(measured, command),
             *pending_lines(measured),
             f"{conf['examples']} test images per model and seed; seeds {conf['seeds']}.", "",
             *settings.paragraphs(conf.get("notes")),
             "## AutoAttack: robust accuracy (%)", "", accuracy_table(conf, measured, "autoattack").rstrip(), "",
             "## Sanity check: PGD, 100 steps x 10 restarts: robust accuracy (%)", "",
             accuracy_table(conf, measured, "pgd").rstrip(), "", sanity, "",
             "## Accuracy (%) after each AutoAttack stage", "", "Mean over seeds; evals: gradient evaluations, "
             "queries: Square's forward passes, per attacked image; seconds: the whole batched run, "
             "compilation included.", ""]
    lines += [line for i in range(len(conf["budgets"])) for line in (stage_table(conf, measured, i).rstrip(), "")]
    return "\n".join(lines + speed_lines(measured)).rstrip() + "\n"
