"""Sharded attacks, predictions and transfer errors on 4 fake CPU devices equal the 1-device path.

XLA_FLAGS must be set before jax is imported, so the 4-device half runs in a subprocess and this
process computes the reference on its own devices (one, unless XLA_FLAGS says otherwise).
"""

import logging

import jax
import numpy as np
import pytest
from conftest import on_fake_cpu_devices

from adv_jax import devices

JOB = r'''
import jax, jax.numpy as jnp, numpy as np
from adv_jax import devices, transfer
from adv_jax.attacks import FGSM, PGD, attack_batch
from adv_jax.config import compose
from adv_jax.models import build_model, logits_fn, predict


def job():
    # Random images suffice to compare placements; 30 is not a multiple of 4.
    x = jax.random.uniform(jax.random.key(3), (30, 28, 28, 1))
    y = jax.random.randint(jax.random.key(4), (30,), 0, 10)
    model = build_model(compose(["model=fc100"]).model)
    params = model.init(jax.random.key(0))
    target = (y + 1) % 10
    # chunk 7 -> 8 rows per chunk, 2 per device, the last chunk padded; PGD's random start
    # checks that every example keeps its own key
    x_pgd, _ = attack_batch(PGD(epsilon=0.1, steps=5), logits_fn(model, params), x, y, target,
                            key=jax.random.key(1), chunk_size=7, progress=False)
    x_fgsm, _ = attack_batch(FGSM(epsilon=0.1), logits_fn(model, params), x, y, target,
                             key=jax.random.key(2), chunk_size=10000, progress=False)
    labels = predict(model, params, jnp.concatenate([x, x_pgd, x_fgsm]), batch_size=25)
    predict_fn = lambda images: np.asarray(predict(model, params, images))
    errors = transfer.error_rates([predict_fn] * 2, np.asarray(x_pgd), np.asarray(y))
    (placed,) = devices.shard_rows(devices.pad_rows(x, devices.round_up(len(x))))
    return dict(x_pgd=np.asarray(x_pgd), x_fgsm=np.asarray(x_fgsm), labels=np.asarray(labels),
                errors=errors, devices=jax.device_count(), shards=len(placed.addressable_shards))

'''


def test_sharded_attacks_predictions_and_errors_equal_one_device(tmp_path):
    sharded = on_fake_cpu_devices(JOB, tmp_path)
    namespace: dict = {}
    exec(JOB, namespace)
    here = namespace["job"]()
    assert sharded["devices"] == 4 and sharded["shards"] == 4  # really split over 4 devices
    assert here["shards"] == here["devices"] == jax.device_count()
    for name in ("x_pgd", "x_fgsm"):
        np.testing.assert_allclose(sharded[name], here[name], atol=1e-6)
    assert np.abs(here["x_pgd"] - here["x_fgsm"]).max() > 0.01  # the attacks differ
    np.testing.assert_array_equal(sharded["labels"], here["labels"])
    np.testing.assert_array_equal(sharded["errors"], here["errors"])


def test_cpu_device_count_is_checked_and_fixed_by_jax_first_operation(caplog):
    with pytest.raises(ValueError, match="cpu_devices must be 'auto' or a positive count"):
        devices.use_cpu_devices("many")
    have = len(jax.devices("cpu"))  # JAX has started in this process: the count holds
    assert devices.use_cpu_devices("auto") == have
    with caplog.at_level(logging.WARNING, logger="adv_jax.devices"):
        assert devices.use_cpu_devices(have + 1) == have
    assert f"cpu_devices={have + 1} ignored" in caplog.text


def test_held_program_equals_the_function_on_any_count_and_survives_clear_caches():
    """Any row count (padded last chunk, none at all) gives fn's rows; jax.clear_caches() does not
    make it trace (so compile) again."""
    traces = []

    def scaled_sum(consts, a, b):
        traces.append(1)
        return (a * consts["w"] + b).sum(axis=(1, 2))

    w = np.float32(3.0)
    held = devices.held_program(scaled_sum, {"w": w}, [(2, 2), (2, 2)], chunk=4)
    built = len(traces)
    a, b = np.random.default_rng(0).random((2, 9, 2, 2), dtype=np.float32)
    np.testing.assert_allclose(held(a, b), (a * w + b).sum(axis=(1, 2)), rtol=1e-6)
    jax.clear_caches()
    np.testing.assert_allclose(held(a[:3], b[:3]), (a[:3] * w + b[:3]).sum(axis=(1, 2)), rtol=1e-6)
    assert held(a[:0], b[:0]).shape == (0,)
    assert len(traces) == built
