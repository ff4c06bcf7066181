"""results/transfer_benchmark.md from transfer-benchmark run directories (benchmark.json each, one
per seed): the summary by scenario (cross-training-set, cross-architecture, robust victim) with
imperceptibility and evaluations beside every rate, the compute-matched table, the surrogate x
victim x attack blocks in TransferAttack's layout, and conclusions computed from those numbers.
Every cell is read from benchmark.json, which `adv_jax.jobs.transfer_benchmark.recompute_cells`
recomputes from the saved adversarials and models.

Cells: success (%) over all attacked images, mean ± sample std over seeds; [±h]: the mean
half-width of the per-seed 95% bootstrap intervals over images.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from adv_jax.reports import provenance
from adv_jax.reports.runs import find_results, read_json
from adv_jax.reports.tables import markdown, mean_std

BASELINES = ("pgd", "mi_fgsm")
SCENARIOS = ("cross-training-set", "cross-architecture", "robust victim")
FILTERS = {"all": "all images", "correct": "images every model classifies correctly"}


def find_benchmark_runs(paths: Sequence[str | Path]) -> list[Path]:
    return find_results(paths, "benchmark.json")


def half_width(rate: dict) -> float:
    return (rate["high"] - rate["low"]) / 2


def cell_text(rates: list[float], widths: list[float]) -> str:
    """'mean ± std [±h]' over seeds (h: the mean bootstrap half-width)."""
    if not rates or any(r != r for r in rates):
        return "-"
    return f"{mean_std(rates)} [±{np.mean(widths):.1f}]"


def by_cell(results: list[dict]) -> dict[tuple, list[dict]]:
    """(table, surrogate, attack, norm, budget, victim) -> that cell of each seed."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for res in results:
        for c in res["cells"]:
            out[(c["table"], c["surrogate"], c["attack"], c["norm"], c["budget"], c["victim"])].append(c)
    return out


def scenario_means(result: dict, table: str, which: str,
                   surrogates: set[str] | None = None) -> dict[tuple, dict[str, float]]:
    """One seed: (attack, norm, budget, family kind, scenario) -> mean success and half-width over
    that scenario's (surrogate, victim) cells (of `surrogates` only, when given); kind "ensemble"
    for ensemble surrogates."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    ensembles = {k for k, s in result["surrogates"].items() if len(s["members"]) > 1}
    for c in result["cells"]:
        if c["table"] == table and (surrogates is None or c["surrogate"] in surrogates):
            kind = "ensemble" if c["surrogate"] in ensembles else "model"
            groups[(c["attack"], c["norm"], c["budget"], kind, c["scenario"])].append(c)
    return {k: {"rate": float(np.mean([c[which]["rate"] for c in v])),
                "width": float(np.mean([half_width(c[which]) for c in v])),
                **{m: float(np.mean([c[m] for c in v])) for m in ("l2", "linf", "ssim", "evals")}}
            for k, v in groups.items()}


def family_rows(first: dict, kind: str) -> list[tuple[str, str]]:
    """(family, attack) in the protocol's order for model or ensemble surrogates."""
    rows = [(f, a) for f, names in first["families"].items() for a in names]
    return [(f, a) for f, a in rows if (f == "ensemble strategies") == (kind == "ensemble")]


def summary_table(results: list[dict], table: str, norm: str, budget: float, kind: str, which: str) -> str:
    """Rows: attacks by family; columns: each scenario's mean success, then evaluations per image
    and the imperceptibility of the sets (mean L2, L-inf, SSIM)."""
    per_seed = [scenario_means(r, table, which) for r in results]
    body = []
    for family, attack in family_rows(results[0], kind):
        got = [[s.get((attack, norm, budget, kind, sc)) for s in per_seed] for sc in SCENARIOS]
        if not any(v for column in got for v in column):
            continue
        cells = [cell_text([v["rate"] for v in column if v], [v["width"] for v in column if v]) for column in got]
        any_seed = next(v for column in got for v in column if v)
        body.append([family, attack, *cells, f"{any_seed['evals']:.0f}", f"{any_seed['l2']:.2f}",
                     f"{any_seed['linf']:.3f}", f"{any_seed['ssim']:.3f}"])
    return markdown(["family", "attack", *SCENARIOS, "evals / image", "L2", "L-inf", "SSIM"], body)


def surrogate_block(results: list[dict], cells: dict, surrogate: str, norm: str, budget: float) -> str:
    """TransferAttack's layout: rows attacks grouped by family, columns victims (fixed table)."""
    first = results[0]
    kind = "ensemble" if len(first["surrogates"][surrogate]["members"]) > 1 else "model"
    body = []
    for family, attack in family_rows(first, kind):
        row = [cells.get(("fixed", surrogate, attack, norm, budget, v), []) for v in first["models"]]
        if not any(row):
            continue
        body.append([family, attack, *(cell_text([c["all"]["rate"] for c in seeds],
                                                 [half_width(c["all"]) for c in seeds]) for seeds in row)])
    labels = [m["label"] for m in first["models"].values()]
    return markdown(["family", "attack", *labels], body)


def scenario_value(results: list[dict], table: str, attack: str, norm: str, budget: float, scenario: str,
                   which: str = "all", surrogates: list[set[str]] | None = None) -> np.ndarray:
    """Per seed: the attack's mean success over one scenario's cells (model surrogates; per seed
    those of `surrogates[seed index]` only, when given)."""
    means = [scenario_means(r, table, which, surrogates[i] if surrogates else None).get(
        (attack, norm, budget, "model", scenario)) for i, r in enumerate(results)]
    return np.array([m["rate"] for m in means if m])


def surrogates_of(result: dict, table: str, attack: str) -> set[str]:
    """The surrogates an attack ran on (those it applies to)."""
    return {c["surrogate"] for c in result["cells"] if c["table"] == table and c["attack"] == attack}


def verdict(results: list[dict], table: str, attack: str, norm: str, budget: float,
            scenario: str = "cross-architecture") -> tuple[float, str] | None:
    """The attack's cross-architecture success minus the better baseline's on the same cells (the
    surrogates the attack applies to), per seed, then mean; and 'beats' / 'loses to' / 'ties
    with': decided where the mean difference exceeds both twice its std over seeds and the mean
    95% bootstrap half-width of one cell (conservative: a scenario's cells share their images).
    None where the attack or a baseline has no such cell."""
    same = [surrogates_of(r, table, attack) for r in results]
    base = np.max([scenario_value(results, table, b, norm, budget, scenario, surrogates=same) for b in BASELINES],
                  axis=0)
    value = scenario_value(results, table, attack, norm, budget, scenario)
    if len(value) != len(results) or np.shape(base) != value.shape:
        return None
    diff = value - base
    widths = [scenario_means(r, table, "all")[(attack, norm, budget, "model", scenario)]["width"] for r in results]
    margin = max(2 * diff.std(ddof=1) if len(diff) > 1 else 0.0, float(np.mean(widths)))
    word = "beats" if diff.mean() > margin else "loses to" if diff.mean() < -margin else "ties with"
    return float(diff.mean()), word


def conclusions(results: list[dict], table: str, norm: str, budget: float) -> list[str]:
    """Which attacks beat the better of PGD and MI-FGSM cross-architecture, and how much harder
    cross-architecture transfer is than cross-training-set transfer."""
    lines, by_word = [], defaultdict(list)
    for family, attack in family_rows(results[0], "model"):
        if family == "baselines":
            continue
        if (found := verdict(results, table, attack, norm, budget)) is not None:
            lines.append(f"{attack} ({family}) {found[1]} the better baseline ({found[0]:+.1f} points)")
            by_word[found[1]].append(attack)
    summary = "; ".join(f"{word}: {', '.join(names)}" for word, names in by_word.items() if word != "ties with")
    lines.insert(0, f"**{summary or 'none beats or loses to the better baseline'}** "
                    f"({len(by_word['ties with'])} tie)")
    for b in BASELINES:
        rates = {sc: scenario_value(results, table, b, norm, budget, sc) for sc in SCENARIOS}
        line = f"{b}'s mean success: " + ", ".join(f"{sc} {v.mean():.1f}%" for sc, v in rates.items() if len(v))
        across, within = rates["cross-architecture"], rates["cross-training-set"]
        if len(across) and len(within) and within.mean() > 0:
            line += f"; cross-architecture / cross-training-set = {across.mean() / within.mean():.2f}"
        lines.append(line)
    return lines


def norms(budgets: dict) -> list[str]:
    """The budgets' norms, L-inf first."""
    return sorted(budgets, key=lambda n: n != "linf")


def timing_table(results: list[dict]) -> str:
    """Per table, surrogate and family: its one program's compile seconds (the seed that compiled
    it: the most), run seconds (median over seeds) and the gradient evaluations per image it spent
    over all its rows and budgets."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        for t in r.get("timing", []):
            if t["run"] is not None:  # None: read back from an interrupted attempt, not timed
                groups[(t["table"], t["surrogate"], t["family"])].append(t)
    body = [[*key, f"{np.max([t['compile'] for t in ts]):.1f}", f"{np.median([t['run'] for t in ts]):.1f}",
             str(ts[0]["evals_per_image"])] for key, ts in groups.items()]
    total = [["all", "", "", f"{sum(float(b[3]) for b in body):.0f}", f"{sum(float(b[4]) for b in body):.0f}", ""]]
    return markdown(["table", "surrogate", "family", "compile (s)", "run (s)", "evals / image"], body + total)


def job_seconds(result: dict) -> str:
    """The job's seconds after its models were ready (trained or read from the cache: not timed
    here), and how many families it read back from an interrupted attempt (their cost is not in it)."""
    timing = result.get("timing", [])
    read_back = sum(t["run"] is None for t in timing)
    text = f"{result['seconds'] - result.get('models_seconds', 0.0):.0f}"
    return text + (f" (seed {result['seed']}: a resumed attempt that read back {read_back} of its {len(timing)} "
                   "families, so not their cost)" if read_back else "")


def clean_table(results: list[dict]) -> str:
    first = results[0]
    body = [[m["label"], m["model"], m["split"], mean_std([r["models"][k]["clean_accuracy"] for r in results])]
            for k, m in first["models"].items()]
    return markdown(["model", "architecture", "split", "clean accuracy (%) on the attacked images"], body)


def report(paths: Sequence[str | Path], command: str, run_command: str, notes: Sequence[str]) -> str:
    """The whole results file (markdown)."""
    runs = find_benchmark_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no benchmark.json at or below {list(map(str, paths))}")
    results = [read_json(r / "benchmark.json", required=True) for r in runs]
    first, cells = results[0], by_cell(results)
    budgets = first["protocol"]["budgets"]
    lines = provenance.header("A fair transfer benchmark on an MNIST architecture zoo", command)
    lines += [f"Runs: `{run_command}`; {len(runs)} seed(s) {sorted(r['seed'] for r in results)}, "
              f"{first['num_examples']} test images each, of which every model classifies "
              + ", ".join(str(r["num_correct"]) for r in results) + " correctly; job seconds per seed "
              "once its models are ready: " + ", ".join(job_seconds(r) for r in results) + ".", "", *notes, ""]
    lines += ["## Models", "", clean_table(results), ""]
    lines += ["## Conclusions", "", "Computed from the summary tables below (cross-architecture success, "
              "model surrogates, all images; the better of PGD and MI-FGSM as the baseline).", ""]
    for table in ("fixed", "matched"):
        if any(c["table"] == table for c in first["cells"]):
            for norm in norms(budgets):
                for budget in budgets[norm][:1] if table == "matched" else budgets[norm]:
                    lines += [f"**{table}, {norm} {budget:g}:**", ""]
                    lines += [f"- {line}" for line in conclusions(results, table, norm, budget)] + [""]
    for table, title in (("fixed", "Summary: T = {steps} for every attack"),
                         ("matched", "Compute-matched: {evals} gradient evaluations per image")):
        if not any(c["table"] == table for c in first["cells"]):
            continue
        protocol = first["protocol"]
        lines += [f"## {title.format(steps=protocol['steps'], evals=protocol['matched_evals'])}", ""]
        for which, what in FILTERS.items():
            for norm in norms(budgets):
                for budget in (budgets[norm][:1] if table == "matched" else budgets[norm]):
                    for kind in ("model", "ensemble"):
                        text = summary_table(results, table, norm, budget, kind, which)
                        if text.count("\n") > 2:
                            lines += [f"### {norm} {budget:g}, {kind} surrogates, {what}", "", text]
    lines += ["## Surrogate x victim x attack", "",
              "Fixed table, all images; rows made on the block's surrogate, columns the victims.", ""]
    for surrogate, s in first["surrogates"].items():
        for norm in norms(budgets):
            for budget in budgets[norm]:
                lines += [f"### {s['label']}: {norm} {budget:g}", "",
                          surrogate_block(results, cells, surrogate, norm, budget)]
    lines += ["## Time", "", f"Seconds of each family's one compiled program ({first['num_examples']} images): compile "
              "seconds where a seed compiled it (later seeds in the same process reuse the program), run "
              "seconds the median over seeds. "
              "Job seconds per seed once its models are ready (trained or read from the cache): "
              + ", ".join(job_seconds(r) for r in results) + ".",
              "", timing_table(results), ""]
    skipped = {(k, a): why for r in results for k, v in r["skipped"].items() for a, why in v.items()}
    if skipped:
        lines += ["## Attacks that do not apply", ""]
        lines += [f"- {a} on {k}: {why}" for (k, a), why in sorted(skipped.items())]
    return "\n".join(lines) + "\n"
