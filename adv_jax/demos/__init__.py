"""The essays' demonstrations and the paper's unit analysis: `run_demo(cfg, run_dir)`.

One module per demonstration (conf/demo/<name>.yaml names it), each `run(ctx, params) -> numbers`
drawing its figures with `ctx.save`. A demonstration's run directory holds:
  config.yaml   the resolved config          <figure>.png   its figures
  numbers.json  every number it measured      metrics.json  the same, flat (written last)
  run.log       the log                       wandb/        the W&B run (offline by default)
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

from adv_jax import devices
from adv_jax.demos.common import Context, flatten, typed_params, write_json
from adv_jax.logger import open_logger
from adv_jax.runner import _attach_log_file, as_config, prepare_run_dir

log = logging.getLogger(__name__)
DEMOS = ("units", "linear", "effective_weights", "iris", "bottleneck", "figure7")


def run_demo(cfg: Any, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Runs demonstration cfg.demo.name into run_dir (default runs/<time>_demo_<name>); returns
    its numbers (also in <run_dir>/numbers.json)."""
    cfg = as_config(cfg)
    devices.use_cpu_devices(cfg.cpu_devices)
    name = cfg.demo.name
    if name not in DEMOS:
        raise ValueError(f"unknown demo {name!r}; choose one of {list(DEMOS)} (conf/demo/)")
    module = importlib.import_module(f"adv_jax.demos.{name}")
    params = typed_params(module.Params, cfg.demo.params, name)
    run_dir, resolved, finished = prepare_run_dir(cfg, run_dir, f"demo_{name}")
    if finished is not None:
        return json.loads((run_dir / "numbers.json").read_text())
    handler = _attach_log_file(run_dir)
    try:
        (run_dir / "config.yaml").write_text(resolved)
        with open_logger(cfg, run_dir, name=run_dir.name) as logger:
            ctx = Context(cfg, run_dir, logger, params)
            numbers = module.run(ctx, params)
            numbers["figures"] = ctx.figures
            write_json(run_dir / "numbers.json", numbers)
            flat = flatten(numbers)
            logger.summary(flat)
            write_json(run_dir / "metrics.json", flat)
        log.info("demo %s: %s", name, run_dir)
        return numbers
    finally:
        if handler:
            logging.getLogger().removeHandler(handler)
            handler.close()
