"""DDN and FMN (adv_jax/attacks/minnorm.py) and ALMA (alma.py) against closed forms on affine models, and their
invariants: success, inside [0, 1], the reported norm is the output's, batch = example by
example, same key = same output; and their registry entries.

Closed forms for an affine model Z = x W + b around x (the box [0, 1] inactive):
  two classes: the L2 distance to the other class is |Z_t - Z_s| / |w_t - w_s|_2, the L-inf one
  |Z_t - Z_s| / |w_t - w_s|_1;
  K classes: the L2 distance to class k's region {Z_k >= Z_j for all j} is a QP, solved with
  scipy's SLSQP in the span of its constraint normals (where its optimum lies).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closed_form import N, affine_model, assert_batch_is_one_by_one, qp_distance
from closed_form import run_batch as run
from adv_jax.attacks import make_attack
from adv_jax.attacks.common import is_adversarial
from adv_jax.attacks.alma import ALMA, logit_ratio, p2_penalty
from adv_jax.attacks.minnorm import DDN, FMN, cosine_annealed
from adv_jax.config import compose
from adv_jax.validate import check


def norms(x_adv, x, p: str) -> np.ndarray:
    delta = (np.asarray(x_adv, np.float64) - x).reshape(len(x), -1)
    return np.abs(delta).max(1) if p == "linf" else np.linalg.norm(delta, axis=1)


@pytest.mark.parametrize("attack", [DDN(steps=100), FMN(steps=50), FMN("linf", steps=50), ALMA(steps=300)],
                         ids=["ddn", "fmn_l2", "fmn_linf", "alma"])
def test_two_class_distance_is_the_closed_form(attack):
    """Untargeted and targeted (one test: the same compiled program, the targets are data)."""
    model, params, w, b, x, label = affine_model(2, seed=0)
    z = x.reshape(N, -1) @ w + b
    p = getattr(attack, "norm", "l2")
    dual = np.abs(w[:, 1] - w[:, 0]).sum() if p == "linf" else np.linalg.norm(w[:, 1] - w[:, 0])
    exact = np.abs(z[:, 1] - z[:, 0]) / dual
    for target in (np.full(N, -1), 1 - label):
        x_adv, diagnostics = run(attack, model, params, x, label, target)
        assert np.all(is_adversarial(model.apply(params, x_adv), label, target))
        ratio = norms(x_adv, x, p) / exact
        assert np.all(ratio >= 0.999) and np.all(ratio <= 1.02), (target, ratio)
        np.testing.assert_allclose(diagnostics["norm"], norms(x_adv, x, p), rtol=1e-4)


def test_multi_class_l2_distance_matches_the_qp():
    """FMN's margin loss is the distance problem's constraint: it reaches the QP's optimum. DDN
    follows the cross-entropy, which every wrong class pulls on in proportion to its
    probability: on random 10-class models its best adversarial is 15-18% farther (measured).
    Untargeted and targeted in one test (the same compiled programs)."""
    model, params, w, b, x, label = affine_model(10, seed=1)
    for targeted in (False, True):
        target = (label + 3) % 10 if targeted else np.full(N, -1, np.int32)
        exact = np.array([min(qp_distance(w, b, x[i], k) for k in
                              ([target[i]] if targeted else set(range(10)) - {label[i]}))
                          for i in range(N)])
        # ALMA's constraint is the DLR: toward a target its scale (the top four logits) moves with
        # the point, which costs it up to 6% here (measured; within 2% untargeted)
        for attack, upper in ((FMN(steps=100), 1.02), (ALMA(), 1.07 if targeted else 1.02), (DDN(steps=100), 1.2)):
            x_adv, _ = run(attack, model, params, x, label, target)
            assert np.all(is_adversarial(model.apply(params, x_adv), label, target))
            ratio = norms(x_adv, x, "l2") / exact
            assert np.all(ratio >= 0.999) and np.all(ratio <= upper), (attack, targeted, ratio)


ATTACKS = [DDN(steps=40), FMN(steps=40), FMN("linf", steps=40), ALMA()]
IDS = ["ddn", "fmn_l2", "fmn_linf", "alma"]


@pytest.mark.parametrize("attack", ATTACKS, ids=IDS)
def test_succeeds_inside_the_box_reports_its_norm_and_batch_equals_one_by_one(affine_digits, attack):
    """One test per attack: both halves run the same compiled batched program. Same key = same
    output, and each example of the batch equals the attack run on it alone."""
    model, params, x, y = affine_digits
    for target in (np.full(len(y), -1), (y + 1) % 10):
        x_adv, diagnostics = run(attack, model, params, x, y, target)
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert np.all(is_adversarial(model.apply(params, x_adv), y, target))
        np.testing.assert_allclose(diagnostics["norm"], norms(x_adv, x, getattr(attack, "norm", "l2")),
                                   rtol=1e-4)
        np.testing.assert_array_equal(diagnostics["evals"], attack.steps)

    # Batch = example by example, and the same key gives the same output.
    target = np.where(np.arange(len(y)) % 2, (y + 1) % 10, -1).astype(np.int32)
    batch, _ = run(attack, model, params, x, y, target, seed=7)
    # Not ALMA: its RMSprop steps (per pixel about the learning rate once the running mean has
    # settled) are coarse beside these digits' smallest distances (0.01), so the float32 rounding
    # that separates the batched program from the single one sends it down another path (its
    # kept distance differed by up to 26%, measured)
    if not isinstance(attack, ALMA):
        assert_batch_is_one_by_one(attack, model, params, x, y, target, batch, seed=7)
    np.testing.assert_array_equal(batch, run(attack, model, params, x, y, target, seed=7)[0])


@pytest.mark.parametrize("attack", [DDN(steps=1), FMN(steps=1), ALMA(steps=1)], ids=["ddn", "fmn", "alma"])
def test_nothing_found_reports_infinity_and_the_last_iterate(affine_digits, attack):
    """One step only checks x itself (correctly classified): nothing adversarial is kept, so
    the norm is inf and the output is the iterate after that one step."""
    model, params, x, y = affine_digits
    x_adv, diagnostics = run(attack, model, params, x, y, np.full(len(y), -1))
    assert np.all(np.isinf(diagnostics["norm"]))
    assert np.all(norms(x_adv, x, "l2") > 0)


def test_step_size_is_cosine_annealed():
    steps = 10
    values = [float(cosine_annealed(1.0, 0.01, i, steps)) for i in range(steps + 1)]
    np.testing.assert_allclose([values[0], values[5], values[-1]], [1.0, 0.505, 0.01], rtol=1e-6)
    assert np.all(np.diff(values) < 0)


def test_registry_and_configs():
    assert make_attack("fmn", {"norm": "linf", "steps": 3}) == FMN("linf", steps=3)
    assert make_attack("ddn", {"gamma": 0.1}) == DDN(gamma=0.1)
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        make_attack("fmn", {"norm": "l1"})
    for name, attack in (("ddn", DDN()), ("fmn", FMN()), ("alma", ALMA())):
        cfg = compose([f"attack={name}"])
        check(cfg)
        assert make_attack(cfg.attack.name, cfg.attack.params) == attack  # the yaml = the defaults


def test_alma_penalty_and_constraint_are_the_papers():
    """P2 by hand: mu y + mu rho y^2 + rho^2 y^3 / 6 above 0, mu y / (1 - rho y) below, slope mu
    at 0 from both sides; g < 0 exactly where the wanted class leads by more than the tolerance,
    scaled by the spread of the top three logits."""
    mu, rho = jnp.float32(0.5), jnp.float32(2.0)
    np.testing.assert_allclose(p2_penalty(jnp.float32(1.0), rho, mu), 0.5 + 1.0 + 4.0 / 6, rtol=1e-6)
    np.testing.assert_allclose(p2_penalty(jnp.float32(-1.0), rho, mu), -0.5 / 3.0, rtol=1e-6)
    for y in (1e-3, -1e-3):
        np.testing.assert_allclose(jax.grad(p2_penalty)(jnp.float32(y), rho, mu), mu, rtol=1e-2)
    logits = jnp.array([3.0, 1.0, 0.0, 2.5])  # spread: 3 - 1 = 2; targeted 3 - (1 + 0) / 2
    np.testing.assert_allclose(logit_ratio(logits, 0, -1, 0.0), (3.0 - 2.5) / 2)
    np.testing.assert_allclose(logit_ratio(logits, 3, 3, 0.1), (3.0 - 2.5 + 0.1) / 2.5)
    np.testing.assert_allclose(logit_ratio(logits[:2], 0, -1, 0.0), 3.0 - 1.0)  # two classes: the margin
    assert logit_ratio(logits, 1, -1, 0.0) < 0  # label 1 is not the prediction: adversarial
