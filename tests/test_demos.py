"""Each demonstration's claim on small real data (a few thousand MNIST images, short training),
through the same `run_demo` that scripts/demo.py calls."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adv_jax.config import compose
from adv_jax.jobs.demo import run as run_demo

REPO = Path(__file__).resolve().parents[1]


def demo(name, tmp_path, tiny_overrides, *overrides):
    cfg = compose([f"demo={name}", *tiny_overrides, *overrides], config_name="demos")
    numbers = run_demo(cfg, tmp_path / name)
    assert numbers == json.loads((tmp_path / name / "numbers.json").read_text())
    for figure in numbers["figures"]:
        assert (tmp_path / name / figure).stat().st_size > 1000
    return numbers


def test_iris_far_points_are_confident(tmp_path, tiny_overrides):
    numbers = demo("iris", tmp_path, tiny_overrides, "demo.params.resolution=60")
    assert numbers["accuracy"]["logistic"] > 0.9
    far = numbers["far_points"]["logistic"]
    assert [p["prediction"] for p in far] == ["setosa", "virginica", "versicolor"]
    assert min(p["probability"] for p in far) > 0.99
    assert numbers["claim_far_points_above_0.99"]
    # The Gaussian-kernel machine is not sure far away from its data.
    assert numbers["far_min_probability"]["svm_rbf"] < 0.9


def test_bottleneck_inversions_are_classified_as_chosen(tmp_path, tiny_overrides):
    numbers = demo("bottleneck", tmp_path, tiny_overrides, "data.train_limit=6000",
                   "demo.params.train=adam", "demo.params.epochs=5", "demo.params.plotted=200")
    assert numbers["model"]["test_accuracy"] > 0.85
    assert [p["digit"] for p in numbers["points"]] == [0, 1, 2, 3]
    for point in numbers["points"]:
        assert point["predicted"] == point["digit"]
        assert point["probability_of_region_class"] > 0.99
    assert numbers["claim_inverted_above_0.99"]


def test_template_addition_flips_fc10(tmp_path, tiny_overrides):
    numbers = demo("linear", tmp_path, tiny_overrides, "data.train_limit=3000",
                   "demo.params.lbfgs_steps=30", "demo.params.weight_decays=[1e-4,1.0]",
                   "demo.params.num_examples=100", "demo.params.templates=[target_score]",
                   "demo.params.test_limit=1000")
    assert numbers["claim_template_flips_prediction"]
    for row in numbers["models"]:
        assert row["target_score"]["success_rate"] > 0.95
        assert [s["predicted_after"] for s in row["shown"]] == [0, 1]
        assert [s["predicted_before"] for s in row["shown"]][0] == 7
    assert numbers["toy_example"]["score_before"] == -3.0
    assert numbers["toy_example"]["score_after"] == 2.0


def test_activity_average_correlates_more_than_effective_weights(tmp_path, tiny_overrides):
    numbers = demo("effective_weights", tmp_path, tiny_overrides, "data.train_limit=3000",
                   "demo.params.epochs=5", "demo.params.test_limit=2000",
                   "demo.params.ascent_steps=50", "demo.params.overlay_examples=10")
    assert [r["layer"] for r in numbers["layers"]] == [0, 1, 2]
    for r in numbers["layers"]:
        assert r["corr_activity_average"] > r["corr_effective_weights"] + 0.3
        # the bounded input activates the neuron far more than any test image does on average
        assert r["mean_max_pre_activation"] > r["mean_test_pre_activation"]
    assert numbers["claim_average_correlates_more"]
    assert numbers["overlay"]["success_rate"] > 0.5


def test_unit_analysis_numbers(tmp_path, tiny_overrides):
    numbers = demo("units", tmp_path, tiny_overrides, "data.train_limit=800",
                   "demo.params.lbfgs_steps=30", "demo.params.epochs=1",
                   "demo.params.test_limit=2000", "demo.params.shown=2")
    for key, hidden in (("fc100", 100), ("conv", 64)):
        r = numbers[key]
        assert r["hidden_units"] == hidden
        for kind in ("units", "random_directions_top", "random_images"):
            assert 0.1 <= r[kind]["label_purity"] <= 1.0
            assert 0.0 < r[kind]["pixel_similarity"] < 1.0
        # top images of a direction share their label far more often than random images do
        assert r["units"]["label_purity"] > r["random_images"]["label_purity"] + 0.15
        assert r["random_directions_top"]["label_purity"] > r["random_images"]["label_purity"] + 0.15


def test_figure7_noise_halves_accuracy(tmp_path, tiny_overrides):
    # fgsm_min: the demo's attack is any conf/attack entry; L-BFGS itself is tested elsewhere
    numbers = demo("figure7", tmp_path, tiny_overrides, "data.train_limit=2000",
                   "demo.params.lbfgs_steps=50", "demo.params.attack=fgsm_min", "demo.params.columns=3",
                   "demo.params.noise_examples=500", "demo.params.search_steps=12",
                   "~demo.params.models.fc100")
    r = numbers["fc10"]
    assert r["adversarial"]["success_rate"] > 0  # targeted FGSM does not always reach its target
    assert 0 < r["adversarial"]["mean_distortion"] < 0.5
    assert abs(r["noise"]["accuracy"] - 0.5) < 0.03
    assert 0 < r["noise"]["stddev"] < 4.0


def test_bad_demo_names_and_params_are_clear_errors(tmp_path, tiny_overrides):
    cfg = compose(["demo=iris", *tiny_overrides], config_name="demos")
    cfg.demo.name = "nope"
    with pytest.raises(ValueError, match="unknown demo 'nope'"):
        run_demo(cfg, tmp_path / "a")
    cfg = compose(["demo=iris", *tiny_overrides, "+demo.params.colour=1"], config_name="demos")
    with pytest.raises(ValueError, match="bad demo.params for demo 'iris'"):
        run_demo(cfg, tmp_path / "b")


def test_demo_script_runs_and_requires_a_demo(tmp_path, mnist_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = [sys.executable, str(REPO / "scripts" / "demo.py")]
    missing = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "demo" in missing.stderr
    done = subprocess.run(script + ["demo=iris", "wandb.mode=disabled", "demo.params.resolution=40",
                                    f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"iris_logistic.png", "iris_svm.png", "numbers.json", "metrics.json"} <= {
        p.name for p in (tmp_path / "run").iterdir()}
