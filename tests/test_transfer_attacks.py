"""The transfer-attacks job (adv_jax/jobs/transfer_attacks.py) at a debug size: tiny data, 8-8-unit
models, 2 budgets per norm, 8 examples; transfer.json's cells against their saved files, the
denominators, the analysis, the figures; and the rates' definitions on hand-made predictions."""

import json

import numpy as np
import pytest

import adv_jax
from adv_jax.config import compose
from adv_jax.jobs import job_name
from adv_jax.jobs.transfer_attacks import recompute_cells
from adv_jax.transfer import transfer_rates

# With tiny_overrides' debug=tiny (conf/debug/tiny.yaml: 2000 images, 3 epochs, this seed's models
# only, two budgets per norm, a smaller analysis), what this test needs besides: random targets
# (hit rates), 8 examples, 8-8-unit models, two of the five attacks and one ensemble, few steps.
DEBUG = ["experiment=transfer_attacks", "train=adam", "train.learning_rate=0.02",
         "experiment.num_examples=8", "experiment.transfer.analysis_examples=6",
         "experiment.transfer.target=random",
         "~experiment.transfer.attacks.mi_di_ti", "~experiment.transfer.attacks.di", "~experiment.transfer.attacks.ti",
         "~experiment.transfer.ensembles.ens_not_fc100_p1", "~experiment.transfer.ensembles.ens_not_fc123_p1",
         "~experiment.transfer.ensembles.ens_not_fc100_p2_logits",
         "experiment.transfer.attacks.pgd.params.steps=3", "++experiment.transfer.attacks.mi.params.steps=3",
         "++experiment.transfer.attacks.lbfgs.params.c_steps=3", "experiment.transfer.attacks.lbfgs.params.max_evals=5",
         "experiment.models.fc100_p1.hidden=[8,8]", "experiment.models.fc100_p2.hidden=[8,8]",
         "experiment.models.fc123_p1.hidden=[8,8]",
         # the shapes of the other two (their attacks share compiled programs), a model of its own:
         "experiment.models.fc123_p1.weight_decay=1e-3"]


def test_rates_state_their_denominators():
    y = np.array([0, 1, 2, 3, 4])
    fooled = np.array([True, True, True, False, True])
    clean = np.array([0, 1, 9, 3, 4])  # the target errs on example 2 when clean
    adv = np.array([5, 1, 9, 7, 4])
    rates = transfer_rates(y, np.full(5, -1), fooled, clean, adv)
    assert (rates["errors"], rates["n"], rates["rate_all"]) == (3, 5, 60.0)
    assert (rates["errors_conditional"], rates["n_conditional"]) == (1, 3)  # examples 0, 1, 4
    assert rates["rate_conditional"] == pytest.approx(100 / 3) and "hit_all" not in rates
    targeted = transfer_rates(y, np.array([5, 2, 9, 7, 0]), fooled, clean, adv)
    assert (targeted["hits"], targeted["hit_all"]) == (3, 60.0)
    assert (targeted["hits_conditional"], targeted["hit_conditional"]) == (1, pytest.approx(100 / 3))
    assert np.isnan(transfer_rates(y, np.full(5, -1), np.zeros(5, bool), clean, adv)["rate_conditional"])


def test_the_job_at_a_debug_size(tiny_overrides, tmp_path):
    cfg = compose([*DEBUG, *tiny_overrides])
    assert job_name(cfg) == "transfer_attacks"
    metrics = adv_jax.run(cfg, tmp_path / "run")
    result = json.loads((tmp_path / "run" / "transfer.json").read_text())
    sources, targets = result["sources"], result["models"]
    assert set(sources) == {*targets, "ens_not_fc100_p2"}
    per_source = {"pgd": 2 * 2, "mi": 2 * 2, "lbfgs": 1 + 2 * 2}  # budgets x norms (+ own size)
    assert len(result["cells"]) == sum(per_source.values()) * len(sources) * len(targets)
    for cell in result["cells"]:
        assert cell["n"] == 8 and 0 <= cell["n_conditional"] <= 8
        assert (tmp_path / "run" / cell["file"]).exists() and "hit_all" in cell
        assert cell["white_box"] == (cell["target"] in sources[cell["source"]]["members"])
    own_size = [c["source_success"] for c in result["cells"] if c["white_box"] and c["norm"] == "own"]
    assert np.mean(own_size) >= 50.0  # L-BFGS at its own size reaches most targets
    with np.load(tmp_path / "run" / result["cells"][0]["file"]) as f:
        assert f["x_adv"].shape == (2, 8, 28, 28, 1) and {"x", "y", "target", "budgets"} <= set(f.files)
    for again, cell in zip(recompute_cells(tmp_path / "run"), result["cells"]):
        assert json.dumps(again, sort_keys=True) == json.dumps(cell, sort_keys=True)  # nan == nan
    pairs = {(p["source"], p["target"]): p for p in result["analysis"]}
    assert len(pairs) == 9
    for key in targets:
        assert pairs[(key, key)]["mean_cosine"] == pytest.approx(1.0, abs=1e-4)
        assert all(pairs[(key, other)]["mean_cosine"] < 0.999 for other in targets if other != key)
        assert sum(q["n"] for q in pairs[(key, key)]["by_cosine"]) == 6
    for name in ("curves_linf.png", "curves_l2.png", "alignment.png", "analysis.npz", "metrics.json"):
        assert (tmp_path / "run" / name).exists()
    assert "transfer/pgd/l2/4/rate_all" in metrics
    again = adv_jax.run(cfg, tmp_path / "run")  # finished: read back, not rerun
    assert json.dumps(again, sort_keys=True) == json.dumps(metrics, sort_keys=True)
