"""The fair transfer benchmark (job=transfer_benchmark; conf/experiment/transfer_benchmark.yaml
runs it on the architecture zoo): every family of experiment.benchmark.families from every
surrogate, at the same budgets and T iterations (alpha = budget / T), each family on one surrogate
as ONE compiled program (attacks.battery.Battery: its attacks x norms x budgets); adversarials
rounded to 8-bit pixels before any model sees them; every experiment model classifies every set.
The measurements (filter, bootstrap intervals, SSIM) are adv_jax/transfer_protocol.py's.

Two tables (a cell's `table`):
  fixed    every attack at T = benchmark.steps, at every budget
  matched  every attack at benchmark.matched_evals gradient evaluations per image (its steps =
           that / its evaluations per step, alpha = budget / steps), at each norm's first budget

<run_dir>/
  config.yaml  metrics.json  run.log  wandb/       as for any run (metrics.json written last)
  benchmark.json  the protocol; models (label, architecture, split, clean accuracy); surrogates;
                  attacks per table and surrogate (family, evals, steps); skipped (surrogate ->
                  attack -> why it does not apply); cells, one per table, surrogate, attack, norm,
                  budget and victim, each naming the adversarials (`file`, `row`) it came from
  adversarial_sets/<surrogate>/<table>_<family>.npz   x, y, target (N, ...), x_adv (R, E, N, 28, 28, 1)
                  rounded to 8 bits, rows (R,) "<attack>/<norm>", budgets (R, E), stamp (the run's
                  result config and the family's attacks with their hyperparameters: a redo of an
                  interrupted run reads a family back only under the same)
  models/<key>/   the models' run directories (adv_jax.load_run reads them)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import re
import zlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from adv_jax import checkpoint
from adv_jax.attacks import (ATTACKS, attack_batch, choose_targets, compile_attack_batch,
                             inapplicable, layered, make_attack, predicted_labels)
import adv_jax.attacks as attacks_package
from adv_jax.attacks.common import held_predictor
from adv_jax.attacks.battery import Battery, gradient_evals
from adv_jax.attacks.ensemble_source import REDUCTIONS, ensemble_of
from adv_jax.attacks.input_copies import blank_pool, class_pool
from adv_jax.config import BENCHMARK_FAMILIES, ENSEMBLE_FAMILY, compose
from adv_jax.data import load_splits
from adv_jax.model_set import model_config, models_for, study_examples
from adv_jax.models import build_model
from adv_jax.run_files import BENCHMARK_FILE, BENCHMARK_SETS_DIR, MODELS_DIR
from adv_jax.rundir import Run, RunDirectory, config_sha256, load_run
from adv_jax.transfer_protocol import (every_model_correct, fooled, held_ssim, imperceptibility, matched_steps,
                                       rate, to_8bit)
from adv_jax.validate import ConfigError

log = logging.getLogger(__name__)
ATTACK_KEY = 7  # fold_in(key(cfg.seed), ATTACK_KEY) seeds targets and attacks
TABLES = ("fixed", "matched")
CHUNK = 250  # images per compiled chunk: a family's rows x budgets of them stay in memory


@functools.cache
def attack_defaults(name: str) -> dict:
    """conf/attack/<name>.yaml's params, composed once per process: a job asks for each attack
    once per surrogate, norm and table, and Hydra's compose is slow beside the rest."""
    return OmegaConf.to_container(compose([f"attack={name}"]).attack.params)


def attack_params(spec: DictConfig, name: str, norm: str, steps: int, epsilon: float) -> dict:
    """conf/attack/<name>.yaml's params with the benchmark's changes and the protocol's norm,
    steps, alpha = epsilon / steps and epsilon."""
    if name not in ATTACKS:
        close = difflib.get_close_matches(name, ATTACKS, n=1)
        raise ValueError(f"unknown attack {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                         + " (conf/attack/)")
    base = copy.deepcopy(attack_defaults(name))
    changes = OmegaConf.to_container(spec.params[name]) if name in spec.params else {}
    return {**base, **changes, "norm": norm, "steps": steps, "relative_step_size": 1.0 / steps,
            "epsilon": epsilon}


def protocol_attack(spec: DictConfig, name: str, norm: str, steps: int, train=None):
    """Attack `name` under the protocol (attack_params) at its norm's first budget; admix mixes in
    images of the run's own training data (`train`: (images, labels)), else blank ones (start-up)."""
    params = attack_params(spec, name, norm, steps, spec.budgets[norm][0])
    if name == "admix":
        per_class = params.get("pool_per_class", 2)
        params["admix_pool"] = blank_pool() if train is None else class_pool(*train, per_class)
    return make_attack(name, params)


def surrogate_keys(cfg: DictConfig) -> list[str]:
    spec = cfg.experiment.benchmark
    return list(spec.surrogates) or list(cfg.experiment.models)


def families(spec: DictConfig) -> dict[str, list[str]]:
    """benchmark.families, or when empty the protocol's (config.BENCHMARK_FAMILIES)."""
    chosen = OmegaConf.to_container(spec.families) or BENCHMARK_FAMILIES
    return {family: list(names) for family, names in chosen.items()}


def families_of(spec: DictConfig, ensemble: bool) -> dict[str, list[str]]:
    """The families a surrogate runs: the ensemble strategies on an ensemble, the others on a model."""
    return {f: names for f, names in families(spec).items() if (f == ENSEMBLE_FAMILY) == ensemble}


def _probe_views(cfg: DictConfig) -> dict[str, tuple[Any, tuple]]:
    """Each surrogate's view at initial parameters (what start-up traces attacks on)."""
    exp = cfg.experiment
    needed = dict.fromkeys([*surrogate_keys(cfg), *(m for e in exp.benchmark.ensembles.values() for m in e.members)])
    built = {}
    for key in needed:
        model = build_model(model_config(cfg, key).model)
        built[key] = (layered(model, model.init(jax.random.key(0))), model.input_shape)
    views = {key: built[key] for key in surrogate_keys(cfg)}
    for key, ens in exp.benchmark.ensembles.items():
        views[key] = (ensemble_of([built[m][0] for m in ens.members], ens.reduction), built[ens.members[0]][1])
    return views


def check(cfg: DictConfig) -> None:
    """Before any training: the surrogates and ensembles name experiment models, the target mode
    and budgets are allowed, every attack and its params exist (`skipped_attacks` then finds the
    attacks that do not apply to a surrogate, also before training)."""
    exp, spec = cfg.experiment, cfg.experiment.benchmark
    if not exp.models:
        raise ConfigError("experiment.models is empty: the benchmark needs models to attack and classify")
    for key in surrogate_keys(cfg):
        if key not in exp.models:
            raise ConfigError(f"experiment.benchmark.surrogates: {key!r} is not one of experiment.models "
                              f"({list(exp.models)})")
    for key, ens in spec.ensembles.items():
        unknown = [m for m in ens.members if m not in exp.models]
        if unknown or not ens.members or ens.reduction not in REDUCTIONS:
            raise ConfigError(f"experiment.benchmark.ensembles.{key}: members {list(ens.members)} (unknown: "
                              f"{unknown}), reduction {ens.reduction!r} (one of {list(REDUCTIONS)})")
    if spec.target not in ("untargeted", "random"):
        raise ConfigError(f"experiment.benchmark.target={spec.target!r}: one of ['untargeted', 'random']")
    for norm, budgets in spec.budgets.items():
        if norm not in ("linf", "l2") or not budgets or any(b <= 0 for b in budgets):
            raise ConfigError(f"experiment.benchmark.budgets.{norm}={list(budgets)}: norms linf and l2, "
                              "each with positive budgets")
    for names in families(spec).values():
        for name in names:
            try:
                protocol_attack(spec, name, next(iter(spec.budgets)), spec.steps)
            except ValueError as e:
                raise ConfigError(f"experiment.benchmark.families: {e}") from None


def skipped_attacks(cfg: DictConfig) -> dict[str, dict[str, str]]:
    """surrogate -> attack -> why it does not apply (SGM without skips, LinBP without ReLU, ...),
    traced on initial parameters; logged once."""
    spec, out = cfg.experiment.benchmark, {}
    for key, (view, shape) in _probe_views(cfg).items():
        for name in dict.fromkeys(n for names in families_of(spec, key in spec.ensembles).values() for n in names):
            reason = inapplicable(protocol_attack(spec, name, "linf", 1), view, shape)
            if reason:
                out.setdefault(key, {})[name] = reason
                log.info("benchmark: %s does not apply to %s (%s): skipped", name, key, reason)
    return out


@dataclasses.dataclass(frozen=True)
class Source:
    """A surrogate: what its attacks run on (a layered model, or an Ensemble of them)."""

    label: str
    view: Any
    members: tuple[str, ...]


def sources(cfg: DictConfig, models: dict[str, Run]) -> dict[str, Source]:
    """The surrogate models, then benchmark.ensembles, each with its view."""
    exp = cfg.experiment
    views = {k: layered(models[k].model, models[k].params) for k in exp.models}
    out = {k: Source(exp.models[k].label or k, views[k], (k,)) for k in surrogate_keys(cfg)}
    for key, ens in exp.benchmark.ensembles.items():
        out[key] = Source(ens.label or key, ensemble_of([views[m] for m in ens.members], ens.reduction),
                          tuple(ens.members))
    return out


def is_robust(cfg: DictConfig, key: str) -> bool:
    """Whether experiment model `key` is adversarially trained (PGD or pools)."""
    adv = model_config(cfg, key).train.adversarial
    return adv.pgd_epsilon > 0 or bool(adv.layers)


def scenario(cfg: DictConfig, members: tuple[str, ...], victim: str, robust: set[str]) -> str:
    """white-box (the victim is a member of the source), robust victim (in `robust`, the keys
    `is_robust` holds for), cross-training-set (a member's architecture and training on another
    split) or cross-architecture."""
    models = cfg.experiment.models
    if victim in members:
        return "white-box"
    if victim in robust:
        return "robust victim"

    def recipe(key):
        entry = OmegaConf.to_container(models[key])
        return json.dumps({k: v for k, v in entry.items() if k not in ("label", "split")}, sort_keys=True)

    return "cross-training-set" if any(recipe(m) == recipe(victim) for m in members) else "cross-architecture"


@dataclasses.dataclass(frozen=True)
class Row:
    """One attack in one norm of a family's battery."""

    name: str
    norm: str
    attack: Any
    budgets: tuple[float, ...]
    evals: int  # gradient evaluations per image
    steps: int


def family_rows(spec: DictConfig, names: list[str], table: str, view, train: tuple) -> list[Row]:
    """The rows of one family on one source: each attack in each norm, at T = steps (fixed) or at
    matched_evals evaluations per image (matched, first budget only)."""
    rows = []
    for name in names:
        for norm, budgets in spec.budgets.items():
            attack = protocol_attack(spec, name, norm, spec.steps, train)
            steps = spec.steps
            if table == "matched":
                budgets = budgets[:1]
                steps = matched_steps(gradient_evals(attack, view), spec.steps, spec.matched_evals)
                attack = protocol_attack(spec, name, norm, steps, train)
            rows.append(Row(name, norm, attack, tuple(float(b) for b in budgets), gradient_evals(attack, view),
                            steps))
    return rows



@dataclasses.dataclass(frozen=True)
class Judges:
    """What every family's sets go through, compiled once per job as held programs (they survive
    the jax.clear_caches() after each family): each source's and victim's classes, and SSIM."""

    sources: dict[str, Callable]  # source key -> x (N, 28, 28, 1) -> classes (N,)
    victims: dict[str, Callable]
    ssim: Callable

    @classmethod
    def of(cls, srcs: dict[str, Source], victims: dict[str, Any], shape: tuple) -> "Judges":
        return cls({k: held_predictor(s.view, shape) for k, s in srcs.items()},
                   {k: held_predictor(fn, shape) for k, fn in victims.items()}, held_ssim(shape))


def family_cells(where: dict, rows: list[Row], x_adv: np.ndarray, data: dict, judges: Judges,
                 scenarios: dict[str, str], confidence: float) -> list[dict]:
    """One cell per row, budget and victim of x_adv (R, E, N, ...): success over all images and
    over the images every model gets right, with intervals, beside the set's imperceptibility."""
    x, y, target, correct = data["x"], data["y"], data["target"], data["correct"]
    flat = x_adv.reshape(-1, *x.shape[1:])
    shape = x_adv.shape[:3]
    at_source = fooled(judges.sources[where["surrogate"]](flat).reshape(shape), y, target)
    fooled_by = {v: fooled(labels(flat).reshape(shape), y, target) for v, labels in judges.victims.items()}
    ssims = judges.ssim(np.broadcast_to(x, x_adv.shape).reshape(flat.shape), flat).reshape(shape)
    cells = []
    for r, row in enumerate(rows):
        for e, budget in enumerate(row.budgets):
            seen = imperceptibility(x, x_adv[r, e], ssims[r, e])
            for victim, hits in fooled_by.items():
                cells.append({**where, "attack": row.name, "norm": row.norm, "budget": budget,
                              "budget_index": e, "row": r, "victim": victim, "scenario": scenarios[victim],
                              "evals": row.evals, "steps": row.steps,
                              "source_success": 100.0 * float(at_source[r, e].mean()),
                              "all": rate(hits[r, e], confidence), "correct": rate(hits[r, e][correct], confidence),
                              **seen})
    return cells


def set_path(where: dict) -> Path:
    """adversarial_sets/<surrogate>/<table>_<family>.npz, relative to the run directory."""
    family = re.sub(r"\W+", "_", where["family"]).strip("_")
    return Path(BENCHMARK_SETS_DIR) / where["surrogate"] / f"{where['table']}_{family}.npz"


@functools.cache
def attack_code_digest() -> str:
    """sha256 of adv_jax/attacks/*.py as installed: an attack's code changed since a set was made
    (a transform added, a bug fixed) makes it stale, as an edited hyperparameter does."""
    return checkpoint.package_source_sha256(attacks_package)


def family_stamp(config_stamp: str, rows: list[Row]) -> str:
    """The run's result-config digest joined with the family's attacks (every hyperparameter),
    budgets and the attacks' code (`attack_code_digest`): a conf/attack file or an attack module
    edited since makes a set another family's."""
    made_by = "".join(f"{r.name}/{r.norm}/{r.budgets}/{r.attack!r};" for r in rows)
    return hashlib.sha256((config_stamp + made_by + attack_code_digest()).encode()).hexdigest()


def finished_set(path: Path, rows: list[Row], stamp: str) -> np.ndarray | None:
    """x_adv of a family an interrupted attempt finished with the same config and attacks (its
    `family_stamp`), else None."""
    if not path.exists():
        return None
    with np.load(path) as f:
        if "stamp" not in f.files or str(f["stamp"]) != stamp:
            return None
        return f["x_adv"] if [str(r) for r in f["rows"]] == [f"{r.name}/{r.norm}" for r in rows] else None


def run_family(run_dir: Path, where: dict, rows: list[Row], source: Source, data: dict,
               key: jax.Array, spec: DictConfig, stamp: str) -> tuple[np.ndarray, str, dict]:
    """The family's battery on the source, one compiled program: x_adv (R, E, N, ...) (8-bit
    rounded if asked), saved with its `family_stamp` to `set_path` (returned), and the seconds it
    took to compile and to run; a set an interrupted attempt finished is read back instead."""
    rel, stamp = set_path(where), family_stamp(stamp, rows)
    if (done := finished_set(run_dir / rel, rows, stamp)) is not None:
        log.info("benchmark %s: %s on %s read back from %s", where["table"], where["family"], where["surrogate"], rel)
        return done, str(rel), {"compile": None, "run": None}
    log.info("benchmark %s: compiling %s on %s (%d attack-norm rows x %d budgets)", where["table"],
             where["family"], where["surrogate"], len(rows), len(rows[0].budgets))
    battery = Battery(tuple(r.attack for r in rows), tuple(r.budgets for r in rows))
    inputs = (battery, source.view, jnp.asarray(data["x"]), data["y"], data["target"])
    start = time.perf_counter()
    compile_attack_batch(*inputs, key=key, chunk_size=CHUNK)
    compiled = time.perf_counter()
    x_adv, _ = attack_batch(*inputs, key=key, chunk_size=CHUNK)
    seconds = {"compile": compiled - start, "run": time.perf_counter() - compiled}
    x_adv = np.moveaxis(np.asarray(x_adv), 0, 2)
    if spec.round_8bit:
        x_adv = to_8bit(x_adv)
    (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(run_dir / rel, x=data["x"], y=data["y"], target=data["target"], x_adv=x_adv,
                        rows=np.array([f"{r.name}/{r.norm}" for r in rows]),
                        budgets=np.array([r.budgets for r in rows]), stamp=stamp)
    jax.clear_caches()  # each family's program is used once: holding them all exhausts XLA's code maps
    return x_adv, str(rel), seconds


def family_key(key: jax.Array, surrogate: str, family: str, table: str) -> jax.Array:
    """A key fixed by the names (not the order) of surrogate, family and table."""
    return jax.random.fold_in(key, zlib.crc32(f"{surrogate}/{family}/{table}".encode()) & 0x7FFFFFFF)


def tables(spec: DictConfig) -> tuple[str, ...]:
    return TABLES if spec.matched_evals else TABLES[:1]


def attack_everything(cfg: DictConfig, run_dir: Path, srcs: dict[str, Source], victims: dict, data: dict,
                      skipped: dict, key: jax.Array) -> tuple[list[dict], dict, list[dict]]:
    """Every table, surrogate and family: its adversarials and cells; the attacks' evals and
    steps per table and surrogate; each family's compile and run seconds."""
    spec, cells, attacks, timing = cfg.experiment.benchmark, [], {}, []
    robust = {k for k in victims if is_robust(cfg, k)}
    judges = Judges.of(srcs, victims, data["x"].shape[1:])
    scenarios = {s: {v: scenario(cfg, src.members, v, robust) for v in victims} for s, src in srcs.items()}
    for table in tables(spec):
        for s_key, source in srcs.items():
            for family, names in families_of(spec, s_key in spec.ensembles).items():
                names = [n for n in names if n not in skipped.get(s_key, {})]
                if not names:
                    continue
                rows = family_rows(spec, names, table, source.view, data["train"])
                where = {"table": table, "family": family, "surrogate": s_key}
                x_adv, rel, seconds = run_family(run_dir, where, rows, source, data,
                                                 family_key(key, s_key, family, table), spec, config_sha256(cfg))
                start = time.perf_counter()
                cells += family_cells({**where, "file": rel}, rows, x_adv, data, judges, scenarios[s_key],
                                      spec.confidence)
                seconds["cells"] = time.perf_counter() - start
                for row in rows:
                    attacks.setdefault(table, {}).setdefault(s_key, {})[row.name] = {
                        "family": family, "evals": row.evals, "steps": row.steps}
                timing.append({**where, **seconds, "rows": len(rows), "budgets": len(rows[0].budgets),
                               "evals_per_image": sum(r.evals * len(r.budgets) for r in rows)})
                if seconds["run"] is not None:
                    log.info("benchmark %s: %s on %s, one program compiled in %.1f s, %d images in %.1f s, "
                             "%d victims' cells in %.1f s", table, family, s_key, seconds["compile"],
                             len(data["y"]), seconds["run"], len(victims), seconds["cells"])
    return cells, attacks, timing


def benchmark_data(cfg: DictConfig, models: dict[str, Run], key: jax.Array) -> dict:
    """The attacked images, their labels and targets, every model's clean predictions, the filter
    (every model correct) and the training images admix mixes in."""
    clean = study_examples(cfg)
    x, y = np.asarray(clean.x), np.asarray(clean.y)
    spec = cfg.experiment.benchmark
    target = np.asarray(choose_targets(spec.target, jnp.zeros((len(y), 10)), jnp.asarray(y), key=key))
    clean_predictions = {k: predicted_labels(run.logits_fn, x) for k, run in models.items()}
    train = load_splits(cfg.data)["full"]
    return {"x": x, "y": y, "target": target, "clean": clean_predictions,
            "correct": every_model_correct(clean_predictions, y), "train": (train.x, train.y)}


def work(run: RunDirectory, logger) -> dict[str, Any]:
    cfg, start = run.cfg, time.perf_counter()
    exp, spec = cfg.experiment, cfg.experiment.benchmark
    skipped = skipped_attacks(cfg)
    models = models_for(cfg, run.path)
    models_seconds = time.perf_counter() - start
    jax.clear_caches()  # the models' Lipschitz programs
    target_key, attack_key = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), ATTACK_KEY))
    data = benchmark_data(cfg, models, target_key)
    log.info("benchmark: %d images, %d classified correctly by all %d models", len(data["y"]),
             int(data["correct"].sum()), len(models))
    srcs = sources(cfg, models)
    victims = {k: run_m.logits_fn for k, run_m in models.items()}
    cells, attacks, timing = attack_everything(cfg, run.path, srcs, victims, data, skipped, attack_key)
    result = {"experiment": exp.name, "seed": cfg.seed, "protocol": OmegaConf.to_container(spec),
              "families": families(spec),
              "num_examples": len(data["y"]), "num_correct": int(data["correct"].sum()),
              "models": {k: {"label": exp.models[k].label or k, "model": exp.models[k].model,
                             "split": exp.models[k].split, "robust": is_robust(cfg, k),
                             "clean_accuracy": 100.0 * float(np.mean(data["clean"][k] == data["y"]))}
                         for k in exp.models},
              "surrogates": {k: {"label": s.label, "members": list(s.members)} for k, s in srcs.items()},
              "attacks": attacks, "skipped": skipped, "cells": cells, "timing": timing,
              "seconds": time.perf_counter() - start, "models_seconds": models_seconds}
    run.write_json(BENCHMARK_FILE, result)
    log_tables(logger, result)
    return summary(result)


def run(cfg, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Runs the benchmark on cfg.experiment's models into run_dir; returns flat summary metrics."""
    return RunDirectory.for_run(cfg, run_dir, cfg.experiment.name).execute(work)


def summary(result: dict) -> dict[str, Any]:
    """Flat metrics: per table, attack, norm, budget and scenario, the mean success (%, all
    images) over its (surrogate, victim) cells; the time."""
    groups: dict[str, list[float]] = {}
    for c in result["cells"]:
        name = f"benchmark/{c['table']}/{c['attack']}/{c['norm']}/{c['budget']:g}/{c['scenario'].replace(' ', '_')}"
        groups.setdefault(name, []).append(c["all"]["rate"])
    return {"experiment/seconds": result["seconds"], **{k: float(np.mean(v)) for k, v in groups.items()}}


CELL_COLUMNS = ["table", "family", "attack", "norm", "budget", "surrogate", "victim", "scenario", "evals",
                "steps", "source_success", "rate_all", "low_all", "high_all", "rate_correct", "low_correct",
                "high_correct", "n_correct", "l2", "linf", "ssim", "file"]


def cell_row(c: dict) -> list:
    flat = {**c, **{f"{k}_all": c["all"][k] for k in ("rate", "low", "high")},
            **{f"{k}_correct": c["correct"][k] for k in ("rate", "low", "high")}, "n_correct": c["correct"]["n"]}
    return [flat[k] for k in CELL_COLUMNS]


def log_tables(logger, result: dict) -> None:
    """W&B / file logger: every cell as one table."""
    logger.table("benchmark_cells", CELL_COLUMNS, [cell_row(c) for c in result["cells"]])


def recompute_cells(run_dir: str | Path) -> list[dict]:
    """Every cell of a finished run's benchmark.json, recomputed from the saved files alone: the
    models' run directories and each cell's adversarials file."""
    run_dir = Path(run_dir)
    result = json.loads((run_dir / BENCHMARK_FILE).read_text())
    fns = {k: load_run(run_dir / MODELS_DIR / k).logits_fn for k in result["models"]}
    confidence, out, files = result["protocol"]["confidence"], [], {}
    for c in result["cells"]:
        if c["file"] not in files:
            with np.load(run_dir / c["file"]) as f:
                files[c["file"]] = {k: f[k] for k in ("x", "y", "target", "x_adv")}
            x, y = files[c["file"]]["x"], files[c["file"]]["y"]
            files[c["file"]]["correct"] = every_model_correct({k: predicted_labels(fn, x) for k, fn in fns.items()}, y)
        f, correct = files[c["file"]], files[c["file"]]["correct"]
        hits = fooled(predicted_labels(fns[c["victim"]], f["x_adv"][c["row"], c["budget_index"]]), f["y"], f["target"])
        out.append({**c, "all": rate(hits, confidence), "correct": rate(hits[correct], confidence)})
    return out
