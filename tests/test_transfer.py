"""adv_jax.transfer: amplification, noise, the error matrix on tiny models trained on real MNIST."""

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from adv_jax import transfer
from adv_jax.attacks.generate import generate
from adv_jax.config import AttackConfig, TrainConfig, compose
from adv_jax.data import load_splits
from adv_jax.models import build_model, logits_fn, predict
from adv_jax.train import train_model


def _images(n=6, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 28, 28, 1)).astype(np.float32)


def test_amplified_perturbations_have_stddev_exactly_0_1_before_clipping():
    x, x_adv = _images(), _images(seed=1)
    x_adv[0] = x[0]  # a failed attack: no direction, left unchanged
    scaled = transfer.scale_perturbation(x, x_adv, 0.1)
    np.testing.assert_allclose(transfer.rms(x, scaled)[1:], 0.1, rtol=1e-12)
    np.testing.assert_array_equal(scaled[0], x[0])
    r, r_scaled = (x_adv - x)[1:], (scaled - x)[1:]  # same direction
    cos = (r * r_scaled).sum((1, 2, 3)) / np.sqrt((r ** 2).sum((1, 2, 3)) * (r_scaled ** 2).sum((1, 2, 3)))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-6)
    clipped = transfer.amplify(x, x_adv, 0.1)
    assert clipped.min() >= 0 and clipped.max() <= 1 and clipped.dtype == np.float32
    assert np.all(transfer.rms(x, clipped) <= 0.1 + 1e-6)


def test_gaussian_noise_is_deterministic_in_its_key_and_clipped():
    x = _images(50)
    a = transfer.gaussian_noise(x, 0.1, key=jax.random.key(0))
    np.testing.assert_array_equal(a, transfer.gaussian_noise(x, 0.1, key=jax.random.key(0)))
    assert not np.array_equal(a, transfer.gaussian_noise(x, 0.1, key=jax.random.key(1)))
    assert a.min() >= 0 and a.max() <= 1
    mid_grey = transfer.gaussian_noise(np.full_like(x, 0.5), 0.1, key=jax.random.key(0))  # rarely clipped
    assert transfer.rms(np.full_like(x, 0.5), mid_grey).mean() == pytest.approx(0.1, rel=0.01)
    raw = transfer.gaussian_noise(x, 0.1, key=jax.random.key(0), clip=False)  # the same draw
    np.testing.assert_array_equal(np.clip(raw, 0, 1), a)
    assert raw.min() < 0 and raw.max() > 1


def test_structure_checks_read_the_blocks():
    eye = np.eye(2)
    rows = [transfer.Row("a", "adversarial", j, 0.05, 0.05, np.where(eye[j] > 0, 1.0, 0.3)) for j in range(2)]
    rows += [transfer.Row("n", "noise", j, 0.05, 0.05, np.array([0.02, 0.02])) for j in range(2)]
    rows += [transfer.Row("m", "amplified", j, 0.1, 0.1, np.where(eye[j] > 0, 1.0, 0.6)) for j in range(2)]
    assert transfer.structure_checks(rows) == {"diagonal_100": True, "above_noise": True,
                                               "amplified_above": True}
    rows[4] = rows[4]._replace(errors=np.array([0.2, 0.1]))  # amplified below the adversarial cell
    assert transfer.structure_checks(rows)["amplified_above"] is False


@pytest.fixture(scope="module")
def tiny_models(mnist_dir):
    """Two tiny classifiers trained for 2 epochs on 1000 real P1 / P2 images, and 30 test images."""
    splits = {s: load_splits(compose([f"data={s}", f"data.mnist_dir={mnist_dir}"]).data) for s in ("p1", "p2")}
    train_cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig),
                                {"optimizer": "adam", "epochs": 2, "learning_rate": 0.01})
    out = []
    for s, hidden in (("p1", 16), ("p2", 8)):
        model_cfg = compose(["model=fc100", f"model.hidden=[{hidden},{hidden}]"]).model
        model = build_model(model_cfg)
        data = splits[s]["train"]
        params, _ = train_model(model, model_cfg, train_cfg, type(data)(data.x[:1000], data.y[:1000]),
                                jax.random.key(0))
        out.append((model, params))
    return out, splits["p1"]["test"][0][:30], splits["p1"]["test"][1][:30]


def test_matrix_of_tiny_models_on_real_mnist(tiny_models):
    models, x, y = tiny_models
    attack = OmegaConf.structured(AttackConfig(name="fgsm_min", target="untargeted",
                                               params={"max_epsilon": 1.0, "search_steps": 8}))
    advs = [generate(attack, logits_fn(m, p), x, y, key=jax.random.key(1), progress=False).adversarials
            for m, p in models]
    assert all(a.success.all() for a in advs)  # so the diagonal must be 100%
    fns = [lambda im, m=m, p=p: np.asarray(predict(m, p, im)) for m, p in models]
    rows = transfer.transfer_rows(fns, ["A", "B"], x, y, [a.x_adv for a in advs],
                                  key=jax.random.key(2), noise_stddevs=[0.1, 0.3])
    kinds = [(r.kind, r.clipped) for r in rows]
    assert kinds == [("adversarial", None)] * 2 + [(k, c) for k in transfer.PERTURBED for c in (True, False)
                                                   for _ in range(2)]
    np.testing.assert_array_equal(np.diag(transfer.block(rows, "adversarial")), [1.0, 1.0])
    for j, a in enumerate(advs):  # matched noise at each row's mean distortion, on the same images
        noise, unclipped = rows[2 + j], rows[4 + j]
        assert noise.stddev == unclipped.stddev == pytest.approx(float(a.distortion().mean()), rel=1e-5)
        assert noise.realized_stddev <= noise.stddev + 1e-6  # clipping only shortens the noise
        assert unclipped.realized_stddev == pytest.approx(unclipped.stddev, rel=0.05)
        assert rows[6 + j].stddev == rows[8 + j].stddev == 0.1
        assert rows[8 + j].realized_stddev == pytest.approx(0.1, rel=1e-5)  # amplified, unclipped
        assert rows[6 + j].realized_stddev < 0.1 and unclipped.name.endswith(", unclipped")
    np.testing.assert_array_equal(transfer.block(rows, "noise", clipped=False),
                                  [rows[4].errors, rows[5].errors])
    clean = transfer.error_rates(fns, x, y)
    again = transfer.transfer_rows(fns, ["A", "B"], x, y, [a.x_adv for a in advs], key=jax.random.key(2))
    np.testing.assert_array_equal(rows[2].errors, again[2].errors)  # keys make noise rows repeatable
    assert np.all(clean <= 1) and rows[-1].name == "Gaussian noise, stddev 0.3, unclipped"
    columns, body = transfer.matrix_table(["A", "B"], rows)
    md = transfer.markdown(columns, body)
    assert md.count("\n") == len(rows) + 2 and "| distorted for A | 100.0 |" in md
    assert transfer.to_csv(columns, body).splitlines()[0].startswith("examples \\ fed to,A,B")
