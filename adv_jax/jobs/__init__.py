"""Jobs: what one `scripts/sweep.py` (or `scripts/demo.py`) invocation runs, chosen by config.

  single   one model: train or load, evaluate, attack, Lipschitz bounds   (adv_jax/jobs/single.py)
  study    a transfer study, conf/experiment/*.yaml                       (adv_jax/jobs/study.py)
  transfer_attacks  attacks x budgets x sources, experiment.job=transfer_attacks
                                                           (adv_jax/jobs/transfer_attacks.py)
  demo     a demonstration, conf/demo/*.yaml                              (adv_jax/jobs/demo.py)

Each is `run(cfg, run_dir) -> metrics` over the one run-directory lifecycle of adv_jax/rundir.py.
`run` below checks the whole config first (adv_jax/validate.py), before any data or training.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from adv_jax import devices, validate
from adv_jax.config import as_config

JOBS = ("single", "study", "transfer_attacks", "demo")


def job_name(cfg) -> str:
    """study (or transfer_attacks, by experiment.job) when an experiment is set, demo when a
    demonstration is, else single."""
    if cfg.experiment.name != "none":
        return "transfer_attacks" if cfg.experiment.job == "transfer_attacks" else "study"
    return "demo" if cfg.demo.name != "none" else "single"


def run(cfg: Any, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Runs the job `cfg` describes into run_dir (default runs/<time>_<name>); returns its metrics
    (a demonstration: its numbers)."""
    cfg = as_config(cfg)
    validate.check(cfg)
    job = importlib.import_module(f"adv_jax.jobs.{job_name(cfg)}")
    if hasattr(job, "check"):
        job.check(cfg)
    devices.use_cpu_devices(cfg.cpu_devices)
    return job.run(cfg, run_dir)
