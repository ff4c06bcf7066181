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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
