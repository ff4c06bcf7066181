"""One Lipschitz entry per finished run directory, read from its config.yaml, metrics.json and
lipschitz.json, and what may be read from an entry: whether its attack moved, whether a lower
bound is consistent with the certified one. adv_jax/reports/lipschitz_compare.py tables the
entries, adv_jax/reports/lipschitz_plot.py plots them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adv_jax.reports.runs import read_run


def load_entry(run_dir: str | Path) -> dict[str, Any] | None:
    """{'path', 'config' (flat dotted keys), 'metrics', 'layers', 'upper', 'bounds' (method ->
    certified value; the product alone when lipschitz.json predates the certified bounds),
    'certified' (the smallest), 'certified_method', 'jacobian', 'pairs', 'ascent' (the Jacobian
    ascent's; None in runs before it)}; None for a run without
    lipschitz.json (made before the bounds were wired in)."""
    run = read_run(run_dir)
    stored = run["lipschitz"]
    if stored is None:
        return None
    metrics, upper = {**stored, **run["metrics"]}, stored["lipschitz/upper_bound"]
    bounds = stored.get("bounds") or {"product": upper}
    best = min(bounds, key=bounds.get)
    return dict(path=run["path"], config=run["config"], metrics=metrics, layers=stored["layers"], upper=upper,
                bounds=bounds, certified=bounds[best], certified_method=best,
                jacobian=metrics.get("lipschitz/jacobian_lower_bound"),
                pairs=metrics.get("lipschitz/pair_ratio_lower_bound"),
                ascent=metrics.get("lipschitz/jacobian_ascent_lower_bound"), only_product="bounds" not in stored)


def attack_moved(entry: dict) -> bool:
    """Whether a run's mean distortion means something: its attack succeeded on at least half
    the images (a collapsed model's only "successes" are clean images already in the target
    class, at distortion 0)."""
    metrics = entry["metrics"]
    return metrics.get("attack/mean_distortion") is not None and metrics.get("attack/success_rate", 0) >= 0.5


def consistent(entry: dict, value: float | None) -> bool:
    """A lower bound may not exceed the tightest certified bound. One that does is a measurement
    failure (e.g. the float32 power iteration underflowing on a collapsed network whose bound is
    ~1e-16)."""
    return value is None or value <= entry["certified"] * (1 + 1e-5)


def lower_bound(entry: dict) -> float | None:
    """The larger of the run's valid, nonzero lower bounds (None if it has none)."""
    values = [v for v in (entry["jacobian"], entry["pairs"], entry.get("ascent")) if v and consistent(entry, v)]
    return max(values) if values else None


