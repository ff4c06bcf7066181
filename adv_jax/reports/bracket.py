"""results/bracket.md from the bracket's measurements (adv_jax/bench/bracket.py): per model the
certified, exact and attacked minimum distortions of the same examples, their means and ratios,
the violations (none may occur), and the gap curves as a table and a figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adv_jax.reports import provenance, settings
from adv_jax.reports.tables import fmt, markdown, percent

# Relative slack before a crossing counts: float64 bounds against float32 attacks; an exact
# minimum solved to a relative and an absolute gap (the model's "exact_gap", "exact_abs_gap") may
# sit that far above the truth, so an attack may sit below it by as much.
TOLERANCE = 1e-6
# An attack's image is float32: each pixel is known to half an ulp at 1, 2^-24, so its distance
# (per-pixel RMS or L-inf) is only known to that much, absolutely; it matters only for minima near 0.
FLOAT32_PIXEL = 2.0**-24
UNITS = {"l2": "per-pixel RMS", "linf": "L-inf"}
BEST = "best of these"  # the summary's last row where a model has several methods
SUMMARY = ["model", "distance", "N", "certified: method", "certified mean", "exact mean (solved)",
           "attacked mean", "attacked / exact", "exact / certified", "attacked / certified", "violations"]


def _mean(values: np.ndarray, keep: np.ndarray) -> float | None:
    return float(values[keep].mean()) if keep.any() else None


def _ratio(top: np.ndarray, bottom: np.ndarray, keep: np.ndarray) -> float | None:
    """The mean per-example ratio top / bottom over `keep` where both are finite and bottom > 0."""
    keep = keep & np.isfinite(top) & np.isfinite(bottom) & (bottom > 0)
    return float((top[keep] / bottom[keep]).mean()) if keep.any() else None


def violations(model: dict, bound) -> int:
    """Crossings of one certified side (bound (N,)): examples where it is above the exact minimum
    or the attacked distance, or where an attack is below the exact minimum."""
    attacked, exact = np.asarray(model["attacked"], np.float64), _exact(model)
    bound = np.asarray(bound, np.float64)
    count = int(np.sum(bound > attacked * (1 + TOLERANCE)))
    if exact is not None:
        count += int(np.sum(bound > exact * (1 + TOLERANCE)))  # NaN (unsolved) compares False
        slack = exact * (model.get("exact_gap", 0.0) + 1e-5) + model.get("exact_abs_gap", 0.0) + FLOAT32_PIXEL
        count += int(np.sum(attacked < exact - slack))
    return count


def _exact(model: dict) -> np.ndarray | None:
    """Exact minima (N,), NaN where unsolved; None without an exact column."""
    if model["exact"] is None:
        return None
    return np.where(np.asarray(model["solved"], bool), np.asarray(model["exact"], np.float64), np.nan)


def best_bound(model: dict) -> np.ndarray:
    """(N,) each example's largest certified bound over the methods (every one is a bound)."""
    return np.max(np.stack([np.asarray(b, np.float64) for b in model["certified"].values()]), axis=0)


def summary_rows(label: str, model: dict) -> list[list[str]]:
    """One row per certified method, and one for each example's best of them where there are
    several: means over the examples some attack fooled."""
    attacked, exact = np.asarray(model["attacked"], np.float64), _exact(model)
    fooled = np.isfinite(attacked)
    solved = "-" if exact is None else f"{fmt(_mean(exact, fooled & np.isfinite(exact)), 4)} ({int(np.isfinite(exact).sum())}/{len(attacked)})"
    methods = dict(model["certified"])
    if len(methods) > 1:
        methods[BEST] = best_bound(model)
    rows = []
    for method, bound in methods.items():
        bound = np.asarray(bound, np.float64)
        rows.append([label, UNITS[model["norm"]], str(len(attacked)), method, fmt(_mean(bound, fooled), 4), solved,
                     fmt(_mean(attacked, fooled), 4),
                     "-" if exact is None else fmt(_ratio(attacked, exact, fooled), 4),
                     "-" if exact is None else fmt(_ratio(exact, bound, fooled), 3),
                     fmt(_ratio(attacked, bound, fooled), 3), str(violations(model, bound))])
    return rows


def curves(model: dict, radii: list[float]) -> list[list[str]]:
    """Rows per radius r: % of examples certified robust at r (every method's best bound > r),
    % of the solved examples whose exact minimum is > r, % no attack fooled within r."""
    best = best_bound(model)
    attacked, exact = np.asarray(model["attacked"], np.float64), _exact(model)
    rows = []
    for r in radii:
        rows.append([fmt(r, 3), percent(float(np.mean(best > r)), 1),
                     "-" if exact is None else percent(float(np.mean(exact[np.isfinite(exact)] > r)), 1),
                     percent(float(np.mean(attacked > r)), 1)])
    return rows


def plot(measured: dict[str, dict], path: Path) -> None:
    """One panel per model: the three robust fractions against the radius -> path (its folder made)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(measured), figsize=(4 * len(measured), 3.4), squeeze=False)
    for ax, (label, model) in zip(axes[0], measured.items()):
        attacked = np.asarray(model["attacked"], np.float64)
        top = np.nanmax(attacked[np.isfinite(attacked)]) if np.isfinite(attacked).any() else 1.0
        r = np.linspace(0, top, 200)
        best = best_bound(model)
        ax.plot(r, [np.mean(best > v) for v in r], label="certified (best bound)")
        exact = _exact(model)
        if exact is not None:
            solved = exact[np.isfinite(exact)]
            ax.plot(r, [np.mean(solved > v) for v in r], label="exact (solved examples)")
        ax.plot(r, [np.mean(attacked > v) for v in r], label="not fooled by any attack")
        ax.set(title=label, xlabel=f"radius ({UNITS[model['norm']]})", ylabel="fraction robust", ylim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(conf: dict, measured: dict[str, dict], command: str, figure_link: str | None,
           measured_by: dict[str, str] | None = None) -> str:
    """The markdown; figure_link: the figure's path relative to the results file; measured_by:
    model -> the command that measured it, where `command` only reported or kept it (--measured,
    --keep)."""
    machines = {label: model.get("machine") for label, model in measured.items()}
    lines = provenance.header(conf["title"], command, parts=machines if any(machines.values()) else None)
    lines += provenance.measured_in_parts(measured_by or {}, command)
    lines += settings.paragraphs(conf.get("notes"))
    lines += ["## Summary", "", markdown(SUMMARY, [row for label, m in measured.items() for row in summary_rows(label, m)]), ""]
    if figure_link is not None:
        lines += [f"![gap curves]({figure_link})", ""]
    for label, model in measured.items():
        lines += [f"## {label}", "", f"{model['images']} correctly classified {model['split']} images; distances "
                  f"{UNITS[model['norm']]}; certification took "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in model["seconds"].items()) + ".", "",
                  markdown(["radius", "certified robust %", "exactly robust %", "not fooled %"],
                           curves(model, conf["radii"][model["norm"]])), ""]
    return "\n".join(lines)


def to_save(command: str, measured: dict, measured_by: dict[str, str] | None = None) -> dict:
    """The bracket's .json: the command that wrote it, each model's measurements and the command
    that measured each (`command` but for models kept from an earlier run's .json)."""
    by = {label: (measured_by or {}).get(label, command) for label in measured}
    return {"command": command, "models": measured, "measured_by": by}


def saved(data: dict) -> tuple[dict, dict[str, str]]:
    """(model -> measurements, model -> the command that measured it) of a saved .json
    (`to_save`); a file without per-model commands was measured by its "command", one of the
    first layout (the models alone) by the plain command."""
    if "models" in data:
        return data["models"], data.get("measured_by") or {label: data["command"] for label in data["models"]}
    plain = provenance.command("scripts/bracket.py", [], provenance.MNIST_ENV)
    return data, {label: plain for label in data}


def kept_with(kept: dict, kept_by: dict[str, str], fresh: dict, command: str) -> tuple[dict, dict[str, str]]:
    """An earlier run's models (`saved`) with `fresh` measurements by `command` in place of the
    ones they re-measure (new ones last) -> (measured, measured_by)."""
    measured = {**kept, **fresh}
    return measured, {label: command if label in fresh else kept_by[label] for label in measured}
