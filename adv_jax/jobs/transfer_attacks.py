"""Transfer-attacks study (job=transfer_attacks, chosen by conf/experiment/transfer_attacks.yaml):
attacks x budgets x sources (models and ensembles) x target models, as one job `run(cfg, run_dir)`.

The models come from the model-set layer (`model_set.models_for`), as in the study job; every
source (each model, each `experiment.transfer.ensembles` entry) is attacked by every
`experiment.transfer.attacks` entry, all budgets of a norm in one batched run
(`attacks.budgets.AcrossBudgets`; a minimum-norm attack is run once and rescaled to each budget),
and every model classifies every adversarial set.

<run_dir>/
  config.yaml  metrics.json  run.log  wandb/      as for any run (metrics.json written last)
  transfer.json   the cells: for each attack, norm, budget, source and target, the rates in
                  percent over both denominators (adv_jax.transfer.transfer_rates) and `file`,
                  the adversarials it was computed from, relative to the run directory; the
                  analysis summary per model pair
  adversarials/<attack>/<source>_<norm>.npz   x (N, 28, 28, 1), x_adv (E, N, 28, 28, 1) (row e at
                  budgets[e]), budgets (E,), y (N,), target (N,) where targeted
  analysis.npz    per ordered model pair "<s>__<t>__<quantity>" (analysis.py)
  curves_<norm>.png  alignment.png     figures, also logged with the tables
  models/<key>/   config.yaml  params.msgpack  metrics.json  (adv_jax.load_run reads it)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from adv_jax.attacks import make_attack
from adv_jax.attacks.budgets import AcrossBudgets, perturbation_norm, rescale_to_budget
from adv_jax.attacks.common import attack_batch, batched_logits, is_adversarial, predicted_labels
from adv_jax.attacks.ensemble_source import REDUCTIONS, ensemble_of
from adv_jax.attacks.targets import choose_targets
from adv_jax.config import compose
from adv_jax.figures_transfer import budget_curves, quartile_bars
from adv_jax.jobs.transfer_analysis import pair_analysis
from adv_jax.model_set import models_for, study_examples
from adv_jax.run_files import MODELS_DIR, TRANSFER_FILE
from adv_jax.rundir import Run, RunDirectory, load_run
from adv_jax.transfer import transfer_rates

log = logging.getLogger(__name__)
ATTACK_KEY = 5  # fold_in(key(cfg.seed), ATTACK_KEY) seeds targets and attacks
OWN_SIZE = "own"  # the pseudo-norm of a minimum-norm attack at its own size


def check(cfg: DictConfig) -> None:
    """Fails before any training on a transfer config the job could not run."""
    spec = cfg.experiment.transfer
    if not spec.attacks:
        raise ValueError("experiment.transfer.attacks is empty")
    if spec.target not in ("untargeted", "random", "next"):
        raise ValueError(f"experiment.transfer.target must be untargeted, random or next, not {spec.target!r}")
    for key, entry in spec.attacks.items():
        for norm in ([] if entry.minimum_norm else entry.norms):
            if not spec.budgets.get(norm):
                raise ValueError(f"experiment.transfer.attacks.{key}: no budgets for norm {norm!r}")
            make_attack(entry.attack, attack_params(entry, norm))
    for key, ensemble in spec.ensembles.items():
        unknown = [m for m in ensemble.members if m not in cfg.experiment.models]
        if unknown or ensemble.reduction not in REDUCTIONS or not ensemble.members:
            raise ValueError(f"experiment.transfer.ensembles.{key}: members {list(ensemble.members)} "
                             f"(unknown: {unknown}), reduction {ensemble.reduction!r} ({list(REDUCTIONS)})")


def attack_params(entry, norm: str | None) -> dict:
    """conf/attack/<entry.attack>.yaml's params changed by the entry's, in `norm` (if any)."""
    base = compose([f"attack={entry.attack}"]).attack.params
    merged = {**OmegaConf.to_container(base), **OmegaConf.to_container(entry.params)}
    return {**merged, "norm": norm} if norm is not None and not entry.minimum_norm else merged


def sources(cfg: DictConfig, models: dict[str, Run]) -> dict[str, dict[str, Any]]:
    """key -> {label, fn (batched logits_fn), members (model keys)}: each model, then each ensemble."""
    exp = cfg.experiment
    out = {key: {"label": exp.models[key].label or key, "fn": models[key].logits_fn, "members": [key]}
           for key in exp.models}
    for key, ensemble in exp.transfer.ensembles.items():
        fns = [models[m].logits_fn for m in ensemble.members]
        out[key] = {"label": ensemble.label or key, "fn": ensemble_of(fns, ensemble.reduction),
                    "members": list(ensemble.members), "reduction": ensemble.reduction}
    return out


def adversarial_sets(entry, source_fn, x, y, target, key, budgets: dict) -> dict[str, tuple]:
    """norm -> (budgets (E,), x_adv (E, N, ...)) of one attack on one source. A minimum-norm
    attack runs once; its perturbation is rescaled to each norm's budgets, and kept as it is
    under the pseudo-norm "own" (budget nan)."""
    if entry.minimum_norm:
        attack = make_attack(entry.attack, attack_params(entry, None))
        x_min, _ = attack_batch(attack, source_fn, x, y, target, key=key,
                                chunk_size=getattr(attack, "chunk_size", 1000), progress=False)
        out = {OWN_SIZE: (np.array([np.nan]), np.asarray(x_min)[None])}
        for norm in entry.norms:
            eps = list(budgets[norm])
            out[norm] = (np.array(eps), np.stack([np.asarray(rescale_to_budget(x, x_min, e, norm)) for e in eps]))
        return out
    out = {}
    for norm in entry.norms:
        attack = AcrossBudgets(make_attack(entry.attack, attack_params(entry, norm)), tuple(budgets[norm]))
        x_adv, _ = attack_batch(attack, source_fn, x, y, target, key=key, chunk_size=500, progress=False)
        out[norm] = (np.array(budgets[norm]), np.moveaxis(np.asarray(x_adv), 1, 0))
    return out



def cells_for(where: dict, budgets: np.ndarray, x_adv: np.ndarray, data: dict, source: dict,
              targets: dict[str, Any]) -> list[dict]:
    """One cell per budget and target model: transfer_rates with both denominators."""
    y, target = data["y"], data["target"]
    cells = []
    for e, budget in enumerate(budgets):
        fooled = np.asarray(is_adversarial(batched_logits(source["fn"], jnp.asarray(x_adv[e])), y, target))
        size = perturbation_norm(jnp.asarray(x_adv[e] - data["x"]), "l2")
        for t_key, t_fn in targets.items():
            rates = transfer_rates(y, target, fooled, data["clean"][t_key], predicted_labels(t_fn, x_adv[e]))
            cells.append({**where, "budget": None if np.isnan(budget) else float(budget), "budget_index": e,
                          "target": t_key, "white_box": t_key in source["members"],
                          "source_success": 100.0 * float(fooled.mean()),
                          "mean_l2": float(np.mean(size)), **rates})
    return cells


def attack_everything(cfg: DictConfig, run_dir: Path, srcs: dict, targets: dict, data: dict,
                      key: jax.Array) -> tuple[list[dict], dict]:
    """Every attack on every source: adversarials/<attack>/<source>_<norm>.npz and their cells;
    also {(attack, source, norm): x_adv (E, N, ...)} for the analysis."""
    spec, cells, kept = cfg.experiment.transfer, [], {}
    for a, (a_key, entry) in enumerate(spec.attacks.items()):
        for s, (s_key, source) in enumerate(srcs.items()):
            start = time.perf_counter()
            sets = adversarial_sets(entry, source["fn"], data["x"], data["y"], data["target"],
                                    jax.random.fold_in(jax.random.fold_in(key, a), s), spec.budgets)
            seconds = time.perf_counter() - start
            for norm, (budgets, x_adv) in sets.items():
                rel = Path("adversarials") / a_key / f"{s_key}_{norm}.npz"
                (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                extra = {"target": data["target"]} if spec.target != "untargeted" else {}
                np.savez_compressed(run_dir / rel, x=data["x"], x_adv=x_adv, y=data["y"], budgets=budgets, **extra)
                where = {"attack": a_key, "norm": norm, "source": s_key, "file": str(rel), "seconds": seconds}
                cells += cells_for(where, budgets, x_adv, data, source, targets)
                kept[(a_key, s_key, norm)] = x_adv
            log.info("transfer attacks: %s on %s in %.1f s", a_key, s_key, seconds)
    return cells, kept


def work(run: RunDirectory, logger) -> dict[str, Any]:
    cfg, start = run.cfg, time.perf_counter()
    check(cfg)
    exp, spec = cfg.experiment, cfg.experiment.transfer
    models = models_for(cfg, run.path)
    srcs = sources(cfg, models)
    targets = {k: srcs[k]["fn"] for k in exp.models}
    clean = study_examples(cfg)
    base = jax.random.fold_in(jax.random.key(cfg.seed), ATTACK_KEY)
    target_key, attack_key = jax.random.split(base)
    first = srcs[next(iter(exp.models))]["fn"]
    target = np.asarray(choose_targets(spec.target, batched_logits(first, jnp.asarray(clean.x)),
                                       jnp.asarray(clean.y), key=target_key))
    data = {"x": np.asarray(clean.x), "y": np.asarray(clean.y), "target": target,
            "clean": {k: predicted_labels(fn, clean.x) for k, fn in targets.items()}}
    cells, kept = attack_everything(cfg, run.path, srcs, targets, data, attack_key)
    pairs = pair_analysis(cfg, run.path, targets, data, kept)
    result = {"experiment": exp.name, "seed": cfg.seed, "target_mode": spec.target,
              "models": {k: srcs[k]["label"] for k in exp.models},
              "sources": {k: {"label": v["label"], "members": v["members"],
                              "reduction": v.get("reduction")} for k, v in srcs.items()},
              "attacks": {k: {"label": e.label or k, "attack": e.attack, "minimum_norm": e.minimum_norm,
                              "params": {n: attack_params(e, None if n == OWN_SIZE else n)
                                         for n in (*e.norms, *([OWN_SIZE] if e.minimum_norm else []))}}
                          for k, e in spec.attacks.items()},
              "budgets": OmegaConf.to_container(spec.budgets), "num_examples": len(clean),
              "clean_accuracy": {k: 100.0 * float(np.mean(p == data["y"])) for k, p in data["clean"].items()},
              "cells": cells, "analysis": pairs, "seconds": time.perf_counter() - start}
    run.write_json(TRANSFER_FILE, result)
    figures = draw_figures(run.path, result)
    log_tables(logger, result, figures)
    return summary(result)


def run(cfg, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Runs the transfer-attacks study `cfg.experiment` into run_dir; returns flat summary metrics."""
    return RunDirectory.for_run(cfg, run_dir, cfg.experiment.name).execute(work)


def cross_cells(result: dict) -> list[dict]:
    """The cells whose target is not one of the source's own models (the transfer cells)."""
    return [c for c in result["cells"] if not c["white_box"]]


def summary(result: dict) -> dict[str, Any]:
    """Flat metrics: per attack, norm and budget, the mean transfer rate (both denominators) over
    the cross cells; the time."""
    groups: dict[str, list] = {}
    for c in cross_cells(result):
        budget = "own" if c["budget"] is None else f"{c['budget']:g}"
        groups.setdefault(f"transfer/{c['attack']}/{c['norm']}/{budget}", []).append(c)
    out: dict[str, Any] = {"experiment/seconds": result["seconds"]}
    for name, group in groups.items():
        out[f"{name}/rate_all"] = float(np.mean([c["rate_all"] for c in group]))
        conditional = [c["rate_conditional"] for c in group if c["n_conditional"]]
        out[f"{name}/rate_conditional"] = float(np.mean(conditional)) if conditional else float("nan")
    return out


def pair_label(result: dict, source: str, target: str) -> str:
    return f"{result['sources'][source]['label']} -> {result['models'][target]}"


def curve_panels(result: dict, norm: str, rate: str = "rate_all") -> dict[str, dict]:
    """pair label -> attack label -> (budgets, rates) for one norm, cross cells only; minimum-norm
    attacks' rescaled sets included."""
    panels: dict[str, dict] = {}
    for c in cross_cells(result):
        if c["norm"] != norm:
            continue
        lines = panels.setdefault(pair_label(result, c["source"], c["target"]), {})
        budgets, rates = lines.setdefault(result["attacks"][c["attack"]]["label"], ([], []))
        budgets.append(c["budget"])
        rates.append(c[rate])
    return panels


def draw_figures(run_dir: Path, result: dict) -> dict[str, Path]:
    """curves_<norm>.png per norm, and alignment.png (rate per gradient-cosine quartile)."""
    out = {}
    for norm in result["budgets"]:
        panels = curve_panels(result, norm)
        if panels:
            unit = "largest pixel change" if norm == "linf" else "L2 norm (per-pixel RMS = /28)"
            out[f"curves_{norm}"] = budget_curves(panels, run_dir / f"curves_{norm}.png", xlabel=f"budget: {unit}",
                                                  title=f"{result['experiment']}, seed {result['seed']}, {norm}")
    pairs = {pair_label(result, p["source"], p["target"]): [q["rate"] for q in p["by_cosine"]]
             for p in result["analysis"] if p["source"] != p["target"]}
    if pairs:
        out["alignment"] = quartile_bars(pairs, run_dir / "alignment.png", xlabel="gradient-cosine quartile",
                                         title="transfer rate by gradient alignment")
    return out


def log_tables(logger, result: dict, figures: dict[str, Path]) -> None:
    """W&B / file logger: the cells and the analysis as tables, and the figures."""
    columns = ["attack", "norm", "budget", "source", "target", "white_box", "rate_all", "n",
               "rate_conditional", "n_conditional", "source_success", "mean_l2", "file"]
    logger.table("transfer_cells", columns, [[c[k] for k in columns] for c in result["cells"]])
    keys = ["source", "target", "n", "mean_cosine", "median_along", "median_random", "median_own",
            "transfer_rate"]
    logger.table("transfer_analysis", keys, [[p[k] for k in keys] for p in result["analysis"]])
    for name, path in figures.items():
        logger.image(name, path)


def recompute_cells(run_dir: str | Path) -> list[dict]:
    """Every cell of a finished run's transfer.json, recomputed from the saved files alone: the
    models' run directories (models/<key>/) and each cell's adversarials file."""
    run_dir = Path(run_dir)
    result = json.loads((run_dir / TRANSFER_FILE).read_text())
    fns = {k: load_run(run_dir / MODELS_DIR / k).logits_fn for k in result["models"]}
    source_fns = {key: fns[key] if key in fns else ensemble_of([fns[m] for m in s["members"]], s["reduction"])
                  for key, s in result["sources"].items()}
    cells = []
    for c in result["cells"]:
        with np.load(run_dir / c["file"]) as f:
            x, y, x_adv = f["x"], f["y"], f["x_adv"][c["budget_index"]]
            target = f["target"] if "target" in f.files else np.full(len(y), -1)
        fooled = np.asarray(is_adversarial(batched_logits(source_fns[c["source"]], jnp.asarray(x_adv)), y, target))
        clean, adv = predicted_labels(fns[c["target"]], x), predicted_labels(fns[c["target"]], x_adv)
        cells.append({**c, **transfer_rates(y, target, fooled, clean, adv)})
    return cells
