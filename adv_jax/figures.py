"""Figures written into run directories (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def adversarial_grid(x: np.ndarray, x_adv: np.ndarray, path: str | Path, *, labels=None,
                     predicted=None, magnify: float = 10.0, columns: int = 10,
                     row_names=("original", "adversarial"), dpi: int = 100) -> Path:
    """The paper's Figure 7 layout: originals, adversarials, and their difference magnified.

    x, x_adv: (N, 28, 28, 1) in [0, 1]; the first `columns` examples are drawn. The difference row
    shows 0.5 + magnify * (x_adv - x), clipped to [0, 1], so grey is "unchanged". `row_names`
    names the first two rows (e.g. "noisy" for Gaussian-noise counterparts).
    """
    n = min(columns, len(x))
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 3.9), squeeze=False)
    rows = (x[:n, ..., 0], x_adv[:n, ..., 0], np.clip(0.5 + magnify * (x_adv[:n] - x[:n])[..., 0], 0, 1))
    names = (*row_names, f"difference x{magnify:g}")
    for r, (images, name) in enumerate(zip(rows, names)):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0 and labels is not None:
                ax.set_title(str(int(labels[c])), fontsize=8)
            if r == 1 and predicted is not None:
                ax.set_title(f"-> {int(predicted[c])}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
