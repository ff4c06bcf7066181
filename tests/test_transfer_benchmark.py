"""The fair transfer benchmark (job=transfer_benchmark) at a debug size: its cells against the
saved 8-bit adversarials, the two tables, the skipped attacks, the scenarios; start-up errors; the
PGD-trained robust victim's training step."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

import adv_jax
from adv_jax import adversarial_training, validate
from adv_jax.config import as_config, compose
from adv_jax.jobs import check, job_name
from adv_jax.jobs import transfer_benchmark
from adv_jax.jobs.transfer_benchmark import is_robust, recompute_cells, scenario
from adv_jax.model_set import model_config
from adv_jax.models import build_model

FAMILIES = {"baselines": ["pgd", "mi_fgsm"], "model related": ["sgm", "ghost"],
            "ensemble strategies": ["mi_fgsm", "svre"]}


TESTS = Path(__file__).resolve().parent


def tiny_benchmark(overrides: list[str]) -> dict:
    """experiment=transfer_benchmark with three 8-8-unit models (P1, P2, a PGD-trained P1) and a
    user's flax.linen module from a file outside adv_jax (tests/zoo_modules.py), three surrogates
    (two models and an ensemble), three small families, 2 steps, 10 images."""
    cfg = OmegaConf.to_container(compose(["experiment=transfer_benchmark", *overrides,
                                          "experiment.num_examples=10", "experiment.benchmark.steps=2",
                                          "experiment.benchmark.matched_evals=6", "train.learning_rate=0.02"]))
    small = {"model": "relu_mlp", "hidden": [8, 8]}
    cfg["experiment"]["models"] = {
        "a_p1": {**small, "split": "p1"}, "a_p2": {**small, "split": "p2"},
        "robust": {**small, "split": "p1", "train_overrides": {"adversarial": {"pgd_epsilon": 0.1, "pgd_steps": 2}}},
        "mine": {"model": "custom", "split": "p2",
                 "model_overrides": {"_target_": "zoo_modules.LinenMLP", "kwargs": {"hidden": 8}}}}
    cfg["experiment"]["benchmark"].update(
        families=FAMILIES, surrogates=["a_p1", "mine"],
        ensembles={"ens": {"members": ["a_p1", "robust"], "reduction": "loss"}})
    return cfg


def test_scenarios_name_white_box_cross_training_set_cross_architecture_and_robust():
    cfg = compose(["experiment=transfer_benchmark"])
    robust = {k for k in cfg.experiment.models if is_robust(cfg, k)}
    assert robust == {"robust_conv_p1"}
    assert scenario(cfg, ("conv_p1",), "conv_p1", robust) == "white-box"
    assert scenario(cfg, ("conv_p1",), "conv_p2", robust) == "cross-training-set"
    assert scenario(cfg, ("conv_p1",), "vit_p2", robust) == "cross-architecture"
    assert scenario(cfg, ("conv_p1",), "robust_conv_p1", robust) == "robust victim"
    assert scenario(cfg, ("relu_p1", "vit_p1"), "vit_p2", robust) == "cross-training-set"


def test_the_debug_run_keeps_every_model_family_and_scenario_and_only_narrows_the_models():
    full = compose(["experiment=transfer_benchmark"])
    debug = compose(["experiment=transfer_benchmark_debug", "debug=tiny"])
    assert list(debug.experiment.models) == list(full.experiment.models)
    for key in full.experiment.models:
        small, large = model_config(debug, key), model_config(full, key)
        assert (small.model.name, small.model.arch, small.data.split) == (large.model.name, large.model.arch,
                                                                         large.data.split), key
        sizes = [sum(a.size for a in jax.tree_util.tree_leaves(jax.eval_shape(build_model(c.model).init,
                                                                             jax.random.key(0))))
                 for c in (small, large)]
        assert sizes[0] < sizes[1] or small.model.name == "fc100", (key, sizes)  # the paper's FC100 stays
    spec = debug.experiment.benchmark
    assert transfer_benchmark.families(spec) == transfer_benchmark.families(full.experiment.benchmark)
    assert spec.ensembles == full.experiment.benchmark.ensembles
    assert transfer_benchmark.surrogate_keys(debug) == ["resnet_p1"]
    robust = {k for k in debug.experiment.models if is_robust(debug, k)}
    assert {scenario(debug, ("resnet_p1",), v, robust) for v in debug.experiment.models} == {
        "white-box", "cross-training-set", "cross-architecture", "robust victim"}


def test_attack_params_are_conf_attack_s_each_call_its_own_copy():
    spec = compose(["experiment=transfer_benchmark"]).experiment.benchmark
    first = transfer_benchmark.attack_params(spec, "admix", "linf", 10, 0.1)
    assert {k: first[k] for k in ("scales", "norm", "steps", "epsilon")} == {
        "scales": compose(["attack=admix"]).attack.params.scales, "norm": "linf", "steps": 10, "epsilon": 0.1}
    first["admix_pool"] = "changed"
    first["scales"] = -1
    again = transfer_benchmark.attack_params(spec, "admix", "l2", 5, 1.0)
    assert "admix_pool" not in again and again["scales"] == compose(["attack=admix"]).attack.params.scales


def test_start_up_refuses_an_unknown_surrogate_and_an_unknown_attack(tiny_overrides):
    cfg = tiny_benchmark(tiny_overrides)
    cfg["experiment"]["benchmark"]["surrogates"] = ["nope"]
    with pytest.raises(validate.ConfigError, match="surrogates: 'nope' is not one of experiment.models"):
        check(as_config(cfg))
    cfg = tiny_benchmark(tiny_overrides)
    cfg["experiment"]["benchmark"]["families"] = {"baselines": ["pgd", "pgdd"]}
    with pytest.raises(validate.ConfigError, match="unknown attack 'pgdd'"):
        check(as_config(cfg))


def test_the_benchmark_at_a_debug_size(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))  # the user's module file, as on PYTHONPATH
    cfg = as_config(tiny_benchmark(tiny_overrides))
    assert job_name(cfg) == "transfer_benchmark"
    metrics = adv_jax.run(cfg, tmp_path / "run")
    result = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    assert set(result["skipped"]["a_p1"]) == {"sgm"}  # an MLP has no skip connections
    assert {"sgm", "ghost"} <= set(result["skipped"]["mine"])  # a whole module has no layers to read
    victims, cells = result["models"], result["cells"]
    assert set(result["attacks"]["fixed"]) == {"a_p1", "mine", "ens"}
    assert set(result["attacks"]["fixed"]["mine"]) == {"pgd", "mi_fgsm"}
    per_table = {"fixed": 2 * 2, "matched": 2 * 1}  # norms x budgets
    rows = sum(len(names) * per_table[t] for t, by in result["attacks"].items() for names in by.values())
    assert len(cells) == rows * len(victims)
    for c in cells:
        with np.load(tmp_path / "run" / c["file"]) as f:
            x, x_adv = f["x"], f["x_adv"][c["row"], c["budget_index"]]
            assert str(f["rows"][c["row"]]) == f"{c['attack']}/{c['norm']}"
        assert np.allclose(x_adv * 255, np.round(x_adv * 255), atol=1e-3)  # 8-bit pixels
        delta = (x_adv - x).reshape(len(x), -1)
        size = np.abs(delta).max(1) if c["norm"] == "linf" else np.linalg.norm(delta, axis=1)
        assert size.max() <= c["budget"] + (0.5 / 255 if c["norm"] == "linf" else 28 * 0.5 / 255) + 1e-5
        assert c["all"]["low"] <= c["all"]["rate"] <= c["all"]["high"] and c["all"]["n"] == 10
        assert c["correct"]["n"] == result["num_correct"] and 0 < c["ssim"] <= 1
        if c["table"] == "matched":
            assert c["evals"] <= 6 or c["steps"] == 1
    expected = {"a_p1": "white-box", "a_p2": "cross-training-set", "robust": "robust victim",
                "mine": "cross-architecture"}
    assert {c["victim"]: c["scenario"] for c in cells if c["surrogate"] == "a_p1"} == expected
    recomputed = recompute_cells(tmp_path / "run")
    rates = lambda cs: json.dumps([(c["all"], c["correct"]) for c in cs], sort_keys=True)  # noqa: E731 (NaN == NaN)
    assert rates(recomputed) == rates(cells)
    # Interrupted after its families: a redo reads each back (same config) and gives the same cells.
    (tmp_path / "run" / "metrics.json").unlink()
    adv_jax.run(cfg, tmp_path / "run")
    again = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    assert all(t["run"] is None for t in again["timing"]) and rates(again["cells"]) == rates(cells)
    # conf/attack/pgd.yaml edited since: PGD's family runs again, the others are read back.
    (tmp_path / "run" / "metrics.json").unlink()
    edited = transfer_benchmark.attack_params
    monkeypatch.setattr(transfer_benchmark, "attack_params", lambda spec, name, *rest: {
        **edited(spec, name, *rest), **({"random_start": False} if name == "pgd" else {})})
    adv_jax.run(cfg, tmp_path / "run")
    redone = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    assert {t["family"] for t in redone["timing"] if t["run"] is not None} == {"baselines"}
    assert metrics["benchmark/fixed/pgd/linf/0.1/white-box"] >= 0
    # An attack module edited since: nothing is read back.
    (tmp_path / "run" / "metrics.json").unlink()
    monkeypatch.setattr(transfer_benchmark, "attack_code_digest", lambda: "edited")
    adv_jax.run(cfg, tmp_path / "run")
    redone = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    assert all(t["run"] is not None for t in redone["timing"])


def test_pgd_training_trains_on_adversarials_inside_the_box_and_needs_a_minibatch_optimizer():
    cfg = compose(["model=relu_mlp", "train=adam", "train.adversarial.pgd_epsilon=0.1", "train.adversarial.pgd_steps=3"])
    assert adversarial_training.enabled(cfg.train)
    model = build_model(cfg.model)
    params = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    y = jnp.array([0, 1, 2, 3])
    x_adv = adversarial_training.madry_batch(model, params, x, y, jax.random.key(2), cfg.train.adversarial)
    assert float(jnp.abs(x_adv - x).max()) <= 0.1 + 1e-6 and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    loss = jnp.mean(jax.vmap(lambda a, b: -jax.nn.log_softmax(model.apply(params, a[None])[0])[b])(x_adv, y))
    clean = jnp.mean(jax.vmap(lambda a, b: -jax.nn.log_softmax(model.apply(params, a[None])[0])[b])(x, y))
    assert loss > clean  # the inner maximization raised the loss
    lbfgs = compose(["model=relu_mlp", "train.adversarial.pgd_epsilon=0.1"])
    with pytest.raises(ValueError, match="PGD training needs a minibatch optimizer"):
        adversarial_training.check_config(model, lbfgs.train)


def _cell(attack, surrogate, victim, scenario, hits, n=100):
    rate = {"rate": float(hits), "low": hits - 5.0, "high": hits + 5.0, "n": n}
    return {"table": "fixed", "family": "f", "attack": attack, "norm": "linf", "budget": 0.1, "budget_index": 0,
            "row": 0, "surrogate": surrogate, "victim": victim, "scenario": scenario, "evals": 10, "steps": 10,
            "source_success": 100.0, "all": rate, "correct": rate, "l2": 2.0, "linf": 0.1, "ssim": 0.7,
            "file": "x.npz"}


def _result(seed, gain):
    """Two surrogates' cells: 'new' is `gain` points above MI-FGSM cross-architecture."""
    cells = []
    for s, v, sc in (("a", "b", "cross-architecture"), ("b", "a", "cross-architecture"), ("a", "a2", "cross-training-set")):
        for attack, hits in (("pgd", 20 + seed), ("mi_fgsm", 30 + seed), ("new", 30 + seed + gain)):
            cells.append(_cell(attack, s, v, sc, hits))
    models = {k: {"label": k.upper(), "model": k, "split": "p1", "robust": False, "clean_accuracy": 98.0}
              for k in ("a", "a2", "b")}
    return {"seed": seed, "num_examples": 100, "num_correct": 90, "seconds": 1.0, "skipped": {},
            "protocol": {"budgets": {"linf": [0.1]}, "steps": 10, "matched_evals": None},
            "families": {"baselines": ["pgd", "mi_fgsm"], "f": ["new"]}, "models": models,
            "surrogates": {"a": {"label": "A", "members": ["a"]}, "b": {"label": "B", "members": ["b"]}},
            "cells": cells}


@pytest.mark.parametrize("gain, word", [(10, "beats"), (0, "ties with"), (-10, "loses to")])
def test_the_reports_verdicts_follow_the_numbers(tmp_path, gain, word):
    from adv_jax.reports.transfer_benchmark import report

    for seed in (0, 1, 2):
        (tmp_path / f"run{seed}").mkdir()
        (tmp_path / f"run{seed}" / "benchmark.json").write_text(json.dumps(_result(seed, gain)))
    text = report([tmp_path], "cmd", "run cmd", ["a note"])
    assert f"new (f) {word} the better baseline ({gain:+.1f} points)" in text
    assert "mi_fgsm's mean success: cross-training-set 31.0%, cross-architecture 31.0%" in text
    new = f"{31 + gain:.1f} ± 1.0 [±5.0]"  # mean ± std over the seeds [mean bootstrap half-width]
    assert f"| f | new | {new} | {new} | - | 10 | 2.00 | 0.100 | 0.700 |" in text


def test_an_attack_is_compared_with_the_baselines_on_its_own_surrogates(tmp_path):
    """'new' applies to surrogate b only, where every attack transfers less: equal to the baseline
    there, it ties (compared over all surrogates it would seem to lose)."""
    from adv_jax.reports.transfer_benchmark import verdict

    result = _result(0, 0)
    easy = {"a": 60.0, "b": 20.0}
    for c in result["cells"]:
        c["all"] = {**c["all"], "rate": easy[c["surrogate"]], "low": easy[c["surrogate"]] - 1,
                    "high": easy[c["surrogate"]] + 1}
    result["cells"] = [c for c in result["cells"] if c["attack"] != "new" or c["surrogate"] == "b"]
    assert verdict([result], "fixed", "new", "linf", 0.1) == (0.0, "ties with")
