"""Exact minimum distortions of linear classifiers (adv_jax/exact.py): the closed form on two
classes where the box is inactive, the box respected where it binds, and no attack below them."""

import json

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


def tiny_relu_chain(seed: int, sizes=(3, 4, 3, 3)):
    """A random ReLU network 3-4-3-3 as a float64 DenseChain (weights (out, in))."""
    from adv_jax.certify import DenseChain

    rng = np.random.default_rng(seed)
    weights = tuple(rng.normal(size=(o, i)) for i, o in zip(sizes[:-1], sizes[1:]))
    biases = tuple(0.3 * rng.normal(size=o) for o in sizes[1:])
    return DenseChain(weights, biases, ("relu",) * (len(sizes) - 2) + ("identity",))


def pattern_minimum(chain, x, label, norm, aim=-1):
    """The minimum by brute force: one LP per activation pattern (the network is affine on each
    pattern's region) and target (aim >= 0: that class over every other), the smallest of all."""
    from itertools import product
    from scipy.optimize import linprog

    n, widths = x.size, [w.shape[0] for w in chain.weights[:-1]]
    best = np.inf
    for pattern in product([0, 1], repeat=sum(widths)):
        masks, start, a, c, rows, rhs = [], 0, np.eye(n), np.zeros(n), [], []
        for k, width in enumerate(widths):  # z_k = a x' + c, affine on the region
            mask = np.array(pattern[start:start + width], bool)
            start += width
            z_a, z_c = chain.weights[k] @ a, chain.weights[k] @ c + chain.biases[k]
            sign = np.where(mask, -1.0, 1.0)  # on: z >= 0, off: z <= 0
            rows.append(sign[:, None] * z_a), rhs.append(-sign * z_c)
            a, c = z_a * mask[:, None], z_c * mask
        out_a, out_c = chain.weights[-1] @ a, chain.weights[-1] @ c + chain.biases[-1]
        for t in ([aim] if aim >= 0 else range(len(out_c))):
            rivals = [j for j in range(len(out_c)) if j != t] if aim >= 0 else [label]
            if t == label and aim < 0:
                continue
            best = min(best, _region_lp(x, rows + [out_a[rivals] - out_a[t]],
                                        rhs + [out_c[t] - out_c[rivals]], norm, linprog))
    return best


def _region_lp(x, rows, rhs, norm, linprog):
    """min |x' - x|_norm over x' in the box with rows x' <= rhs: variables [x' (n), r (1 or n)]."""
    n = x.size
    m = 1 if norm == "linf" else n
    slack = -np.ones((n, 1)) if norm == "linf" else -np.eye(n)
    a_ub = np.vstack([np.hstack([np.vstack(rows), np.zeros((sum(len(r) for r in rows), m))]),
                      np.hstack([np.eye(n), slack]), np.hstack([-np.eye(n), slack])])
    b_ub = np.concatenate([*rhs, x, -x])
    result = linprog(np.r_[np.zeros(n), np.ones(m)], A_ub=a_ub, b_ub=b_ub,
                     bounds=[(0, 1)] * n + [(0, None)] * m, method="highs")
    return result.fun if result.status == 0 else np.inf


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_relu_program_equals_brute_force_over_activation_patterns(norm):
    """Untargeted (the closest class) and targeted (one class over all others)."""
    for seed in range(3):
        chain = tiny_relu_chain(seed)
        x = np.random.default_rng(10 + seed).uniform(0.2, 0.8, size=(4, 3))
        logits = np.stack([_forward(chain, xi) for xi in x])
        y = logits.argmax(1)
        got, solved = exact.relu_minimum_distortions(chain, x, y, norm=norm, workers=1, progress=False)
        want = [pattern_minimum(chain, xi, yi, norm) for xi, yi in zip(x, y)]
        assert solved.all()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        aims = (y + 1) % 3
        got, solved = exact.relu_minimum_distortions(chain, x, y, aims, norm=norm, workers=1, progress=False)
        want = [pattern_minimum(chain, xi, yi, norm, int(a)) for xi, yi, a in zip(x, y, aims)]
        assert solved.all()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def _forward(chain, x):
    h = x
    for w, b, activation in zip(chain.weights, chain.biases, chain.activations):
        h = w @ h + b
        h = np.maximum(h, 0) if activation == "relu" else h
    return h


def test_no_attack_goes_below_the_relu_program():
    """Two worker processes find what one does; FAB's L-inf minimum-norm attack on the same network never lands closer than the solver's
    tolerance."""
    from adv_jax.attacks.fab import FAB
    from adv_jax.attacks import attack_batch

    chain = tiny_relu_chain(2, sizes=(6, 8, 8, 4))
    x = np.random.default_rng(0).uniform(0.3, 0.7, size=(8, 6))
    y = np.stack([_forward(chain, xi) for xi in x]).argmax(1)
    truth, solved = exact.relu_minimum_distortions(chain, x, y, norm="linf", workers=2, progress=False)
    assert solved.all() and np.all(np.isfinite(truth))
    alone, _ = exact.relu_minimum_distortions(chain, x, y, norm="linf", workers=1, progress=False)
    np.testing.assert_allclose(truth, alone, rtol=1e-9)  # two worker processes, the same minima

    def logits_fn(images):
        return jax.vmap(lambda v: _jax_forward(chain, v))(images)

    x_adv, _ = attack_batch(FAB(norm="linf", epsilon=np.inf), logits_fn, x.astype(np.float32), y,
                            np.full(len(x), -1), key=jax.random.key(0), chunk_size=len(x), progress=False)
    x_adv = np.asarray(x_adv, np.float64)
    fooled = np.stack([_forward(chain, xi) for xi in x_adv]).argmax(1) != y
    found = np.abs(x_adv - x).max(1)
    assert fooled.all()
    assert np.all(found >= truth - 1e-5)


def _jax_forward(chain, x):
    h = x
    for w, b, activation in zip(chain.weights, chain.biases, chain.activations):
        h = jax.numpy.asarray(w, np.float32) @ h + jax.numpy.asarray(b, np.float32)
        h = jax.nn.relu(h) if activation == "relu" else h
    return h


def test_relu_program_refuses_l2_and_sigmoid():
    chain = tiny_relu_chain(0)
    x, y = np.full((1, 3), 0.5), np.array([0])
    with pytest.raises(ValueError, match="mixed-integer QP"):
        exact.relu_minimum_distortions(chain, x, y, norm="l2")
    from adv_jax.certify import DenseChain
    sigmoid = DenseChain(chain.weights, chain.biases, ("sigmoid", "sigmoid", "identity"))
    with pytest.raises(ValueError, match="ReLU hidden layers"):
        exact.relu_minimum_distortions(sigmoid, x, y)


def test_a_store_keeps_finished_examples_and_resolves_only_what_a_longer_limit_can_improve(tmp_path, monkeypatch):
    """The first run fills the store; a second reads every example back without solving; an
    example left unsolved at a short limit is solved again at a longer one, not at the same."""
    chain = tiny_relu_chain(3, sizes=(6, 8, 8, 4))
    x = np.random.default_rng(1).uniform(0.3, 0.7, size=(4, 6))
    y = np.stack([_forward(chain, xi) for xi in x]).argmax(1)
    store = tmp_path / "exact" / "minima.jsonl"
    first, solved = exact.relu_minimum_distortions(chain, x, y, norm="linf", workers=1, progress=False, store=store)
    assert solved.all() and len(store.read_text().splitlines()) == len(x)

    def no_solving(job):
        raise AssertionError("solved again")
    monkeypatch.setattr(exact, "_solve_example", no_solving)
    again, _ = exact.relu_minimum_distortions(chain, x, y, norm="linf", workers=1, progress=False, store=store)
    np.testing.assert_array_equal(again, first)

    entry = json.loads(store.read_text().splitlines()[0])  # as if the first example had timed out
    store.write_text(json.dumps({**entry, "solved": False, "time_limit": 1.0}) + "\n")
    monkeypatch.setattr(exact, "_solve_example", lambda job: (0.5, True))
    out, solved = exact.relu_minimum_distortions(chain, x[:1], y[:1], norm="linf", workers=1, progress=False,
                                                 store=store, time_limit=1.0)
    assert not solved[0] and out[0] == entry["distance"]  # the same limit: kept
    out, solved = exact.relu_minimum_distortions(chain, x[:1], y[:1], norm="linf", workers=1, progress=False,
                                                 store=store, time_limit=2.0)
    assert solved[0] and out[0] == 0.5  # a longer one: solved again
