"""Start-up checks of a run config: every count, size, rate, epsilon, width and class list, before
any data is loaded or any model trained. Each message names the key and what is allowed.

The schema (adv_jax/config.py) already rejects unknown keys and wrong types; this checks values.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

SPLITS = ("full", "p1", "p2")
SOURCES = ("idx", "tfds")  # where MNIST comes from (adv_jax/data.py)
SPLIT_SIZES = {"full": 60000, "p1": 30000, "p2": 30000}
# What a sweeper may minimize (config `objective`); never error/test: selection on the test set
# would make the test error a biased estimate.
OBJECTIVES = ("error/validation", "error/train")  # a single run's, minimized
# Attack hyperparameters that must be > 0; every other numeric one must be >= 0.
POSITIVE_ATTACK_PARAMS = (
    "epsilon", "max_epsilon", "steps", "max_evals", "memory", "c_steps", "search_steps", "c_init",
    "learning_rate", "tolerance", "relative_step_size", "binary_search_steps", "max_rms",
    "initial_const", "extra_evals", "init_epsilon", "max_step",
)


class ConfigError(ValueError):
    """A config value outside what adv_jax can run."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _count(key: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    if optional and value is None:
        return
    _require(isinstance(value, int) and value >= minimum, key, value,
             f"an integer >= {minimum}" + (" or null" if optional else ""))


def _positive(key: str, value: Any) -> None:
    _require(isinstance(value, (int, float)) and value > 0, key, value, "a number > 0")


def _non_negative(key: str, value: Any) -> None:
    _require(isinstance(value, (int, float)) and value >= 0, key, value, "a number >= 0")


def check_model(model: DictConfig) -> None:
    for i, width in enumerate(model.hidden):
        _count(f"model.hidden[{i}]", width)
    for i, block in enumerate(model.conv):
        for name in ("features", "kernel", "stride", "pool"):
            _count(f"model.conv[{i}].{name}", block[name])
    decay = model.weight_decay
    if isinstance(decay, (int, float)) and not isinstance(decay, bool):
        _non_negative("model.weight_decay", decay)
    else:
        _require(isinstance(decay, Sequence) and not isinstance(decay, str), "model.weight_decay",
                 decay, "a number >= 0, or a list of them (one per layer)")
        for i, lam in enumerate(decay):
            _non_negative(f"model.weight_decay[{i}]", lam)
    if model.autoencoder is not None:
        ae = model.autoencoder
        _require(ae.optimizer in ("adam", "lbfgs"), "model.autoencoder.optimizer", ae.optimizer, "adam or lbfgs")
        _count("model.autoencoder.epochs", ae.epochs)
        _count("model.autoencoder.lbfgs_steps", ae.lbfgs_steps)
    if model.classes is not None:
        classes = list(model.classes)
        _require(len(classes) >= 2 and len(set(classes)) == len(classes)
                 and all(isinstance(c, int) and 0 <= c <= 9 for c in classes),
                 "model.classes", classes, "at least two distinct digits in 0..9")


def check_train(train: DictConfig) -> None:
    _count("train.epochs", train.epochs)
    _count("train.batch_size", train.batch_size)
    _count("train.lbfgs_steps", train.lbfgs_steps)
    _positive("train.learning_rate", train.learning_rate)
    _positive("train.lbfgs_tolerance", train.lbfgs_tolerance)
    _non_negative("train.decay_scale", train.decay_scale)
    _non_negative("train.lipschitz_penalty", train.lipschitz_penalty)
    _require(0 <= train.momentum < 1, "train.momentum", train.momentum, "a number in [0, 1)")
    adv = train.adversarial
    for name in ("pool_size", "batch_size", "refreshes_per_epoch", "refresh_size", "lbfgs_restarts"):
        _count(f"train.adversarial.{name}", adv[name])
    _count("train.adversarial.start_epoch", adv.start_epoch, minimum=0)
    _require(train.optimizer != "lbfgs" or not adv.layers or adv.start_epoch < adv.lbfgs_restarts,
             "train.adversarial.start_epoch", adv.start_epoch,
             f"with train=lbfgs, the restart the pools join: below lbfgs_restarts ({adv.lbfgs_restarts})")
    for name in ("input", "hidden"):
        rate = train.dropout[name]
        _require(0 <= rate < 1, f"train.dropout.{name}", rate, "a drop rate in [0, 1)")


def check_attack_params(name: str, params: Any, prefix: str = "attack.params") -> None:
    """Numeric hyperparameters in range, and unknown ones named with a did-you-mean (admix built
    on a blank pool: no data is read to check it)."""
    from adv_jax.attacks import ATTACKS, make_attack
    from adv_jax.attacks.input_copies import blank_pool

    for key, value in dict(params or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            (_positive if key in POSITIVE_ATTACK_PARAMS else _non_negative)(f"{prefix}.{key}", value)
    built = dict(params or {})
    if name == "admix" and "admix_pool" not in built:
        built["admix_pool"] = blank_pool()
    try:
        make_attack(name, built)
    except ValueError as e:
        known = sorted(ATTACKS)
        if name not in ATTACKS:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown attack {name!r}{hint}; choose one of {known}") from None
        raise ConfigError(str(e)) from None


def check_lipschitz(lipschitz: DictConfig) -> None:
    from adv_jax.lipschitz import METHODS  # jax: only where a run is checked

    for i, method in enumerate(lipschitz.methods):
        _require(method in METHODS, f"lipschitz.methods[{i}]", method, f"one of {list(METHODS)}")
    _count("lipschitz.lipsdp_max_size", lipschitz.lipsdp_max_size)
    _count("lipschitz.local_examples", lipschitz.local_examples, minimum=0, optional=True)


# conf/job/*.yaml: the modules of adv_jax/jobs; the study jobs run on an experiment's models.
JOBS = ("single", "study", "transfer_attacks", "transfer_benchmark", "demo")
STUDY_JOBS = ("study", "transfer_attacks", "transfer_benchmark")


def check_job(cfg: DictConfig) -> None:
    """cfg.job is a job and has what it runs on: an experiment for a study job, a demonstration
    for demo, neither for single."""
    job, experiment = cfg.job, cfg.experiment.name
    _require(job in JOBS, "job", job, f"one of {list(JOBS)} (conf/job/)")
    if job in STUDY_JOBS:
        _require(experiment != "none", "job", job, "a study job needs experiment=NAME (conf/experiment/)")
    else:
        _require(experiment == "none", "job", job, f"experiment={experiment} runs a study job "
                 f"({' or '.join(STUDY_JOBS)}); its file chooses one")
    _require((job == "demo") == (cfg.demo.name != "none"), "job", job,
             "demo exactly when a demonstration is named (scripts/demo.py demo=NAME)")


def check(cfg: DictConfig) -> None:
    """Raises ConfigError on the first value a run could not honour."""
    from adv_jax.attacks.targets import TARGET_MODES

    check_job(cfg)

    _require(cfg.data.split in SPLITS, "data.split", cfg.data.split, f"one of {list(SPLITS)}")
    _require(cfg.data.source in SOURCES, "data.source", cfg.data.source, f"one of {list(SOURCES)}")
    _count("data.train_limit", cfg.data.train_limit, optional=True)
    _count("data.validation", cfg.data.validation, minimum=0)
    _require(cfg.data.validation < SPLIT_SIZES[cfg.data.split], "data.validation", cfg.data.validation,
             f"fewer than the {SPLIT_SIZES[cfg.data.split]} images of data.split={cfg.data.split}")
    _require(cfg.objective in (None, *OBJECTIVES), "objective", cfg.objective, f"null or one of {list(OBJECTIVES)}")
    _require(cfg.objective != "error/validation" or cfg.data.validation > 0, "objective", cfg.objective,
             "error/validation needs held-out images (data.validation > 0)")
    _require(cfg.objective is None or cfg.experiment.name == "none", "objective", cfg.objective,
             "a single run's metric; a study (experiment=...) returns none")
    _count("data.split_seed", cfg.data.split_seed, minimum=0)
    check_model(cfg.model)
    check_train(cfg.train)
    _require(cfg.train.optimizer != "lbfgs" or not cfg.model.conv, "train", "lbfgs",
             f"full-batch L-BFGS on a conv model (model={cfg.model.name}) takes hours per "
             "iteration on a CPU: add train=adam")
    _count("attack.figure_columns", cfg.attack.figure_columns, minimum=0)
    if cfg.attack.name != "none":
        check_attack_params(cfg.attack.name, cfg.attack.params)
    _require(cfg.attack.target in TARGET_MODES, "attack.target", cfg.attack.target,
             f"one of {list(TARGET_MODES)}")
    _count("attack.num_examples", cfg.attack.num_examples, optional=True)
    _count("attack.chunk_size", cfg.attack.chunk_size, optional=True)
    _count("lipschitz.images", cfg.lipschitz.images, minimum=0)
    _count("lipschitz.power_iters", cfg.lipschitz.power_iters)
    check_lipschitz(cfg.lipschitz)
    exp = cfg.experiment
    _count("experiment.num_examples", exp.num_examples, optional=True)
    for i, stddev in enumerate(exp.noise_stddevs):
        _non_negative(f"experiment.noise_stddevs[{i}]", stddev)
    if exp.amplify_to is not None:
        _positive("experiment.amplify_to", exp.amplify_to)
    for key, entry in exp.models.items():
        _require(entry.split in SPLITS, f"experiment.models.{key}.split", entry.split,
                 f"one of {list(SPLITS)}")
