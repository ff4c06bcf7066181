"""Experiments: every conf/experiment file composes and runs in a debug size; sweeps aggregate."""

import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

import adv_jax
from adv_jax import checkpoint, lipschitz
from adv_jax.bench.layer_bounds import layer_bounds
from adv_jax.config import CONF_DIR, as_config, compose
from adv_jax.jobs import job_name
from adv_jax.jobs.study import recompute_rows
from adv_jax.model_set import model_config
from adv_jax.reports.aggregate import aggregate

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# The cross-model studies (adv_jax/jobs/study.py); an experiment whose config selects another job
# (`override /job: transfer_attacks`) has its own test (tests/test_transfer_attacks.py).
STUDIES = [name for name in EXPERIMENTS if job_name(compose([f"experiment={name}"])) == "study"]
REPO = CONF_DIR.parent
SHARED_CACHE = Path(os.environ["ADV_JAX_TEST_SHARED"]) / "models"  # tests/conftest.py


def _debug(name: str) -> list[str]:
    """debug=tiny (conf/debug/tiny.yaml: 20 examples, no W&B, ...) below its training size, as a
    study trains up to six models: 1000 images, 2 Adam epochs (trained together); 8-unit layers,
    FGSM-min. MNIST from ADV_JAX_MNIST_DIR (tests/conftest.py)."""
    cfg = compose([f"experiment={name}"])
    out = [f"experiment={name}", "debug=tiny", "data.train_limit=1000", "train=adam", "train.epochs=2",
           "train.learning_rate=0.01", "attack=fgsm_min", "attack.params.search_steps=6",
           f"cache_dir={SHARED_CACHE}"]
    for key, entry in cfg.experiment.models.items():
        hidden = OmegaConf.load(CONF_DIR / "model" / f"{entry.model}.yaml").get("hidden") or []
        if hidden:
            out.append(f"experiment.models.{key}.hidden=[{','.join(['8'] * len(hidden))}]")
    return out


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_its_models_are_plain_run_cache_entries(name):
    cfg = as_config(compose([f"experiment={name}"]))
    assert cfg.experiment.name == name and cfg.experiment.models
    for key, entry in cfg.experiment.models.items():
        model_cfg = model_config(cfg, key)
        adv_jax.build_model(model_cfg.model)
        assert model_cfg.data.split == entry.split and model_cfg.experiment.name == "none"
        if entry.hidden is None and not entry.model_overrides and not entry.train_overrides:
            plain = [f"model={entry.model}", f"data={entry.split}"]
            if entry.weight_decay is not None:
                plain.append(f"model.weight_decay={entry.weight_decay}")
            # ... with the experiment's own training recipe (conf/experiment/*.yaml `train:`).
            plain_cfg = OmegaConf.merge(as_config(compose(plain)), {"train": cfg.train})
            assert checkpoint.cache_key(model_cfg) == checkpoint.cache_key(plain_cfg)


def test_the_study_experiments_are_those_selecting_no_other_job():
    assert "cross_model" in STUDIES and "transfer_attacks" in EXPERIMENTS and "transfer_attacks" not in STUDIES


# cross_training_set runs end to end, twice over, in the multirun test below.
@pytest.mark.parametrize("name", [s for s in STUDIES if s != "cross_training_set"])
def test_experiment_runs_in_debug_size(name, tmp_path, mnist_dir):
    overrides = _debug(name)
    if name == "cross_model":  # a few autoencoder L-BFGS steps are enough to exercise the path
        overrides.append("+experiment.models.ae400.model_overrides.autoencoder.lbfgs_steps=5")
    if name == "adversarial_training":  # small pools: the refresh path, not its scale; the
        # per-layer pools' model covers the input pool's path (layer 0)
        overrides += ["train.adversarial.pool_size=200", "train.adversarial.refresh_size=50",
                      "~experiment.models.input_pool"]
    run_dir = tmp_path / "run"
    summary = adv_jax.run(compose(overrides), run_dir)
    result = json.loads((run_dir / "matrix.json").read_text())
    m = len(result["models"])
    assert np.array(result["matrix"]).shape == (m, m) and len(result["distortion"]) == m
    for f in ("matrix.csv", "matrix.md", "heatmap.png", "metrics.json", "config.yaml"):
        assert (run_dir / f).exists(), f
    for key, rel in zip(result["keys"], result["run_dirs"]):
        run = adv_jax.load_run(run_dir / rel)  # every model's directory is a plain run directory
        assert run.params and (run_dir / rel / "adversarials.npz").exists()
        # with the same clean-error keys as a single run, and its per-layer bounds stored
        assert {"error/p1", "error/p2", "error/full", "error/test", "error/train"} <= set(run.metrics)
        table = lipschitz.layer_table(run.model, run.params, run.model.input_shape)
        assert layer_bounds(run_dir / rel)["layers"] == pytest.approx([row["bound"] for row in table], rel=1e-6)
    success = [result["models_metrics"][k]["attack/success_rate"] for k in result["keys"]]
    for j, ok in enumerate(success):
        if ok == 1.0:
            assert result["matrix"][j][j] == 100.0
    recomputed = recompute_rows(run_dir)  # any cell, from the saved files alone
    assert [list((100 * r.errors).round(4)) for r in recomputed] == [r["errors"] for r in result["rows"]]
    assert summary == json.loads((run_dir / "metrics.json").read_text())


def test_multirun_aggregates_two_seeds_and_skips_finished_runs_when_restarted(tmp_path, mnist_dir):
    sweep = tmp_path / "sweep"
    command = [sys.executable, str(REPO / "scripts" / "sweep.py"), "-m",
               *_debug("cross_training_set"), "seed=0,1",
               f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "WANDB_SILENT": "true"}
    subprocess.run(command, check=True, cwd=tmp_path, env=env, capture_output=True)
    text = (sweep / "aggregate.md").read_text()  # written by the Hydra callback
    runs = sorted(p.parent for p in sweep.glob("*/matrix.json"))
    assert len(runs) == 2 and "seeds [0, 1]" in text and "±" in text
    results = [json.loads((r / "matrix.json").read_text()) for r in runs]
    _, summary = aggregate([sweep])
    (group,) = summary["groups"].values()
    np.testing.assert_allclose(group["mean"], np.mean([r["matrix"] for r in results], 0))
    np.testing.assert_allclose(group["std"], np.std([r["matrix"] for r in results], 0, ddof=1))
    stamps = {r: (r / "metrics.json").stat().st_mtime_ns for r in runs}
    subprocess.run(command, check=True, cwd=tmp_path, env=env, capture_output=True)
    assert {r: (r / "metrics.json").stat().st_mtime_ns for r in runs} == stamps
