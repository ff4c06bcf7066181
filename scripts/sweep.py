"""Hydra entry point: python scripts/sweep.py [group=option ...] [key=value ...] [-m for sweeps].

Examples:
  python scripts/sweep.py model=fc100 attack=none
  python scripts/sweep.py -m model=fc10 model.weight_decay=1e-4,1e-2,1 data=full
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import adv_jax
import adv_jax.config  # noqa: F401  registers base_config, the schema conf/config.yaml extends


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    adv_jax.run(cfg, run_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
