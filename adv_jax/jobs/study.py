"""The transfer study (conf/experiment/*.yaml) as one job: `run(cfg, run_dir)`.

The models come from the model-set layer (`model_set.models_for`: each model's own config, from
the cache or trained, recorded in a per-model run directory that `adv_jax.load_run` reads); in
each, the study attacks the experiment's examples. Then every model's adversarials are fed to
every model.

<run_dir>/
  config.yaml  metrics.json  run.log  wandb/          as for any run (metrics.json is written last)
  matrix.json   model names, run directories, rows (kind, source, stddev, clipped, errors in percent),
                the adversarial block `matrix` (percent) and `distortion`, clean errors, checks
  matrix.csv  matrix.md  heatmap.png
  models/<key>/ config.yaml  params.msgpack  adversarials.npz  metrics.json
`recompute_rows(run_dir)` rebuilds every row from those files alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf

from adv_jax import transfer
from adv_jax.attacks import model_view
from adv_jax.attacks.generate import Adversarials, generate, summarize
from adv_jax.config import as_config
from adv_jax.data import Dataset
from adv_jax.figures_transfer import transfer_heatmap
from adv_jax.model_set import CLEAN_SPLITS, MODELS_DIR, PerModel, model_config, models_for, study_examples
from adv_jax.models import logits_fn, predict
from adv_jax.run_files import ADVERSARIALS_FILE, MATRIX_FILE
from adv_jax.rundir import RunDirectory, load_run

log = logging.getLogger(__name__)
NOISE_KEY = 3  # fold_in(key(cfg.seed), NOISE_KEY) seeds every noise row of an experiment


def default_name(cfg) -> str:
    return cfg.experiment.name


def _label(cfg: DictConfig, key: str) -> str:
    return cfg.experiment.models[key].label or key


def attack_each(cfg: DictConfig, examples: Dataset) -> PerModel:
    """The study's per-model work: `examples` attacked with cfg.attack (the single run's key),
    adversarials.npz written, the attack's summary returned."""
    def work(key: str, model_dir: Path, model, params) -> dict[str, Any]:
        key_ = jax.random.fold_in(jax.random.key(cfg.seed + cfg.experiment.models[key].seed_offset), 1)
        generated = generate(cfg.attack, model_view(cfg.attack.name, model, params), examples.x, examples.y,
                             key=key_)
        generated.adversarials.save(model_dir / ADVERSARIALS_FILE)
        return {**summarize(generated),
                "attack/mean_distortion_all": float(generated.adversarials.distortion().mean())}

    return work


def model_runs(cfg: DictConfig, examples: Dataset, run_dir: Path) -> dict[str, tuple]:
    """key -> (model, params, adversarials, metrics) of every model (`model_set.models_for`, each
    attacked on `examples` in its own run directory)."""
    runs = models_for(cfg, run_dir, per_model=attack_each(cfg, examples))
    return {key: (r.model, r.params, Adversarials.load(r.path / ADVERSARIALS_FILE), r.metrics)
            for key, r in runs.items()}


def _predictor(model, params):
    return lambda x: np.asarray(predict(model, params, x))


def rows_for(cfg: DictConfig, runs: list[tuple], examples) -> list[transfer.Row]:
    """The study's rows from (model, params, adversarials) per model, keys from cfg.seed."""
    exp = cfg.experiment
    labels = [_label(cfg, k) for k in exp.models]
    return transfer.transfer_rows(
        [_predictor(m, p) for m, p, _ in runs], labels, examples.x, examples.y,
        [a.x_adv for _, _, a in runs], key=jax.random.fold_in(jax.random.key(cfg.seed), NOISE_KEY),
        noise_stddevs=list(exp.noise_stddevs), amplify_to=exp.amplify_to)


def recompute_rows(run_dir: str | Path) -> list[transfer.Row]:
    """Every row of a finished study, rebuilt from its config and per-model run directories."""
    run_dir = Path(run_dir)
    cfg = as_config(OmegaConf.load(run_dir / "config.yaml"))
    runs = []
    for key in cfg.experiment.models:
        run = load_run(run_dir / MODELS_DIR / key)
        runs.append((run.model, run.params, Adversarials.load(run.path / ADVERSARIALS_FILE)))
    adv = runs[0][2]
    return rows_for(cfg, runs, Dataset(adv.x, adv.y))


def group_id(cfg: DictConfig) -> str:
    """Identifies runs that differ only in their seed (aggregate.py averages over those): the
    config and every model's own (its conf/model entry's contents, which the config only names)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container["model_configs"] = {key: OmegaConf.to_container(model_config(cfg, key).model, resolve=True)
                                  for key in cfg.experiment.models}
    for k in ("seed", "wandb", "cache_dir"):
        container.pop(k, None)
    for k in ("mnist_dir", "source", "mnist_url", "download_dir"):  # where MNIST came from
        container["data"].pop(k, None)
    return hashlib.sha256(json.dumps(container, sort_keys=True).encode()).hexdigest()[:12]


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.exists() else []


def write_results(cfg: DictConfig, run_dir: Path, rows, model_metrics: dict[str, dict],
                  seconds: float) -> dict[str, Any]:
    """matrix.json, matrix.csv, matrix.md and heatmap.png; returns matrix.json's content."""
    exp, keys = cfg.experiment, list(cfg.experiment.models)
    labels = [_label(cfg, k) for k in keys]
    adv = transfer.block(rows, "adversarial")
    clean_cols, clean_rows = transfer.clean_table(
        labels, CLEAN_SPLITS, [{s: model_metrics[k][f"error/{s}"] for s in CLEAN_SPLITS} for k in keys],
        [exp.models[k].split for k in keys], [r.stddev for r in rows if r.kind == "adversarial"],
        [model_metrics[k]["attack/success_rate"] for k in keys])
    columns, body = transfer.matrix_table(labels, rows)
    result = {
        "experiment": exp.name, "seed": cfg.seed, "group": group_id(cfg), "overrides": _overrides(run_dir),
        "models": labels, "keys": keys, "run_dirs": [f"models/{k}" for k in keys],
        "examples": {"split": exp.examples, "num_examples": model_metrics[keys[0]]["attack/num_examples"]},
        "attack": OmegaConf.to_container(cfg.attack),
        "matrix": (100 * adv).round(4).tolist(),
        "distortion": [r.stddev for r in rows if r.kind == "adversarial"],
        "rows": [{"name": r.name, "kind": r.kind, "source": r.source, "stddev": r.stddev,
                  "clipped": r.clipped, "realized_stddev": r.realized_stddev,
                  "errors": (100 * r.errors).round(4).tolist()} for r in rows],
        "clean": {k: {s: 100 * model_metrics[k][f"error/{s}"] for s in (*CLEAN_SPLITS, "train")}
                  for k in keys},
        "models_metrics": model_metrics,
        "checks": transfer.structure_checks(rows),
        "noise_key": f"fold_in(key({cfg.seed}), {NOISE_KEY}), then fold_in(row)",
        "seconds": seconds,
    }
    (run_dir / MATRIX_FILE).write_text(json.dumps(result, indent=1))
    (run_dir / "matrix.csv").write_text(transfer.to_csv(columns, body))
    (run_dir / "matrix.md").write_text(
        f"# {exp.name} (seed {cfg.seed}, {result['examples']['num_examples']} {exp.examples} images, "
        f"attack {cfg.attack.name})\n\nClean errors (percent):\n\n"
        + transfer.markdown(clean_cols, clean_rows)
        + "\nError of the column's model on the row's images (percent):\n\n"
        + transfer.markdown(columns, body))
    transfer_heatmap([r.name for r in rows], labels, 100 * np.array([r.errors for r in rows]),
                     run_dir / "heatmap.png", title=f"{exp.name}, seed {cfg.seed}")
    return result


def work(run: RunDirectory, logger) -> dict[str, Any]:
    cfg, start = run.cfg, time.perf_counter()
    if not cfg.experiment.models:
        raise ValueError(f"experiment {cfg.experiment.name!r} lists no models (experiment.models is empty)")
    examples = study_examples(cfg)
    runs = model_runs(cfg, examples, run.path)
    rows = rows_for(cfg, [r[:3] for r in runs.values()], examples)
    result = write_results(cfg, run.path, rows, {k: r[3] for k, r in runs.items()},
                           time.perf_counter() - start)
    summary = _summary(result)
    _log(logger, run.path, result)
    log.info("experiment %s done in %.0f s: %s", cfg.experiment.name, summary["experiment/seconds"],
             result["checks"])
    return summary


def run(cfg, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Runs the study `cfg.experiment` into run_dir; returns flat summary metrics."""
    return RunDirectory.for_run(cfg, run_dir, default_name(cfg)).execute(work)


def _summary(result: dict) -> dict[str, Any]:
    """Flat metrics: mean diagonal / off-diagonal per kind, checks, clean test errors, time."""
    m = len(result["models"])
    off = ~np.eye(m, dtype=bool)
    out: dict[str, Any] = {"experiment/seconds": result["seconds"]}
    for kind, clipped in (("adversarial", True), ("noise", True), ("amplified", True),
                          ("noise", False), ("amplified", False)):
        block = transfer.saved_block(result["rows"], kind, clipped)
        name = kind if clipped else f"{kind}_unclipped"
        if block.size:
            out[f"transfer/{name}/diagonal"] = float(np.diag(block).mean())
            out[f"transfer/{name}/off_diagonal"] = float(block[off].mean()) if m > 1 else float("nan")
    for check, ok in result["checks"].items():
        out[f"check/{check}"] = ok
    for key, label in zip(result["keys"], result["models"]):
        out[f"clean/{key}/test"] = result["clean"][key]["test"]
    return out


def _log(logger, run_dir: Path, result: dict) -> None:
    columns = ["examples", "kind", *result["models"], "stddev"]
    logger.table("transfer", columns, [[r["name"], r["kind"], *r["errors"], r["stddev"]]
                                       for r in result["rows"]])
    logger.table("clean", ["model", *CLEAN_SPLITS, "train"],
                 [[label, *(result["clean"][k][s] for s in (*CLEAN_SPLITS, "train"))]
                  for k, label in zip(result["keys"], result["models"])])
    logger.image("heatmap", run_dir / "heatmap.png")
