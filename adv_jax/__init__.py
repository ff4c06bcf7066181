"""adv_jax: adversarial examples, their transfer, and Lipschitz bounds, in JAX.

Public API:
  run(cfg, run_dir)      train or load a model, evaluate it, record a run directory
  load_run(run_dir)      a finished run: .config, .metrics, .params, .model, .logits_fn
  compose(overrides)     the config `scripts/sweep.py` would build, without a command line
  build_model(model_cfg) a Model: init(key) -> params, apply(params, x) -> logits
  load_splits(data_cfg)  MNIST splits as (x (N, 28, 28, 1) float32 in [0, 1], y (N,) int32)
"""

import importlib

# Loaded on first use, so that `import adv_jax.attacks` or `adv_jax.models` (low layers, for models
# written outside adv_jax) does not pull in Hydra, matplotlib and W&B through the runner.
_HOMES = {"Config": "adv_jax.config", "compose": "adv_jax.config", "DataError": "adv_jax.data",
          "load_splits": "adv_jax.data", "Model": "adv_jax.models", "build_model": "adv_jax.models",
          "Run": "adv_jax.runner", "load_run": "adv_jax.runner", "run": "adv_jax.runner"}

__all__ = ["Config", "DataError", "Model", "Run", "build_model", "compose", "load_run",
           "load_splits", "run"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'adv_jax' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
