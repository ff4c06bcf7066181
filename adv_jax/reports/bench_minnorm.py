"""results/bench_minnorm.md from the minimum-norm benchmark's numbers (adv_jax/bench/minnorm.py):
every attack's success, distortion, speed and AttackBench's optimality score (`optimality`) per
model and target mode, each model in its own unit (per-pixel RMS or per-pixel L-inf); where the
model has exact minima, each attack's mean ratio to them (`exact_ratios`) and their summary; and,
with the config's `select`, the chosen attack.
"""

from __future__ import annotations

import numpy as np

from adv_jax.reports import provenance, settings
from adv_jax.reports.tables import markdown, percent

EXACT = "exact"  # a target mode's key of the exact minima, beside its attacks
UNITS = {"l2": "RMS", "linf": "L-inf"}  # the distance columns' headings
UNIT_NOTES = {"l2": "per-pixel RMS, |x' - x|_2 / 28", "linf": "per-pixel L-inf, max_i |x'_i - x_i|"}
EXACT_METHODS = {"linear": "convex programs, one per target class",
                 "relu_milp": "mixed-integer programs, within a time limit per example"}
FORMULA = [
    "**Optimality** (AttackBench, Cina et al. 2024), per model and target mode over the same N "
    "examples: d_a(i) is attack a's distortion on example i in the model's unit (infinite where "
    "it failed); "
    "d*(i) = min_a d_a(i), the best known distance; D = max_i d*(i); A* = mean_i d*(i); "
    "A_a = mean_i min(d_a(i), D), so a failure counts D; **optimality_a = 1 - (A_a - A*) / (D - A*)**: "
    "1 = the best known distance on every example, 0 = no better than failing everywhere. "
    "Examples no attack fooled are left out of the score.",
    "",
]


def optimality(distances: np.ndarray) -> np.ndarray:
    """AttackBench's optimality of each attack: distances (attacks, N), inf = failed -> (attacks,).
    Examples that every attack failed on are left out; 1.0 for all if D = A* (nothing to gain)."""
    distances = np.asarray(distances, np.float64)
    best = distances.min(0)
    solved = np.isfinite(best)
    if not solved.any():
        return np.full(len(distances), np.nan)
    worst = best[solved].max()
    best_mean = best[solved].mean()
    area = np.minimum(distances[:, solved], worst).mean(1)
    if worst <= best_mean:
        return np.ones(len(distances))
    return 1.0 - (area - best_mean) / (worst - best_mean)


def columns(norm: str, with_exact: bool) -> list[str]:
    """A per-mode table's headings, the distances' unit named in them."""
    unit = UNITS[norm]
    return ["attack", "evals", "success %", f"mean {unit}", f"median {unit}", "ex/s", "optimality",
            *(["/ exact"] if with_exact else [])]


def attacks_of(measured: dict[str, dict]) -> dict[str, dict]:
    """A target mode's attacks: its measurements without the exact minima."""
    return {name: m for name, m in measured.items() if name != EXACT}


def exact_ratios(measured: dict[str, dict]) -> dict[str, float | None] | None:
    """{attack: mean_i d_a(i) / d*(i)} over the examples attack a fooled whose exact minimum d*(i)
    is solved, finite and > 0 (None: no such example); None for a mode without exact minima."""
    if EXACT not in measured:
        return None
    truth = np.asarray(measured[EXACT]["d"], np.float64)
    known = np.asarray(measured[EXACT]["solved"], bool) & np.isfinite(truth) & (truth > 0)
    ratios = {}
    for name, m in attacks_of(measured).items():
        d = np.asarray(m["d"], np.float64)
        both = known & np.isfinite(d)
        ratios[name] = float(np.mean(d[both] / truth[both])) if both.any() else None
    return ratios


def table(measured: dict[str, dict], norm: str = "l2") -> tuple[str, dict[str, float]]:
    """(markdown table of `columns`, {attack: optimality}) of one model and target mode; distances
    in `norm`'s unit, and the "/ exact" column where the mode has exact minima."""
    attacks, ratios = attacks_of(measured), exact_ratios(measured)
    names = list(attacks)
    scores = optimality(np.stack([np.asarray(attacks[n]["d"], np.float64) for n in names]))
    rows = []
    for name, score in zip(names, scores):
        d, evals = np.asarray(attacks[name]["d"], np.float64), attacks[name]["evals"]
        fooled = d[np.isfinite(d)]
        rows.append([name, "-" if evals is None else f"{np.mean(evals):.0f}",
                     percent(float(np.isfinite(d).mean()), 1),
                     f"{fooled.mean():.4f}" if fooled.size else "-",
                     f"{np.median(fooled):.4f}" if fooled.size else "-",
                     rate(len(d) / attacks[name]["seconds"]), f"{score:.3f}",
                     *([] if ratios is None else [ratio_cell(ratios[name])])])
    return markdown(columns(norm, ratios is not None), rows), dict(zip(names, map(float, scores)))


def ratio_cell(ratio: float | None) -> str:
    """A "/ exact" cell: three decimals (ratios sit near 1), "-" where no example counts."""
    return "-" if ratio is None else f"{ratio:.3f}"


def exact_line(exact: dict, norm: str) -> str:
    """What a mode's exact minima are: the method, how many of N were solved (those with no
    adversarial in reach named), their mean over the solved finite ones, the solver's seconds."""
    d, solved = np.asarray(exact["d"], np.float64), np.asarray(exact["solved"], bool)
    known = solved & np.isfinite(d)
    mean = f"{d[known].mean():.4f} {UNITS[norm]}" if known.any() else "-"
    unreachable = int((solved & ~np.isfinite(d)).sum())
    return (f"Exact minimum ({EXACT_METHODS[exact['method']]}): {int(solved.sum())} of {len(d)} "
            f"examples solved{f' ({unreachable} with no adversarial in reach)' if unreachable else ''}, "
            f"mean {mean} over the solved finite ones; the solver took {exact['seconds']:.1f} s.")


def rate(per_second: float) -> str:
    """Examples per second: whole numbers from 10 up, two significant digits below (0.33, 3.1)."""
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2g}"


def model_lines(label: str, model: dict) -> list[str]:
    """One model's tables, one per target mode, each with its exact minima's line where it has them."""
    norm = model.get("norm", "l2")  # files written before models had norms are L2
    lines = [f"## {label}", "", f"{model['images']} correctly classified {model['split']} images. "
             f"Distances: {UNIT_NOTES[norm]}, pixels in [0, 1].", ""]
    for mode, measured in model["modes"].items():
        lines += [f"### Targets: {mode}", "", table(measured, norm)[0].rstrip(), ""]
        if EXACT in measured:
            lines += [exact_line(measured[EXACT], norm), ""]
    return lines


def grid(cells: dict[str, dict[str, str]]) -> str:
    """Attacks (rows, in order of first appearance) by column, from {column: {attack: cell}};
    "-" where a column's model has no such attack (models may have their own lists)."""
    names = list(dict.fromkeys(name for by_attack in cells.values() for name in by_attack))
    rows = [[name, *(by_attack.get(name, "-") for by_attack in cells.values())] for name in names]
    return markdown(["attack", *cells], rows)


def summary(scores: dict[str, dict[str, dict[str, float]]]) -> str:
    """Optimality of every attack (rows) for every model and target mode (columns)."""
    return grid({f"{label}, {mode}": {name: f"{s:.3f}" for name, s in by_attack.items()}
                 for label, by_mode in scores.items() for mode, by_attack in by_mode.items()})


def exact_summary(models: dict[str, dict[str, dict]]) -> list[str]:
    """The "Distortion / exact minimum" section: each attack's `exact_ratios` (rows) for every
    model and target mode with exact minima (columns); none without them."""
    cells = {f"{label}, {mode}": {name: ratio_cell(r) for name, r in exact_ratios(measured).items()}
             for label, by_mode in models.items() for mode, measured in by_mode.items() if EXACT in measured}
    if not cells:
        return []
    return ["## Distortion / exact minimum", "", grid(cells).rstrip(), ""]


def selection(measured: dict[str, dict[str, dict]], max_evals: float) -> list[str]:
    """The config's `select` rule: of the attacks whose mean evaluations per example stay within
    max_evals on every model and target mode, the one with the smallest mean distortion (over the
    fooled examples, averaged over models and modes) among those that fool every example. Only
    attacks measured on every model and mode are judged (models may have their own lists)."""
    cells = [attacks_of(by_attack) for by_mode in measured.values() for by_attack in by_mode.values()]
    rows, eligible = [], {}
    for name in [name for name in cells[0] if all(name in c for c in cells)]:
        evals = [c[name]["evals"] for c in cells]
        worst = max(float(np.mean(e)) for e in evals) if all(e is not None for e in evals) else None
        d = [np.asarray(c[name]["d"], np.float64) for c in cells]
        mean_d = float(np.mean([dist[np.isfinite(dist)].mean() for dist in d]))
        fools_all = all(bool(np.isfinite(dist).all()) for dist in d)
        if worst is not None and worst <= max_evals and fools_all:
            eligible[name] = mean_d
        rows.append([name, "-" if worst is None else f"{worst:.0f}", f"{mean_d:.5f}",
                     "yes" if name in eligible else "no"])
    chosen = min(eligible, key=eligible.get) if eligible else "none"
    return ["## Selection", "", f"Eligible: at most {max_evals:g} evaluations per example (mean, "
            "on every model and target mode) and every example fooled. Chosen: the smallest mean "
            f"distortion among them: **{chosen}**.", "",
            markdown(["attack", "evals (largest mean)", "mean RMS (average over cells)", "eligible"],
                     rows).rstrip(), ""]


def report(conf: dict, measured: dict, command: str) -> str:
    """The markdown of results/bench_minnorm.md from `minnorm.run`'s numbers."""
    models = {label: model["modes"] for label, model in measured["models"].items()}
    scores = {label: {mode: table(m)[1] for mode, m in by_mode.items()} for label, by_mode in models.items()}
    chosen = selection(models, conf["select"]["max_evals"]) if conf.get("select") else []
    missing = [] if not measured.get("foolbox_missing") else [
        "foolbox is not installed: its rows are left out (`pip install -e '.[bench]'`).", ""]
    absent = [e["label"] for e in conf["models"] if e["label"] not in measured["models"]]
    not_measured = [f"Not in this file (in the config, not measured by the runs above): {', '.join(absent)}.",
                    ""] if absent and len(measured.get("commands", [])) > 1 else []
    measured_by = provenance.measured_in_parts(
        {label: model.get("measured_by", command) for label, model in measured["models"].items()}, command)
    machines = {label: model.get("machine") for label, model in measured["models"].items()}
    head = [*provenance.header(conf["title"], command, parts=machines if any(machines.values()) else None), *measured_by, *not_measured, *FORMULA, *missing,
            *settings.paragraphs(conf.get("notes")), *chosen, "## Optimality", "", summary(scores).rstrip(), "",
            *exact_summary(models)]
    sections = [line for label, model in measured["models"].items() for line in model_lines(label, model)]
    return "\n".join(head + sections).rstrip() + "\n"
