"""The minimum-norm benchmark (adv_jax/reports/bench_minnorm.py): AttackBench's optimality score
on hand-computed distances, and the whole report on a tiny FC10 with a few images and steps (the
foolbox rows when foolbox is installed; without it, the note that says they are left out)."""

import re

import numpy as np

from adv_jax.reports import bench_minnorm, settings

INF = np.inf
FEW_STEPS = {"lbfgs": {"c_steps": 3, "max_evals": 5, "extra_solves": 2},
             "cw": {"steps": 10, "binary_search_steps": 2}, "deepfool": {"steps": 5},
             "pgd_min": {"steps": 3, "search_steps": 4}, "fgsm_min": {"search_steps": 4},
             "ddn": {"steps": 20}, "fmn": {"steps": 20}}


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
    conf["examples"] = 6
    conf["models"] = [{"name": "tiny", "label": "tiny FC10", "overrides": ["model=fc10", *tiny_overrides]}]
    conf["attacks"] = [{"name": name, "params": FEW_STEPS[name]} for name in attacks or FEW_STEPS]
    for entry in conf["foolbox"]:
        entry["params"]["steps"] = 20
    return conf


def scores_in(text: str) -> list[float]:
    """The last cell of every attack row of the per-target tables."""
    return [float(m) for m in re.findall(r"^\| [^|]+\|(?: [^|]+ \|){5} ([0-9.]+) \|$", text, re.M)]


def test_report_on_a_tiny_model(tmp_path, tiny_overrides):
    conf = tiny_conf(tiny_overrides)
    text = bench_minnorm.report(conf, tmp_path / "runs", {}, "python scripts/bench_minnorm.py")
    names = [*FEW_STEPS] + ([e["name"] for e in conf["foolbox"]] if bench_minnorm.foolbox_available() else [])
    assert "optimality_a = 1 - (A_a - A*) / (D - A*)" in text
    for mode in ("random", "untargeted"):
        assert f"### Targets: {mode}" in text
        assert f"tiny FC10, {mode}" in text  # a column of the summary
    for name in names:
        assert len(re.findall(rf"^\| {name} \|", text, re.M)) == 3  # both modes and the summary
    scores = scores_in(text)
    assert len(scores) == 2 * len(names) and all(0.0 <= s <= 1.0 for s in scores)
    assert max(scores) > 0.5


def test_report_without_foolbox_says_its_rows_are_left_out(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.setattr(bench_minnorm, "foolbox_available", lambda: False)
    conf = tiny_conf(tiny_overrides, ["fgsm_min", "fmn"])
    conf["target_modes"] = ["untargeted"]
    text = bench_minnorm.report(conf, tmp_path / "runs", {}, "python scripts/bench_minnorm.py")
    assert "foolbox is not installed" in text and "foolbox DDN" not in text
    assert len(scores_in(text)) == 2
