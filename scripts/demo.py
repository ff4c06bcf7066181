"""Hydra entry point of the demonstrations: python scripts/demo.py demo=NAME [overrides].

NAME is a file in conf/demo/: units, linear, effective_weights, iris, bottleneck, figure7.
Figures (PNG) and numbers.json land in the run directory (runs/<date>/<time>_demo_NAME) and W&B.
Examples:
  python scripts/demo.py demo=iris
  python scripts/demo.py demo=linear data.train_limit=5000 demo.params.test_limit=1000
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import adv_jax.config  # registers the config schema (base_config) with Hydra
from adv_jax import entry


@hydra.main(config_path="../conf", config_name="demos", version_base="1.3")
def main(cfg: DictConfig) -> None:
    entry.run_job(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    entry.preflight_or_exit(sys.argv[1:], "demos")
    main()
