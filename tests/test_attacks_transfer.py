"""Transfer-enhancing attacks (MI/DI/TI-FGSM, one loop), ensemble sources, budgets in one batch,
and the alignment / boundary-distance analysis, on small random sigmoid MLPs written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adv_jax.attacks import PGD, LBFGSAttack, MinimalEpsilon, MomentumIterative, attack_batch, make_attack
from adv_jax.attacks.analysis import boundary_distance, gradient_cosine
from adv_jax.attacks.common import single_example
from adv_jax.attacks.budgets import AcrossBudgets, perturbation_norm, rescale_to_budget
from adv_jax.attacks.ensemble_source import Ensemble, ensemble_of
from adv_jax.attacks.gradient import attack_objective, cross_entropy
from adv_jax.attacks.transfer_enhancing import gaussian_kernel, smooth_gradient


def mlp(w1, b1, w2, b2, x):
    return jax.nn.sigmoid(x.reshape(len(x), -1) @ w1 + b1) @ w2 + b2


def random_mlp(seed, hidden=16):
    """A batched logits_fn (B, 28, 28, 1) -> (B, 10), a pytree of its weights."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = (jax.random.normal(k1, (784, hidden)) * 0.3, jnp.zeros(hidden),
              jax.random.normal(k2, (hidden, 10)) * 2.0, jax.random.normal(k3, (10,)) * 0.1)
    return jax.tree_util.Partial(mlp, *params)


N = 6
IMAGES = jax.random.uniform(jax.random.key(9), (N, 28, 28, 1))
FN = random_mlp(0)
LABELS = jnp.argmax(FN(IMAGES), -1).astype(jnp.int32)
UNTARGETED = jnp.full(N, -1, jnp.int32)
TARGETED = (LABELS + 3) % 10
BUDGET = {"linf": 0.1, "l2": 2.0}


def run(attack, fn=FN, target=UNTARGETED, key=0):
    return attack_batch(attack, fn, IMAGES, LABELS, target, key=jax.random.key(key), chunk_size=N,
                        progress=False)[0]


def iterative_fgsm(norm):
    return PGD(epsilon=BUDGET[norm], norm=norm, steps=10, relative_step_size=0.1, random_start=False)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("switched_off", [{"momentum": 0.0}, {"diversity_probability": 0.0},
                                          {"kernel_size": 1}], ids=["mi", "di", "ti"])
def test_each_ingredient_switched_off_is_iterative_fgsm(norm, switched_off):
    name = {"momentum": "mi_fgsm", "diversity_probability": "di_fgsm", "kernel_size": "ti_fgsm"}
    attack = make_attack(name[next(iter(switched_off))], {"epsilon": BUDGET[norm], "norm": norm,
                                                          **switched_off})
    for target in (UNTARGETED, TARGETED):
        np.testing.assert_allclose(run(attack, target=target), run(iterative_fgsm(norm), target=target),
                                   atol=1e-5)


# Each preset once, each norm twice, DI (the slowest to compile) in both norms, and TI in both
# (alone in l2, in mi_di_ti in linf); the momentum attack also checked to fool most examples.
@pytest.mark.parametrize("name, norm", [("mi_fgsm", "linf"), ("ti_fgsm", "l2"), ("di_fgsm", "l2"),
                                        ("mi_di_ti", "linf")])
def test_presets_stay_in_the_box_and_the_ball_and_depend_only_on_the_key(name, norm):
    attack = make_attack(name, {"epsilon": BUDGET[norm], "norm": norm})
    plain = run(iterative_fgsm(norm))
    for target in (UNTARGETED, TARGETED):
        x_adv = run(attack, target=target)
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        assert np.all(np.asarray(perturbation_norm(x_adv - IMAGES, norm)) <= BUDGET[norm] * (1 + 1e-5))
        np.testing.assert_array_equal(x_adv, run(attack, target=target))
    assert not np.allclose(run(attack), plain, atol=1e-4)  # the ingredient changes the attack
    if name != "mi_fgsm" and name != "ti_fgsm":  # DI draws from the key
        assert not np.array_equal(run(attack, key=0), run(attack, key=1))
    if name == "mi_fgsm":  # momentum attacks fool more than they leave (epsilon 0.1, L-inf)
        fooled = jnp.argmax(FN(run(attack)), -1) != LABELS
        assert float(fooled.mean()) >= 0.5


def test_gaussian_kernel_sums_to_one_and_smoothing_a_spike_gives_the_kernel():
    kernel = gaussian_kernel(7, 1.0)
    assert kernel.shape == (7, 7) and kernel.sum() == pytest.approx(1.0, abs=1e-6)
    assert kernel[3, 3] == kernel.max() and np.allclose(kernel, kernel.T)
    spike = jnp.zeros((28, 28, 1)).at[10, 12, 0].set(1.0)
    np.testing.assert_allclose(smooth_gradient(spike, kernel)[7:14, 9:16, 0], kernel, atol=1e-6)
    np.testing.assert_array_equal(smooth_gradient(spike, gaussian_kernel(1, 1.0)), spike)
    with pytest.raises(ValueError, match="odd"):
        MomentumIterative(kernel_size=4)


@pytest.mark.parametrize("inner", [PGD(steps=3), MomentumIterative(momentum=1.0, steps=3)])
def test_budgets_in_one_batch_equal_one_run_per_budget(inner):
    budgets = (0.05, 0.2)
    x_adv = run(AcrossBudgets(inner, budgets))
    assert x_adv.shape == (N, 2, 28, 28, 1)
    for e, epsilon in enumerate(budgets):
        np.testing.assert_allclose(x_adv[:, e], run(type(inner)(**{**inner.__dict__, "epsilon": epsilon})),
                                   atol=1e-6)


def test_rescale_to_budget_gives_the_budget_in_either_norm_and_keeps_failures():
    x = jnp.full((3, 28, 28, 1), 0.5)
    x_adv = x.at[0, 0, 0, 0].add(0.01).at[1].add(0.001)  # example 2: no perturbation
    for norm, epsilon in (("l2", 0.3), ("linf", 0.2)):
        scaled = rescale_to_budget(x, x_adv, epsilon, norm)
        np.testing.assert_allclose(perturbation_norm(scaled - x, norm)[:2], epsilon, rtol=1e-5)
        np.testing.assert_array_equal(scaled[2], x[2])


def test_an_ensemble_of_one_model_is_that_model():
    for reduction, same_logits in (("logits", FN(IMAGES)), ("loss", jax.nn.log_softmax(FN(IMAGES)))):
        alone = ensemble_of([FN], reduction)
        np.testing.assert_allclose(alone(IMAGES), same_logits, atol=1e-6)
        attacks = [make_attack("mi_fgsm", {"norm": "l2", "epsilon": 2.0, "steps": 4})]
        if reduction == "loss":  # log-softmax logits: the attack must not see the shift
            attacks.append(LBFGSAttack(c_steps=2, max_evals=4))
        for attack in attacks:
            np.testing.assert_allclose(run(attack, alone, TARGETED), run(attack, FN, TARGETED), atol=1e-4)


def test_the_loss_reduction_averages_the_members_losses_exactly():
    members = [FN, random_mlp(1)]
    averaged = Ensemble(tuple(members), "loss")
    one = single_example(averaged)
    for label, target in ((LABELS[0], -1), (LABELS[0], 4)):
        wanted = np.mean([attack_objective(single_example(m), IMAGES[0], label, target) for m in members])
        assert float(attack_objective(one, IMAGES[0], label, target)) == pytest.approx(wanted, rel=1e-5)
    # Mean log-softmax as logits is NOT the averaged loss: CE(u, c) = mean CE + logsumexp(u).
    stacked = jnp.stack([m(IMAGES[:1])[0] for m in members])
    u = jax.nn.log_softmax(stacked).mean(0)
    mean_ce = np.mean([cross_entropy(z, LABELS[0]) for z in stacked])
    assert float(cross_entropy(u, LABELS[0])) == pytest.approx(mean_ce + float(jax.nn.logsumexp(u)), rel=1e-5)
    assert float(jax.nn.logsumexp(u)) < -1e-4
    pgd = PGD(epsilon=0.1, steps=3)
    mean_logits = run(pgd, Ensemble(tuple(members), "logits"))
    assert not np.allclose(mean_logits, run(pgd, averaged), atol=1e-4)
    assert not np.allclose(mean_logits, run(pgd, FN), atol=1e-4)


def test_gradient_cosine_of_a_model_with_itself_is_one_and_with_another_less():
    np.testing.assert_allclose(gradient_cosine(FN, FN, IMAGES, LABELS), 1.0, atol=1e-5)
    assert np.all(np.asarray(gradient_cosine(FN, random_mlp(1), IMAGES, LABELS)) < 0.99)


def test_boundary_distance_along_the_own_minimum_norm_direction_is_the_minimum_norm():
    minimal = MinimalEpsilon(PGD(norm="l2", steps=40, random_start=False), max_epsilon=10.0, search_steps=14)
    x_adv = run(minimal)
    assert np.all(np.asarray(jnp.argmax(FN(x_adv), -1) != LABELS))
    own = np.asarray(perturbation_norm(x_adv - IMAGES, "l2"))
    along = np.asarray(boundary_distance(FN, IMAGES, x_adv - IMAGES, max_distance=10.0))
    np.testing.assert_allclose(along, own, rtol=0.03)
    assert np.all(along <= own * (1 + 1e-4))  # x_adv itself is across
    far = boundary_distance(FN, IMAGES, x_adv - IMAGES, max_distance=0.5 * float(own.min()))
    assert np.all(np.isinf(np.asarray(far)))


def test_boundary_distance_of_a_linear_model_is_known_in_closed_form():
    w = jax.random.normal(jax.random.key(3), (784, 2))
    fn = jax.tree_util.Partial(lambda w, x: x.reshape(len(x), -1) @ w, w)
    direction = jax.random.normal(jax.random.key(4), (N, 28, 28, 1))
    x = IMAGES - 0.5
    margin = x.reshape(N, -1) @ (w[:, 1] - w[:, 0])
    slope = (direction.reshape(N, -1) / jnp.linalg.norm(direction.reshape(N, -1), axis=1, keepdims=True)) @ (w[:, 1] - w[:, 0])
    exact = np.where(-margin / slope > 0, -margin / slope, np.inf)
    got = boundary_distance(fn, x, direction, max_distance=1e3, refine=30)
    finite = exact < 1e3
    np.testing.assert_allclose(np.asarray(got)[finite], exact[finite], rtol=1e-3)
