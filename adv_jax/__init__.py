"""adv_jax: adversarial examples, their transfer, and Lipschitz bounds, in JAX.

Public API:
  run(cfg, run_dir)      run the job a config describes (a model, a study, a demonstration)
  load_run(run_dir)      a finished run: .config, .metrics, .params, .model, .logits_fn
  compose(overrides)     the config `scripts/sweep.py` would build, without a command line
  build_model(model_cfg) a Model: init(key) -> params, apply(params, x) -> logits
  load_splits(data_cfg)  MNIST splits as (x (N, 28, 28, 1) float32 in [0, 1], y (N,) int32)

Names load lazily, so `import adv_jax.models` or `import adv_jax.attacks` pulls in neither Hydra,
W&B nor matplotlib.
"""

import importlib

_EXPORTS = {
    "Config": "adv_jax.config", "compose": "adv_jax.config", "DataError": "adv_jax.data",
    "load_splits": "adv_jax.data", "Model": "adv_jax.models", "build_model": "adv_jax.models",
    "Run": "adv_jax.rundir", "load_run": "adv_jax.rundir", "run": "adv_jax.jobs",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adv_jax' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
