"""The robustness benchmark (adv_jax/bench/robustness.py, reports/robustness.py) on a tiny FC10:
the structure it measures, AutoAttack's accuracy never above any of its stages', bad settings
caught before any work, and the report's tables."""

import json

import numpy as np
import pytest

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


def test_a_tiny_model_is_measured_and_reported(tmp_path, tiny_overrides):
    conf = tiny_conf(tiny_overrides)
    measured = json.loads(json.dumps(robustness.run(conf, tmp_path / "runs")))  # as the script stores it
    seed = measured["models"]["tiny"]["seeds"]["0"]
    assert 0.0 <= seed["clean_error"] <= 100.0 and len(seed["budgets"]) == 2
    for b in seed["budgets"]:
        stages = list(b["stages"].values())
        assert list(b["stages"]) == ["apgd_ce", "apgd_t", "fab_t", "square"]
        assert all(a >= c for a, c in zip(stages, stages[1:]))  # each stage only removes robust images
        assert b["autoattack"] == pytest.approx(stages[-1]) and b["autoattack"] == np.mean(b["robust"])
        assert len(b["robust"]) == len(b["pgd_robust"]) == 6 and 0.0 <= b["pgd"] <= 1.0
    assert measured["speed"]["tiny"]["ex_per_s"] > 0
    text = report.report(conf, measured, "python scripts/bench_robustness.py")
    assert "| tiny FC10 | plain |" in text and "| L-inf 0.05 | L2 3 |" in text
    assert "### L2 3" in text and "after APGD-CE" in text and "## Speed" in text
    weaker, cells, _ = report.weaker_cells(measured)
    assert cells == 2 and f"**{weaker} of 2**" in text
    # Saved in the run directory: a second run reads it back; other settings measure again.
    assert json.loads(json.dumps(robustness.run(conf, tmp_path / "runs")))["models"] == measured["models"]
    saved = tmp_path / "runs" / "tiny_seed0" / robustness.SAVED
    assert json.loads(saved.read_text())["stamp"] == robustness.settings_stamp(conf)
    assert robustness.settings_stamp({**conf, "examples": 5}) != robustness.settings_stamp(conf)
    with pytest.raises(ValueError, match="not in the config"):
        robustness.only_models(conf, ["nonesuch"])
