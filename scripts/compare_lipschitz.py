"""Compares Lipschitz bounds across runs: a markdown table and a plot against the varied setting.

    python scripts/compare_lipschitz.py RUN_OR_SWEEP_DIR [...] [--x model.weight_decay]
        [--out table.md] [--plot figure.png] [--title TEXT]

Each argument is a run directory (it holds config.yaml) or a sweep directory whose subdirectories
are runs (Hydra's `hydra.sweep.dir`). Per run it reads config.yaml, metrics.json and lipschitz.json
(the per-layer table `adv_jax.run` writes); a run without lipschitz.json, made before the bounds
were wired in, gets its table recomputed from params.msgpack (no lower bounds then).

Columns: the config keys that differ between the runs; L_k, the per-layer bounds
||W_k|| * activation slope; their product, the network's upper bound; the empirical lower bounds
(largest local Jacobian norm over test images, largest ||f(x') - f(x)|| / ||x' - x|| over the
attack's pairs; a value above the product is flagged invalid and left out of the plot); gap =
product / the larger lower bound; test error; the attack's mean per-pixel
RMS distortion over its successes and its success rate.

The plot has two panels against the varied key (`--x`, default: the first varying key; a list
value such as model.hidden=[50, 50] is placed at its first entry): per-layer bounds, product and
lower bounds (log scale); mean minimum distortion (left out where the attack succeeded on fewer
than half the images) and test error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

IGNORED_PREFIXES = ("data.mnist_dir", "data.tfds_dir", "cache_dir", "wandb.", "hydra.")
PREFERRED_X = ("model.weight_decay", "model.hidden", "train.lipschitz_penalty")


# ----------------------------------------------------------------------------- reading runs

def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories among `paths`: each path itself if it holds config.yaml, else its
    finished subdirectories (sorted by Hydra's job number when present, else by name)."""
    runs = []
    for path in map(Path, paths):
        if (path / "config.yaml").exists():
            runs.append(path)
            continue
        subdirs = [p for p in path.iterdir() if p.is_dir() and (p / "config.yaml").exists()]
        if not subdirs:
            raise FileNotFoundError(f"{path}: neither a run directory nor a sweep of run directories")
        for sub in sorted(subdirs, key=_job_order):
            if (sub / "metrics.json").exists():
                runs.append(sub)
            else:
                print(f"skipping {sub}: unfinished (no metrics.json)", file=sys.stderr)
    return runs


def _job_order(path: Path) -> tuple[int, str]:
    head = path.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.name)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def load_entry(run_dir: Path) -> dict[str, Any]:
    """{'path', 'config' (flat dotted keys), 'metrics', 'layers' (lipschitz.json rows), 'upper',
    'jacobian', 'pairs'} of one finished run."""
    config = _flatten(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True))
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        raise FileNotFoundError(f"{run_dir}: no metrics.json; the run has not finished")
    metrics = json.loads(metrics_file.read_text())
    lip_file = run_dir / "lipschitz.json"
    if lip_file.exists():
        stored = json.loads(lip_file.read_text())
        layers, upper = stored["layers"], stored["lipschitz/upper_bound"]
        metrics = {**stored, **metrics}
    else:
        layers, upper = recompute_table(run_dir)
    return dict(path=run_dir, config=config, metrics=metrics, layers=layers, upper=upper,
                jacobian=metrics.get("lipschitz/jacobian_lower_bound"),
                pairs=metrics.get("lipschitz/pair_ratio_lower_bound"))


def recompute_table(run_dir: Path) -> tuple[list[dict], float]:
    """The per-layer table and product of a run directory's saved parameters."""
    import adv_jax
    from adv_jax import lipschitz

    run = adv_jax.load_run(run_dir)
    table = lipschitz.layer_table(run.model, run.params, run.model.input_shape)
    return table, lipschitz.network_bound(table)


def varying_keys(entries: list[dict]) -> list[str]:
    """Config keys (dotted) whose values are not the same in every entry, in config order."""
    keys = []
    for key in entries[0]["config"]:
        if key.startswith(IGNORED_PREFIXES):
            continue
        if len({json.dumps(e["config"].get(key), sort_keys=True) for e in entries}) > 1:
            keys.append(key)
    return keys


def numeric(value: Any) -> float:
    """A config value as a plot coordinate: a number, or a list's first entry."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else float("nan")
    return float(value) if value is not None else float("nan")


def lower_bound(entry: dict) -> float | None:
    """The larger of the run's valid, nonzero lower bounds (None if it has none)."""
    values = [v for v in (entry["jacobian"], entry["pairs"]) if v and consistent(entry, v)]
    return max(values) if values else None


def consistent(entry: dict, value: float | None) -> bool:
    """A lower bound may not exceed the product. One that does is a measurement failure (e.g. the
    float32 power iteration underflowing on a collapsed network whose bound is ~1e-16)."""
    return value is None or value <= entry["upper"] * (1 + 1e-5)


# ----------------------------------------------------------------------------- table

def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    return str(value)


def markdown_table(entries: list[dict], keys: list[str], run_ids: list[str] | None = None) -> str:
    """One row per run: varying keys, L_k, product, lower bounds, gap, error, distortion."""
    depth = max(len(e["layers"]) for e in entries)
    run_ids = run_ids or [e["path"].name.split("_", 1)[0] for e in entries]
    header = (["run", *keys] + [f"L_{k + 1}" for k in range(depth)]
              + ["product (upper)", "Jacobian (lower)", "pairs (lower)", "gap upper/lower",
                 "test error %", "mean distortion", "attack success"])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run_id, e in zip(run_ids, entries):
        m, low = e["metrics"], lower_bound(e)
        bounds = [_fmt(row["bound"]) for row in e["layers"]] + ["-"] * (depth - len(e["layers"]))
        cells = [run_id, *(_fmt(e["config"].get(k)) for k in keys), *bounds, _fmt(e["upper"]),
                 *(_bound_cell(e, v) for v in (e["jacobian"], e["pairs"])),
                 _fmt(e["upper"] / low if low else None),
                 _fmt(100 * m["error/test"]) if "error/test" in m else "-",
                 _fmt(m.get("attack/mean_distortion")), _fmt(m.get("attack/success_rate"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bound_cell(entry: dict, value: float | None) -> str:
    if value == 0:
        return "- (no pairs)"  # every success was the clean image itself
    return _fmt(value) + ("" if consistent(entry, value) else " (> upper: invalid)")


# ----------------------------------------------------------------------------- plot

def plot(entries: list[dict], x_key: str, out: Path, title: str | None = None) -> Path:
    """Two panels against x_key: bounds (log scale) | mean minimum distortion and test error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted(((numeric(e["config"].get(x_key)), e) for e in entries), key=lambda p: p[0])
    xs = [x for x, _ in pairs]
    rows = [e for _, e in pairs]
    fig, (ax_b, ax_d) = plt.subplots(1, 2, figsize=(11, 4.2))
    depth = max(len(e["layers"]) for e in rows)
    for k in range(depth):
        ys = [e["layers"][k]["bound"] if k < len(e["layers"]) else math.nan for e in rows]
        kind = rows[0]["layers"][k]["kind"] if k < len(rows[0]["layers"]) else ""
        ax_b.plot(xs, ys, "o--", lw=1, label=f"L_{k + 1} ({kind})")
    ax_b.plot(xs, [e["upper"] for e in rows], "ks-", lw=2, label="product (upper bound)")
    for name, field, style in (("Jacobian", "jacobian", "v:"), ("pair ratio", "pairs", "^:")):
        # 0: no pairs to measure; above the product: a failed measurement (see `consistent`)
        ys = [e[field] if e[field] and consistent(e, e[field]) else math.nan for e in rows]
        if not all(math.isnan(y) for y in ys):
            ax_b.plot(xs, ys, style, color="tab:gray", label=f"{name} (lower bound)")
    ax_b.set_yscale("log")
    ax_b.set_ylabel("Lipschitz bound (logits per unit L2 input)")
    ax_b.legend(fontsize=7)

    # A run whose attack succeeded on under half the images (a collapsed model: its "successes"
    # are clean images already classified as the target) has no meaningful mean distortion.
    dist = [e["metrics"].get("attack/mean_distortion", math.nan)
            if e["metrics"].get("attack/success_rate", 0) >= 0.5 else math.nan for e in rows]
    ax_d.plot(xs, dist, "o-", color="tab:blue")
    ax_d.set_ylabel("mean minimum distortion (RMS per pixel)", color="tab:blue")
    ax_e = ax_d.twinx()
    errors = [100 * e["metrics"].get("error/test", math.nan) for e in rows]
    ax_e.plot(xs, errors, "s--", color="tab:red")
    ax_e.set_ylabel("test error %", color="tab:red")
    if min(errors) > 0 and max(errors) / min(errors) > 10:
        ax_e.set_yscale("log")
    for ax in (ax_b, ax_d):
        _set_xscale(ax, xs)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _set_xscale(ax, xs: list[float]) -> None:
    positive = [x for x in xs if x > 0]
    if not positive or max(positive) / min(positive) < 8:
        return
    if len(positive) == len(xs):
        ax.set_xscale("log")
        if max(positive) / min(positive) < 1000:  # a few octaves: label the data points themselves
            from matplotlib.ticker import NullFormatter

            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.xaxis.set_minor_formatter(NullFormatter())
    else:  # a zero among positive values (e.g. penalty 0): linear near 0, log beyond
        ax.set_xscale("symlog", linthresh=min(positive))
        ax.set_xlim(-0.3 * min(positive), 1.5 * max(positive))


# ----------------------------------------------------------------------------- entry point

def compare(paths: list[str | Path], x_key: str | None = None, plot_path: Path | None = None,
            title: str | None = None) -> tuple[str, list[dict], str | None]:
    """(markdown table, entries, x key) for the runs under `paths`; draws the plot if asked."""
    entries = [load_entry(p) for p in find_runs(paths)]
    keys = varying_keys(entries) if len(entries) > 1 else []
    if x_key is None:
        x_key = next((k for k in PREFERRED_X if k in keys), keys[0] if keys else None)
    if x_key is not None and x_key not in keys:
        keys = [x_key, *keys]
    table = markdown_table(entries, keys)
    if plot_path is not None and x_key is not None:
        plot(entries, x_key, Path(plot_path), title)
    return table, entries, x_key


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run directories or sweep directories")
    parser.add_argument("--x", default=None, help="config key for the plot's x axis")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG plot here")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    table, entries, _ = compare(args.paths, args.x, args.plot, args.title)
    listing = "\n".join(f"- {e['path']}" for e in entries)
    text = f"{table}\n\nRuns:\n{listing}\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
