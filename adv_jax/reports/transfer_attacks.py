"""results/transfer_attacks.md from transfer-attacks run directories (each with transfer.json):
matrices (mean ± sample std over the runs, i.e. seeds), budget curves, the comparison of every
attack and the ensemble sources with plain PGD at the same budget, and the alignment / boundary
analysis. Every number is read from transfer.json, whose cells
`adv_jax.jobs.transfer_attacks.recompute_cells(run_dir)` recomputes from the saved files.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from adv_jax.figures_transfer import budget_curves, quartile_bars
from adv_jax.reports import provenance
from adv_jax.reports.runs import find_results, read_json
from adv_jax.reports.tables import markdown, mean_std

BASELINE = "pgd"


def find_transfer_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Directories holding transfer.json at or below `paths` (models/ excluded)."""
    return find_results(paths, "transfer.json")


def cell_values(results: list[dict]) -> dict[tuple, dict[str, list[float]]]:
    """(attack, norm, budget, source, target) -> {rate_all, rate_conditional, ...: one value per run}."""
    out: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for res in results:
        for c in res["cells"]:
            key = (c["attack"], c["norm"], c["budget"], c["source"], c["target"])
            for name in ("rate_all", "rate_conditional", "n_conditional", "source_success", "mean_l2"):
                out[key][name].append(c[name])
            out[key]["white_box"] = c["white_box"]
    return out


def cell_text(values: dict, digits: int = 1) -> str:
    """'all (conditional)' rates, each mean ± std over runs."""
    conditional = [v for v in values["rate_conditional"] if v == v]
    tail = f" ({mean_std(conditional, digits=digits)})" if conditional else " (-)"
    return mean_std(values["rate_all"], digits=digits) + tail


def matrix_tables(first: dict, cells: dict, norm: str, budget) -> str:
    """For each attack: source rows x target columns at one budget."""
    parts = []
    for a_key, attack in first["attacks"].items():
        if not any(k[:3] == (a_key, norm, budget) for k in cells):
            continue
        body = [[src["label"], *(cell_text(cells[(a_key, norm, budget, s, t)]) for t in first["models"])]
                for s, src in first["sources"].items()]
        parts.append(f"**{attack['label']}**\n\n" + markdown(["made on \\ fed to", *first["models"].values()], body))
    return "\n".join(parts)


def cross_mean(cells: dict, attack: str, norm: str, budget, rate: str = "rate_all") -> np.ndarray:
    """Per run, the mean rate over the cross (not white-box) cells of one attack and budget."""
    rows = [np.array(v[rate], float) for k, v in cells.items() if k[:3] == (attack, norm, budget) and not v["white_box"]]
    return np.nanmean(np.stack(rows), axis=0) if rows else np.array([np.nan])


def curves_table(first: dict, cells: dict, norm: str, rate: str = "rate_all") -> str:
    """Rows = attacks, columns = budgets: mean cross-transfer rate, mean ± std over runs."""
    budgets = first["budgets"][norm]
    body = [[attack["label"], *(mean_std(cross_mean(cells, a, norm, b, rate)) for b in budgets)]
            for a, attack in first["attacks"].items()]
    return markdown(["attack \\ budget", *(f"{b:g}" for b in budgets)], body)


def baseline_differences(cells: dict, attack: str, norm: str, budget, rate: str) -> np.ndarray:
    """(cross pairs, runs) differences attack - PGD at one budget."""
    diffs = []
    for k, v in cells.items():
        if k[:3] == (attack, norm, budget) and not v["white_box"] and (BASELINE, norm, budget, *k[3:]) in cells:
            diffs.append(np.array(v[rate], float) - np.array(cells[(BASELINE, norm, budget, *k[3:])][rate], float))
    return np.stack(diffs) if diffs else np.zeros((0, 1))


def against_baseline(first: dict, cells: dict, norm: str, rate: str = "rate_all") -> list[str]:
    """Sentences, from the numbers: per attack and budget, on how many cross pairs it is above
    PGD (the mean over runs of the difference exceeds its std), below, or level; the verdict
    'beats' needs more pairs above than below AND a positive mean difference."""
    lines = []
    for a, attack in first["attacks"].items():
        for b in first["budgets"][norm] if a != BASELINE else []:
            d = baseline_differences(cells, a, norm, b, rate)
            if not d.size:
                continue
            spread = d.std(axis=1, ddof=1) if d.shape[1] > 1 else np.zeros(len(d))
            wins, losses = int(np.sum(d.mean(1) > spread)), int(np.sum(d.mean(1) < -spread))
            mean = float(np.nanmean(d))
            verdict = ("beats" if wins > losses and mean > 0 else
                       "is beaten by" if losses > wins and mean < 0 else "is level with")
            lines.append(f"- {norm} {b:g}: {attack['label']} {verdict} PGD: above on {wins}, below on {losses}, "
                         f"level on {len(d) - wins - losses} of {len(d)} cross pairs; mean difference "
                         f"{mean:+.1f} pp (PGD {np.nanmean(cross_mean(cells, BASELINE, norm, b, rate)):.1f}%).")
    return lines


def ensemble_lines(first: dict, cells: dict, norm: str, attack: str = BASELINE) -> list[str]:
    """For each ensemble source and held-out target: its rate against each member's alone."""
    lines = []
    for e, src in first["sources"].items():
        if e in first["models"]:
            continue
        for t in (t for t in first["models"] if t not in src["members"]):
            for b in first["budgets"][norm]:
                ens = np.array(cells[(attack, norm, b, e, t)]["rate_all"])
                best = max(np.mean(cells[(attack, norm, b, m, t)]["rate_all"]) for m in src["members"])
                word = "above" if ens.mean() > best else "not above"
                lines.append(f"- {norm} {b:g}, {src['label']} -> {first['models'][t]}: {mean_std(ens)}%, "
                             f"{word} its best member alone ({best:.1f}%).")
    return lines


def analysis_tables(first: dict, results: list[dict]) -> str:
    """Per ordered model pair: alignment, boundary distances, and transfer by cosine quartile."""
    pairs: dict[tuple, list[dict]] = defaultdict(list)
    for res in results:
        for p in res["analysis"]:
            pairs[(p["source"], p["target"])].append(p)
    models = first["models"]
    body, quart = [], []
    for (s, t), ps in pairs.items():
        name = f"{models[s]} -> {models[t]}"
        col = {k: [p[k] for p in ps] for k in ps[0] if not k.startswith("by_")}
        body.append([name, mean_std(col["mean_cosine"], digits=3), mean_std(col["median_along"], digits=2),
                     mean_std(col["median_random"], digits=2), mean_std(col["random_not_found"]),
                     mean_std(col["median_own"], digits=2), mean_std(col["median_along_over_own"], digits=2),
                     mean_std(col["transfer_rate"])])
        quart.append([name, *(mean_std([p["by_cosine"][q]["rate"] for p in ps]) for q in range(4)),
                      *(mean_std([p["by_along"][q]["rate"] for p in ps]) for q in range(4))])
    return (markdown(["source -> target", "mean grad. cosine", "median dist. along source dir.",
                      "median dist. random dir.", "random dir.: no change within 20 (%)",
                      "median own min. dist.", "median along / own",
                      "transfer rate (%)"], body)
            + "\nTransfer rate (%) per quartile (Q1 lowest) of the gradient cosine, and of the distance "
              "along the source's direction:\n\n"
            + markdown(["source -> target", *(f"cos Q{q}" for q in range(1, 5)),
                        *(f"dist Q{q}" for q in range(1, 5))], quart))


def alignment_lines(results: list[dict]) -> list[str]:
    """Whether alignment and distance predict transfer: quartile contrasts over cross pairs."""
    cos, dist = [], []
    for res in results:
        for p in res["analysis"]:
            if p["source"] != p["target"] and len(p["by_cosine"]) == 4:
                cos.append(p["by_cosine"][3]["rate"] - p["by_cosine"][0]["rate"])
                dist.append(p["by_along"][0]["rate"] - p["by_along"][3]["rate"])
    if not cos:
        return []
    cos, dist = np.array(cos), np.array(dist)
    return [f"- Gradient alignment: the most aligned quartile transfers more than the least aligned in "
            f"{int(np.sum(cos > 0))} of {len(cos)} (pair, seed) cases; mean Q4 - Q1 = {cos.mean():+.1f} pp.",
            f"- Distance along the source's direction: the closest quartile transfers more than the farthest "
            f"in {int(np.sum(dist > 0))} of {len(dist)} cases; mean Q1 - Q4 = {dist.mean():+.1f} pp."]


def report_figures(first: dict, cells: dict, results: list[dict], out_dir: Path) -> dict[str, Path]:
    """Mean-over-runs budget curves per norm and transfer-by-alignment bars, as PNGs in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    for norm, budgets in first["budgets"].items():
        panels: dict[str, dict] = defaultdict(dict)
        for s, src in first["sources"].items():
            for t in (t for t in first["models"] if t not in src["members"]):
                for a, attack in first["attacks"].items():
                    rates = [np.mean(cells[(a, norm, b, s, t)]["rate_all"]) for b in budgets if (a, norm, b, s, t) in cells]
                    if rates:
                        panels[f"{src['label']} -> {first['models'][t]}"][attack["label"]] = (budgets, rates)
        figures[norm] = budget_curves(dict(panels), out_dir / f"transfer_attacks_curves_{norm}.png",
                                      xlabel=f"{norm} budget", title=f"transfer rate vs budget ({norm}), mean over runs")
    bars = defaultdict(list)
    for res in results:
        for p in res["analysis"]:
            if p["source"] != p["target"]:
                bars[f"{first['models'][p['source']]} -> {first['models'][p['target']]}"].append(
                    [q["rate"] for q in p["by_cosine"]])
    if bars:
        figures["alignment"] = quartile_bars({k: np.mean(v, axis=0) for k, v in bars.items()},
                                             out_dir / "transfer_attacks_alignment.png",
                                             xlabel="gradient-cosine quartile", title="transfer rate by alignment")
    return figures


def report(paths: Sequence[str | Path], command: str, run_command: str, notes: Sequence[str],
           figure_dir: Path, link_prefix: str = "figures") -> str:
    """The whole results file (markdown)."""
    runs = find_transfer_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no transfer.json at or below {list(map(str, paths))}")
    results = [read_json(r / "transfer.json", required=True) for r in runs]
    first, cells = results[0], cell_values(results)
    figures = report_figures(first, cells, results, figure_dir)
    lines = provenance.header("Transfer-enhancing attacks and ensemble sources on the cross-training-set models",
                              command)
    lines += [f"Runs: `{run_command}`; {len(runs)} run(s) (seeds {sorted(r['seed'] for r in results)}): "
              + ", ".join(f"`{r}`" for r in runs) + "; job seconds per run (models cached): "
              + ", ".join(f"{r['seconds']:.0f}" for r in results) + ".", "", *notes, ""]
    lines += ["## Clean accuracy (%) on the attacked test images", "",
              markdown(["model", "accuracy"], [[label, mean_std([r["clean_accuracy"][k] for r in results])]
                                               for k, label in first["models"].items()])]
    lines += ["## Transfer rate against the budget", "",
              "Mean over the cross (source, target) pairs, target not among the source's models, of the "
              "rate over all attacked examples; mean ± std over runs.", ""]
    for norm in first["budgets"]:
        lines += [f"### {norm}", "", curves_table(first, cells, norm),
                  "Over the images the source fooled and the target classified correctly when clean:", "",
                  curves_table(first, cells, norm, "rate_conditional"),
                  f"![{norm}]({link_prefix}/{figures[norm].name})", ""]
    for rate, what in (("rate_all", "all attacked images"),
                       ("rate_conditional", "images the source fooled and the target got right when clean")):
        lines += [f"## Against plain PGD at the same budget: rate over {what}", ""]
        for norm in first["budgets"]:
            lines += against_baseline(first, cells, norm, rate)
        lines += [""]
    lines += ["Ensemble sources (PGD from the ensemble vs PGD from each of its members alone, same target):", ""]
    for norm in first["budgets"]:
        lines += ensemble_lines(first, cells, norm)
    lines += ["", "## Matrices", "",
              "Cells: rate over all attacked examples (in brackets: over the examples the source fooled AND the "
              "target classified correctly when clean), percent, mean ± std over runs. Rows made on the "
              "row's source (models, then ensembles); white-box cells (target among the source's models) "
              "are the attack's own success.", ""]
    for norm in first["budgets"]:
        for b in first["budgets"][norm]:
            lines += [f"### {norm} budget {b:g}", "", matrix_tables(first, cells, norm, b)]
    lines += ["### L-BFGS at its own size (no rescaling)", "", matrix_tables(first, cells, "own", None)]
    lines += ["## Why examples transfer", "", analysis_tables(first, results), "", *alignment_lines(results)]
    if "alignment" in figures:
        lines += ["", f"![alignment]({link_prefix}/{figures['alignment'].name})"]
    return "\n".join(lines) + "\n"
