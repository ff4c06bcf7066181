"""The minimum-distortion bracket (adv_jax/bench/bracket.py measures, adv_jax/reports/bracket.py
writes): violations and gap curves on hand-made sides, the sides read from bench_minnorm's
measurements, and the report's summary row."""

import json

import numpy as np
import pytest

from adv_jax.bench import bracket as measure
from adv_jax.reports import bracket, provenance, settings

INF = np.inf


def hand_made(certified, exact, solved, attacked, norm="linf") -> dict:
    return {"norm": norm, "images": len(attacked), "split": "test", "attacked": attacked, "attacks": {"a": attacked},
            "exact": exact, "solved": solved, "certified": {"crown": certified}, "seconds": {"crown": 0.1}}


def crown_violations(model: dict) -> int:
    return bracket.violations(model, model["certified"]["crown"])


def test_violations_count_every_crossing():
    ordered = hand_made([0.1, 0.2, 0.0], [0.2, 0.3, 0.5], [True, True, False], [0.25, 0.3, 0.1])
    assert crown_violations(ordered) == 0  # the unsolved third example's exact is not compared
    crossing = hand_made([0.3, 0.2, 0.0], [0.2, 0.3, 0.5], [True, True, True], [0.25, 0.29, 0.6])
    # certified 0.3 > exact 0.2 and > attacked 0.25; attacked 0.29 < exact 0.3
    assert crown_violations(crossing) == 3
    within_gap = {**hand_made([0.1], [0.3], [True], [0.3 * (1 - 0.5e-4)]), "exact_gap": 1e-4}
    assert crown_violations(within_gap) == 0  # the exact minimum is solved to a 1e-4 gap
    assert crown_violations({**within_gap, "exact_gap": 0.0}) == 1
    # A float32 attack 1.7e-8 below a minimum of 2.4e-5 (FC10's closest image): rounding, not a crossing
    assert crown_violations(hand_made([0.0], [2.44e-5], [True], [2.44e-5 - 1.7e-8])) == 0
    assert crown_violations(hand_made([0.0], [2.44e-5], [True], [2.44e-5 - 1e-7])) == 1


def test_the_summary_adds_each_examples_best_bound_where_there_are_several_methods():
    model = hand_made([0.01, 0.03], [0.04, 0.04], [True, True], [0.05, 0.05])
    model["certified"]["curvature"] = [0.02, 0.01]
    rows = bracket.summary_rows("tiny", model)
    assert [row[3] for row in rows] == ["crown", "curvature", bracket.BEST]
    assert rows[-1][4] == "0.025" and rows[-1][-1] == "0"  # mean of max(0.01, 0.02) and max(0.03, 0.01)
    assert len(bracket.summary_rows("tiny", hand_made([0.01], [0.02], [True], [0.03]))) == 1


def test_gap_curves_nest_and_count_fractions():
    model = hand_made([0.01, 0.02, 0.04, 0.0], [0.02, 0.03, 0.05, 0.01], [True] * 4, [0.02, 0.04, 0.06, INF])
    rows = bracket.curves(model, [0.015, 0.03])
    assert rows[0] == ["0.015", "50.0", "75.0", "100.0"]
    assert rows[1] == ["0.03", "25.0", "25.0", "75.0"]


def test_sides_take_the_best_attack_and_the_exact_column():
    mode = {"a": {"d": [0.3, INF]}, "b": {"d": [0.2, 0.5]}, "exact": {"d": [0.1, 0.4], "solved": [True, False]}}
    best, attacks, exact, solved = measure.sides(mode)
    np.testing.assert_allclose(best, [0.2, 0.5])
    assert list(attacks) == ["a", "b"] and solved.tolist() == [True, False]
    assert measure.sides({"a": {"d": [1.0]}})[2] is None


def test_report_states_units_and_ratios():
    conf = settings.load("bracket")
    model = hand_made([0.01, 0.02], [0.02, 0.04], [True, True], [0.03, 0.04])
    text = bracket.report(conf, {"tiny": model}, "python scripts/bracket.py", "figures/bracket.png")
    assert "| tiny | L-inf | 2 | crown | 0.015 | 0.03 (2/2) | 0.035 | 1.25 | 2 | 2.5 | 0 |" in text
    assert "![gap curves](figures/bracket.png)" in text


def test_models_missing_from_the_measurements_fail_before_any_work():
    conf, minnorm_conf = settings.load("bracket"), settings.load("bench_minnorm")
    with pytest.raises(ValueError, match="lack"):
        measure.check(conf, minnorm_conf, {"models": {}})
    with pytest.raises(ValueError, match="not bench_minnorm models"):
        measure.check({**conf, "models": ["nonesuch"]}, minnorm_conf, {"models": {}})
    with pytest.raises(ValueError, match="alpha_crown_models.*nonesuch"):
        measure.check({**conf, "models": [], "alpha_crown_models": ["nonesuch"]}, minnorm_conf, {"models": {}})
    assert measure.alpha_crown_steps({**conf, "alpha_crown_models": None}, "fc200_full") == conf["alpha_crown_steps"]
    chosen = {**conf, "alpha_crown_models": ["fc100_p1"]}
    assert measure.alpha_crown_steps(chosen, "fc200_full") == 0 < measure.alpha_crown_steps(chosen, "fc100_p1")


def test_bracket_of_a_tiny_linear_model_is_ordered(tmp_path, tiny_overrides, monkeypatch):
    """A tiny FC10 through bench_minnorm (two attacks, the exact QP) and then the bracket: CROWN,
    the curvature certificate and the Lipschitz bracket stay below the exact minima, which stay
    below the attacks."""
    pytest.importorskip("cvxpy")
    from test_bench_minnorm import tiny_conf
    from adv_jax.bench import minnorm

    monkeypatch.setattr(minnorm, "foolbox_available", lambda: False)
    minnorm_conf = tiny_conf(tiny_overrides, ["deepfool", "fmn"])
    minnorm_conf.update(target_modes=["untargeted", "random"], examples=4)
    minnorm_conf["models"][0].update(name="tiny", exact="linear")
    measured = json.loads(json.dumps(minnorm.run(minnorm_conf, tmp_path / "runs", {})))
    conf = {**settings.load("bracket"), "models": ["tiny"], "alpha_crown_steps": 2, "alpha_crown_models": None}
    out = measure.run(conf, minnorm_conf, measured, tmp_path / "runs")["tiny FC10"]
    assert set(out["certified"]) == {"crown", "alpha-crown", "curvature", "lipschitz global", "lipschitz local"}
    assert all(bracket.violations(out, bound) == 0 for bound in out["certified"].values())
    exact = np.asarray(out["exact"])
    assert np.all(np.asarray(out["certified"]["alpha-crown"]) >= np.asarray(out["certified"]["crown"]) - 1e-12)
    assert np.all(np.asarray(out["certified"]["crown"]) > 0) and np.all(np.isfinite(exact))
    text = bracket.report(conf, {"tiny FC10": out}, "python scripts/bracket.py", None)
    assert "| tiny FC10 | per-pixel RMS | 4 | crown |" in text and "Measured by" not in text
    again = bracket.report(conf, json.loads(json.dumps({"tiny FC10": out})), "python scripts/bracket.py --measured m.json",
                           None, measured_by={"tiny FC10": "python scripts/bracket.py"})
    assert "Measured by `python scripts/bracket.py`" in again and "| tiny FC10 | per-pixel RMS | 4 | crown |" in again
    # To random targets (bench_minnorm's, drawn again from its seed): sound against the exact
    # targeted minima, which lie above the untargeted ones.
    targeted = measure.run({**conf, "mode": "random"}, minnorm_conf, measured, tmp_path / "runs")["tiny FC10"]
    assert targeted["mode"] == "random" and min(targeted["targets"]) >= 0 and out["targets"] == [-1] * 4
    assert all(bracket.violations(targeted, bound) == 0 for bound in targeted["certified"].values())
    assert np.all(np.asarray(targeted["certified"]["crown"]) > 0) and np.all(np.asarray(targeted["exact"]) >= exact)
    # The images are the ones measured (by index); another model's measurements fail before work.
    assert measured["models"]["tiny FC10"]["indices"] == sorted(measured["models"]["tiny FC10"]["indices"])
    measured["models"]["tiny FC10"]["params_sha256"] = "0" * 16
    with pytest.raises(ValueError, match="not the one the minimum-norm measurements"):
        measure.run(conf, minnorm_conf, measured, tmp_path / "runs")


def test_a_saved_bracket_names_the_command_that_measured_each_model():
    """The .json holds {"command", "models", "measured_by"}; a file without measured_by reads as
    measured by its command, one of the first layout (models alone) by the plain command."""
    models = {"tiny FC10": {"norm": "l2", "images": 4}}
    by = {"tiny FC10": "python scripts/bracket.py --models tiny"}
    assert bracket.saved(bracket.to_save("python scripts/bracket.py --models tiny", models)) == (models, by)
    assert bracket.saved({"command": by["tiny FC10"], "models": models}) == (models, by)
    measured, measured_by = bracket.saved(json.loads(json.dumps(models)))
    assert measured == models and measured_by["tiny FC10"].endswith("python scripts/bracket.py")


def test_keep_replaces_only_the_models_measured_again_and_names_who_measured_what():
    """--keep: an earlier run's models, the re-measured one in its place with the new command; the
    report names each command with its models; reporting the saved merge again keeps them."""
    kept = {"A": {"images": 1}, "B": {"images": 2}, "C": {"images": 3}}
    measured, by = bracket.kept_with(kept, dict.fromkeys(kept, "old"), {"B": {"images": 20}}, "new")
    assert list(measured) == ["A", "B", "C"] and measured["B"] == {"images": 20}
    assert by == {"A": "old", "B": "new", "C": "old"}
    assert provenance.measured_in_parts(by, "new") == ["Measured in parts: `old` (A, C); `new` (B).", ""]
    assert provenance.measured_in_parts(dict.fromkeys(kept, "new"), "new") == []
    assert provenance.measured_in_parts(dict.fromkeys(kept, "old"), "report") == [
        "Measured by `old`, which saved the .json this file is reported from.", ""]
    assert bracket.saved(json.loads(json.dumps(bracket.to_save("report", measured, by)))) == (measured, by)
