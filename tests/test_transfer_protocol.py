"""The fair protocol's measurements (adv_jax/transfer_protocol.py) against their definitions and
scikit-image, and the Battery (one program for a family) against its attacks run alone."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from adv_jax.attacks import PGD, attack_batch, make_attack
from adv_jax.attacks.battery import Battery, gradient_evals
from adv_jax.transfer_protocol import (bootstrap_interval, every_model_correct, fooled, imperceptibility,
                                       matched_steps, rate, ssim, to_8bit)


def test_8bit_rounding_lands_on_the_256_levels_and_moves_a_pixel_at_most_half_a_level():
    x = np.random.default_rng(0).uniform(-0.1, 1.1, (50, 28, 28, 1)).astype(np.float32)
    q = to_8bit(x)
    levels = q * 255.0
    assert np.allclose(levels, np.round(levels), atol=1e-4) and q.min() >= 0 and q.max() <= 1
    inside = (x >= 0) & (x <= 1)
    assert np.abs(q - x)[inside].max() <= 0.5 / 255 + 1e-7
    assert np.array_equal(to_8bit(q), q)  # MNIST's own pixels are already on the levels


def test_the_bootstrap_interval_is_the_resampled_rates_percentiles():
    """Resampling N images with k hits draws Binomial(N, k/N) hits: the closed form equals the
    percentiles of many resamples (to one image) and is exact for 0 and N hits."""
    rng = np.random.default_rng(1)
    hits = rng.uniform(size=300) < 0.3
    resampled = [100 * hits[rng.integers(0, 300, 300)].mean() for _ in range(20000)]
    low, high = bootstrap_interval(hits)
    assert low == pytest.approx(np.percentile(resampled, 2.5), abs=100 / 300)
    assert high == pytest.approx(np.percentile(resampled, 97.5), abs=100 / 300)
    assert bootstrap_interval(np.ones(40, bool)) == (100.0, 100.0)
    assert bootstrap_interval(np.zeros(40, bool)) == (0.0, 0.0)
    assert rate(np.array([], bool))["n"] == 0 and np.isnan(rate(np.array([], bool))["rate"])


def test_ssim_is_scikit_images_and_one_for_equal_images():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(4, 28, 28, 1)).astype(np.float32)
    noisy = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    want = [structural_similarity(x[i, ..., 0], noisy[i, ..., 0], data_range=1.0) for i in range(4)]
    assert np.allclose(ssim(jnp.asarray(x), jnp.asarray(noisy)), want, atol=1e-5)
    assert np.allclose(ssim(jnp.asarray(x), jnp.asarray(x)), 1.0, atol=1e-6)
    seen = imperceptibility(x, noisy)
    assert seen["ssim"] == pytest.approx(np.mean(want), abs=1e-5)
    assert seen["linf"] == pytest.approx(np.abs(noisy - x).reshape(4, -1).max(1).mean())
    assert seen["l2"] == pytest.approx(np.linalg.norm((noisy - x).reshape(4, -1), axis=1).mean(), rel=1e-5)


def test_the_filter_keeps_images_every_model_gets_right_and_targets_count_only_when_hit():
    y = np.array([0, 1, 2, 3])
    assert every_model_correct({"a": np.array([0, 1, 2, 0]), "b": np.array([0, 9, 2, 3])}, y).tolist() == \
        [True, False, True, False]
    predictions, target = np.array([5, 1, 7, 3]), np.array([-1, -1, 7, 4])
    assert fooled(predictions, y, target).tolist() == [True, False, True, False]


def test_matched_steps_give_every_attack_the_same_evaluations():
    assert matched_steps(10, 10, 200) == 200  # one gradient per step
    assert matched_steps(210, 10, 200) == 9  # VMI: 21 per step
    assert matched_steps(400, 10, 200) == 5 and matched_steps(4000, 10, 200) == 1


def _linear_logits(x):
    w = jnp.arange(784 * 3, dtype=jnp.float32).reshape(784, 3) % 7 - 3.0
    return x.reshape(len(x), -1) @ w


def test_a_battery_row_is_its_attack_run_alone_at_that_budget():
    """Two attacks (different norms and budgets) in one program: each row equals the attack run
    alone with epsilon = the row's budget and the same key; evals are the attacks' own."""
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    y, target, key = jnp.array([0, 1, 2]), -jnp.ones(3, jnp.int32), jax.random.key(3)
    attacks = (PGD(norm="linf", steps=3, relative_step_size=1 / 3), make_attack("mi_fgsm", {"norm": "l2", "steps": 3}))
    budgets = ((0.05, 0.1), (0.5, 1.5))
    x_adv, _ = attack_batch(Battery(attacks, budgets), _linear_logits, x, y, target, key=key, chunk_size=3,
                            progress=False)
    assert x_adv.shape == (3, 2, 2, 28, 28, 1)
    for a, attack in enumerate(attacks):
        for e, budget in enumerate(budgets[a]):
            alone, _ = attack_batch(dataclasses.replace(attack, epsilon=budget), _linear_logits, x, y, target,
                                    key=key, chunk_size=3, progress=False)
            assert np.allclose(x_adv[:, a, e], alone, atol=1e-6)
    assert [gradient_evals(a, _linear_logits) for a in attacks] == [3, 3]
    with pytest.raises(ValueError, match="one row of E budgets per attack"):
        Battery(attacks, ((0.1,), (0.5, 1.0)))
