"""Lipschitz bounds across runs: one entry per run directory and a table over the varied keys.

Per run: config.yaml, metrics.json and lipschitz.json (the per-layer table `adv_jax.run`
writes; `lipschitz_entries.load_entry`); a run made before the bounds were wired in (no
lipschitz.json) is named as missing, and one made before the certified bounds has the product as
its only certified bound (the table says which). Columns: the config keys that differ between the runs;
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
from typing import Sequence

from adv_jax.reports.lipschitz_entries import attack_moved, consistent, load_entry, lower_bound
from adv_jax.reports.runs import find_runs
from adv_jax.reports.tables import fmt, markdown

IGNORED_PREFIXES = ("data.source", "data.mnist_dir", "data.mnist_url", "data.download_dir", "data.tfds_dir",
                    "cache_dir", "wandb.", "hydra.")
PREFERRED_X = ("model.weight_decay", "model.hidden", "train.lipschitz_penalty")


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


def missing_lines(paths: Sequence[Path], entries: Sequence[dict]) -> str:
    """What the table lacks, one line each: runs without lipschitz.json, runs whose lipschitz.json
    predates the certified bounds."""
    old = [f"`{e['path']}`" for e in entries if e["only_product"]]
    lines = ([f"Missing lipschitz.json (made before the bounds were wired in), so left out: "
              f"{', '.join(f'`{p}`' for p in paths)}."] if paths else [])
    lines += ([f"Certified bounds beyond the product missing (lipschitz.json made before them): {', '.join(old)}."]
              if old else [])
    return "".join(f"\n{line}\n" for line in lines)


def compare(paths: Sequence[str | Path], x_key: str | None = None,
            plot_path: Path | None = None, title: str | None = None) -> tuple[str, list[dict], str | None]:
    """(markdown table, entries, x key) for the finished runs under `paths` that hold
    lipschitz.json (those that do not are named below the table); draws the plot if asked (x_key
    default: the first varying key, preferring PREFERRED_X)."""
    found = [(p, load_entry(p)) for p in find_runs(paths)]
    entries, missing = [e for _, e in found if e is not None], [p for p, e in found if e is None]
    if not entries:
        raise FileNotFoundError(f"no finished run with lipschitz.json at or below {[str(p) for p in paths]}")
    keys = varying_keys(entries) if len(entries) > 1 else []
    if x_key is None:
        x_key = next((k for k in PREFERRED_X if k in keys), keys[0] if keys else None)
    if x_key is not None and x_key not in keys:
        keys = [x_key, *keys]
    if plot_path is not None and x_key is not None:
        from adv_jax.reports.lipschitz_plot import plot  # matplotlib only when drawing

        plot(entries, x_key, Path(plot_path), title)
    return comparison_table(entries, keys) + missing_lines(missing, entries), entries, x_key


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
