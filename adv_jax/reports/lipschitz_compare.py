"""Lipschitz bounds across runs: one entry per run directory and a table over the varied keys.

Per run: config.yaml, metrics.json and lipschitz.json (the per-layer table `adv_jax.run`
writes); a run made before the bounds were wired in (no lipschitz.json) gets its table
recomputed from params.msgpack, without lower bounds. Columns: the config keys that differ
between the runs; L_k = ||W_k|| x activation slope; their product (the network's upper bound);
the empirical lower bounds (largest local Jacobian norm over test images; largest
||f(x') - f(x)|| / ||x' - x|| over the attack's pairs; one above the product is flagged invalid);
gap = product / the larger valid lower bound; test error; the attack's mean per-pixel RMS
distortion over its successes and its success rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from adv_jax import lipschitz
from adv_jax.reports.runs import find_runs, read_run
from adv_jax.reports.tables import fmt, markdown
from adv_jax.rundir import load_run

IGNORED_PREFIXES = ("data.source", "data.mnist_dir", "data.mnist_url", "data.download_dir", "data.tfds_dir",
                    "cache_dir", "wandb.", "hydra.")
PREFERRED_X = ("model.weight_decay", "model.hidden", "train.lipschitz_penalty")


def load_entry(run_dir: str | Path) -> dict[str, Any]:
    """{'path', 'config' (flat dotted keys), 'metrics', 'layers', 'upper', 'jacobian', 'pairs'}."""
    run = read_run(run_dir)
    metrics, stored = run["metrics"], run["lipschitz"]
    if stored is not None:
        layers, upper = stored["layers"], stored["lipschitz/upper_bound"]
        metrics = {**stored, **metrics}
    else:
        layers, upper = recompute_table(run["path"])
    return dict(path=run["path"], config=run["config"], metrics=metrics, layers=layers, upper=upper,
                jacobian=metrics.get("lipschitz/jacobian_lower_bound"),
                pairs=metrics.get("lipschitz/pair_ratio_lower_bound"))


def recompute_table(run_dir: Path) -> tuple[list[dict], float]:
    """The per-layer table and product of a run directory's saved parameters."""
    run = load_run(run_dir)
    table = lipschitz.layer_table(run.model, run.params, run.model.input_shape)
    return table, lipschitz.network_bound(table)


def varying_keys(entries: Sequence[dict]) -> list[str]:
    """Config keys (dotted) whose values are not the same in every entry, in config order."""
    return [key for key in entries[0]["config"] if not key.startswith(IGNORED_PREFIXES)
            and len({json.dumps(e["config"].get(key), sort_keys=True) for e in entries}) > 1]


def consistent(entry: dict, value: float | None) -> bool:
    """A lower bound may not exceed the product. One that does is a measurement failure (e.g. the
    float32 power iteration underflowing on a collapsed network whose bound is ~1e-16)."""
    return value is None or value <= entry["upper"] * (1 + 1e-5)


def lower_bound(entry: dict) -> float | None:
    """The larger of the run's valid, nonzero lower bounds (None if it has none)."""
    values = [v for v in (entry["jacobian"], entry["pairs"]) if v and consistent(entry, v)]
    return max(values) if values else None


def bound_cell(entry: dict, value: float | None) -> str:
    if value == 0:
        return "- (no pairs)"  # every success was the clean image itself
    return fmt(value) + ("" if consistent(entry, value) else " (> upper: invalid)")


def comparison_table(entries: Sequence[dict], keys: Sequence[str],
                     run_ids: Sequence[str] | None = None) -> str:
    """One row per run: varying keys, L_k, product, lower bounds, gap, error, distortion."""
    depth = max(len(e["layers"]) for e in entries)
    run_ids = run_ids or [e["path"].name.split("_", 1)[0] for e in entries]
    columns = (["run", *keys] + [f"L_{k + 1}" for k in range(depth)]
               + ["product (upper)", "Jacobian (lower)", "pairs (lower)", "gap upper/lower",
                  "test error %", "mean distortion", "attack success"])
    rows = []
    for run_id, e in zip(run_ids, entries):
        m, low = e["metrics"], lower_bound(e)
        bounds = [fmt(row["bound"]) for row in e["layers"]] + ["-"] * (depth - len(e["layers"]))
        rows.append([run_id, *(fmt(e["config"].get(k)) for k in keys), *bounds, fmt(e["upper"]),
                     bound_cell(e, e["jacobian"]), bound_cell(e, e["pairs"]),
                     fmt(e["upper"] / low if low else None),
                     fmt(100 * m["error/test"]) if "error/test" in m else "-",
                     fmt(m.get("attack/mean_distortion")), fmt(m.get("attack/success_rate"))])
    return markdown(columns, rows).rstrip("\n")


def compare(paths: Sequence[str | Path], x_key: str | None = None,
            plot_path: Path | None = None, title: str | None = None) -> tuple[str, list[dict], str | None]:
    """(markdown table, entries, x key) for the finished runs under `paths`; draws the plot if
    asked (x_key default: the first varying key, preferring PREFERRED_X)."""
    entries = [load_entry(p) for p in find_runs(paths)]
    if not entries:
        raise FileNotFoundError(f"no finished run at or below {[str(p) for p in paths]}")
    keys = varying_keys(entries) if len(entries) > 1 else []
    if x_key is None:
        x_key = next((k for k in PREFERRED_X if k in keys), keys[0] if keys else None)
    if x_key is not None and x_key not in keys:
        keys = [x_key, *keys]
    if plot_path is not None and x_key is not None:
        from adv_jax.reports.lipschitz_plot import plot  # matplotlib only when drawing

        plot(entries, x_key, Path(plot_path), title)
    return comparison_table(entries, keys), entries, x_key


def compare_text(paths: Sequence[str | Path], x_key: str | None = None, plot_path: Path | None = None,
                 title: str | None = None) -> str:
    """The comparison table followed by the list of its run directories."""
    table, entries, _ = compare(paths, x_key, plot_path, title)
    return table + "\n\nRuns:\n" + "\n".join(f"- {e['path']}" for e in entries) + "\n"
