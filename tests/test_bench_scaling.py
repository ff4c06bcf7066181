"""The scaling report (adv_jax/reports/scaling.py): the fitted exponent on power laws, the one-line
reading, and the whole report and figure from a hand-made JSON record of all four curves."""

import re

import pytest

from adv_jax.reports import scaling

COMMAND = "ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_scaling.py --repeats 3"
MACHINE = {"cpu": "Test CPU", "cores": 2, "python": "3.11.7", "jax": "0.10.2", "numpy": "2.4.6"}


def points(sizes, power, scale=1e-3, **extra):
    return [{"size": n, "seconds": scale * n ** power, **{k: f(n) for k, f in extra.items()}} for n in sizes]


def record() -> dict:
    examples = [1000, 2500, 5000, 10000, 20000, 60000]
    return {
        "command": COMMAND, "machine": MACHINE, "date": "2026-12-06 00:00 UTC", "devices": 2, "repeats": 3,
        "wall_seconds": 1200.0,
        "curves": {
            "attack_examples": {"points": points(examples, 1.0, successes=lambda n: n)},
            "attack_width": {"points": points([50, 100, 200, 400, 800], 1.2, successes=lambda n: 2000,
                                              weights=lambda w: 784 * w + w * w + 10 * w + 2 * w + 10),
                             "examples": 2000, "epochs": 2},
            "train_size": {"points": points([2500, 5000, 10000, 20000, 40000, 60000], 0.9,
                                            cold_seconds=lambda n: 1e-3 * n ** 0.9 + 0.5), "epochs": 3},
            "bracket_examples": {"points": points([1000, 2500, 5000, 10000], 1.0, 5e-4, successes=lambda n: n),
                                 "chunk": 1000},
        },
    }


def test_exponent_of_a_power_law():
    sizes = [1000, 2500, 5000, 10000, 20000, 60000]
    assert scaling.exponent(sizes, [3 * n ** 1.5 for n in sizes]) == pytest.approx(1.5)
    slope, intercept = scaling.fit([1, 10, 100], [2, 20, 200])
    assert slope == pytest.approx(1.0) and intercept == pytest.approx(0.6931471805599453)  # log 2


def test_reading():
    assert scaling.reading(1.02, "examples") == "about linear in examples: 1.02"
    assert scaling.reading(1.97, "width") == "about quadratic in width: 1.97"
    assert scaling.reading(0.5, "examples") == "sublinear in examples: 0.50"
    assert scaling.reading(-0.001, "examples") == "about constant in examples: 0.00"


def test_report_and_figure_from_a_record(tmp_path):
    text = scaling.report(record())
    assert COMMAND in text and "Machine: Test CPU, 2 cores" in text and "![scaling](figures/scaling.png)" in text
    for curve in scaling.CURVES.values():
        assert f"## {curve.title}" in text
    assert len(re.findall(r"^\| curve \| sizes \| exponent \| reading \|$", text, re.M)) == 1
    assert "| 60,000 | 60.000 | 1.0000 | 60,000 |" in text  # size, seconds, per 1000, successes
    assert "**about linear in examples: 1.00**" in text
    assert "**between linear and quadratic in width: 1.20**" in text
    assert "**about linear in training images: 0.90**" in text and "first call seconds" in text
    assert text.count("Exponent (all points)") == 4 and "padded chunks of 1000 images" in text
    assert "2,000 test images" not in text and "first 2000 test images" in text
    figure = scaling.plot(record(), tmp_path / scaling.FIGURE)
    assert figure.stat().st_size > 10_000
