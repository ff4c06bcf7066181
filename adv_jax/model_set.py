"""The model set of a study: every model `cfg.experiment.models` names, each trained or loaded
into its own run directory, with the same clean errors whatever the job.

  model_config(cfg, key)          the full run config of experiment model `key`
  clean_errors(model, params, …)  error on p1, p2, full, test, train (and validation) splits,
                                  remembered beside the model cache
  models_for(cfg, run_dir)        key -> rundir.Run, each models/<key>/ made by RunDirectory.execute
  study_examples(cfg)             the images a study attacks

A study's analyses (the cross-model matrix, the transfer-attack tables) sit on top: they get the
runs and may add per-model work (the study's own attack) inside the same run directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from omegaconf import DictConfig, OmegaConf

from adv_jax import checkpoint, lipschitz
from adv_jax.config import derive
from adv_jax.data import Dataset, load_splits
from adv_jax.logger import Logger
import adv_jax.models as models_package
from adv_jax.models import Model, Params
from adv_jax.run_files import LIPSCHITZ_FILE, MODELS_DIR, PARAMS_FILE
from adv_jax.rundir import Run, RunDirectory, load_run, write_file
from adv_jax.train import evaluate
from adv_jax.trained import Trained, train_or_load_all

log = logging.getLogger(__name__)
CLEAN_SPLITS = ("p1", "p2", "full", "test")
# work(key, run_dir, model, params) -> metrics: what a study does to each model beside training
PerModel = Callable[[str, Path, Model, Params], dict[str, Any]]


def model_config(cfg: DictConfig, key: str) -> DictConfig:
    """The full config of experiment model `key`: what `sweep.py model=<m> data=<split>` builds
    (so the same cache entry), with the entry's overrides and seed cfg.seed + seed_offset. Its
    model runs are not logged to W&B on their own: the study's run logs their tables."""
    entry = cfg.experiment.models[key]
    changes = {k: entry[k] for k in ("hidden", "weight_decay") if entry[k] is not None}
    derived = derive(cfg, entry.model, entry.split,
                     model_changes=OmegaConf.merge(changes, entry.model_overrides),
                     train_changes=entry.train_overrides, seed=cfg.seed + entry.seed_offset)
    derived.wandb.mode = "disabled"
    return derived


def clean_errors(model: Model, params: Params, splits: dict, data_cfg, cache_dir: str | None = None
                 ) -> dict[str, float]:
    """Error rate (fraction) on every CLEAN_SPLITS split, on "train" and on "validation" (when
    data.validation holds images out). Given `cache_dir` (`errors_cache`), remembered there
    (`errors_entry`): a cached model's errors are measured once, and never served for another
    model, other params, other images or other forward code."""
    entry = errors_entry(cache_dir, model, params, splits, data_cfg) if cache_dir else None
    if entry is not None:
        try:
            errors = {k: float(v) for k, v in json.loads(entry.read_text()).items()}
            log.info("clean errors of the same model and images read back from %s", entry)
            return errors
        except (OSError, ValueError, AttributeError):
            pass  # absent or unreadable: measured again and rewritten
    errors = _measured_errors(model, params, splits, data_cfg)
    if entry is not None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write_atomic(entry, json.dumps(errors, indent=1))
        except OSError as e:
            log.warning("could not remember the clean errors in %s: %s; the run goes on", entry, e)
    return errors


def errors_cache(cfg: DictConfig) -> str | None:
    """Where a run's clean errors are remembered: its model cache, when train.cache is on."""
    return cfg.cache_dir if cfg.train.cache else None


def _measured_errors(model: Model, params: Params, splits: dict, data_cfg) -> dict[str, float]:
    """clean_errors' numbers, each image evaluated once where it can be: P1 and P2 partition the
    full training set, and an unlimited training split is one of them."""
    errors = evaluate(model, params, {s: splits[s] for s in ("p1", "p2", "test")})
    n1, n2 = len(splits["p1"]), len(splits["p2"])
    errors["full"] = (errors["p1"] * n1 + errors["p2"] * n2) / (n1 + n2)
    if "validation" in splits:
        errors["validation"] = evaluate(model, params, {"v": splits["validation"]})["v"]
    if "validation" not in splits and (data_cfg.train_limit is None
                                       or data_cfg.train_limit >= len(splits[data_cfg.split])):
        errors["train"] = errors[data_cfg.split]
    else:
        errors["train"] = evaluate(model, params, {"t": splits["train"]})["t"]
    return errors


def errors_entry(cache_dir: str, model: Model, params: Params, splits: dict, data_cfg) -> Path:
    """<cache_dir>/errors/<key>.json, the key a sha256 of everything the errors depend on: the
    model (its layers, a user module's source), the forward code (adv_jax/models/), the params,
    every split clean_errors reads (images and labels) and the training split's name."""
    names = sorted(s for s in ("p1", "p2", "test", "validation", "train") if s in splits)
    sources = sorted(checkpoint.module_source_sha256(layer.module.target) for layer in model.layers
                     if layer.module is not None)
    identity = [checkpoint.CACHE_VERSION, checkpoint.package_source_sha256(models_package), repr(model), sources,
                checkpoint.params_fingerprint(params), data_cfg.split,
                {s: checkpoint.data_fingerprint(splits[s]) for s in names}]
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(os.path.expanduser(cache_dir)) / "errors" / f"{key}.json"


def _record(cfg_m: DictConfig, key: str, model_dir: Path, trained: Trained,
            per_model: PerModel | None) -> Run:
    """One model's run directory through the one lifecycle: params, clean errors, per-layer
    Lipschitz bounds (lipschitz.json), training metrics and the study's per-model work,
    metrics.json last."""
    model, params, train_metrics = trained

    def work(run: RunDirectory, logger: Logger) -> dict[str, Any]:
        checkpoint.save_params(run.path / PARAMS_FILE, params)
        errors = clean_errors(model, params, load_splits(cfg_m.data, cfg_m.model.classes), cfg_m.data,
                              errors_cache(cfg_m))
        # Per-layer bounds and their product: cheap, and what reports compare across models.
        bounds = lipschitz.measure(model, params, None, None, key=jax.random.key(0), images=0,
                                   power_iters=1, methods=["product"])
        write_file(run.path / LIPSCHITZ_FILE, json.dumps(bounds.to_json(), indent=1))
        metrics = {**{f"error/{s}": e for s, e in errors.items()}, **train_metrics, **bounds.metrics()}
        return {**metrics, **(per_model(key, run.path, model, params) if per_model else {})}

    metrics = RunDirectory.for_run(cfg_m, model_dir, key).execute(work)
    return Run(model_dir, cfg_m, metrics, model, params)


def models_for(cfg: DictConfig, run_dir: Path, per_model: PerModel | None = None) -> dict[str, Run]:
    """key -> Run of every experiment model, in cfg.experiment.models' order: finished model run
    directories read back (an interrupted study resumes), the rest trained or loaded from the
    cache (together where they can share one program, with experiment.ensemble_seeds' models
    for the cache) and recorded, `per_model` run inside each new one."""
    exp = cfg.experiment
    # Every model's config is fixed now: conf/model files edited during a long study must not
    # change its later models.
    configs = {key: model_config(cfg, key) for key in exp.models}
    runs, pending = {}, {}
    for key, cfg_m in configs.items():
        model_dir = run_dir / MODELS_DIR / key
        if RunDirectory(model_dir, cfg_m).finished() is not None:
            runs[key] = load_run(model_dir)
        else:
            pending[key] = cfg_m
    others = [model_config(OmegaConf.merge(cfg, {"seed": seed}), key)
              for seed in exp.ensemble_seeds if seed != cfg.seed for key in exp.models]
    trained = train_or_load_all(list(pending.values()) + (others if pending else []),
                                together=exp.train_together)
    for (key, cfg_m), one in zip(pending.items(), trained):
        log.info("experiment %s: model %s", exp.name, key)
        runs[key] = _record(cfg_m, key, run_dir / MODELS_DIR / key, one, per_model)
    return {key: runs[key] for key in configs}


def study_examples(cfg: DictConfig) -> Dataset:
    """The images a study attacks: the first experiment.num_examples (None: all) of the
    experiment.examples split."""
    exp = cfg.experiment
    data = load_splits(cfg.data)[exp.examples]
    n = len(data) if exp.num_examples is None else min(exp.num_examples, len(data))
    return Dataset(data.x[:n], data.y[:n])
