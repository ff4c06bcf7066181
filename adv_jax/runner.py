"""`run(cfg, run_dir)`: train (or load from the cache), evaluate, attack, and record a run.

A run directory describes itself:
  config.yaml     the resolved config           metrics.json   flat final metrics (README lists them)
  params.msgpack  the trained parameters        metrics.jsonl  every logged value, in order
  run.log         the log                       wandb/         the W&B run (offline by default)
`load_run(run_dir)` reads it back. Usable with or without Hydra.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
from omegaconf import DictConfig, OmegaConf

from adv_jax import checkpoint, devices, lipschitz
from adv_jax.attacks import make_attack, single_example
from adv_jax.attacks.generate import generate, summarize
from adv_jax.attacks.targets import TARGET_MODES
from adv_jax.config import Config
from adv_jax.figures import adversarial_grid
from adv_jax.data import load_splits
from adv_jax.logger import Logger, open_logger
from adv_jax.models import Model, Params, build_model, logits_fn, num_params, predict
from adv_jax.train import evaluate, train_model

log = logging.getLogger(__name__)
RUN_FILES = ("config.yaml", "metrics.json", "metrics.jsonl", "params.msgpack", "run.log")
EVAL_SPLITS = ("p1", "p2", "full", "test")


def as_config(cfg: Any) -> DictConfig:
    """A typed, validated DictConfig from a Config dataclass, a dict or a DictConfig.

    Merging into a fresh schema also rejects keys appended with Hydra's `+key=value`.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg)  # drops Hydra's flags, which would let `+key` through
    return OmegaConf.merge(OmegaConf.structured(Config), cfg)


def train_or_load(cfg: DictConfig, splits, logger: Logger | None = None) -> tuple[Model, Params, dict]:
    """The model `cfg` describes, from the cache if it was trained before (and train.cache)."""
    model = build_model(cfg.model)
    if cfg.train.cache and (hit := checkpoint.read_cache(cfg, model)) is not None:
        log.info("loaded %s from the cache: %s", cfg.model.name, checkpoint.cache_entry(cfg))
        return model, hit[0], {**hit[1], "train/cached": True}
    log.info("training %s on %s (%d images)", cfg.model.name, cfg.data.split, len(splits["train"]))
    on_epoch = (lambda i, loss: logger.log({"train/loss": loss, "train/epoch": i})) if logger else None
    params, metrics = train_model(model, cfg.model, cfg.train, splits["train"],
                                  jax.random.key(cfg.seed), on_epoch=on_epoch)
    if cfg.train.cache:
        checkpoint.write_cache(cfg, params, metrics)
    return model, params, {**metrics, "train/cached": False}


def _check_attack(cfg: DictConfig) -> None:
    """Fails before any training on an unknown attack name or hyperparameter."""
    if cfg.attack.name != "none":
        make_attack(cfg.attack.name, cfg.attack.params)
    if cfg.attack.target not in TARGET_MODES:
        raise ValueError(f"unknown attack.target {cfg.attack.target!r}; choose one of {list(TARGET_MODES)}")


def attack_run(cfg: DictConfig, model: Model, params: Params, test, run_dir: Path,
               logger: Logger) -> dict[str, Any]:
    """Attacks the first attack.num_examples test images; writes adversarials.npz and a figure."""
    n = len(test) if cfg.attack.num_examples is None else min(cfg.attack.num_examples, len(test))
    log.info("attacking %d test images with %s (target: %s)", n, cfg.attack.name, cfg.attack.target)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    generated = generate(cfg.attack, logits_fn(model, params), test.x[:n], test.y[:n], key=key)
    adv = generated.adversarials
    adv.save(run_dir / "adversarials.npz")
    metrics = summarize(generated)
    columns = cfg.attack.figure_columns
    predicted = predict(model, params, adv.x_adv[:columns])
    figure = adversarial_grid(adv.x, adv.x_adv, run_dir / "adversarials.png", labels=adv.y,
                              predicted=predicted, columns=columns)
    logger.image("adversarials", figure)
    return metrics, adv


def lipschitz_run(cfg: DictConfig, model: Model, params: Params, test, adv, run_dir: Path,
                  logger: Logger) -> dict[str, Any]:
    """Per-layer upper bounds (paper's Table 5 layout) and empirical lower bounds -> lipschitz.json."""
    table = lipschitz.layer_table(model, params, model.input_shape)
    bound = lipschitz.network_bound(table)
    metrics = {"lipschitz/upper_bound": bound}
    metrics.update({f"lipschitz/layer{row['index']}": row["bound"] for row in table})
    single = single_example(lambda x: model.apply(params, x))
    if cfg.lipschitz.images:
        key = jax.random.fold_in(jax.random.key(cfg.seed), 2)
        metrics["lipschitz/jacobian_lower_bound"] = float(lipschitz.max_jacobian_norm(
            single, jnp.asarray(test.x[: cfg.lipschitz.images]), key, cfg.lipschitz.power_iters))
    # Only pairs that moved: a "success" on an already-misclassified image has x' = x.
    moved = None if adv is None else adv.success & (adv.distortion() > 0)
    if moved is not None and moved.any():
        apply = lambda x: model.apply(params, x)  # noqa: E731
        ok = moved
        metrics["lipschitz/pair_ratio_lower_bound"] = float(lipschitz.pair_ratio_bound(
            apply, jnp.asarray(adv.x[ok]), jnp.asarray(adv.x_adv[ok])))
    (run_dir / "lipschitz.json").write_text(json.dumps({"layers": table, **metrics}, indent=1))
    columns = list(table[0])
    logger.table("lipschitz", columns, [[row[c] for c in columns] for row in table])
    return metrics


def run(cfg: Any, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Runs one job into `run_dir` (default: runs/<time>_<model>) and returns its metrics."""
    cfg = as_config(cfg)
    devices.use_cpu_devices(cfg.cpu_devices)
    if cfg.experiment.name != "none":  # a transfer study: several models, one matrix
        from adv_jax.experiment import run_experiment

        return run_experiment(cfg, run_dir)
    if cfg.demo.name != "none":  # a demonstration (scripts/demo.py demo=NAME)
        from adv_jax.demos import run_demo

        return run_demo(cfg, run_dir)
    _check_attack(cfg)
    run_dir, resolved, finished = prepare_run_dir(cfg, run_dir, cfg.model.name)
    if finished is not None:
        return finished
    handler = _attach_log_file(run_dir)
    try:
        (run_dir / "config.yaml").write_text(resolved)
        splits = load_splits(cfg.data, cfg.model.classes)
        with open_logger(cfg, run_dir, name=run_dir.name) as logger:
            model, params, train_metrics = train_or_load(cfg, splits, logger)
            checkpoint.save_params(run_dir / checkpoint.PARAMS_FILE, params)
            errors = split_errors(model, params, splits, cfg.data)
            metrics = {
                **{f"error/{s}": errors[s] for s in EVAL_SPLITS},
                "error/train": errors["train"],
                **train_metrics,
                "model/num_params": num_params(params),
                "data/train_size": len(splits["train"]),
            }
            adv = None
            if cfg.attack.name != "none":
                attack_metrics, adv = attack_run(cfg, model, params, splits["test"], run_dir, logger)
                metrics.update(attack_metrics)
            metrics.update(lipschitz_run(cfg, model, params, splits["test"], adv, run_dir, logger))
            logger.summary(metrics)
            logger.table("layers", ["index", "layer"], list(enumerate(model.summary(params))))
            (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        log.info("%s: %s", cfg.model.name, "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                                    if k.startswith("error/")))
        return metrics
    finally:
        if handler:
            logging.getLogger().removeHandler(handler)
            handler.close()


def split_errors(model: Model, params: Params, splits: dict, data_cfg) -> dict[str, float]:
    """Error rate (fraction) on every EVAL_SPLITS split and on "train", each image evaluated once:
    P1 and P2 partition the full training set, and an unlimited training split is one of them."""
    errors = evaluate(model, params, {s: splits[s] for s in ("p1", "p2", "test")})
    n1, n2 = len(splits["p1"]), len(splits["p2"])
    errors["full"] = (errors["p1"] * n1 + errors["p2"] * n2) / (n1 + n2)
    if data_cfg.train_limit is None or data_cfg.train_limit >= len(splits[data_cfg.split]):
        errors["train"] = errors[data_cfg.split]
    else:
        errors["train"] = evaluate(model, params, {"t": splits["train"]})["t"]
    return errors


def prepare_run_dir(cfg: DictConfig, run_dir: str | Path | None,
                    name: str) -> tuple[Path, str, dict[str, Any] | None]:
    """(run_dir, default runs/<time>_<name>; the resolved config as YAML; the metrics of a run
    that already finished there with this config, else None)."""
    run_dir = Path(run_dir or Path("runs") / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{name}")
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    finished = _finished(run_dir, resolved)
    if finished is not None:
        log.info("%s already finished with this config; skipping (delete metrics.json to redo)", run_dir)
    return run_dir, resolved, finished


def _finished(run_dir: Path, resolved_config: str) -> dict[str, Any] | None:
    """The metrics of a run that already completed in run_dir with the same config, else None.

    metrics.json is written last, so its presence means the run finished; this is what lets an
    interrupted multirun, started again with the same hydra.sweep.dir, skip its finished jobs.
    """
    metrics, config = run_dir / "metrics.json", run_dir / "config.yaml"
    if metrics.exists() and config.exists() and config.read_text() == resolved_config:
        return json.loads(metrics.read_text())
    return None


def _attach_log_file(run_dir: Path) -> logging.Handler | None:
    """Logs to <run_dir>/run.log unless Hydra already does."""
    root = logging.getLogger()
    target = (run_dir / "run.log").resolve()
    if any(getattr(h, "baseFilename", None) == str(target) for h in root.handlers):
        return None
    handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run read back from its directory."""

    path: Path
    config: DictConfig
    metrics: dict[str, Any]
    model: Model
    params: Params

    @property
    def logits_fn(self) -> Callable[[jax.Array], jax.Array]:
        """Jittable: float32 images (B, 28, 28, 1) in [0, 1] -> logits (B, num_classes)."""
        return logits_fn(self.model, self.params)


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = as_config(OmegaConf.load(run_dir / "config.yaml"))
    model = build_model(cfg.model)
    params = checkpoint.load_params(run_dir / checkpoint.PARAMS_FILE, model)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return Run(run_dir, cfg, metrics, model, params)
