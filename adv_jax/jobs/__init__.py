"""Jobs: what one `scripts/sweep.py` (or `scripts/demo.py`) invocation runs, chosen by config.

  single   one model: train or load, evaluate, attack, Lipschitz bounds   (adv_jax/jobs/single.py)
  study    a cross-model study of an experiment, conf/experiment/*.yaml   (adv_jax/jobs/study.py)
  transfer_attacks  attacks x budgets x sources on an experiment's models (.../transfer_attacks.py)
  demo     a demonstration, conf/demo/*.yaml                              (adv_jax/jobs/demo.py)

The config group `job=` (conf/job/*.yaml) names it: `single` by default, an experiment file sets
its own, scripts/demo.py sets `demo`.

Each is `run(cfg, run_dir) -> metrics` over the one run-directory lifecycle of adv_jax/rundir.py.
`run` below checks the whole config first (adv_jax/validate.py), before any data or training;
`preflight(args)` does the same for a command line before Hydra makes a run directory, and
`known_errors()` are the errors an entry point prints as one line instead of a traceback.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from adv_jax import devices, extras, validate
from adv_jax.config import as_config, compose

JOBS = validate.JOBS


def job_name(cfg) -> str:
    """The job's module name under adv_jax/jobs: cfg.job (validate.check_job)."""
    return cfg.job


def run(cfg: Any, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Runs the job `cfg` describes into run_dir (default runs/<time>_<name>); returns its metrics
    (a demonstration: its numbers)."""
    cfg = as_config(cfg)
    check(cfg)
    job = importlib.import_module(f"adv_jax.jobs.{job_name(cfg)}")
    devices.use_cpu_devices(cfg.cpu_devices)
    devices.use_compilation_cache(cfg.compilation_cache)
    return job.run(cfg, run_dir)


def known_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says everything: a bad config, missing data or extra, a run directory
    in use, a diverged training. Entry points print them as one line (HYDRA_FULL_ERROR=1: the
    traceback)."""
    from adv_jax.data import DataError
    from adv_jax.rundir import RunDirectoryInUse
    from adv_jax.train import TrainingDiverged

    return (validate.ConfigError, DataError, RunDirectoryInUse, TrainingDiverged, extras.MissingExtra)


def _plain_overrides(args: list[str]) -> list[str] | None:
    """The config overrides of a single-run command line, or None when it is a multirun or asks
    Hydra for something else (--cfg, --help, ...): those are left to Hydra."""
    if any(a.startswith("-") for a in args) or any("," in a for a in args):
        return None
    return [a for a in args if not a.startswith(("hydra.", "hydra/", "+hydra", "++hydra"))]


def preflight(args: list[str], config_name: str = "config") -> None:
    """Checks a command line before Hydra makes anything: the extras it needs, and for a single run
    its composed config (`check`) and its data. Raises a `known_errors()` error, or
    validate.ConfigError for a value the schema refuses."""
    from hydra.errors import ConfigCompositionException
    from adv_jax.data import load_splits

    extras.check_overrides(args)
    overrides = _plain_overrides(args)
    if overrides is None:
        return
    try:
        cfg = as_config(compose(overrides, config_name))
    except ConfigCompositionException as e:
        raise validate.ConfigError(composition_message(e)) from e
    check(cfg)
    if job_name(cfg) == "single":
        load_splits(cfg.data, cfg.model.classes)  # memoized: the run reads the same arrays


def composition_message(error: Exception) -> str:
    """One line for a Hydra composition error: the key, the value and what the schema wants."""
    cause = error.__cause__
    key = getattr(cause, "full_key", None)
    reason = str(getattr(cause, "msg", None) or error).strip().splitlines()[0]
    return f"{key}: {reason}" if key else reason


def check(cfg: Any) -> None:
    """The config's start-up checks (adv_jax/validate.py) and its job's own."""
    validate.check(cfg)
    job = importlib.import_module(f"adv_jax.jobs.{job_name(cfg)}")
    if hasattr(job, "check"):
        job.check(cfg)
