"""LBFGSAttack against closed forms on linear models and against scipy's L-BFGS-B on a small
MLP, and its invariants: inside [0, 1], batch = example by example, same key = same output.

Closed forms for a linear model l(x) = x W + b around x:
  two classes, box inactive: the L2 distance to the target's region is |l_t - l_s| / |w_t - w_s|;
  two classes, box active: r_i = clip(lam * (w_t - w_s)_i, -x_i, 1 - x_i) with lam >= 0 found by
  bisection (the KKT conditions of the box-constrained problem);
  K classes: min |r| such that l_t(x + r) >= l_j(x + r) + kappa for all j, a QP in the span of the
  constraint normals, solved with SLSQP.
For K > 2 the cross-entropy objective's minimizers do not approach that closest point (every
wrong class pulls on r in proportion to its probability: 10-25% farther on random 10-class
models), so the K-class closed form is checked with the margin loss, an exact penalty, and the
cross-entropy is checked against scipy on the same objective.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closed_form import qp_distance
from adv_jax.attacks.common import attack_batch, is_adversarial, rms_distortion
from adv_jax.attacks.lbfgs import LBFGSAttack, attack_loss
from adv_jax.attacks.scipy_reference import scipy_lbfgs_attack
from adv_jax.attacks.targets import attack_all_targets, choose_targets
from adv_jax.config import compose
from adv_jax.data import Dataset, load_splits
from adv_jax.models import Model, build_model, logits_fn
from adv_jax.models.layers import Layer
from adv_jax.train import train_model

N = 6  # examples per linear case
KEY = jax.random.key(0)


def linear_model(num_classes: int, seed: int, x: np.ndarray | None = None):
    """A linear classifier (784 -> K) and N images around 0.5 (box inactive), or the given x."""
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(784, num_classes)) * 0.05).astype(np.float32)
    b = (rng.normal(size=num_classes) * 0.1).astype(np.float32)
    if x is None:
        x = (0.5 + 0.1 * rng.uniform(-1, 1, size=(N, 28, 28, 1))).astype(np.float32)
    label = np.argmax(x.reshape(len(x), -1) @ w + b, 1).astype(np.int32)
    model = Model(layers=(Layer("dense", features=num_classes),))
    return model, ({"w": jnp.asarray(w), "b": jnp.asarray(b)},), w, b, x, label


def run_linear(attack, model, params, x, label, target):
    return np.asarray(batch(attack, model, params, jnp.asarray(x), jnp.asarray(label),
                            jnp.asarray(target), KEY))


def batch(attack, model, params, x, label, target, key):
    """x_adv of `attack_batch` against the adv_jax model (diagnostics dropped)."""
    return attack_batch(attack, logits_fn(model, params), x, label, target, key=key,
                        chunk_size=LBFGSAttack.chunk_size, progress=False)[0]


def l2_distances(x_adv, x) -> np.ndarray:
    return np.sqrt(((np.asarray(x_adv, np.float64) - x) ** 2).reshape(len(x), -1).sum(1))


def predicted(x_adv, w, b) -> np.ndarray:
    return np.argmax(x_adv.reshape(len(x_adv), -1) @ w + b, 1)


def box_distance(d: np.ndarray, needed: float, x: np.ndarray) -> float:
    """min |r| such that d.r >= needed and 0 <= x + r <= 1: r = clip(lam d, -x, 1 - x), with lam
    found by bisection (d.r grows with lam)."""
    x = x.reshape(-1).astype(np.float64)
    d = d.astype(np.float64)
    r_of = lambda lam: np.clip(lam * d, -x, 1 - x)  # noqa: E731
    lo, hi = 0.0, 1.0
    while d @ r_of(hi) < needed:
        hi *= 2
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if d @ r_of(mid) < needed else (lo, mid)
    return float(np.linalg.norm(r_of(hi)))


def test_two_classes_box_inactive_matches_closed_form():
    model, params, w, b, x, label = linear_model(2, seed=0)
    target = 1 - label
    x_adv = run_linear(LBFGSAttack(), model, params, x, label, target)
    d = (w[:, target] - w[:, label]).T  # (N, 784)
    margin = np.einsum("nd,nd->n", x.reshape(N, -1), d) + b[target] - b[label]
    closed_form = np.abs(margin) / np.linalg.norm(d, axis=1)
    got = l2_distances(x_adv, x)
    assert np.all(np.abs(x_adv - 0.5).max((1, 2, 3)) < 0.45)  # the box never binds
    assert np.all(predicted(x_adv, w, b) == target)
    np.testing.assert_array_less(closed_form * 0.999, got)
    np.testing.assert_array_less(got, closed_form * 1.02)


def test_two_classes_box_active_matches_kkt_solution():
    """Mostly-binary images, as MNIST's: many pixels sit at the bound the perturbation pushes on."""
    rng = np.random.default_rng(1)
    x = rng.choice([0.0, 1.0, 0.5], size=(N, 28, 28, 1), p=[0.5, 0.3, 0.2]).astype(np.float32)
    model, params, w, b, x, label = linear_model(2, seed=1, x=x)
    target = 1 - label
    x_adv = run_linear(LBFGSAttack(), model, params, x, label, target)
    d = (w[:, target] - w[:, label]).T
    needed = -(np.einsum("nd,nd->n", x.reshape(N, -1), d) + b[target] - b[label])
    reference = np.array([box_distance(d[i], needed[i], x[i]) for i in range(N)])
    unconstrained = needed / np.linalg.norm(d, axis=1)
    assert np.all(reference > 1.2 * unconstrained)  # the box really binds
    got = l2_distances(x_adv, x)
    assert np.all((x_adv >= 0) & (x_adv <= 1))
    assert np.all(predicted(x_adv, w, b) == target)
    np.testing.assert_array_less(reference * 0.999, got)
    np.testing.assert_array_less(got, reference * 1.02)


def test_ten_classes_margin_loss_matches_qp():
    model, params, w, b, x, label = linear_model(10, seed=2)
    target = ((label + 1 + np.arange(N)) % 10).astype(np.int32)
    # More solves and evaluations than the defaults: this checks the solver, on a kinked loss. A
    # small confidence keeps the kink near the boundary: at 0.01 and 50 evaluations one example
    # ended 6% above it or 0.5%, depending on how XLA compiled the loop (its CPU and flags).
    attack = LBFGSAttack(loss="margin", confidence=0.001, c_steps=14, max_evals=100)
    x_adv = run_linear(attack, model, params, x, label, target)
    boundary = np.array([qp_distance(w, b, x[i], target[i]) for i in range(N)])
    got = l2_distances(x_adv, x)
    assert np.all(predicted(x_adv, w, b) == target)
    np.testing.assert_array_less(boundary * 0.999, got)  # nothing beats the closest point
    np.testing.assert_array_less(got, boundary * 1.02)


def test_ten_classes_cross_entropy_is_bounded_by_qp():
    model, params, w, b, x, label = linear_model(10, seed=2)
    target = ((label + 1 + np.arange(N)) % 10).astype(np.int32)
    x_adv = run_linear(LBFGSAttack(), model, params, x, label, target)
    boundary = np.array([qp_distance(w, b, x[i], target[i]) for i in range(N)])
    got = l2_distances(x_adv, x)
    assert np.all(predicted(x_adv, w, b) == target)
    np.testing.assert_array_less(boundary * 0.999, got)
    np.testing.assert_array_less(got, boundary * 1.5)


@pytest.fixture(scope="module")
def small_mlp(mnist_dir):
    """784-32-10 sigmoid MLP trained for a few seconds on 512 P1 images, and 16 test images."""
    cfg = compose(["model=fc100", "model.hidden=[32]", "model.weight_decay=1e-5", "train=adam",
                   "train.epochs=8", "train.batch_size=64", f"data.mnist_dir={mnist_dir}"])
    splits = load_splits(cfg.data)
    train = Dataset(splits["p1"].x[:512], splits["p1"].y[:512])
    model = build_model(cfg.model)
    params, _ = train_model(model, cfg.model, cfg.train, train, jax.random.key(0))
    x, label = jnp.asarray(splits["test"].x[:16]), jnp.asarray(splits["test"].y[:16])
    target = choose_targets("random", model.apply(params, x), label, key=jax.random.key(1))
    return model, params, x, label, target


def test_matches_scipy_lbfgsb_on_small_mlp(small_mlp):
    model, params, x, label, target = small_mlp
    attack = LBFGSAttack()
    x_adv = batch(attack, model, params, x, label, target, KEY)
    one_image = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    count = 10
    reference = [scipy_lbfgs_attack(one_image, x[i], int(label[i]), int(target[i]),
                                    c_init=attack.c_init, c_steps=attack.c_steps)[0]
                 for i in range(count)]
    ours = np.asarray(rms_distortion(x[:count], x_adv[:count]))
    theirs = np.asarray(rms_distortion(x[:count], jnp.stack(reference)))
    assert bool(jnp.all(is_adversarial(model.apply(params, jnp.stack(reference)), label[:count],
                                       target[:count])))
    assert ours.mean() <= 1.02 * theirs.mean(), (ours, theirs)


def test_batch_equals_example_by_example_and_invariants(small_mlp):
    model, params, x, label, target = small_mlp
    attack = LBFGSAttack()
    x_adv = batch(attack, model, params, x, label, target, KEY)
    again = batch(attack, model, params, x, label, target, KEY)
    np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(again))  # same key, same output
    assert bool(jnp.all((x_adv >= 0) & (x_adv <= 1)))
    assert bool(jnp.all(is_adversarial(model.apply(params, x_adv), label, target)))  # 100%

    one_image = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    one = jax.jit(lambda x1, l1, t1: attack(one_image, x1, l1, t1, KEY))
    for i in range(3):
        np.testing.assert_allclose(np.asarray(one(x[i], label[i], target[i])),
                                   np.asarray(x_adv[i]), atol=1e-5)


class _ThreeLanes(LBFGSAttack):
    lanes = 3


def test_lanes_take_the_next_example_with_the_same_results(small_mlp):
    """attack_rows with fewer lanes than rows (each lane refilled several times) gives every
    example what the vmapped per-example attack gives it."""
    model, params, x, label, target = small_mlp
    one_image = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    rows, rows_info = jax.jit(lambda *a: _ThreeLanes().attack_rows(one_image, *a))(x, label, target)
    each, each_info = jax.jit(jax.vmap(lambda *a: LBFGSAttack().with_diagnostics(one_image, *a)))(
        x, label, target)
    # Equal up to float rounding: the network's matmuls see 3 rows here, 16 there.
    ours, theirs = np.asarray(rms_distortion(x, rows)), np.asarray(rms_distortion(x, each))
    np.testing.assert_allclose(ours, theirs, rtol=1e-2)
    np.testing.assert_allclose(ours.mean(), theirs.mean(), rtol=1e-3)
    assert abs(float(np.mean(rows_info["evals"])) - float(np.mean(each_info["evals"]))) <= 2
    assert bool(jnp.all(is_adversarial(model.apply(params, rows), label, target)))


def test_untargeted_margin_and_already_adversarial(small_mlp):
    model, params, x, label, target = small_mlp
    untargeted = jnp.full_like(label, -1)
    for attack in (LBFGSAttack(), LBFGSAttack(loss="margin", confidence=0.1)):
        x_adv = batch(attack, model, params, x, label, untargeted, KEY)
        assert bool(jnp.all(jnp.argmax(model.apply(params, x_adv), -1) != label))
    # A target the model already predicts costs nothing: the attack returns x itself.
    predicted_now = jnp.argmax(model.apply(params, x), -1)
    x_adv = batch(LBFGSAttack(), model, params, x, label, predicted_now, KEY)
    np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(x))


def test_extra_solves_rescue_examples_without_a_success(small_mlp):
    """c far too large for one solve to succeed: without extra solves every example fails; with
    them, each searches c again (from c_init, falling tenfold, extra_evals per solve) until its
    first success, and no further."""
    model, params, x, label, target = small_mlp
    x, label, target = x[:6], label[:6], target[:6]
    stuck = LBFGSAttack(c_init=1e4, c_steps=1, extra_solves=0)
    x_adv = batch(stuck, model, params, x, label, target, KEY)
    assert not bool(jnp.any(is_adversarial(model.apply(params, x_adv), label, target)))
    rescued = LBFGSAttack(c_init=1e4, c_steps=1, extra_solves=12)
    x_adv, info = attack_batch(rescued, logits_fn(model, params), x, label, target, key=KEY,
                               chunk_size=LBFGSAttack.chunk_size, progress=False)
    assert bool(jnp.all(is_adversarial(model.apply(params, x_adv), label, target)))
    # Stopped at the first success: its c is the only one that succeeded, the last one tried.
    assert bool(jnp.all(info["c"] < 1e4))
    assert bool(jnp.all(info["evals"] <= rescued.max_evals + 12 * rescued.extra_evals))
    with pytest.raises(ValueError, match="extra_solves"):
        LBFGSAttack(extra_solves=-1)
    with pytest.raises(ValueError, match="extra_evals"):
        LBFGSAttack(extra_evals=0)


def test_attack_all_targets_keeps_the_closest_success(small_mlp):
    model, params, x, label, _ = small_mlp
    x, label = x[:4], label[:4]
    attack = LBFGSAttack(c_steps=6)
    x_best, reached, _ = attack_all_targets(attack, logits_fn(model, params), x, label, key=KEY)
    assert bool(jnp.all(jnp.argmax(model.apply(params, x_best), -1) == reached))
    assert bool(jnp.all(reached != label))
    best = np.asarray(rms_distortion(x, x_best))
    for offset in range(1, 10):
        target = (label + offset) % 10
        x_adv = batch(attack, model, params, x, label, target, jax.random.fold_in(KEY, offset))
        success = np.asarray(is_adversarial(model.apply(params, x_adv), label, target))
        dist = np.asarray(rms_distortion(x, x_adv))
        assert np.all(best[success] <= dist[success] + 1e-7)


def test_choose_targets():
    logits = jax.random.normal(jax.random.key(3), (500, 10))
    labels = jax.random.randint(jax.random.key(4), (500,), 0, 10)
    random = choose_targets("random", logits, labels, key=jax.random.key(5))
    assert bool(jnp.all(random != labels)) and bool(jnp.all((random >= 0) & (random < 10)))
    offsets = np.asarray((random - labels) % 10)
    assert set(offsets.tolist()) == set(range(1, 10))  # every wrong label is drawn
    np.testing.assert_array_equal(random, choose_targets("random", logits, labels, key=jax.random.key(5)))

    right = jnp.argmax(logits, -1)  # the model is right: next = the second-highest logit
    next_ = choose_targets("next", logits, right, key=KEY)
    np.testing.assert_array_equal(next_, jnp.argsort(logits, -1)[:, -2])
    assert bool(jnp.all(choose_targets("next", logits, labels, key=KEY) != labels))
    assert bool(jnp.all(choose_targets("untargeted", logits, labels, key=KEY) == -1))
    with pytest.raises(ValueError, match="attack_all_targets"):
        choose_targets("all", logits, labels, key=KEY)
    with pytest.raises(ValueError, match="unknown target mode"):
        choose_targets("nearest", logits, labels, key=KEY)


def test_losses_and_validation():
    logits = jnp.array([2.0, 0.5, -1.0])
    label, target = jnp.int32(0), jnp.int32(1)
    np.testing.assert_allclose(attack_loss(logits, label, target, "xent"),
                               jax.nn.logsumexp(logits) - 0.5, rtol=1e-6)
    not_label = jnp.log(jnp.sum(jax.nn.softmax(logits)[1:]))
    np.testing.assert_allclose(attack_loss(logits, label, jnp.int32(-1), "xent"), -not_label,
                               rtol=1e-6)
    np.testing.assert_allclose(attack_loss(logits, label, target, "margin", 0.1), 1.6, rtol=1e-6)
    np.testing.assert_allclose(attack_loss(logits, label, jnp.int32(-1), "margin"), 1.5, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        LBFGSAttack(loss="hinge")
    with pytest.raises(ValueError):
        LBFGSAttack(c_init=0.0)
