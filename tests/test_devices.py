"""Sharded attacks, predictions and transfer errors on 4 fake CPU devices equal the 1-device path.

XLA_FLAGS must be set before jax is imported, so the 4-device half runs in a subprocess and this
process computes the reference on its own devices (one, unless XLA_FLAGS says otherwise).
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

JOB = r'''
import jax, jax.numpy as jnp, numpy as np
from adv_jax import devices, transfer
from adv_jax.attacks import FGSM, PGD, attack_batch
from adv_jax.config import compose
from adv_jax.models import build_model, predict


def job():
    # Random images suffice to compare placements; 30 is not a multiple of 4.
    x = jax.random.uniform(jax.random.key(3), (30, 28, 28, 1))
    y = jax.random.randint(jax.random.key(4), (30,), 0, 10)
    model = build_model(compose(["model=fc100"]).model)
    params = model.init(jax.random.key(0))
    target = (y + 1) % 10
    # chunk 7 -> 8 rows per chunk, 2 per device, the last chunk padded; PGD's random start
    # checks that every example keeps its own key
    x_pgd = attack_batch(PGD(epsilon=0.1, steps=5), model, params, x, y, target,
                         jax.random.key(1), chunk_size=7)
    x_fgsm = attack_batch(FGSM(epsilon=0.1), model, params, x, y, target, jax.random.key(2))
    labels = predict(model, params, jnp.concatenate([x, x_pgd, x_fgsm]), batch_size=25)
    predict_fn = lambda images: np.asarray(predict(model, params, images))
    errors = transfer.error_rates([predict_fn] * 2, np.asarray(x_pgd), np.asarray(y))
    (placed,) = devices.shard_rows(devices.pad_rows(x, devices.round_up(len(x))))
    return dict(x_pgd=np.asarray(x_pgd), x_fgsm=np.asarray(x_fgsm), labels=np.asarray(labels),
                errors=errors, devices=jax.device_count(), shards=len(placed.addressable_shards))


if __name__ == "__main__":
    import sys
    np.savez(sys.argv[1], **job())
'''


def _on_four_devices(tmp_path: Path) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "four.npz"
    done = subprocess.run([sys.executable, "-c", JOB, str(out)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def test_sharded_attacks_predictions_and_errors_equal_one_device(tmp_path):
    sharded = _on_four_devices(tmp_path)
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
