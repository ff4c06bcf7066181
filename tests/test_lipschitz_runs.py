"""Lipschitz bounds of real trained runs: `lipschitz.measure` reproduces what a run logs, and
adv_jax.reports.lipschitz_compare tables and plots tiny sweeps (and names a run without its table)."""

import json
import math

import jax
import numpy as np
import pytest

import adv_jax
from adv_jax import lipschitz
from adv_jax.attacks.generate import generate
from adv_jax.config import compose
from adv_jax.models import error_rate, logits_fn
from adv_jax.reports import lipschitz_compare as compare
from adv_jax.trained import train_or_load


def _overrides(mnist_dir, cache) -> list[str]:
    """A seconds-long real run: 2000 P1 images, 5 Adam epochs at 1e-2 (a model's own overrides
    come after these), no W&B, private cache."""
    return [f"data.mnist_dir={mnist_dir}", "data.train_limit=2000", "train=adam", "train.epochs=5",
            "train.learning_rate=1e-2",
            "wandb.mode=disabled", f"cache_dir={cache}", "lipschitz.images=50",
            "lipschitz.power_iters=30"]


# The fully connected case, through a whole run, is
# tests/test_certified.py::test_a_trained_runs_lipschitz_json_and_certified_distortions. This one
# trains and measures directly: a run would also evaluate the conv net on all 70000 images.
def test_product_bound_sits_above_the_empirical_lower_bounds_of_a_trained_conv_net(tmp_path, mnist_dir):
    # conf/model/conv.yaml's layers at a quarter of the channels: the same code paths (conv, pool,
    # strided conv, FFT norms), a fraction of the steps' and the Jacobians' cost.
    cfg = compose(_overrides(mnist_dir, tmp_path / "c") + [
        "model=conv", "model.conv=[{features:4,kernel:5,stride:1,pool:2},{features:8,kernel:3,stride:2}]",
        "model.hidden=[16]", "train.epochs=3", "attack=fgsm"])
    splits = adv_jax.load_splits(cfg.data)
    model, params, _ = train_or_load(cfg, splits)
    test = splits["test"]
    assert error_rate(model, params, test.x[:2000], test.y[:2000]) < 0.3  # real data, real training
    adv = generate(cfg.attack, logits_fn(model, params), test.x[:20], test.y[:20],
                   key=jax.random.key(1), progress=False).adversarials
    ok = adv.success
    result = lipschitz.measure(model, params, test.x, (adv.x[ok], adv.x_adv[ok]), key=jax.random.key(2),
                               images=20, power_iters=30)
    upper, metrics = result.upper_bound, result.metrics()
    assert upper == pytest.approx(math.prod(row["bound"] for row in result.layers), rel=1e-6)
    assert any(row["kind"] == "conv" for row in result.layers)
    for key in ("lipschitz/jacobian_lower_bound", "lipschitz/pair_ratio_lower_bound"):
        assert 0 < metrics[key] <= upper * (1 + 1e-5), key


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, mnist_dir):
    """A sweep dir with two finished fc10 runs (lambda 1e-4 and 1) and one unfinished job."""
    root = tmp_path_factory.mktemp("sweep")
    for i, wd in enumerate(["1e-4", "1"]):
        cfg = compose(["model=fc10", f"model.weight_decay={wd}", "attack=fgsm", "attack.num_examples=20"]
                      + _overrides(mnist_dir, root / "cache"))
        adv_jax.run(cfg, root / "wd" / f"{i}_model.weight_decay={wd}")
    unfinished = root / "wd" / "2_model.weight_decay=10"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((root / "wd" / "0_model.weight_decay=1e-4" / "config.yaml").read_text())
    return root / "wd"


def test_compare_lipschitz_tables_and_plots_a_sweep(tiny_sweep, tmp_path):
    table, entries, x_key = compare.compare([tiny_sweep], plot_path=tmp_path / "plot.png")
    assert x_key == "model.weight_decay" and len(entries) == 2  # the unfinished job is skipped
    assert compare.varying_keys(entries) == ["model.weight_decay"]
    lines = table.splitlines()
    assert len(lines) == 4 and "| L_1 |" in lines[0] and "gap certified/lower" in lines[0]
    assert lines[2].startswith("| 0 | 0.0001 |") and lines[3].startswith("| 1 | 1 |")
    # Stronger decay, smaller weights, smaller bound; the softmax layer is linear: gap ~ 1.
    assert entries[1]["upper"] < entries[0]["upper"]
    for e in entries:
        assert 0 < e["jacobian"] <= e["upper"] * (1 + 1e-5)
        # the ascent's bound (present in these runs) joins the single-pass ones
        assert compare.lower_bound(e) == max(e["jacobian"], e["pairs"], e["ascent"] or 0.0)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_lipschitz_names_a_run_without_its_table_and_writes_markdown(tiny_sweep, tmp_path):
    """A run made before lipschitz.json: named as missing, not recomputed (reports only read)."""
    run_dir = tiny_sweep / "0_model.weight_decay=1e-4"
    copy = tmp_path / "old_run"
    copy.mkdir()
    for name in ("config.yaml", "metrics.json", "params.msgpack"):  # a run without lipschitz.json
        (copy / name).write_bytes((run_dir / name).read_bytes())
    assert compare.load_entry(copy) is None and compare.load_entry(run_dir)["upper"] > 0
    text = compare.compare_text([run_dir, copy])
    assert text.count("\n| ") == 2  # separator and the one run with its table
    assert f"Missing lipschitz.json (made before the bounds were wired in), so left out: `{copy}`." in text


def test_measure_gives_the_bounds_a_run_logged(tiny_sweep):
    """The one measurement function: from the run's parameters, test images and adversarial
    pairs, with the run's key, it reproduces the run's lipschitz.json."""
    run_dir = tiny_sweep / "0_model.weight_decay=1e-4"
    run = adv_jax.load_run(run_dir)
    test = adv_jax.load_splits(run.config.data, run.config.model.classes)["test"]
    adv = dict(np.load(run_dir / "adversarials.npz"))
    ok = adv["success"]
    measured = lipschitz.measure(run.model, run.params, test.x, (adv["x"][ok], adv["x_adv"][ok]),
                                 key=jax.random.fold_in(jax.random.key(run.config.seed), 2),
                                 images=run.config.lipschitz.images,
                                 power_iters=run.config.lipschitz.power_iters,
                                 ascent_steps=run.config.lipschitz.ascent_steps, attacked=adv).to_json()
    stored = json.loads((run_dir / "lipschitz.json").read_text())
    assert measured.keys() == stored.keys()
    for key, value in stored.items():
        if key == "bracket":
            value = {k: v for k, v in value.items() if k != "seconds"}
            assert {k: measured[key][k] for k in value} == pytest.approx(value, rel=1e-5)
        elif key not in ("layers", "seconds", "skipped", "certified_method"):
            assert measured[key] == pytest.approx(value, rel=1e-5), key
    unmoved = lipschitz.measure(run.model, run.params, None, (adv["x"][:3], adv["x"][:3]),
                                key=jax.random.key(0), images=0, power_iters=5).metrics()
    assert "lipschitz/pair_ratio_lower_bound" not in unmoved  # equal pairs carry no slope
    assert "lipschitz/jacobian_lower_bound" not in unmoved
