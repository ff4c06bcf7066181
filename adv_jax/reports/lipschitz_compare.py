"""Lipschitz bounds across runs: one entry per run directory and a table over the varied keys.

Per run: config.yaml, metrics.json and lipschitz.json (the per-layer table `adv_jax.run`
writes); a run made before the bounds were wired in (no lipschitz.json) gets its table
recomputed from params.msgpack, without lower bounds; one made before the certified bounds gets
the product and ECLipsE-Fast recomputed. Columns: the config keys that differ between the runs;
L_k = ||W_k|| x activation slope; their product; the tightest certified bound of the run's
lipschitz.json `bounds` (adv_jax/certify.py, adv_jax/lipsdp.py) and its method; the empirical
lower bounds (largest local Jacobian norm over test images; largest ||f(x') - f(x)|| / ||x' - x||
over the attack's pairs; one above the tightest bound is flagged invalid); gap = tightest / the
larger valid lower bound; test error; the attack's mean per-pixel RMS distortion over its
successes and its success rate. `rank_correlations`: does the product or the tightest bound
order the runs as their mean distortion does (Spearman)?
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
    """{'path', 'config' (flat dotted keys), 'metrics', 'layers', 'upper', 'bounds' (method ->
    certified value), 'certified' (the smallest), 'certified_method', 'jacobian', 'pairs'}."""
    run = read_run(run_dir)
    metrics, stored = run["metrics"], run["lipschitz"]
    if stored is not None:
        layers, upper = stored["layers"], stored["lipschitz/upper_bound"]
        metrics = {**stored, **metrics}
    else:
        layers, upper = recompute_table(run["path"])
    bounds = (stored or {}).get("bounds") or recompute_certified(run["path"], upper)
    best = min(bounds, key=bounds.get)
    return dict(path=run["path"], config=run["config"], metrics=metrics, layers=layers, upper=upper,
                bounds=bounds, certified=bounds[best], certified_method=best,
                jacobian=metrics.get("lipschitz/jacobian_lower_bound"),
                pairs=metrics.get("lipschitz/pair_ratio_lower_bound"))


def recompute_table(run_dir: Path) -> tuple[list[dict], float]:
    """The per-layer table and product of a run directory's saved parameters."""
    run = load_run(run_dir)
    table = lipschitz.layer_table(run.model, run.params, run.model.input_shape)
    return table, lipschitz.network_bound(table)


def recompute_certified(run_dir: Path, product: float) -> dict[str, float]:
    """{method: bound} for a run whose lipschitz.json predates the certified bounds: the product
    and, for a dense network, ECLipsE-Fast (cheap), from params.msgpack (only the product
    without one)."""
    if not (run_dir / "params.msgpack").exists():
        return {"product": product}
    run = load_run(run_dir)
    found = lipschitz.certified_bounds(run.model, run.params, lipschitz.DEFAULT_METHODS, product=product)
    return found["bounds"]


def attack_moved(entry: dict) -> bool:
    """Whether a run's mean distortion means something: its attack succeeded on at least half
    the images (a collapsed model's only "successes" are clean images already in the target
    class, at distortion 0)."""
    metrics = entry["metrics"]
    return metrics.get("attack/mean_distortion") is not None and metrics.get("attack/success_rate", 0) >= 0.5


def rank_correlations(entries: Sequence[dict]) -> dict[str, float | None]:
    """Spearman rank correlation across runs of the mean adversarial distortion with the
    product and with the tightest certified bound, over the runs where `attack_moved`, with how
    many runs that is (None with fewer than 3). A bound that tracks robustness well is strongly
    negative: a smaller constant, a larger distortion."""
    from scipy.stats import spearmanr

    rows = [e for e in entries if attack_moved(e)]
    if len(rows) < 3:
        return {"product": None, "certified": None, "runs": len(rows)}
    distortion = [e["metrics"]["attack/mean_distortion"] for e in rows]
    return {"runs": len(rows), **{name: float(spearmanr([e[key] for e in rows], distortion)[0])
                                  for name, key in (("product", "upper"), ("certified", "certified"))}}


def varying_keys(entries: Sequence[dict]) -> list[str]:
    """Config keys (dotted) whose values are not the same in every entry, in config order."""
    return [key for key in entries[0]["config"] if not key.startswith(IGNORED_PREFIXES)
            and len({json.dumps(e["config"].get(key), sort_keys=True) for e in entries}) > 1]


def consistent(entry: dict, value: float | None) -> bool:
    """A lower bound may not exceed the tightest certified bound. One that does is a measurement
    failure (e.g. the float32 power iteration underflowing on a collapsed network whose bound is
    ~1e-16)."""
    return value is None or value <= entry["certified"] * (1 + 1e-5)


def lower_bound(entry: dict) -> float | None:
    """The larger of the run's valid, nonzero lower bounds (None if it has none)."""
    values = [v for v in (entry["jacobian"], entry["pairs"]) if v and consistent(entry, v)]
    return max(values) if values else None


def bound_cell(entry: dict, value: float | None) -> str:
    if value == 0:
        return "- (no pairs)"  # every success was the clean image itself
    return fmt(value) + ("" if consistent(entry, value) else " (> certified: invalid)")


def comparison_table(entries: Sequence[dict], keys: Sequence[str],
                     run_ids: Sequence[str] | None = None) -> str:
    """One row per run: varying keys, L_k, product, tightest certified bound (its method), lower
    bounds, gap (tightest certified / larger valid lower bound), error, distortion."""
    depth = max(len(e["layers"]) for e in entries)
    run_ids = run_ids or [e["path"].name.split("_", 1)[0] for e in entries]
    columns = (["run", *keys] + [f"L_{k + 1}" for k in range(depth)]
               + ["product (upper)", "tightest certified", "Jacobian (lower)", "pairs (lower)",
                  "gap certified/lower",
                  "test error %", "mean distortion", "attack success"])
    rows = []
    for run_id, e in zip(run_ids, entries):
        m, low = e["metrics"], lower_bound(e)
        bounds = [fmt(row["bound"]) for row in e["layers"]] + ["-"] * (depth - len(e["layers"]))
        rows.append([run_id, *(fmt(e["config"].get(k)) for k in keys), *bounds, fmt(e["upper"]),
                     f"{fmt(e['certified'])} ({e['certified_method']})",
                     bound_cell(e, e["jacobian"]), bound_cell(e, e["pairs"]),
                     fmt(e["certified"] / low if low else None),
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
    return (table + "\n\n" + correlation_line(entries) + "\n\nRuns:\n"
            + "\n".join(f"- {e['path']}" for e in entries) + "\n")


def correlation_line(entries: Sequence[dict]) -> str:
    """One sentence: the Spearman correlations of `rank_correlations`."""
    rho = rank_correlations(entries)
    if rho["product"] is None:
        return "Spearman rank correlation with mean distortion: fewer than 3 runs with an attack."
    left_out = len(entries) - rho["runs"]
    return (f"Spearman rank correlation with mean distortion across the {rho['runs']} runs whose "
            f"attack succeeded on half the images or more{f' ({left_out} collapsed left out)' if left_out else ''}: "
            f"product {rho['product']:.3f}, tightest certified bound {rho['certified']:.3f} (-1: the "
            "bound orders the runs exactly as their robustness).")
