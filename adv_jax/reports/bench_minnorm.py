"""results/bench_minnorm.md from the minimum-norm benchmark's numbers (adv_jax/bench/minnorm.py):
every attack's success, distortion, speed and AttackBench's optimality score (`optimality`) per
model and target mode, the summary and, with the config's `select`, the chosen attack.
"""

from __future__ import annotations

import numpy as np

from adv_jax.reports import provenance, settings
from adv_jax.reports.tables import markdown, percent

COLUMNS = ["attack", "evals", "success %", "mean RMS", "median RMS", "ex/s", "optimality"]
FORMULA = [
    "**Optimality** (AttackBench, Cina et al. 2024), per model and target mode over the same N "
    "examples: d_a(i) is attack a's RMS distortion on example i (infinite where it failed); "
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


def table(measured: dict[str, dict]) -> tuple[str, dict[str, float]]:
    """(markdown table of COLUMNS, {attack: optimality}) of one model and target mode."""
    names = list(measured)
    scores = optimality(np.stack([np.asarray(measured[n]["d"], np.float64) for n in names]))
    rows = []
    for name, score in zip(names, scores):
        d, evals = np.asarray(measured[name]["d"], np.float64), measured[name]["evals"]
        fooled = d[np.isfinite(d)]
        rows.append([name, "-" if evals is None else f"{np.mean(evals):.0f}",
                     percent(float(np.isfinite(d).mean()), 1),
                     f"{fooled.mean():.4f}" if fooled.size else "-",
                     f"{np.median(fooled):.4f}" if fooled.size else "-",
                     rate(len(d) / measured[name]["seconds"]), f"{score:.3f}"])
    return markdown(COLUMNS, rows), dict(zip(names, map(float, scores)))


def rate(per_second: float) -> str:
    """Examples per second: whole numbers from 10 up, two significant digits below (0.33, 3.1)."""
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2g}"


def model_lines(label: str, model: dict) -> list[str]:
    """One model's tables, one per target mode."""
    lines = [f"## {label}", "", f"{model['images']} correctly classified {model['split']} images.", ""]
    for mode, measured in model["modes"].items():
        lines += [f"### Targets: {mode}", "", table(measured)[0].rstrip(), ""]
    return lines


def summary(scores: dict[str, dict[str, dict[str, float]]]) -> str:
    """Optimality of every attack (rows) for every model and target mode (columns)."""
    columns = [(label, mode) for label, by_mode in scores.items() for mode in by_mode]
    names = list(next(iter(next(iter(scores.values())).values())))
    rows = [[name, *(f"{scores[label][mode][name]:.3f}" for label, mode in columns)] for name in names]
    return markdown(["attack", *(f"{label}, {mode}" for label, mode in columns)], rows)


def selection(measured: dict[str, dict[str, dict]], max_evals: float) -> list[str]:
    """The config's `select` rule: of the attacks whose mean evaluations per example stay within
    max_evals on every model and target mode, the one with the smallest mean distortion (over the
    fooled examples, averaged over models and modes) among those that fool every example."""
    cells = [by_attack for by_mode in measured.values() for by_attack in by_mode.values()]
    rows, eligible = [], {}
    for name in cells[0]:
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
    missing = [] if measured["foolbox"] or not conf.get("foolbox") else [
        "foolbox is not installed: its rows are left out (`pip install -e '.[bench]'`).", ""]
    head = [*provenance.header(conf["title"], command), *FORMULA, *missing,
            *settings.paragraphs(conf.get("notes")), *chosen, "## Optimality", "", summary(scores).rstrip(), ""]
    sections = [line for label, model in measured["models"].items() for line in model_lines(label, model)]
    return "\n".join(head + sections).rstrip() + "\n"
