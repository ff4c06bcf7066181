"""The Lipschitz comparison plot: bounds and minimum distortion against the varied config key."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from adv_jax.reports.lipschitz_entries import attack_moved, consistent  # noqa: E402


def numeric(value: Any) -> float:
    """A config value as a plot coordinate: a number, or a list's first entry (model.hidden)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else float("nan")
    return float(value) if value is not None else float("nan")


def plot(entries: Sequence[dict], x_key: str, out: Path, title: str | None = None) -> Path:
    """Two panels against x_key: bounds (log scale) | mean minimum distortion and test error."""
    pairs = sorted(((numeric(e["config"].get(x_key)), e) for e in entries), key=lambda p: p[0])
    xs, rows = [x for x, _ in pairs], [e for _, e in pairs]
    fig, (ax_b, ax_d) = plt.subplots(1, 2, figsize=(11, 4.2))
    bounds_panel(ax_b, xs, rows)
    distortion_panel(ax_d, xs, rows)
    for ax in (ax_b, ax_d):
        set_xscale(ax, xs)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def bounds_panel(ax, xs: list[float], rows: list[dict]) -> None:
    for k in range(max(len(e["layers"]) for e in rows)):
        ys = [e["layers"][k]["bound"] if k < len(e["layers"]) else math.nan for e in rows]
        kind = rows[0]["layers"][k]["kind"] if k < len(rows[0]["layers"]) else ""
        ax.plot(xs, ys, "o--", lw=1, label=f"L_{k + 1} ({kind})")
    ax.plot(xs, [e["upper"] for e in rows], "ks-", lw=2, label="product (upper bound)")
    ax.plot(xs, [e["certified"] for e in rows], "D-", color="tab:red", lw=2, label="tightest certified (upper)")
    for name, field, style in (("Jacobian", "jacobian", "v:"), ("pair ratio", "pairs", "^:")):
        # 0: no pairs to measure; above the product: a failed measurement (see `consistent`)
        ys = [e[field] if e[field] and consistent(e, e[field]) else math.nan for e in rows]
        if not all(math.isnan(y) for y in ys):
            ax.plot(xs, ys, style, color="tab:gray", label=f"{name} (lower bound)")
    ax.set_yscale("log")
    ax.set_ylabel("Lipschitz bound (logits per unit L2 input)")
    ax.legend(fontsize=7)


def distortion_panel(ax, xs: list[float], rows: list[dict]) -> None:
    dist = [e["metrics"]["attack/mean_distortion"] if attack_moved(e) else math.nan for e in rows]
    ax.plot(xs, dist, "o-", color="tab:blue")
    ax.set_ylabel("mean minimum distortion (RMS per pixel)", color="tab:blue")
    ax_e = ax.twinx()
    errors = [100 * e["metrics"].get("error/test", math.nan) for e in rows]
    ax_e.plot(xs, errors, "s--", color="tab:red")
    ax_e.set_ylabel("test error %", color="tab:red")
    if min(errors) > 0 and max(errors) / min(errors) > 10:
        ax_e.set_yscale("log")


def set_xscale(ax, xs: list[float]) -> None:
    """Log x for values spanning more than 8x; symlog when a zero sits among them."""
    positive = [x for x in xs if x > 0]
    if not positive or max(positive) / min(positive) < 8:
        return
    if len(positive) == len(xs):
        ax.set_xscale("log")
        if max(positive) / min(positive) < 1000:  # a few octaves: label the data points themselves
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.xaxis.set_minor_formatter(NullFormatter())
    else:  # a zero among positive values (e.g. penalty 0): linear near 0, log beyond
        ax.set_xscale("symlog", linthresh=min(positive))
        ax.set_xlim(-0.3 * min(positive), 1.5 * max(positive))
