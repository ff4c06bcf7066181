"""Aggregates transfer studies: mean and std per cell over seeds, and a table comparing runs.

Input: experiment run directories (each with matrix.json), or folders holding them (a Hydra
sweep directory). Runs whose configs differ only in the seed form one group (matrix.json
"group"); each group gets a mean +- std table, and every run one line of the comparison table.
`AggregateCallback` does this at the end of a Hydra multirun (conf/experiment/*.yaml enable it).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adv_jax.transfer import markdown

log = logging.getLogger(__name__)
_PLUMBING = ("data.mnist_dir=", "cache_dir=", "wandb.mode=", "hydra.")  # overrides not worth showing

# The paper's numbers (percent) by experiment name, rows keyed like `_row_key`. A matched-noise
# row of the paper (Table 4 has one, "same stddev") is listed for every source.
_T4_NOISE = [2.2, 2.6, 2.4]
PAPER: dict[str, dict[str, Any]] = {
    "cross_training_set": {
        "source": "Szegedy et al. 2014, Tables 3 and 4",
        "clean": {"p1": [0.0, 0.0, 2.3], "p2": [2.4, 2.5, 0.0], "test": [2.0, 2.1, 2.1]},
        "distortion": [0.062, 0.059, 0.058],
        "rows": {("adversarial", 0): [100, 26.2, 5.9], ("adversarial", 1): [6.25, 100, 5.1],
                 ("adversarial", 2): [8.2, 8.2, 100], ("noise", 0): _T4_NOISE,
                 ("noise", 1): _T4_NOISE, ("noise", 2): _T4_NOISE,
                 ("amplified", 0): [100, 98, 43], ("amplified", 1): [96, 100, 22],
                 ("amplified", 2): [27, 50, 100], ("fixed_noise", 0.1): [2.6, 2.8, 2.7]},
    },
    "cross_model": {
        "source": "Szegedy et al. 2014, Tables 1 and 2",
        "clean": {"full": [6.7, 10.0, 21.2, 0.0, 0.0, 0.57], "test": [7.4, 9.4, 20.0, 1.64, 1.54, 1.9]},
        "distortion": [0.062, 0.1, 0.14, 0.058, 0.065, 0.086],
        "rows": {("adversarial", 0): [100, 11.7, 22.7, 2, 3.9, 2.7],
                 ("adversarial", 1): [87.1, 100, 35.2, 35.9, 27.3, 9.8],
                 ("adversarial", 2): [71.9, 76.2, 100, 48.1, 47, 34.4],
                 ("adversarial", 3): [28.9, 13.7, 21.1, 100, 6.6, 2],
                 ("adversarial", 4): [38.2, 14, 23.8, 20.3, 100, 2.7],
                 ("adversarial", 5): [23.4, 16, 24.8, 9.4, 6.6, 100],
                 ("fixed_noise", 0.1): [5.0, 10.1, 18.3, 0, 0, 0.8],
                 ("fixed_noise", 0.3): [15.6, 11.3, 22.7, 5, 4.3, 3.1]},
    },
}


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Experiment run directories at or below `paths` (per-model dirs under models/ excluded)."""
    found = []
    for p in map(Path, paths):
        hits = [p / "matrix.json"] if (p / "matrix.json").exists() else sorted(p.rglob("matrix.json"))
        found += [h.parent for h in hits if "models" not in h.relative_to(p).parts[:-1]]
    return found


def _row_key(row: dict) -> tuple:
    return (row["kind"], row["stddev"] if row["kind"] == "fixed_noise" else row["source"])


def _row_name(key: tuple, models: Sequence[str], amplify_to: float | None) -> str:
    kind, which = key
    if kind == "fixed_noise":
        return f"Gaussian noise, stddev {which:g}"
    name = models[which]
    return {"adversarial": f"distorted for {name}", "noise": f"Gaussian noise, same stddev as {name}",
            "amplified": f"distorted for {name}, amplified to stddev {amplify_to:g}"}[kind]


def _cell(values: np.ndarray, paper: float | None = None, digits: int = 1) -> str:
    text = f"{values.mean():.{digits}f}"
    if len(values) > 1:
        text += f" ± {values.std(ddof=1):.{digits}f}"
    return text + (f" ({paper:g})" if paper is not None else "")


def group_table(results: list[dict], paper: dict | None = None) -> str:
    """Mean ± std (sample std over runs) of every cell of one group; paper's value in brackets."""
    first = results[0]
    models = first["models"]
    amplify_to = next((r["stddev"] for r in first["rows"] if r["kind"] == "amplified"), None)
    keys = [_row_key(r) for r in first["rows"]]
    cells = {k: np.array([[r["errors"] for r in res["rows"] if _row_key(r) == k][0] for res in results])
             for k in keys}
    stddev = {k: np.array([[r["stddev"] for r in res["rows"] if _row_key(r) == k][0] for res in results])
              for k in keys}
    prow = (paper or {}).get("rows", {})
    body = [[_row_name(k, models, amplify_to),
             *(_cell(cells[k][:, j], prow[k][j] if k in prow else None) for j in range(len(models))),
             _cell(stddev[k], (paper or {}).get("distortion", [None] * len(models))[k[1]]
                   if k[0] == "adversarial" and paper else None, 3)] for k in keys]
    return markdown(["examples \\ fed to", *models, "stddev"], body)


def clean_table(results: list[dict], splits: Sequence[str], paper: dict | None = None) -> str:
    first = results[0]
    pclean = (paper or {}).get("clean", {})
    body = []
    for j, (key, label) in enumerate(zip(first["keys"], first["models"])):
        errs = {s: np.array([res["clean"][key][s] for res in results]) for s in splits}
        dist = np.array([res["distortion"][j] for res in results])
        success = np.array([100 * res["models_metrics"][key]["attack/success_rate"] for res in results])
        body.append([label, *(_cell(errs[s], pclean[s][j] if s in pclean else None, 2) for s in splits),
                     _cell(success), _cell(dist, (paper or {}).get("distortion", [None] * 99)[j], 3)])
    return markdown(["model", *(f"error on {s}" for s in splits), "attack success", "av. distortion"],
                    body)


def comparison_table(runs: list[Path], results: list[dict]) -> str:
    """One line per run: where it is, what it changed, clean test errors, block means, checks."""
    body = []
    for path, res in zip(runs, results):
        m = len(res["models"])
        off = ~np.eye(m, dtype=bool)
        means = []
        for kind in ("adversarial", "noise", "amplified"):
            block = np.array([r["errors"] for r in res["rows"] if r["kind"] == kind])
            means.append(f"{block[off].mean():.1f}" if block.size and m > 1 else "-")
        diag = np.diag(np.array(res["matrix"])).mean()
        test = " / ".join(f"{res['clean'][k]['test']:.2f}" for k in res["keys"])
        checks = ", ".join(k for k, ok in res["checks"].items() if ok) or "none"
        shown = [o for o in res["overrides"] if not o.startswith(_PLUMBING)]
        body.append([str(path), res["seed"], " ".join(shown) or "-", test, f"{diag:.1f}",
                     *means, checks, f"{res['seconds']:.0f}"])
    return markdown(["run", "seed", "overrides", "clean test error per model", "diag.",
                     "off-diag. adv.", "off-diag. noise", "off-diag. ampl.", "checks hold",
                     "seconds"], body)


def aggregate(paths: Sequence[str | Path], with_paper: bool = True) -> tuple[str, dict]:
    """Markdown of every group and the comparison table, and a JSON-able summary."""
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no matrix.json at or below {list(map(str, paths))}")
    results = [json.loads((r / "matrix.json").read_text()) for r in runs]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, res in enumerate(results):
        groups[res["group"]].append(i)
    parts, summary = [], {"runs": [str(r) for r in runs], "groups": {}}
    for gid, idx in groups.items():
        members = [results[i] for i in idx]
        first = members[0]
        paper = PAPER.get(first["experiment"]) if with_paper else None
        splits = ["p1", "p2", "test"] if first["experiment"] == "cross_training_set" else ["full", "test"]
        n = first["examples"]["num_examples"]
        parts.append(
            f"## {first['experiment']}: {len(members)} run(s), seeds "
            f"{sorted(res['seed'] for res in members)}, {n} {first['examples']['split']} images "
            f"(group {gid})\n\nRuns: {', '.join(f'`{runs[i]}`' for i in idx)}. Cells: mean ± sample "
            "std over the runs" + (f"; in brackets: {paper['source']}" if paper else "") + ".\n\n"
            "Clean error (percent), attack success (percent) and mean per-pixel RMS distortion:\n\n"
            + clean_table(members, splits, paper)
            + "\nError (percent) of the column's model on the row's images:\n\n"
            + group_table(members, paper)
            + "\nChecks (runs where each holds): "
            + ", ".join(f"{k} {sum(res['checks'][k] for res in members)}/{len(members)}"
                        for k in first["checks"]) + "\n")
        summary["groups"][gid] = {"runs": [str(runs[i]) for i in idx],
                                  "mean": np.mean([res["matrix"] for res in members], 0).tolist(),
                                  "std": np.std([res["matrix"] for res in members], 0, ddof=1).tolist()
                                  if len(members) > 1 else None}
    parts.append("## All runs\n\n" + comparison_table(runs, results))
    return "\n".join(parts), summary


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency; this keeps the module importable
    Callback = object


class AggregateCallback(Callback):
    """At the end of a multirun, writes aggregate.md and aggregate.json into the sweep directory."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            text, summary = aggregate([sweep_dir])
        except FileNotFoundError:
            log.warning("no finished experiment under %s to aggregate", sweep_dir)
            return
        (sweep_dir / "aggregate.md").write_text(text)
        (sweep_dir / "aggregate.json").write_text(json.dumps(summary, indent=1))
        log.info("aggregate of %d runs: %s", len(summary["runs"]), sweep_dir / "aggregate.md")
