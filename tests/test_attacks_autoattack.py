"""AutoAttack and its stages (APGD-CE, APGD-T, FAB-T; Square in test_attacks_square.py) against
closed forms on affine models, and their invariants: APGD's first step is FGSM's, the DLR loss
is its formula, FAB reaches the closest point of a two-class linear model, AutoAttack's robust
accuracy is at most each component's, batched stage by stage equals example by example, and the
same key gives the same output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closed_form import N, affine_model, assert_batch_is_one_by_one, run_batch
from adv_jax.attacks import make_attack
from adv_jax.attacks.apgd import APGD, checkpoint_windows, dlr_loss, targeted_dlr_loss
from adv_jax.attacks.autoattack import AutoAttack
from adv_jax.attacks.common import is_adversarial
from adv_jax.attacks.fab import FAB, box_projection
from adv_jax.attacks.gradient import FGSM
from adv_jax.attacks.generate import Adversarials, Generated, summarize


def test_dlr_losses_are_their_formulas():
    z = jnp.array([1.0, 4.0, -2.0, 3.0, 0.5])  # sorted: 4, 3, 1, 0.5, -2
    assert float(dlr_loss(z, 3)) == pytest.approx(-(3.0 - 4.0) / (4.0 - 1.0))
    assert float(dlr_loss(z, 1)) == pytest.approx(-(4.0 - 3.0) / (4.0 - 1.0))
    assert float(targeted_dlr_loss(z, 1, 2)) == pytest.approx(-(4.0 - -2.0) / (4.0 - 0.5 * (1.0 + 0.5)))


def test_checkpoints_are_the_papers():
    w = checkpoint_windows(100)
    assert list(np.flatnonzero(w) + 1) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert list(w[w > 0]) == [22, 19, 16, 13, 10, 7, 6, 6]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_first_step_without_momentum_or_random_start_is_fgsm_of_its_step(norm):
    """One iteration from x, momentum off (a = 1 at the first step): x + 2 eps * direction,
    projected, i.e. FGSM at eps (linf); in l2 the normalized gradient step of length 2 eps, scaled
    back to the eps sphere."""
    model, params, w, b, x, label = affine_model(10, seed=2)
    eps = 0.02 if norm == "linf" else 0.5
    apgd, _ = run_batch(APGD(eps, norm, steps=1, random_start=False), model, params, x, label, np.full(N, -1))
    if norm == "linf":
        want, _ = run_batch(FGSM(eps), model, params, x, label, np.full(N, -1))
    else:
        grads = np.stack([jax.grad(lambda v: -jax.nn.log_softmax(v.reshape(-1) @ w + b)[label[i]])(jnp.asarray(x[i]))
                          for i in range(N)])
        want = x + eps * grads / np.linalg.norm(grads.reshape(N, -1), axis=1)[:, None, None, None]
    np.testing.assert_allclose(apgd, want, atol=1e-5)


@pytest.mark.parametrize("attack", [APGD(0.03, steps=20), APGD(1.0, "l2", steps=20, loss="dlr", target_classes=3),
                                    FAB(0.03, steps=20, target_classes=3), FAB(1.0, "l2", steps=20, target_classes=2)])
def test_stages_stay_in_the_ball_and_box_and_batch_is_one_by_one(attack):
    model, params, w, b, x, label = affine_model(10, seed=3)
    x = np.clip(x + 0.45 * np.sign(x - 0.5), 0, 1).astype(np.float32)  # some pixels at the box's edges
    target = np.full(N, -1, np.int32)
    x_adv, _ = run_batch(attack, model, params, x, label, target)
    delta = (x_adv - x).reshape(N, -1)
    size = np.abs(delta).max(1) if attack.norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= attack.epsilon * (1 + 1e-5)) and x_adv.min() >= 0 and x_adv.max() <= 1
    if isinstance(attack, APGD):
        assert_batch_is_one_by_one(attack, model, params, x, label, target, x_adv, seed=0)
    else:  # FAB's projections amplify the batched matmul's rounding over its steps: ~1e-5
        one_image = lambda image: model.apply(params, image[None])[0]  # noqa: E731
        for i in range(N):
            one = attack(one_image, jnp.asarray(x[i]), label[i], target[i], jax.random.fold_in(jax.random.key(0), i))
            np.testing.assert_allclose(x_adv[i], one, atol=2e-4)
    again, _ = run_batch(attack, model, params, x, label, target)
    np.testing.assert_array_equal(again, x_adv)


def test_apgd_breaks_an_affine_model_at_a_budget_above_its_distances():
    model, params, w, b, x, label = affine_model(10, seed=4)
    z = x.reshape(N, -1) @ w + b
    runner_up = np.argsort(z, 1)[:, -2]
    needed = np.abs(z[np.arange(N), label] - z[np.arange(N), runner_up]) / np.abs(w[:, label] - w[:, runner_up]).sum(0)
    # APGD-T toward the runner-up reaches it at 5% above its distance; the untargeted CE's ascent
    # direction mixes every class's, and needs more room on a 10-class linear model
    for attack in (APGD(1.5 * needed.max(), steps=30), APGD(1.05 * needed.max(), steps=30, loss="dlr", target_classes=3)):
        x_adv, _ = run_batch(attack, model, params, x, label, np.full(N, -1))
        assert np.all(is_adversarial(model.apply(params, x_adv), label, -1))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_reaches_the_closest_point_of_a_two_class_linear_model(norm):
    model, params, w, b, x, label = affine_model(2, seed=0)
    z = x.reshape(N, -1) @ w + b
    dual = 1 if norm == "linf" else 2
    exact = np.abs(z[:, 1] - z[:, 0]) / np.linalg.norm(w[:, 1] - w[:, 0], ord=dual)
    x_adv, diagnostics = run_batch(FAB(np.inf, norm, steps=30, target_classes=1), model, params, x, label,
                                   np.full(N, -1))
    assert np.all(is_adversarial(model.apply(params, x_adv), label, -1))
    np.testing.assert_allclose(diagnostics["distance"], exact, rtol=1e-2)
    assert np.all(diagnostics["distance"] >= exact * (1 - 1e-4))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_box_projection_reaches_the_hyperplane_by_the_smallest_step(norm):
    """Against the box-constrained optimum found by a fine scan over the step's size."""
    rng = np.random.default_rng(5)
    p, w = rng.uniform(0, 1, 50).astype(np.float32), rng.normal(size=50).astype(np.float32)
    b = float(w @ p) - 3.0
    d = np.asarray(box_projection(jnp.asarray(p), jnp.asarray(w), jnp.float32(b), norm))
    assert float(w @ (p + d)) == pytest.approx(b, abs=1e-3)
    assert np.all(p + d >= -1e-6) and np.all(p + d <= 1 + 1e-6)
    room = np.where(w > 0, p, 1 - p)
    if norm == "linf":
        sizes = np.linspace(0, 1, 200001)
        reach = (np.abs(w)[None] * np.minimum(sizes[:, None], room[None])).sum(1)
        assert np.abs(d).max() == pytest.approx(sizes[np.argmax(reach >= 3.0)], abs=1e-4)
    else:  # KKT: d = -clip(lam |w|, 0, room) sign(w) for one lam
        lam = np.abs(d)[np.abs(d) < room - 1e-5] / np.abs(w)[np.abs(d) < room - 1e-5]
        assert np.ptp(lam) < 1e-3 * lam.mean()


def test_autoattack_is_at_least_as_strong_as_each_stage_and_staged_equals_one_by_one():
    model, params, w, b, x, label = affine_model(10, seed=6)
    z = x.reshape(N, -1) @ w + b
    runner_up = np.argsort(z, 1)[:, -2]
    needed = np.abs(z[np.arange(N), label] - z[np.arange(N), runner_up]) / np.abs(w[:, label] - w[:, runner_up]).sum(0)
    eps = float(np.median(needed))  # about half the examples can be broken
    auto = AutoAttack(eps, apgd_steps=10, target_classes=3, fab_steps=10, square_queries=50)
    target = np.full(N, -1, np.int32)
    x_adv, diagnostics = run_batch(auto, model, params, x, label, target)
    robust = ~np.asarray(is_adversarial(model.apply(params, x_adv), label, -1))
    np.testing.assert_array_equal(diagnostics["robust_after_square"], robust)
    for _, name, stage in auto.components():
        alone, _ = run_batch(stage, model, params, x, label, target)
        assert robust.mean() <= 1 - np.mean(is_adversarial(model.apply(params, alone), label, -1)), name
    assert np.all(np.diff(np.stack([diagnostics[f"robust_after_{s}"] for s in auto.stages]), axis=0) <= 0)
    assert_batch_is_one_by_one(auto, model, params, x, label, target, x_adv, seed=0)
    metrics = summarize(Generated(Adversarials(x, x_adv, label, target, np.arange(N), ~robust), 1.0, diagnostics))
    assert metrics["attack/robust_accuracy"] == pytest.approx(robust.mean())
    assert metrics["attack/robust_accuracy/apgd_ce"] >= metrics["attack/robust_accuracy"]


def test_autoattack_is_registered_with_its_yaml_and_refuses_unknown_stages():
    assert make_attack("autoattack") == AutoAttack()
    assert make_attack("apgd_dlr") == APGD(loss="dlr", target_classes=9)
    with pytest.raises(ValueError, match="unknown AutoAttack stages"):
        AutoAttack(stages=("apgd_ce", "pgd"))


def test_autoattacks_square_halves_its_windows_at_the_reference_iterations():
    """The reference AutoAttack runs Square unrescaled: p = 0.8 halves after iterations 10, 50,
    200, ... whatever the query budget (sides 25, 18, 13 on 28 x 28)."""
    from adv_jax.attacks.square import window_side

    square = AutoAttack(square_queries=5000).components()[-1][2]
    assert square.rescale_schedule is False
    sides = [int(window_side(jnp.int32(i), 0.8, 5000, 28, 28, "linf", rescale=False)) for i in (10, 11, 50, 51)]
    assert sides == [25, 18, 18, 13]


def test_minimum_norm_fab_keeps_the_closest_over_every_class_and_a_budget_stops_at_the_first():
    model, params, w, b, x, label = affine_model(10, seed=8)
    target = np.full(N, -1, np.int32)
    _, one = run_batch(FAB(np.inf, steps=20, target_classes=1), model, params, x, label, target)
    _, three = run_batch(FAB(np.inf, steps=20, target_classes=3), model, params, x, label, target)
    assert np.all(three["distance"] <= one["distance"] * (1 + 1e-6))
    _, budget = run_batch(FAB(float(np.max(one["distance"])) * 1.01, steps=20, target_classes=3), model, params, x,
                          label, target)
    np.testing.assert_allclose(budget["distance"], one["distance"], rtol=1e-6)  # found on the first class
