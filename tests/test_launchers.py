"""The sweep launchers (conf/hydra/launcher/): every one composes, and a Ray multirun on a local
Ray instance, started on loopback by the launcher's own ray.init and stopped when the sweep
ends, writes the same metrics as the same runs made in this process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import adv_jax
from adv_jax.config import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
TIMING = ("train/seconds", "train/cached")  # how long and where from; everything else must agree


def launcher_config(name: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True).hydra.launcher


def test_slurm_and_joblib_launchers_compose():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    slurm = launcher_config("slurm")
    assert slurm._target_.endswith("SlurmLauncher") and slurm.array_parallelism == 32
    assert slurm.gpus_per_node == 0 and slurm.partition is None
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    assert launcher_config("joblib_local").n_jobs == 2


def test_ray_launcher_is_local_unless_given_an_address(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = launcher_config("ray").ray
    assert ray.init.address is None and ray.remote.num_cpus == 1
    # Present and null: the plugin would otherwise set one, which ray.init refuses on a cluster.
    assert "object_store_memory" in ray.init and ray.init.object_store_memory is None
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert launcher_config("ray").ray.init.address == "127.0.0.1:6379"


OVERRIDES = ["model=fc10", "data.train_limit=300", "train=adam", "train.epochs=1", "attack=none",
             "lipschitz.images=0", "wandb=disabled", "cpu_devices=1"]


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def ray_multirun(tmp_path: Path) -> dict[int, dict]:
    """metrics.json of a 2-job sweep (seeds 0 and 1) on a local Ray of one worker, by job number."""
    overrides = [*OVERRIDES, "seed=0,1", f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                 "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=1",
                 "+hydra.launcher.ray.init._node_ip_address=127.0.0.1"]
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep.py"), "-m", *overrides],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return {int(path.parent.name.split("_")[0]): without_timing(json.loads(path.read_text()))
            for path in (tmp_path / "sweep").glob("*/metrics.json")}


def test_a_ray_multirun_writes_the_metrics_of_the_same_runs_made_directly(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    on_ray = ray_multirun(tmp_path / "ray")
    direct = {seed: without_timing(adv_jax.run(adv_jax.compose(
        [*OVERRIDES, f"seed={seed}", f"cache_dir={tmp_path / 'direct' / 'cache'}"]), tmp_path / "direct" / str(seed)))
        for seed in (0, 1)}
    assert sorted(on_ray) == [0, 1] and on_ray == direct
    assert on_ray[0]["error/test"] != on_ray[1]["error/test"]  # two seeds, two models
