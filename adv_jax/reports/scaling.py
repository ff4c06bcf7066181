"""results/scaling.md and results/figures/scaling.png from results/scaling.json (written by
adv_jax/bench/scaling.py through scripts/bench_scaling.py): one table per curve and its fitted
exponent, the least-squares slope of log(seconds) against log(size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from adv_jax.reports import provenance
from adv_jax.reports.tables import markdown

FIGURE = "figures/scaling.png"  # beside the report
EXTRA = {"successes": "successes", "weights": "weights", "cold_seconds": "first call seconds"}  # optional columns


class Curve(NamedTuple):
    title: str
    size: str  # the size column's name
    unit: str  # what the size counts, in the reading
    per: int  # the table's seconds per this many units
    per_label: str  # its column: "seconds per <per_label>"
    about: str  # what one point is


CURVES = {
    "attack_examples": Curve("Attack seconds against examples", "examples", "examples", 1000,
                             "1000 examples", "The L-BFGS attack (`conf/attack/lbfgs.yaml`, random targets) on FC100 "
                             "(P1, from the model cache) over the first N images of the 10000 test "
                             "images followed by the 60000 training images (half of which, P1, it was "
                             "trained on)."),
    "attack_width": Curve("Attack seconds against width", "width w", "width", 100,
                          "100 units of width", "The same attack on the first {examples} test images against 784-w-w-10 "
                          "sigmoid networks trained by Adam for {epochs} epochs on P1 (model cache)."),
    "train_size": Curve("Training seconds against training-set size", "training images", "training images",
                        1000, "1000 images", "`adv_jax.train.train_model` of FC100 (Adam, {epochs} epochs, batch 128) on "
                        "the first N of the 60000 training images, not cached. Every call builds and "
                        "compiles its epoch program afresh, so each time includes one compilation; "
                        "seconds: the median of the calls after a first one (first call: its time)."),
    "bracket_examples": Curve("Bracket seconds against examples", "examples", "examples", 1000,
                              "1000 examples", "The local certified bracket (`lipschitz.bracket_summary`, local=True) on "
                              "FC100's L-BFGS adversarials of the first N pool images (curve 1's), "
                              "successful ones only. It runs in padded chunks of {chunk} images, so below "
                              "that its time is one chunk's."),
}


def fit(sizes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through (log size, log seconds); NaN for
    fewer than two sizes."""
    if len(set(sizes)) < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float)), 1)
    return float(slope), float(intercept)


def exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float:
    """The fitted power: seconds ~ size ** exponent."""
    return fit(sizes, seconds)[0]


def two(value: float) -> str:
    """Two decimals, without a "-0.00"."""
    return f"{value:.2f}".replace("-0.00", "0.00")


def reading(slope: float, unit: str) -> str:
    """'about linear in examples: 1.02' and the like."""
    bands = ((0.15, "about constant"), (0.85, "sublinear"), (1.15, "about linear"),
             (1.85, "between linear and quadratic"), (2.15, "about quadratic"))
    if slope != slope:  # NaN
        return f"not fitted in {unit} (one size)"
    phrase = next((p for top, p in bands if slope < top), "faster than quadratic")
    return f"{phrase} in {unit}: {two(slope)}"


def columns(points: list[dict]) -> tuple[list[float], list[float]]:
    return [p["size"] for p in points], [p["seconds"] for p in points]


def end_slope(points: list[dict]) -> float | None:
    """The slope between the two largest sizes (fixed costs weigh least there)."""
    return exponent(*columns(points[-2:])) if len(points) > 2 else None


def curve_table(name: str, entry: dict[str, Any]) -> list[str]:
    curve, points = CURVES[name], entry["points"]
    extra = [k for k in EXTRA if k in points[0]]
    columns = [curve.size, "seconds", f"seconds per {curve.per_label}", *(EXTRA[k] for k in extra)]
    rows = [[f"{p['size']:,}", f"{p['seconds']:.3f}", f"{p['seconds'] / p['size'] * curve.per:.4f}",
             *(f"{p[k]:,}" if isinstance(p[k], int) else f"{p[k]:.3f}" for k in extra)] for p in points]
    return markdown(columns, rows).splitlines()


def curve_section(name: str, entry: dict[str, Any]) -> list[str]:
    curve, points = CURVES[name], entry["points"]
    lines = [f"## {curve.title}", "", curve.about.format(**entry), "", *curve_table(name, entry), "",
             f"Exponent (all points): **{reading(exponent(*columns(points)), curve.unit)}**."]
    if (end := end_slope(points)) is not None:
        lines[-1] += f" Between the two largest sizes: {two(end)}."
    if name == "attack_width":
        weights = exponent([p["size"] for p in points], [p["weights"] for p in points])
        lines[-1] += (f" The weights (the work of one evaluation) grow with exponent {two(weights)} "
                      "over these widths (784 w + w^2 + 10 w and the biases).")
    return [*lines, ""]


def summary_table(data: dict[str, Any]) -> list[str]:
    rows = []
    for name, entry in data["curves"].items():
        sizes, seconds = columns(entry["points"])
        slope = exponent(sizes, seconds)
        rows.append([CURVES[name].title, f"{min(sizes):,} to {max(sizes):,}", two(slope),
                     reading(slope, CURVES[name].unit).rsplit(":", 1)[0]])
    return markdown(["curve", "sizes", "exponent", "reading"], rows).splitlines()


def report(data: dict[str, Any]) -> str:
    out = provenance.header("How the cost grows: attack, training and bracket seconds against size",
                            data["command"], data["machine"], data.get("date"))
    out += [f"JAX devices: {data['devices']} (one per core, as the main command uses). Each point: the "
            f"median of {data['repeats']} timed calls after an untimed one at the same size. Exponent: "
            "the least-squares slope of log(seconds) against log(size), seconds ~ size^exponent; fixed "
            "costs per call (dispatch, compilation) pull it below the work's own exponent at small sizes. "
            f"Whole measurement: {data['wall_seconds'] / 60:.1f} minutes.", "", *summary_table(data), "",
            f"![scaling]({FIGURE})", ""]
    for name, entry in data["curves"].items():
        out += curve_section(name, entry)
    return "\n".join(out)


def plot(data: dict[str, Any], out: Path) -> Path:
    """Four log-log panels (2 x 2), one per curve: the points, the fitted power law and, for
    comparison, a linear law through the smallest size's point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["curves"])
    fig, axes = plt.subplots(2, (len(names) + 1) // 2, figsize=(10, 7.5), squeeze=False)
    for ax, name in zip(axes.flat, names):
        panel(ax, name, *columns(data["curves"][name]["points"]))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def panel(ax, name: str, sizes: list[float], seconds: list[float]) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    slope, intercept = fit(sizes, seconds)
    line = np.geomspace(min(sizes), max(sizes), 50)
    ax.loglog(sizes, seconds, "o", color="tab:blue", label="measured")
    ax.loglog(line, np.exp(intercept) * line ** slope, "--", color="tab:gray", label=f"fit: exponent {two(slope)}")
    ax.loglog(line, seconds[0] * line / sizes[0], ":", color="tab:orange", label="linear, for comparison")
    ax.set(title=CURVES[name].title, xlabel=CURVES[name].size, ylabel="seconds")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sizes)  # the measured sizes, labelled
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
