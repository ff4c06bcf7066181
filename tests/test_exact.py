"""Exact minimum distortions of linear classifiers (adv_jax/exact.py): the closed form on two
classes where the box is inactive, the box respected where it binds, and no attack below them."""

import jax
import numpy as np
import pytest

pytest.importorskip("cvxpy")

from closed_form import N, affine_model, run_batch
from adv_jax import exact
from adv_jax.attacks.deepfool import DeepFool
from adv_jax.attacks.minnorm import FMN


def greedy_l1(x, dw, gap):
    """The box-constrained L1 minimum of moving <dw, x> by -gap: spend each pixel's room, largest
    |dw| first (a fractional knapsack, exact for one linear constraint)."""
    room = np.where(dw > 0, x, 1 - x)
    total = 0.0
    for i in np.argsort(-np.abs(dw)):
        use = min(room[i], gap / abs(dw[i]))
        total, gap = total + use, gap - use * abs(dw[i])
        if gap <= 0:
            return total
    return np.inf


@pytest.mark.parametrize("norm, dual", [("l2", 2), ("linf", 1), ("l1", np.inf)])
def test_two_class_minimum_is_the_closed_form(norm, dual):
    """|z_1 - z_0| / |w_1 - w_0|_dual, the distance to the boundary hyperplane, where the box is
    inactive (L2, L-inf around 0.5); L1 piles onto the steepest pixels, where it binds: greedy."""
    model, params, w, b, x, label = affine_model(2, seed=0)
    z = x.reshape(N, -1) @ w + b
    gap = np.abs(z[:, 1] - z[:, 0])
    closed = gap / np.linalg.norm(w[:, 1] - w[:, 0], ord=dual)
    if norm == "l1":
        sign = np.where(label == 0, 1.0, -1.0)  # the winning class's direction to lower
        closed = [greedy_l1(xi.reshape(-1), s * (w[:, 0] - w[:, 1]), g) for xi, s, g in zip(x, sign, gap)]
    got = exact.minimum_distortions(w, b, x, label, norm=norm)
    np.testing.assert_allclose(got, closed, rtol=1e-5)


def test_the_box_binds_and_misclassified_images_need_nothing():
    model, params, w, b, x, label = affine_model(10, seed=1)
    x = np.clip(x + 0.45 * np.sign(x - 0.5), 0, 1).astype(np.float32)  # many pixels at 0 or 1
    label = np.argmax(x.reshape(N, -1) @ w + b, 1)
    for i in range(2):
        flat = x[i].reshape(-1)
        t = (label[i] + 1) % 10
        dist, d = exact.linear_minimum(w, b, flat, t, "l2")
        assert np.all(flat + d >= -1e-6) and np.all(flat + d <= 1 + 1e-6)
        z = (flat + d) @ w + b
        assert z[t] >= np.max(np.delete(z, t)) - 1e-5
        unboxed = exact.linear_minimum(w, b, np.full_like(flat, 0.5) + 0 * flat, t, "l2")[0]
        assert np.isfinite(dist) and np.isfinite(unboxed)
    wrong = (label + 1) % 10
    assert np.all(exact.minimum_distortions(w, b, x, wrong, norm="l2") == 0.0)


def test_no_attack_goes_below_the_exact_minimum():
    model, params, w, b, x, label = affine_model(10, seed=2)
    truth = exact.minimum_distortions(w, b, x, label, norm="l2")
    for attack in (DeepFool(), FMN(norm="l2", steps=100)):
        x_adv, _ = run_batch(attack, model, params, x, label, np.full(N, -1))
        found = np.linalg.norm((x_adv - x).reshape(N, -1), axis=1)
        fooled = np.argmax(x_adv.reshape(N, -1) @ w + b, 1) != label
        assert np.all(found[fooled] >= truth[fooled] * (1 - 1e-4)), type(attack).__name__
        assert fooled.any()
