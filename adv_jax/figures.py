"""Figures written into run directories (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DIFFERENCE_CMAP = "RdBu_r"  # diverging: red where the adversarial is brighter, blue darker, white 0


def rms(x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
    """Per-pixel RMS distortion of each example (N,): |x_adv - x|_2 / sqrt(pixels)."""
    diff = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
    return np.sqrt(np.mean(diff ** 2, axis=1))


def column_title(label, predicted, distortion: float) -> str:
    """"label 7 -> 3" (the true label, the prediction on the adversarial; either may be None),
    then "rms 0.057"."""
    top = ("" if label is None else f"label {int(label)}")
    top += "" if predicted is None else f" -> {int(predicted)}"
    return f"{top.strip()}\nrms {distortion:.3f}" if top else f"rms {distortion:.3f}"


def draw_difference(ax, diff: np.ndarray) -> None:
    """One difference image in the diverging map, its limits +-max|diff| of this image (noted)."""
    limit = float(np.abs(diff).max())
    ax.imshow(diff, cmap=DIFFERENCE_CMAP, vmin=-(limit or 1), vmax=limit or 1, interpolation="nearest")
    ax.set_xlabel(f"±{limit:.2g}", fontsize=7, labelpad=1)  # an unchanged image: all white, ±0


def adversarial_figure(x: np.ndarray, x_adv: np.ndarray, *, labels=None, predicted=None,
                       columns: int = 10, row_names=("original", "adversarial")):
    """The grid of `adversarial_grid` as a matplotlib Figure (the caller closes it)."""
    n = min(columns, len(x))
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 4.4), squeeze=False)
    distortion = rms(x[:n], x_adv[:n])
    for c in range(n):
        for r, image in enumerate((x[c, ..., 0], x_adv[c, ..., 0])):
            axes[r, c].imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        draw_difference(axes[2, c], (x_adv[c] - x[c])[..., 0])
        axes[0, c].set_title(column_title(None if labels is None else labels[c],
                                          None if predicted is None else predicted[c], distortion[c]),
                             fontsize=8)
        for ax in axes[:, c]:
            ax.set_xticks([]), ax.set_yticks([])
    for ax, name in zip(axes[:, 0], (*row_names, "difference\nred +, blue −")):
        ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def adversarial_grid(x: np.ndarray, x_adv: np.ndarray, path: str | Path, *, labels=None,
                     predicted=None, columns: int = 10,
                     row_names=("original", "adversarial"), dpi: int = 100) -> Path:
    """The paper's Figure 7 layout: originals, adversarials, and their differences; written to path.

    x, x_adv: (N, 28, 28, 1) in [0, 1]; the first `columns` examples are drawn. The difference row
    shows x_adv - x in a diverging map (red: brighter, blue: darker, white: unchanged), each image
    scaled to its own largest change (noted under it). Each column is titled with its label, the
    prediction on the adversarial (`predicted`) and its per-pixel RMS distortion. `row_names` names
    the first two rows (e.g. "noisy" for Gaussian-noise counterparts).
    """
    fig = adversarial_figure(x, x_adv, labels=labels, predicted=predicted, columns=columns,
                             row_names=row_names)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
