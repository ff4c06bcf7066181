"""Hydra entry point: python scripts/sweep.py [group=option ...] [key=value ...] [-m for sweeps].

Examples:
  python scripts/sweep.py model=fc100 attack=none
  python scripts/sweep.py -m model=fc10 model.weight_decay=1e-4,1e-2,1 data=full
  python scripts/sweep.py -m search=adversarial_training   (an Optuna search, docs/runs.md)
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import adv_jax.config  # registers the config schema (base_config) with Hydra
from adv_jax import entry


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = entry.run_job(cfg, HydraConfig.get().runtime.output_dir)
    return adv_jax.config.objective_value(cfg, metrics)  # what an optimizing sweeper minimizes


if __name__ == "__main__":
    entry.preflight_or_exit(sys.argv[1:], "config")
    main()
