"""A demonstration (conf/demo/<name>.yaml, scripts/demo.py) as one job: `run(cfg, run_dir)`.

One module per demonstration in adv_jax/demos/, each `run(ctx, params) -> numbers` drawing its
figures with `ctx.save`. Its run directory holds, beside the usual files (adv_jax/rundir.py):
  numbers.json  every number it measured      <figure>.png   its figures
  metrics.json  the same, flat (written last)
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from adv_jax.demos import DEMOS
from adv_jax.demos.common import Context, flatten, read_json, typed_params, write_json
from adv_jax.rundir import RunDirectory

log = logging.getLogger(__name__)


def default_name(cfg) -> str:
    return f"demo_{cfg.demo.name}"


def check(cfg) -> None:
    """Fails before any work on an unknown demonstration or parameter."""
    if cfg.demo.name not in DEMOS:
        raise ValueError(f"unknown demo {cfg.demo.name!r}; choose one of {list(DEMOS)} (conf/demo/)")
    typed_params(importlib.import_module(f"adv_jax.demos.{cfg.demo.name}").Params, cfg.demo.params,
                 cfg.demo.name)


def run(cfg, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Runs demonstration cfg.demo.name into run_dir (default runs/<time>_demo_<name>); returns
    its numbers (also in <run_dir>/numbers.json)."""
    check(cfg)
    module = importlib.import_module(f"adv_jax.demos.{cfg.demo.name}")
    params = typed_params(module.Params, cfg.demo.params, cfg.demo.name)

    def work(run: RunDirectory, logger) -> dict[str, Any]:
        ctx = Context(run.cfg, run.path, logger, params)
        numbers = module.run(ctx, params)
        numbers["figures"] = ctx.figures
        write_json(run.path / "numbers.json", numbers)
        log.info("demo %s: %s", cfg.demo.name, run.path)
        return flatten(numbers)

    run_directory = RunDirectory.for_run(cfg, run_dir, default_name(cfg))
    run_directory.execute(work)
    return read_json(run_directory.path / "numbers.json")
