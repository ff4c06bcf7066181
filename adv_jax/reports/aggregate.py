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

from adv_jax import transfer_rows
from adv_jax.reports import paper, provenance, settings
from adv_jax.reports.runs import find_studies, read_json
from adv_jax.reports.tables import markdown, mean_std

log = logging.getLogger(__name__)
# Overrides not worth showing:
_PLUMBING = ("data.mnist_dir=", "data.mnist_url=", "data.download_dir=", "cache_dir=", "wandb.mode=", "hydra.")


def paper_reference(experiment: str) -> dict[str, Any] | None:
    """The paper's numbers for a study, rows keyed like `_row_key` without its `clipped` (both
    readings are compared with the same number): {"source", "clean" (split ->
    per model), "distortion" (per model), "rows" (key -> per column)}. None if the paper has none.
    The paper's one matched-noise row (Table 4, "same stddev") is listed for every source."""
    if experiment == "cross_training_set":
        rows = {("fixed_noise", s): v for s, v in paper.TABLE4_NOISE.items()}
        for i in range(len(paper.TABLE3_MODELS)):
            rows.update({("adversarial", i): paper.TABLE4_ADVERSARIAL[i],
                         ("noise", i): paper.TABLE4_MATCHED_NOISE, ("amplified", i): paper.TABLE4_AMPLIFIED[i]})
        return {"source": f"{paper.SOURCE}, Tables 3 and 4", "distortion": paper.TABLE3["distortion"],
                "clean": {s: paper.TABLE3[s] for s in ("p1", "p2", "test")}, "rows": rows}
    if experiment == "cross_model":
        rows = {("fixed_noise", s): v for s, v in paper.TABLE2_NOISE.items()}
        rows.update({("adversarial", i): r for i, r in enumerate(paper.TABLE2_ADVERSARIAL)})
        return {"source": f"{paper.SOURCE}, Tables 1 and 2", "distortion": paper.TABLE1["distortion"],
                "clean": {"full": paper.TABLE1["train"], "test": paper.TABLE1["test"]}, "rows": rows}
    return None


def _row_key(row: dict) -> tuple:
    """(kind, source or fixed stddev, clipped as `transfer_rows.saved_clipped` reads it)."""
    return (row["kind"], row["stddev"] if row["kind"] == "fixed_noise" else row["source"],
            transfer_rows.saved_clipped(row))


def _row_name(key: tuple, models: Sequence[str], amplify_to: float | None) -> str:
    kind, which, clipped = key
    if kind == "fixed_noise":
        return transfer_rows.row_name(kind, None, which, clipped)
    return transfer_rows.row_name(kind, models[which], amplify_to if kind == "amplified" else 0.0, clipped)


def shared_rows(results: list[dict]) -> dict[tuple, list[dict]]:
    """Row key -> that row of every run, for the rows every run of a group has (a group may mix
    files written before and after the unclipped twins), in the first run's order."""
    by_run = [{_row_key(r): r for r in res["rows"]} for res in results]
    return {k: [rows[k] for rows in by_run] for k in by_run[0] if all(k in rows for rows in by_run)}


def group_table(results: list[dict], reference: dict | None = None) -> str:
    """Mean ± std (sample std over runs) of every cell of one group; the paper's value in brackets."""
    first = results[0]
    models = first["models"]
    amplify_to = next((r["stddev"] for r in first["rows"] if r["kind"] == "amplified"), None)
    prow = (reference or {}).get("rows", {})
    body = []
    for k, rows in shared_rows(results).items():
        cells = np.array([r["errors"] for r in rows])
        paper_distortion = (reference or {}).get("distortion", [None] * len(models))[k[1]] \
            if k[0] == "adversarial" and reference else None
        body.append([_row_name(k, models, amplify_to),
                     *(mean_std(cells[:, j], prow[k[:2]][j] if k[:2] in prow else None) for j in range(len(models))),
                     mean_std([r["stddev"] for r in rows], paper_distortion, 3),
                     mean_std([r.get("realized_stddev", r["stddev"]) for r in rows], None, 3)])
    return markdown(["examples \\ fed to", *models, "stddev", "realized stddev"], body)


def clean_table(results: list[dict], splits: Sequence[str], reference: dict | None = None) -> str:
    first = results[0]
    pclean = (reference or {}).get("clean", {})
    body = []
    for j, (key, label) in enumerate(zip(first["keys"], first["models"])):
        errs = {s: np.array([res["clean"][key][s] for res in results]) for s in splits}
        dist = np.array([res["distortion"][j] for res in results])
        success = np.array([100 * res["models_metrics"][key]["attack/success_rate"] for res in results])
        body.append([label, *(mean_std(errs[s], pclean[s][j] if s in pclean else None, 2) for s in splits),
                     mean_std(success), mean_std(dist, (reference or {}).get("distortion", [None] * 99)[j], 3)])
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
            block = transfer_rows.saved_block(res["rows"], kind)
            means.append(f"{block[off].mean():.1f}" if block.size and m > 1 else "-")
        diag = np.diag(np.array(res["matrix"])).mean()
        test = " / ".join(f"{res['clean'][k]['test']:.2f}" for k in res["keys"])
        checks = ", ".join(k for k, ok in res["checks"].items() if ok) or "none"
        shown = [o for o in res["overrides"] if not o.startswith(_PLUMBING)]
        trained = [metrics.get("train/seconds", 0.0) for metrics in res["models_metrics"].values()
                   if not metrics.get("train/cached")]
        body.append([str(path), res["seed"], " ".join(shown) or "-", test, f"{diag:.1f}",
                     *means, checks, f"{res['seconds']:.0f}",
                     f"{len(trained)} model(s), {sum(trained):.0f} s" if trained else "none"])
    return markdown(["run", "seed", "overrides", "clean test error per model", "diag.",
                     "off-diag. adv.", "off-diag. noise", "off-diag. ampl.", "checks hold",
                     "seconds", "trained in the run"], body)


def clipping_comparison(members: list[dict], reference: dict | None) -> str:
    """Which reading of the perturbed rows is nearer the paper: per kind, the mean |ours - paper|
    (percentage points, seed means) over the cells that have a paper number, clipped vs unclipped."""
    prow = (reference or {}).get("rows", {})
    gaps = {}
    for key, rows in shared_rows(members).items():
        if key[2] is None or key[:2] not in prow:
            continue
        mean = np.mean([r["errors"] for r in rows], 0)
        paper_cells = np.array(prow[key[:2]], float)
        gaps.setdefault((key[0], key[2]), []).extend(np.abs(mean - paper_cells).tolist())
    kinds = [k for k in transfer_rows.PERTURBED if (k, True) in gaps and (k, False) in gaps]
    if not kinds:
        return ""
    body = [[k.replace("_", " "), f"{np.mean(gaps[(k, True)]):.2f}", f"{np.mean(gaps[(k, False)]):.2f}",
             "clipped" if np.mean(gaps[(k, True)]) < np.mean(gaps[(k, False)]) else "unclipped"] for k in kinds]
    return ("Clipped or not: mean |ours - paper| (percentage points) over each kind's cells with a "
            "paper number:\n\n" + markdown(["rows", "clipped", "unclipped", "nearer the paper"], body))


def asymmetry_table(members: list[dict], reference: dict | None, pair: tuple[int, int] = (0, 1)) -> str:
    """Per seed, transfer between models `pair` both ways (percent) and its difference; then the
    seeds' range and whether the paper's pair lies inside it (Table 4: the two P1 models)."""
    a, b = pair
    names = members[0]["models"]
    if len(names) <= max(pair):
        return ""
    ab = np.array([res["matrix"][a][b] for res in members])  # b fed a's adversarials
    ba = np.array([res["matrix"][b][a] for res in members])
    body = [[res["seed"], f"{x:.1f}", f"{y:.1f}", f"{x - y:+.1f}"] for res, x, y in zip(members, ab, ba)]
    columns = ["seed", f"{names[a]} -> {names[b]}", f"{names[b]} -> {names[a]}", "difference"]
    text = (f"Transfer between {names[a]} and {names[b]}, per seed (error of the second model on the "
            "first's adversarials, percent):\n\n" + markdown(columns, body))
    prow = (reference or {}).get("rows", {})
    if len(members) > 1 and ("adversarial", a) in prow and ("adversarial", b) in prow:
        p_ab, p_ba = prow[("adversarial", a)][b], prow[("adversarial", b)][a]
        inside = lambda v, xs: "inside" if xs.min() <= v <= xs.max() else "outside"  # noqa: E731
        text += (f"\nSeeds' range: {ab.min():.1f}-{ab.max():.1f} one way, {ba.min():.1f}-{ba.max():.1f} "
                 f"the other, differences {(ab - ba).min():+.1f} to {(ab - ba).max():+.1f}. The paper's "
                 f"{p_ab:g} lies {inside(p_ab, ab)} the first range, its {p_ba:g} {inside(p_ba, ba)} the "
                 f"second, and its difference {p_ab - p_ba:+.1f} {inside(p_ab - p_ba, ab - ba)} the "
                 "seeds' differences.\n")
    return text


def aggregate(paths: Sequence[str | Path], with_paper: bool = True) -> tuple[str, dict]:
    """Markdown of every group and the comparison table, and a JSON-able summary."""
    runs = find_studies(paths)
    if not runs:
        raise FileNotFoundError(f"no matrix.json at or below {list(map(str, paths))}")
    results = [read_json(r / "matrix.json", required=True) for r in runs]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, res in enumerate(results):
        groups[res["group"]].append(i)
    parts, summary = [], {"runs": [str(r) for r in runs], "groups": {}}
    for gid, idx in groups.items():
        members = [results[i] for i in idx]
        first = members[0]
        reference = paper_reference(first["experiment"]) if with_paper else None
        splits = ["p1", "p2", "test"] if first["experiment"] == "cross_training_set" else ["full", "test"]
        n = first["examples"]["num_examples"]
        parts.append(
            f"## {first['experiment']}: {len(members)} run(s), seeds "
            f"{sorted(res['seed'] for res in members)}, {n} {first['examples']['split']} images "
            f"(group {gid})\n\nRuns: {', '.join(f'`{runs[i]}`' for i in idx)}. Cells: mean ± sample "
            "std over the runs" + (f"; in brackets: {reference['source']}" if reference else "") + ".\n\n"
            "Clean error (percent), attack success (percent) and mean per-pixel RMS distortion:\n\n"
            + clean_table(members, splits, reference)
            + "\nError (percent) of the column's model on the row's images:\n\n"
            + group_table(members, reference)
            + ("\n" + clipping_comparison(members, reference) if reference else "")
            + ("\n" + asymmetry_table(members, reference) if first["experiment"] == "cross_training_set" else "")
            + "\nChecks (runs where each holds): "
            + ", ".join(f"{k} {sum(res['checks'][k] for res in members)}/{len(members)}"
                        for k in first["checks"]) + "\n")
        summary["groups"][gid] = {"runs": [str(runs[i]) for i in idx],
                                  "mean": np.mean([res["matrix"] for res in members], 0).tolist(),
                                  "std": np.std([res["matrix"] for res in members], 0, ddof=1).tolist()
                                  if len(members) > 1 else None}
    parts.append("## All runs\n\n" + comparison_table(runs, results))
    summary["experiments"] = sorted({res["experiment"] for res in results})
    return "\n".join(parts), summary


def results_file(paths: Sequence[str | Path], command: str, with_paper: bool = True) -> tuple[str, dict]:
    """(markdown, summary) of a results file: header (title and notes of conf/report/transfer.yaml
    for the studies' experiment), then `aggregate`'s tables."""
    text, summary = aggregate(paths, with_paper)
    studies = settings.load("transfer")
    conf = studies.get(summary["experiments"][0], studies["default"]) if len(summary["experiments"]) == 1 \
        else studies["default"]
    lines = [*provenance.header(conf["title"], command), *settings.paragraphs(conf.get("notes"))]
    return "\n".join(lines) + "\n" + text + "\n", summary


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
