"""The refined attack (adv_jax/attacks/refined.py): L-BFGS, then FMN or DDN from its result.
Against the closed-form distance on affine models, never farther than its first stage, inside the
box, batch (L-BFGS's lanes) = example by example; DDN and FMN's `start`; its registry entry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closed_form import N, affine_model, qp_distance
from closed_form import run_batch as run
from adv_jax.attacks import LBFGSAttack, Refined, make_attack
from adv_jax.attacks.common import is_adversarial
from adv_jax.attacks.minnorm import DDN, FMN
from adv_jax.config import compose
from adv_jax.validate import ConfigError, check

QUICK = Refined(LBFGSAttack(c_steps=4, max_evals=5), FMN(steps=60, max_step=0.3))


def l2(x_adv, x) -> np.ndarray:
    return np.linalg.norm((np.asarray(x_adv, np.float64) - x).reshape(len(x), -1), axis=1)


def test_reaches_the_qp_distance_and_never_ends_farther_than_its_first_stage():
    """A coarse L-BFGS stops short of the optimum; FMN from its result reaches the QP's."""
    model, params, w, b, x, label = affine_model(10, seed=1)
    target = (label + 3) % 10
    exact = np.array([qp_distance(w, b, x[i], target[i]) for i in range(N)])
    first, _ = run(QUICK.first, model, params, x, label, target)
    x_adv, diagnostics = run(QUICK, model, params, x, label, target)
    assert np.all(is_adversarial(model.apply(params, x_adv), label, target))
    ratio = l2(x_adv, x) / exact
    assert np.all(ratio >= 0.999) and np.all(ratio <= 1.02), ratio
    assert np.all(l2(x_adv, x) <= l2(first, x) * (1 + 1e-5))
    np.testing.assert_array_equal(diagnostics["evals"], diagnostics["first_evals"] + 60)
    np.testing.assert_allclose(diagnostics["norm"], l2(x_adv, x), rtol=1e-4)


@pytest.mark.parametrize("refine", [DDN(steps=30, max_step=0.3), FMN(steps=30, max_step=0.3)],
                         ids=["ddn", "fmn"])
def test_started_from_an_adversarial_keeps_it_or_a_closer_one(refine):
    """`start`: the first step checks the start itself, so the kept norm is at most its own."""
    model, params, _, _, x, label = affine_model(10, seed=2)
    target = (label + 1) % 10
    found, _ = run(FMN(steps=20), model, params, x, label, target)
    far = np.clip(x + 1.1 * (found - x), 0.0, 1.0)  # past the boundary, not on it
    assert np.all(is_adversarial(model.apply(params, far), label, target))
    one_image = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    from_start = jax.jit(lambda start, *a: refine.with_diagnostics(one_image, *a, start=start))
    for i in range(3):
        out, found = from_start(jnp.asarray(far[i]), jnp.asarray(x[i]), jnp.int32(label[i]),
                                jnp.int32(target[i]), jax.random.key(i))
        assert bool(is_adversarial(one_image(out)[None], label[i:i + 1], target[i:i + 1])[0])
        assert float(found["norm"]) <= l2(far[i:i + 1], x[i:i + 1])[0] * (1 + 1e-5)


def test_inside_the_box_and_batch_equals_one_by_one(affine_digits):
    """The batch runs L-BFGS's lanes (attack_rows), one example its plain loop: the same result."""
    model, params, x, y = affine_digits
    target = np.where(np.arange(len(y)) % 2, (y + 1) % 10, -1).astype(np.int32)
    batch, _ = run(QUICK, model, params, x, y, target, seed=7)
    assert batch.min() >= 0.0 and batch.max() <= 1.0
    assert np.all(is_adversarial(model.apply(params, batch), y, target))
    one_image = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    single = jax.jit(lambda *a: QUICK(one_image, *a))
    for i in range(len(y)):
        one = single(jnp.asarray(x[i]), jnp.int32(y[i]), jnp.int32(target[i]),
                     jax.random.fold_in(jax.random.key(7), i))
        np.testing.assert_allclose(batch[i], one, atol=1e-5)
    np.testing.assert_array_equal(batch, run(QUICK, model, params, x, y, target, seed=7)[0])


def test_where_nothing_is_found_the_first_stage_result_is_returned(affine_digits):
    model, params, x, y = affine_digits
    # One L-BFGS evaluation finds nothing (returns x), and FMN's one step only checks x.
    attack = Refined(LBFGSAttack(c_steps=1, max_evals=1, extra_solves=0), FMN(steps=1))
    first, _ = run(attack.first, model, params, x, y, np.full(len(y), -1))
    x_adv, diagnostics = run(attack, model, params, x, y, np.full(len(y), -1))
    assert np.all(np.isinf(diagnostics["norm"]))
    np.testing.assert_array_equal(x_adv, first)


def test_registry_config_and_bad_stages():
    cfg = compose(["attack=refined"])
    check(cfg)
    attack = make_attack(cfg.attack.name, cfg.attack.params)
    assert attack == Refined(LBFGSAttack(), FMN(steps=300, max_step=1.0, gamma=0.05, min_step=0.01))
    assert make_attack("refined", {"refine": "ddn"}).refine == DDN()
    with pytest.raises(ValueError, match="unknown refine 'cw'.*'ddn', 'fmn'"):
        make_attack("refined", {"refine": "cw"})
    with pytest.raises(ValueError, match="bad attack.params for 'fmn'.*'step'.*did you mean 'steps'"):
        make_attack("refined", {"refine_params": {"step": 3}})
    with pytest.raises(ConfigError, match="attack"):
        check(compose(["attack=refined", "attack.params.first=lbfgz"]))
