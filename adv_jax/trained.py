"""Trained models for run configs: from the model cache, or trained and then cached.

  train_or_load(cfg, splits)   one model: cached, or `train.train_model` with the regimes the
                               config asks for (`classifier_regime`: adversarial training or the
                               plain fit; an autoencoder model's pretraining cached on its own:
                               `autoencoder_stage`)
  train_or_load_all(cfgs)      several: cached ones loaded, the rest trained, those that share an
                               architecture and a minibatch optimizer together as one vmapped
                               ensemble (adv_jax/ensemble.py); each cached under its own key

Both return (model, params, metrics) directly: nothing travels through the disk. A cache write
that fails is a warning (checkpoint.write_cache); the run goes on with the model it trained.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
from omegaconf import OmegaConf, open_dict

from adv_jax import adversarial_training, checkpoint, ensemble
from adv_jax.config import ModelConfig, TrainConfig
from adv_jax.data import Dataset, load_splits
from adv_jax.logger import Logger
from adv_jax.models import Model, Params, build_model
from adv_jax.train import MINIBATCH_OPTIMIZERS, fit_classifier, pretrain_autoencoder, train_model

log = logging.getLogger(__name__)
Trained = tuple[Model, Params, dict[str, Any]]


def train_or_load(cfg, splits: dict[str, Dataset], logger: Logger | None = None,
                  save_to: Path | None = None) -> Trained:
    """The model `cfg` describes, from the cache if it was trained before (and train.cache).
    `save_to`: the run directory's own params file, written before the cache entry."""
    model = build_model(cfg.model)
    if cfg.model.get("params_file"):  # given parameters: never trained, never cached
        return model, *_given_params(cfg, model, save_to)
    if cfg.train.cache and (hit := checkpoint.read_cache(cfg, model, splits["train"])) is not None:
        log.info("loaded %s from the cache: %s", cfg.model.name, checkpoint.cache_entry(cfg, splits["train"]))
        if save_to is not None:
            checkpoint.save_params(save_to, hit[0])
        return model, hit[0], {**hit[1], "train/cached": True}
    log.info("training %s on %s (%d images)", cfg.model.name, cfg.data.split, len(splits["train"]))
    on_epoch = (lambda i, loss: logger.log({"train/loss": loss, "train/epoch": i})) if logger else None
    params, metrics = train_model(model, cfg.model, cfg.train, splits["train"],
                                  jax.random.key(cfg.seed), on_epoch=on_epoch,
                                  pretrain=cached_pretraining(cfg), classifier=classifier_regime(cfg.train))
    if save_to is not None:
        checkpoint.save_params(save_to, params)
    if cfg.train.cache:
        checkpoint.write_cache(cfg, params, metrics, splits["train"])
    return model, params, {**metrics, "train/cached": False}


def _given_params(cfg, model: Model, save_to: Path | None) -> tuple[Params, dict[str, Any]]:
    """model.params_file's params (adv_jax's msgpack: a run's params.msgpack or
    checkpoint.save_params'), shapes checked against the model, copied to `save_to`."""
    start = time.perf_counter()
    params = checkpoint.load_params(Path(cfg.model.params_file).expanduser(), model)
    log.info("%s: parameters from %s (model.params_file), not trained", cfg.model.name, cfg.model.params_file)
    if save_to is not None:
        checkpoint.save_params(save_to, params)
    return params, {"train/seconds": time.perf_counter() - start, "train/steps": 0, "train/cached": False}


def classifier_regime(train_cfg):
    """How train config `train_cfg`'s classifier trains: `adversarial_training.fit_classifier`
    where it asks for pools or dropout, else the plain `train.fit_classifier`."""
    return adversarial_training.fit_classifier if adversarial_training.enabled(train_cfg) else fit_classifier


def autoencoder_stage(cfg):
    """The config whose cache entry holds cfg's pretrained autoencoder: the model without its
    head's decay, named <name>-autoencoder, and of the training config only what pretraining
    reads. Models that differ only in how their head is trained share one entry."""
    stage = cfg.copy()
    with open_dict(stage):
        stage.model.name = f"{cfg.model.name}-autoencoder"
        stage.model.weight_decay = ModelConfig.weight_decay
        stage.train = OmegaConf.merge(OmegaConf.structured(TrainConfig), {
            "lbfgs_tolerance": cfg.train.lbfgs_tolerance, "batch_size": cfg.train.batch_size,
            "cache": cfg.train.cache})
    return stage


def cached_pretraining(cfg):
    """train.pretrain_autoencoder through the cache (when train.cache): the entry holds the whole
    params tuple after pretraining (the head still as initialized) and the pretraining metrics."""
    stage = autoencoder_stage(cfg)

    def pretrain(model: Model, params: Params, data: Dataset, key, ae_cfg, train_cfg):
        if cfg.train.cache and (hit := checkpoint.read_cache(stage, model, data)) is not None:
            log.info("loaded the pretrained autoencoder from the cache: %s", checkpoint.cache_entry(stage, data))
            return hit[0], {**hit[1], "train/autoencoder_cached": True}
        params, metrics = pretrain_autoencoder(model, params, data, key, ae_cfg, train_cfg)
        if cfg.train.cache:
            checkpoint.write_cache(stage, params, metrics, data)
        return params, {**metrics, "train/autoencoder_cached": False}

    return pretrain


def group_key(cfg) -> str | None:
    """Run configs with the same key can be trained together (None: never, e.g. an autoencoder
    model, whose pretraining is not vmapped, a model with given params (model.params_file), an
    L-BFGS model (vmapped L-BFGS measured slower on CPU than one by one), or pools and dropout,
    whose training is not vmapped). The key is the
    cache identity without the seed, the split and the decay coefficients."""
    if (cfg.model.autoencoder is not None or cfg.model.get("params_file")
            or adversarial_training.enabled(cfg.train) or cfg.train.optimizer not in MINIBATCH_OPTIMIZERS):
        return None
    identity = checkpoint.model_identity(cfg)
    identity.pop("seed")
    identity["data"].pop("split")
    identity["model"].pop("weight_decay", None)
    return json.dumps(identity, sort_keys=True, default=str)


def _training_set(cfg) -> Dataset:
    return load_splits(cfg.data, cfg.model.classes)["train"]


def train_or_load_all(cfgs: Sequence[Any], together: bool = True,
                      load: Callable[[Any], Dataset] = _training_set) -> list[Trained]:
    """(model, params, metrics) for each run config, in order: cached ones loaded; of the rest,
    groups of at least two sharing a `group_key` trained as one ensemble (when `together`), the
    others one by one; every trained model cached under its own key (if train.cache)."""
    data, out, first, same = {}, [None] * len(cfgs), {}, []
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        source = json.dumps(checkpoint.model_identity(cfg)["data"], sort_keys=True) + str(cfg.model.classes)
        if source not in data:
            data[source] = load(cfg)
        train_set = data[source]
        same.append(checkpoint.cache_key(cfg, train_set))
        if first.setdefault(same[-1], i) != i:
            continue  # the same model as an earlier config: trained once
        model = build_model(cfg.model)
        if cfg.train.cache and (hit := checkpoint.read_cache(cfg, model, train_set)) is not None:
            out[i] = (model, hit[0], {**hit[1], "train/cached": True})
            continue
        key = group_key(cfg) if together else None
        groups.setdefault((key, len(train_set)) if key else ("alone", i), []).append((i, train_set))
    for (key, _), members in groups.items():
        if key == "alone" or len(members) < 2:
            for i, train_set in members:
                out[i] = train_or_load(cfgs[i], {"train": train_set})
            continue
        for i, trained in zip([i for i, _ in members], _train_group([cfgs[i] for i, _ in members],
                                                                    [d for _, d in members])):
            out[i] = trained
    return [out[first[key]] for key in same]


def _train_group(cfgs: list, datasets: list[Dataset]) -> list[Trained]:
    """One ensemble: members share the architecture and training config (`group_key`)."""
    models = [build_model(cfg.model) for cfg in cfgs]
    log.info("training %d x %s together", len(cfgs), cfgs[0].model.name)
    trained = ensemble.train_models(models, cfgs[0].train, datasets,
                                    [jax.random.key(cfg.seed) for cfg in cfgs])
    out = []
    for cfg, model, data, (params, metrics) in zip(cfgs, models, datasets, trained):
        if cfg.train.cache:
            checkpoint.write_cache(cfg, params, metrics, data)
        out.append((model, params, {**metrics, "train/cached": False}))
    return out
