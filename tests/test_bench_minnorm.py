"""The minimum-norm benchmark (adv_jax/bench/minnorm.py measures, adv_jax/reports/bench_minnorm.py
writes): AttackBench's optimality score on hand-computed distances, the whole report on a
tiny FC10 with a few images and steps (the foolbox rows when foolbox is installed; without it,
the note that says they are left out), L-inf distances, a model's own attack list, and the exact
column: the QP's minima on an affine model of real digits, the MILP's path with a fake solver."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adv_jax import exact
from adv_jax.bench import minnorm
from adv_jax.models import Model, logits_fn
from adv_jax.models.layers import Layer
from adv_jax.reports import bench_minnorm, settings

INF = np.inf
FEW_STEPS = {"lbfgs": {"c_steps": 2, "max_evals": 3, "extra_solves": 1},
             "cw": {"steps": 5, "binary_search_steps": 1}, "deepfool": {"steps": 3},
             "pgd_min": {"steps": 2, "search_steps": 3}, "fgsm_min": {"search_steps": 3},
             "ddn": {"steps": 10}, "fmn": {"steps": 10},
             "refined": {"first_params": {"c_steps": 2, "max_evals": 3, "extra_solves": 1},
                         "refine_params": {"steps": 10}},
             "fab": {"steps": 5, "target_classes": 2, "norm": "l2", "epsilon": INF}}


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
    # A model that wants no foolbox rows (an L-inf model's default): no note about it.
    conf["models"][0]["foolbox"] = []
    measured = minnorm.run(conf, tmp_path / "runs", {})
    assert not measured["foolbox_missing"]
    assert "foolbox is not installed" not in bench_minnorm.report(conf, measured, "cmd")


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
    # An attack one model lacks is not judged; one the first model lacks is not either.
    text = "\n".join(bench_minnorm.selection({"m": {"random": by_attack}, "n": {"random": {
        "cheap": by_attack["cheap"], "extra": cell([0.01, 0.01], 10)}}}, 400))
    assert "**cheap**" in text and "| best |" not in text and "| extra |" not in text


def fake_run(model, params) -> SimpleNamespace:
    """What the benchmark reads of a run: its model, params, logits_fn and cache directory."""
    return SimpleNamespace(model=model, params=params, logits_fn=logits_fn(model, params),
                           config=SimpleNamespace(cache_dir="/nonexistent/cache"))


def test_linf_distances_are_the_largest_pixel_change_and_l2_the_rms(affine_digits):
    model, params, x, y = affine_digits
    x = np.asarray(x)
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, x.shape).astype(np.float32)
    x_adv = np.clip(x + noise, 0, 1)
    reached = np.asarray(jnp.argmax(model.apply(params, x_adv), -1))
    target = np.where(np.arange(len(x)) < 4, reached, (reached + 1) % 10)  # the first 4 succeed
    args = (logits_fn(model, params), jnp.asarray(x), jnp.asarray(y), jnp.asarray(target), jnp.asarray(x_adv))
    change = (x_adv - x).reshape(len(x), -1)
    fooled = np.arange(len(x)) < 4
    np.testing.assert_allclose(minnorm.distances(*args, "linf"),
                               np.where(fooled, np.abs(change).max(1), np.inf), rtol=1e-6)
    np.testing.assert_allclose(minnorm.distances(*args),
                               np.where(fooled, np.sqrt((change**2).mean(1)), np.inf), rtol=1e-5)


def test_an_entrys_own_attacks_replace_the_top_level_list():
    conf = settings.load("bench_minnorm")
    entries = {e["name"]: minnorm.model_settings(conf, e) for e in conf["models"]}
    relu, fc10 = entries["relu20_p1"], entries["fc10_1e-4"]
    assert relu["norm"] == "linf" and relu["exact"] == "relu_milp" and relu["foolbox"] == []
    assert [a["name"] for a in relu["attacks"]] == ["fgsm_min", "pgd_min", "fmn", "fab", "apgd_min"]
    assert all(a["params"]["norm"] == "linf" for a in relu["attacks"][1:])  # fgsm_min is L-inf
    assert fc10["attacks"] == conf["attacks"] and fc10["foolbox"] == conf["foolbox"]
    assert fc10["norm"] == "l2" and fc10["exact"] == "linear" and entries["conv_p1"]["exact"] is None
    own = minnorm.model_settings(conf, {"name": "m", "norm": "linf", "foolbox": [{"name": "f"}]})
    assert own["foolbox"] == [{"name": "f"}] and own["attacks"] == conf["attacks"]
    with pytest.raises(ValueError, match="unknown norm"):
        minnorm.model_settings(conf, {"name": "m", "norm": "l1"})
    with pytest.raises(ValueError, match="unknown exact"):
        minnorm.model_settings(conf, {"name": "m", "exact": "lp"})


def test_the_exact_column_of_a_linear_model_is_the_qp_and_no_attack_beats_it(affine_digits):
    """On real digits (the box binds), untargeted: the stored minima are exact.minimum_distortions
    in per-pixel RMS, and every attack's ratio to them is at least 1; the report shows it."""
    pytest.importorskip("cvxpy")
    model, params, x, y = affine_digits
    conf = settings.load("bench_minnorm")
    conf["attacks"] = [{"name": "deepfool", "params": {"steps": 10}}, {"name": "fmn", "params": {"steps": 30}}]
    conf["models"] = [{"name": "affine", "label": "affine", "exact": "linear"}]
    own = minnorm.model_settings(conf, conf["models"][0])
    target = jnp.full(len(y), -1)
    measured = minnorm.measure_mode(own, fake_run(model, params), x, jnp.asarray(y), target, False)
    w, b = np.asarray(params[0]["w"], np.float64), np.asarray(params[0]["b"], np.float64)
    truth = exact.minimum_distortions(w, b, np.asarray(x, np.float64), y, np.asarray(target))
    np.testing.assert_allclose(measured["exact"]["d"], truth / 28, rtol=1e-6)
    assert all(measured["exact"]["solved"]) and measured["exact"]["method"] == "linear"
    ratios = bench_minnorm.exact_ratios(measured)
    assert set(ratios) == {"deepfool", "fmn"} and all(r >= 1 - 1e-6 for r in ratios.values())
    model_json = {"images": len(y), "split": "test", "norm": "l2", "modes": {"untargeted": measured}}
    text = bench_minnorm.report(conf, {"foolbox": False, "models": {"affine": model_json}}, "cmd")
    assert "| attack | evals | success % | mean RMS | median RMS | ex/s | optimality | / exact |" in text
    assert f"| {ratios['deepfool']:.3f} |" in text and "8 of 8 examples solved" in text
    assert "## Distortion / exact minimum" in text and "| attack | affine, untargeted |" in text


def test_the_report_names_each_models_unit_and_counts_unsolved_minima():
    def cell(d):
        return {"d": d, "seconds": 1.0, "evals": None}

    linf = {"random": {"a": cell([0.2, 0.3, np.inf]), "b": cell([0.1, np.inf, 0.4]),
                       "exact": {"method": "relu_milp", "d": [0.1, 0.3, 0.5], "solved": [True, True, False],
                                 "seconds": 2.5}}}
    measured = {"foolbox": False, "models": {
        "relu": {"images": 3, "split": "test", "norm": "linf", "modes": linf},
        "old": {"images": 3, "split": "test", "modes": {"random": {"a": cell([0.5, 0.5, 0.5])}}}}}
    conf = {"title": "t", "models": [], "notes": []}
    text = bench_minnorm.report(conf, measured, "cmd")
    assert "Distances: per-pixel L-inf, max_i |x'_i - x_i|, pixels in [0, 1]." in text
    assert "Distances: per-pixel RMS, |x' - x|_2 / 28, pixels in [0, 1]." in text  # no norm: L2
    assert "| mean L-inf | median L-inf | ex/s | optimality | / exact |" in text
    assert "| a | - | 66.7 | 0.2500 | 0.2500 | 3 | 0.750 | 1.500 |" in text  # (0.2/0.1 + 0.3/0.3) / 2
    assert "| b | - | 66.7 | 0.2500 | 0.2500 | 3 | 0.750 | 1.000 |" in text  # unsolved 3rd left out
    assert ("Exact minimum (mixed-integer programs, within a time limit per example): 2 of 3 examples "
            "solved, mean 0.2000 L-inf over the solved finite ones; the solver took 2.5 s.") in text
    assert "| attack | relu, random |" in text and "| a | 1.500 |" in text  # the exact summary
    assert "| attack | relu, random | old, random |" in text and "| b | 0.750 | - |" in text


def test_relu_milp_searches_within_the_best_attack_in_float64(affine_digits, monkeypatch):
    """The MILP path with a fake solver: it gets the float64 ReLU chain, the best attack's
    distance x 1.001 as its upper end (inf where none succeeded), the norm and the time limit."""
    _, _, x, y = affine_digits
    model = Model(layers=(Layer("dense", features=8, activation="relu"), Layer("dense", features=10)))
    params = model.init(jax.random.key(0))
    seen = {}

    def fake_solver(chain, x, y, target, upper, norm="linf", time_limit=30.0, store=None):
        seen.update(dtype=chain.weights[0].dtype, activations=chain.activations, upper=upper,
                    norm=norm, time_limit=time_limit, target=target, store=store)
        return np.where(np.isfinite(upper), upper / 2, np.inf), np.arange(len(x)) % 2 == 0

    monkeypatch.setattr(exact, "relu_minimum_distortions", fake_solver)
    conf = {**settings.load("bench_minnorm"), "exact_time_limit": 7.0}
    own = minnorm.model_settings(conf, {"name": "r", "norm": "linf", "exact": "relu_milp",
                                        "attacks": [{"name": "fgsm_min", "params": {"search_steps": 3}}]})
    y = jnp.argmax(model.apply(params, x), -1)
    target = jnp.full(len(y), -1)
    measured = minnorm.measure_mode(own, fake_run(model, params), x, y, target, False)
    best = np.asarray(measured["fgsm_min"]["d"])
    assert seen["dtype"] == jnp.float64 and seen["activations"] == ("relu", "identity")
    np.testing.assert_allclose(seen["upper"], best * minnorm.UPPER_MARGIN)  # inf stays inf
    assert seen["norm"] == "linf" and seen["time_limit"] == 7.0 and list(seen["target"]) == [-1] * len(y)
    assert seen["store"].parent == Path("/nonexistent/cache/exact") and seen["store"].suffix == ".jsonl"
    np.testing.assert_allclose(measured["exact"]["d"], best * minnorm.UPPER_MARGIN / 2)
    assert measured["exact"]["solved"] == [i % 2 == 0 for i in range(len(y))]
    assert measured["exact"]["method"] == "relu_milp" and measured["exact"]["seconds"] >= 0


def test_parts_measured_apart_merge_in_the_configs_order():
    conf = settings.load("bench_minnorm")
    first, second = (conf["models"][i]["label"] for i in (0, 1))
    parts = [{"foolbox": False, "foolbox_missing": True, "commands": ["b"], "models": {second: {"x": 2}}},
             {"foolbox": True, "commands": ["a"], "models": {first: {"x": 1}}}]
    merged = minnorm.merge(conf, parts)
    assert list(merged["models"]) == [first, second] and merged["foolbox"] and merged["commands"] == ["b", "a"]
    assert merged["foolbox_missing"] and [m["measured_by"] for m in merged["models"].values()] == ["a", "b"]
    old, new = {"cpu": "X", "cores": 2, "python": "3.11"}, {"cpu": "Y", "cores": 2, "python": "3.11"}
    empty = {"images": 2, "split": "test", "norm": "l2", "modes": {}}
    merged["models"] = {first: {**empty, "measured_by": "a", "machine": old},
                        second: {**empty, "measured_by": "b", "machine": new}}
    text = bench_minnorm.report(conf, merged, "cmd")
    assert f"Machines: X, 2 cores; Python 3.11 ({first}); Y, 2 cores; Python 3.11 ({second})." in text
    assert f"Measured in parts: `a` ({first}); `b` ({second})." in text
    del merged["models"][second]
    text = bench_minnorm.report(conf, {**merged, "commands": ["a", "b"]}, "cmd")
    assert "Not in this file (in the config, not measured by the runs above): " + second in text
