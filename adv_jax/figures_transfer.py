"""The transfer-matrix heatmap (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def transfer_heatmap(row_names: Sequence[str], column_names: Sequence[str], percent: np.ndarray,
                     path: str | Path, *, title: str = "") -> Path:
    """Rows = example sets ("made for"), columns = models ("fed to"); percent (R, C) in [0, 100],
    each cell annotated. Returns the PNG's path."""
    percent = np.asarray(percent, float)
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(column_names), 0.9 + 0.36 * len(row_names)))
    ax.imshow(percent, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), v in np.ndenumerate(percent):
        ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                color="black" if v > 60 else "white")
    ax.set_xticks(range(len(column_names)), column_names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_names)), row_names, fontsize=7)
    ax.set_xlabel("fed to (error %)")
    ax.set_title(title, fontsize=9)
    return _saved(fig, path)


def budget_curves(panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]], path: str | Path,
                  *, xlabel: str, title: str = "", ylabel: str = "transfer rate (%)") -> Path:
    """One panel per (source -> target) pair, one line per attack: panels[pair][attack] =
    (budgets, percent). Returns the PNG's path."""
    columns = min(3, max(1, len(panels)))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    for ax, (pair, lines) in zip(axes.flat, panels.items()):
        for attack, (budgets, percent) in lines.items():
            ax.plot(budgets, percent, marker="o", markersize=3, label=attack)
        ax.set_title(pair, fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _saved(fig, path)


def quartile_bars(panels: dict[str, Sequence[float]], path: str | Path, *, xlabel: str,
                  title: str = "") -> Path:
    """Transfer rate (percent) per quartile (lowest first) of some per-example quantity, one group
    of four bars per pair: panels[pair] = 4 rates. Returns the PNG's path."""
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(panels), 3.0))
    width = 0.2
    for q in range(4):
        heights = [rates[q] if q < len(rates) else np.nan for rates in panels.values()]
        ax.bar(np.arange(len(panels)) + (q - 1.5) * width, heights, width, label=f"Q{q + 1}")
    ax.set_xticks(range(len(panels)), list(panels), rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("transfer rate (%)", fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    return _saved(fig, path)


def _saved(fig, path: str | Path) -> Path:
    """Lays out, writes and closes `fig` as the PNG `path`; returns the path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
