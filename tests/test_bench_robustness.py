"""The robustness benchmark (adv_jax/bench/robustness.py, reports/robustness.py) on a tiny FC10:
the structure it measures, AutoAttack's accuracy never above any of its stages', bad settings
caught before any work, and the report's tables."""

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from adv_jax.bench import robustness
from adv_jax.reports import robustness as report
from adv_jax.reports import settings


def tiny_conf(tiny_overrides) -> dict:
    conf = settings.load("robustness")
    overrides = [o for o in tiny_overrides if not o.startswith(("data.train_limit=", "train.lbfgs_steps="))]
    conf.update(examples=6, seeds=[0], chunk_size=8, common=["attack=none", "wandb.mode=disabled"],
                budgets=[{"norm": "linf", "epsilon": 0.05}, {"norm": "l2", "epsilon": 3.0}],
                autoattack={"apgd_steps": 4, "target_classes": 2, "fab_steps": 3, "square_queries": 10},
                pgd={"steps": 4, "restarts": 2}, speed={"models": ["tiny"], "budget": 0, "repeats": 1})
    conf["models"] = [{"name": "tiny", "label": "tiny FC10", "kind": "plain", "overrides": [
        "model=fc10", *overrides, "data.train_limit=500", "train.lbfgs_steps=20", "lipschitz.images=0",
        "lipschitz.methods=[product]"]}]
    return conf


def test_bad_settings_fail_before_any_work():
    conf = settings.load("robustness")
    robustness.check(conf)
    with pytest.raises(ValueError, match="norm in"):
        robustness.check({**conf, "budgets": [{"norm": "l1", "epsilon": 1.0}]})
    with pytest.raises(ValueError, match="epsilon > 0"):
        robustness.check({**conf, "budgets": [{"norm": "l2", "epsilon": 0}]})
    with pytest.raises(ValueError, match="unique"):
        robustness.check({**conf, "models": conf["models"][:1] * 2})
    assert robustness.configured(conf, 7, "1,2", "fc100")["seeds"] == [1, 2]
    with pytest.raises(ValueError, match="comma-separated integers"):
        robustness.configured(conf, seeds="0,a")
    with pytest.raises(ValueError, match="examples must be >= 1"):
        robustness.configured(conf, examples=0)
    with pytest.raises(ValueError, match="overrides or a recipe"):
        robustness.check({**conf, "models": [{"name": "a", "label": "A", "kind": "plain"}]})


def test_a_recipe_is_read_from_its_search_report_or_refused_before_any_work(tmp_path):
    conf = settings.load("robustness")
    chosen = {"best_search": "adversarial_training", "overrides": ["train.epochs=3", "train.decay_scale=2.0"]}
    (tmp_path / "chosen.json").write_text(json.dumps(chosen))
    entry = {"name": "pool", "label": "pool", "kind": "pool-trained", "recipe": str(tmp_path / "chosen.json"),
             "overrides": ["seed=4"]}
    (resolved,) = robustness.with_recipes({**conf, "models": [entry]})["models"]
    assert resolved["overrides"][0] == "search=adversarial_training" and resolved["overrides"][-1] == "seed=4"
    assert {"train.epochs=3", "train.decay_scale=2.0", "data.validation=0"} <= set(resolved["overrides"])
    with pytest.raises(ValueError, match="does not exist"):
        robustness.check({**conf, "models": [{**entry, "recipe": str(tmp_path / "none.json")}]})
    (tmp_path / "other.json").write_text(json.dumps({"trials": 3}))
    with pytest.raises(ValueError, match="no chosen recipe"):
        robustness.check({**conf, "models": [{**entry, "recipe": str(tmp_path / "other.json")}]})


def test_a_tiny_model_is_measured_and_reported(tmp_path, tiny_overrides):
    conf = tiny_conf(tiny_overrides)
    command = "python scripts/bench_robustness.py"
    measured = json.loads(json.dumps(robustness.run(conf, tmp_path / "runs", command)))  # as the script stores it
    seed = measured["models"]["tiny"]["seeds"]["0"]
    assert 0.0 <= seed["clean_error"] <= 100.0 and len(seed["budgets"]) == 2
    for b in seed["budgets"]:
        stages = list(b["stages"].values())
        assert list(b["stages"]) == ["apgd_ce", "apgd_t", "fab_t", "square"]
        assert all(a >= c for a, c in zip(stages, stages[1:]))  # each stage only removes robust images
        assert b["autoattack"] == pytest.approx(stages[-1]) and b["autoattack"] == np.mean(b["robust"])
        assert len(b["robust"]) == len(b["pgd_robust"]) == 6 and 0.0 <= b["pgd"] <= 1.0
    assert measured["speed"]["tiny"]["ex_per_s"] > 0
    text = report.report(conf, measured, command)
    assert "| tiny FC10 | plain |" in text and "Measured in parts" not in text and "| L-inf 0.05 | L2 3 |" in text
    assert "### L2 3" in text and "after APGD-CE" in text and "## Speed" in text
    weaker, cells, _ = report.weaker_cells(measured)
    assert cells == 2 and f"**{weaker} of 2**" in text
    # Saved in the run directory: a second run reads it back, credited to the command that
    # measured it; other settings measure again.
    again = json.loads(json.dumps(robustness.run(conf, tmp_path / "runs", "a later command")))
    assert again["models"] == measured["models"] and again["models"]["tiny"]["seeds"]["0"]["measured_by"] == command
    saved = tmp_path / "runs" / "tiny_seed0" / robustness.SAVED
    assert json.loads(saved.read_text())["stamp"] == robustness.settings_stamp(conf)
    assert robustness.settings_stamp({**conf, "examples": 5}) != robustness.settings_stamp(conf)
    with pytest.raises(ValueError, match="not in the config"):
        robustness.only_models(conf, ["nonesuch"])


def test_keep_reuses_only_measurements_of_the_same_model_settings_and_attack_code(tmp_path, tiny_overrides, capsys):
    """--keep: an earlier .json's measurement is taken where the model's cache key, the settings
    and the attacks' code match (no run directory needed), and measured again where any differs;
    the report names the command that measured what it kept."""
    conf = tiny_conf(tiny_overrides)
    first = json.loads(json.dumps(robustness.run(conf, tmp_path / "a", "first")))
    seed = first["models"]["tiny"]["seeds"]["0"]
    assert seed["model_key"] == robustness.model_key(conf, conf["models"][0], 0) and seed["measured_by"] == "first"
    again = json.loads(json.dumps(robustness.run(conf, tmp_path / "b", "second", kept=first)))
    assert again == first and not (tmp_path / "b").exists() and "kept (measured by `first`)" in capsys.readouterr().out
    assert report.measured_by_lines(again, "second") == [
        "Measured by `first`, which saved the .json this file is reported from.", ""]
    for other in ({**first, "stamp": {**first["stamp"], "attacks": "0" * 16}},  # other attack code
                  json.loads(json.dumps(first).replace(seed["model_key"], "0" * 16))):  # another model
        remeasured = robustness.run(conf, tmp_path / "c", "third", kept=other)["models"]["tiny"]["seeds"]["0"]
        assert remeasured["measured_by"] == "third"
    other_seed = {**conf["models"][0], "overrides": [*conf["models"][0]["overrides"], "train.lbfgs_steps=21"]}
    assert robustness.model_key(conf, other_seed, 0) != seed["model_key"] != robustness.model_key(conf, conf["models"][0], 1)
    # Past its deadline a run starts nothing new: seed 1 is left pending, the report says so.
    two = {**conf, "seeds": [0, 1]}
    part = json.loads(json.dumps(robustness.run(two, tmp_path / "d", "fourth", kept=first, deadline=0.0)))
    assert list(part["models"]["tiny"]["seeds"]) == ["0"] and part["pending"] == {"tiny FC10": [1]}
    text = report.report(two, part, "fourth")
    assert "| tiny FC10 (1 of 2 seeds) | plain |" in text and "**Not measured yet**" in text and "tiny FC10 seeds 1" in text


def test_the_pool_trained_model_is_the_chosen_recipe_of_adversarial_training_md():
    """conf/report/robustness.yaml's pool-trained FC100 trains as results/adversarial_training.md's
    chosen recipe does (`search.recipe_overrides`, as in the command scripts/report_search.py
    prints): same model, data and training, with the benchmark's common overrides after it."""
    import adv_jax
    from adv_jax.reports import search

    chosen = json.loads((Path(__file__).resolve().parents[1] / "results" / "adversarial_training.json").read_text())
    conf = robustness.with_recipes(settings.load("robustness"))
    entry = next(m for m in conf["models"] if m["name"] == "fc100_pool")
    ours = adv_jax.compose([*entry["overrides"], *conf["common"], "seed=0"])
    theirs = adv_jax.compose([*search.recipe_overrides(chosen["best_search"], chosen["overrides"]), "seed=0"])
    for part in ("model", "data", "train"):
        assert OmegaConf.to_container(ours[part]) == OmegaConf.to_container(theirs[part]), part
    assert ours.data.validation == 0 and ours.train.decay_scale == pytest.approx(0.5762027080158328)
