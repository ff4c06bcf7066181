"""The single run: train (or load from the cache), evaluate, attack, bound, record.

Its run directory (adv_jax/rundir.py owns the lifecycle):
  config.yaml     the resolved config           metrics.json    flat final metrics
  params.msgpack  the trained parameters        metrics.jsonl   every logged value, in order
  run.log         the log                       wandb/          the W&B run (offline by default)
  adversarials.npz, adversarials.png            the attack's examples (attack != none)
  lipschitz.json  per-layer bounds and the lower bounds
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
from omegaconf import OmegaConf

from adv_jax import checkpoint, lipschitz
from adv_jax.attacks import LAYERED_ATTACKS, inapplicable, make_attack, model_view
from adv_jax.attacks.generate import generate, summarize
from adv_jax.attacks.input_copies import class_pool
from adv_jax.data import load_splits
from adv_jax.figures import adversarial_grid
from adv_jax.logger import Logger
from adv_jax.model_set import CLEAN_SPLITS, clean_errors, errors_cache
from adv_jax.models import Model, Params, build_model, num_params, predict
from adv_jax.run_files import ADVERSARIALS_FIGURE, ADVERSARIALS_FILE, LIPSCHITZ_FILE
from adv_jax.rundir import RunDirectory
from adv_jax.trained import train_or_load
from adv_jax.validate import ConfigError

log = logging.getLogger(__name__)


def default_name(cfg) -> str:
    return cfg.model.name


def check(cfg) -> None:
    """An attack that reads the model's layers (attacks.LAYERED_ATTACKS) is traced once on this
    model before any work, so a model it cannot run on (no hidden layer at attack.params.layer,
    no ReLU, no skip) is one ConfigError line at start-up."""
    if cfg.attack.name not in LAYERED_ATTACKS:
        return
    model = build_model(cfg.model)
    view = model_view(cfg.attack.name, model, model.init(jax.random.key(0)))
    reason = inapplicable(make_attack(cfg.attack.name, cfg.attack.params), view, model.input_shape)
    if reason:
        raise ConfigError(f"attack={cfg.attack.name} on model={cfg.model.name}: {reason}")


def attack_of(cfg, train):
    """The run's attack: cfg.attack, admix with its pool from the run's own training images (not
    read again from ADV_JAX_MNIST_DIR or the download cache)."""
    if cfg.attack.name != "admix":
        return cfg.attack
    params = OmegaConf.to_container(cfg.attack.params)
    return make_attack("admix", {**params, "admix_pool": class_pool(train.x, train.y, params.get("pool_per_class", 2))})


def attack_run(cfg, model: Model, params: Params, splits, run_dir: Path, logger: Logger):
    """Attacks the first attack.num_examples test images; writes adversarials.npz and a figure."""
    test = splits["test"]
    n = len(test) if cfg.attack.num_examples is None else min(cfg.attack.num_examples, len(test))
    log.info("attacking %d test images with %s (target: %s)", n, cfg.attack.name, cfg.attack.target)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    generated = generate(attack_of(cfg, splits["train"]), model_view(cfg.attack.name, model, params), test.x[:n],
                         test.y[:n], key=key, target=cfg.attack.target, chunk_size=cfg.attack.chunk_size)
    adv, metrics = generated.adversarials, summarize(generated)
    log.info("attack: %d of %d succeeded, mean RMS distortion %.4g, %.1f s (%.0f examples/s)",
             adv.success.sum(), n, metrics["attack/mean_distortion"], generated.seconds,
             metrics["attack/examples_per_second"])
    start = time.perf_counter()
    adv.save(run_dir / ADVERSARIALS_FILE)
    columns = min(cfg.attack.figure_columns, n)
    if columns:  # 0: no figure; a figure that fails is a warning (Logger.figure)
        logger.figure("adversarials", lambda: adversarial_grid(
            adv.x, adv.x_adv, run_dir / ADVERSARIALS_FIGURE, labels=adv.y,
            predicted=predict(model, params, adv.x_adv[:columns]), columns=columns))
    log.info("wrote %s%s, %.1f s", ADVERSARIALS_FILE, f" and {ADVERSARIALS_FIGURE}" if columns else "",
             time.perf_counter() - start)
    return metrics, adv


def lipschitz_run(cfg, model: Model, params: Params, test, adv, run_dir: Path,
                  logger: Logger) -> dict[str, Any]:
    """Per-layer upper bounds (paper's Table 5 layout), the certified bounds of
    lipschitz.methods, empirical lower bounds and, with an attack, the certified distortion
    bracket -> lipschitz.json. Returns its flat numeric entries (for metrics.json)."""
    pairs = None if adv is None else (adv.x[adv.success], adv.x_adv[adv.success])
    lip = cfg.lipschitz
    measured = lipschitz.measure(model, params, test.x, pairs, key=jax.random.fold_in(jax.random.key(cfg.seed), 2),
                                 images=lip.images, power_iters=lip.power_iters, ascent_steps=lip.ascent_steps,
                                 methods=list(lip.methods),
                                 lipsdp_max_size=lip.lipsdp_max_size, lipsdp_solver=lip.lipsdp_solver,
                                 attacked=None if adv is None else adv._asdict(), local=lip.local,
                                 local_examples=lip.local_examples, progress=True)
    (run_dir / LIPSCHITZ_FILE).write_text(json.dumps(measured.to_json(), indent=1))
    columns = list(measured.layers[0])
    logger.table("lipschitz", columns, [[row[c] for c in columns] for row in measured.layers])
    seconds = measured.seconds
    log.info("Lipschitz bounds: %s; lower bounds: %s", "  ".join(
        f"{m}={v:.4g} ({seconds[m]:.1f} s)" for m, v in measured.bounds.items()), "  ".join(
        f"{m}={v:.4g} ({seconds[m]:.1f} s)" for m, v in measured.lower_bounds.items()) or "none")
    return measured.metrics()


def work(run: RunDirectory, logger: Logger) -> dict[str, Any]:
    cfg = run.cfg
    splits = load_splits(cfg.data, cfg.model.classes)
    model, params, train_metrics = train_or_load(cfg, splits, logger,
                                                 save_to=run.path / checkpoint.PARAMS_FILE)
    errors = clean_errors(model, params, splits, cfg.data, errors_cache(cfg))
    metrics = {**{f"error/{name}": value for name, value in errors.items()}, **train_metrics,
               "model/num_params": num_params(params), "data/train_size": len(splits["train"])}
    adv = None
    if cfg.attack.name != "none":
        attack_metrics, adv = attack_run(cfg, model, params, splits, run.path, logger)
        metrics.update(attack_metrics)
    metrics.update(lipschitz_run(cfg, model, params, splits["test"], adv, run.path, logger))
    logger.table("layers", ["index", "layer"], list(enumerate(model.summary(params))))
    return metrics


def summary_line(cfg, metrics: dict[str, Any]) -> str:
    """`<model>: error/p1=…  error/p2=…  error/full=…  error/test=…` (then any other error/*):
    the line a run ends with."""
    order = [f"error/{s}" for s in CLEAN_SPLITS]
    keys = [k for k in order if k in metrics] + sorted(k for k in metrics
                                                       if k.startswith("error/") and k not in order)
    return f"{cfg.model.name}: " + "  ".join(f"{k}={metrics[k]:.4g}" for k in keys)


def run(cfg, run_dir: str | Path | None = None) -> dict[str, Any]:
    """One model into run_dir (default runs/<time>_<model>); returns its metrics."""
    return RunDirectory.for_run(cfg, run_dir, default_name(cfg)).execute(work)
