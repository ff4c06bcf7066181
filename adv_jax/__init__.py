"""adv_jax: adversarial examples, their transfer, and Lipschitz bounds, in JAX.

Public API:
  run(cfg, run_dir)      train or load a model, evaluate it, record a run directory
  load_run(run_dir)      a finished run: .config, .metrics, .params, .model, .logits_fn
  compose(overrides)     the config `scripts/sweep.py` would build, without a command line
  build_model(model_cfg) a Model: init(key) -> params, apply(params, x) -> logits
  load_splits(data_cfg)  MNIST splits as (x (N, 28, 28, 1) float32 in [0, 1], y (N,) int32)
"""

from adv_jax.config import Config, compose
from adv_jax.data import DataError, load_splits
from adv_jax.models import Model, build_model
from adv_jax.runner import Run, load_run, run

__all__ = ["Config", "DataError", "Model", "Run", "build_model", "compose", "load_run",
           "load_splits", "run"]
__version__ = "0.1.0"
