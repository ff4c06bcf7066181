"""Markdown tables and their cells: one table helper, number formats, mean ± std cells."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from adv_jax.markdown import markdown  # the one table writer; a study's matrix.md uses it too

__all__ = ["fmt", "markdown", "mean_std", "percent"]


def fmt(value: Any, digits: int = 3) -> str:
    """A cell: '-' for None or NaN, floats to `digits` significant digits, lists bracketed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    return str(value)


def percent(fraction: float | None, digits: int = 2) -> str:
    """A fraction as percent with `digits` decimals; '-' for None."""
    return "-" if fraction is None else f"{100 * fraction:.{digits}f}"


def mean_std(values: Sequence[float], paper: float | None = None, digits: int = 1) -> str:
    """'mean ± sample std' (the std only for more than one value), then '(paper)' if given."""
    values = np.asarray(values, float)
    text = f"{values.mean():.{digits}f}"
    if len(values) > 1:
        text += f" ± {values.std(ddof=1):.{digits}f}"
    return text + (f" ({paper:g})" if paper is not None else "")
