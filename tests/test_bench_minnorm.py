"""The minimum-norm benchmark (adv_jax/bench/minnorm.py measures, adv_jax/reports/bench_minnorm.py
writes): AttackBench's optimality score on hand-computed distances, and the whole report on a
tiny FC10 with a few images and steps (the foolbox rows when foolbox is installed; without it,
the note that says they are left out)."""

import json
import re

import numpy as np

from adv_jax.bench import minnorm
from adv_jax.reports import bench_minnorm, settings

INF = np.inf
FEW_STEPS = {"lbfgs": {"c_steps": 2, "max_evals": 3, "extra_solves": 1},
             "cw": {"steps": 5, "binary_search_steps": 1}, "deepfool": {"steps": 3},
             "pgd_min": {"steps": 2, "search_steps": 3}, "fgsm_min": {"search_steps": 3},
             "ddn": {"steps": 10}, "fmn": {"steps": 10},
             "refined": {"first_params": {"c_steps": 2, "max_evals": 3, "extra_solves": 1},
                         "refine_params": {"steps": 10}}}


def test_optimality_is_attackbench_score():
    """d* = [1, 1, 3] (the third column's example no attack solves is left out), D = 3,
    A* = 5/3; attack 0: A = (1 + 2 + 3) / 3 = 2 -> 1 - (1/3) / (4/3) = 0.75; attack 1:
    A = (1.5 + 1 + 3) / 3 -> 1 - (1/6) / (4/3) = 0.875; attack 2 is best everywhere but once."""
    d = np.array([[1.0, 2.0, INF, INF], [1.5, 1.0, 3.0, INF], [1.0, 1.0, 9.0, INF]])
    np.testing.assert_allclose(bench_minnorm.optimality(d), [0.75, 0.875, 1.0])
    np.testing.assert_allclose(bench_minnorm.optimality(d[:, :1]), [1.0, 1.0, 1.0])  # D = A*
    assert np.all(np.isnan(bench_minnorm.optimality(np.full((2, 3), INF))))


def tiny_conf(tiny_overrides, attacks=None) -> dict:
    conf = settings.load("bench_minnorm")
    conf["examples"] = 3
    # The tiny run: 500 images, 20 L-BFGS steps, no Jacobian lower bound, the product bound only.
    overrides = [o for o in tiny_overrides if not o.startswith(("data.train_limit=", "train.lbfgs_steps="))]
    conf["models"] = [{"name": "tiny", "label": "tiny FC10", "overrides": [
        "model=fc10", *overrides, "data.train_limit=500", "train.lbfgs_steps=20", "lipschitz.images=0",
        "lipschitz.methods=[product]"]}]
    conf["attacks"] = [{"name": name, "params": FEW_STEPS[name]} for name in attacks or FEW_STEPS]
    for entry in conf["foolbox"]:
        entry["params"]["steps"] = 10
    return conf


def scores_in(text: str) -> list[float]:
    """The last cell of every attack row of the per-target tables."""
    return [float(m) for m in re.findall(r"^\| [^|]+\|(?: [^|]+ \|){5} ([0-9.]+) \|$", text, re.M)]


def test_report_on_a_tiny_model(tmp_path, tiny_overrides, monkeypatch):
    """The whole report with random targets, then (the same run, loaded) untargeted and without
    foolbox: the note that says its rows are left out. One test, so the tiny model is trained
    once; one target mode per report, so each attack compiles once."""
    conf = tiny_conf(tiny_overrides)
    conf["target_modes"] = ["random"]
    measured = json.loads(json.dumps(minnorm.run(conf, tmp_path / "runs", {})))  # as the script stores it
    text = bench_minnorm.report(conf, measured, "python scripts/bench_minnorm.py")
    names = [*FEW_STEPS] + ([e["name"] for e in conf["foolbox"]] if minnorm.foolbox_available() else [])
    assert "optimality_a = 1 - (A_a - A*) / (D - A*)" in text
    assert "### Targets: random" in text and "tiny FC10, random" in text  # a column of the summary
    for name in names:
        assert len(re.findall(rf"^\| {name} \|", text, re.M)) == 2  # the mode's table and the summary
    scores = scores_in(text)
    assert len(scores) == len(names) and all(0.0 <= s <= 1.0 for s in scores)
    assert max(scores) > 0.5

    # Without foolbox: its rows are left out, with the note that says so.
    monkeypatch.setattr(minnorm, "foolbox_available", lambda: False)
    conf = tiny_conf(tiny_overrides, ["fgsm_min", "fmn"])
    conf["target_modes"] = ["untargeted"]
    conf["models"][0]["examples"] = 2  # a model's own count beats the config's
    conf["split"], conf["attacks"][1]["label"] = "p2", "fmn, 10 steps"  # held-out images, a label
    conf["select"] = {"max_evals": 10_000}
    text = bench_minnorm.report(conf, minnorm.run(conf, tmp_path / "runs", {}), "python scripts/bench_minnorm.py")
    assert "foolbox is not installed" in text and "foolbox DDN" not in text
    assert "2 correctly classified p2 images." in text and "| fmn, 10 steps |" in text
    assert "### Targets: untargeted" in text and len(scores_in(text)) == 2
    assert "## Selection" in text and "| fmn, 10 steps | 10 |" in text


def test_slow_rates_keep_their_digits():
    assert [bench_minnorm.rate(v) for v in (0.3314, 3.14, 12.4, 1234.5)] == ["0.33", "3.1", "12", "1,234"]


def test_selection_takes_the_smallest_distortion_within_the_budget_that_fools_every_example():
    def cell(d, evals):
        return {"d": np.array(d), "evals": None if evals is None else np.full(len(d), evals), "seconds": 1.0}

    by_attack = {"cheap": cell([0.10, 0.20], 100), "costly": cell([0.05, 0.05], 500),
                 "misses": cell([0.01, np.inf], 10), "best": cell([0.12, 0.12], 300),
                 "foolbox": cell([0.01, 0.01], None)}
    other = {**by_attack, "best": cell([0.30, 0.30], 300)}  # averaged over cells: 0.21 > 0.15
    text = "\n".join(bench_minnorm.selection({"m": {"random": by_attack, "untargeted": other}}, 400))
    assert "Chosen: the smallest mean distortion among them: **cheap**." in text
    assert "| costly | 500 | 0.05000 | no |" in text and "| foolbox | - | 0.01000 | no |" in text
    text = "\n".join(bench_minnorm.selection({"m": {"random": by_attack}}, 400))
    assert "**best**" in text
