"""`generate` checks its inputs before any work: one ValueError line naming the argument for
non-finite images, images outside [0, 1], labels or targets outside [0, K) (targets: or -1),
empty batches and mismatched lengths; `check_inputs` is the check itself, for other entry points.
Both routes, an attack config and an attack object, against a tiny linear model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from adv_jax.attacks import PGD
from adv_jax.attacks.generate import check_inputs, generate
from adv_jax.config import AttackConfig

W = jax.random.normal(jax.random.key(0), (784, 10))
X = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))


def linear(x):
    """(B, 28, 28, 1) -> (B, 10)."""
    return x.reshape(len(x), -1) @ W


Y = jnp.argmax(linear(X), -1)
ROUTES = {"config": OmegaConf.structured(AttackConfig(name="pgd", target="untargeted", params={"steps": 2})),
          "object": PGD(steps=2)}


def attack(route, x, y, **kwargs):
    return generate(ROUTES[route], linear, x, y, key=jax.random.key(2), progress=False, **kwargs)


BAD = {  # what is wrong: (x, y, the message's start)
    "nan": (X.at[0, 3, 4, 0].set(jnp.nan), Y, r"generate: x has 1 non-finite values \(first at example 0\); images must be finite, in \[0, 1\]$"),
    "inf": (X.at[3].set(jnp.inf), Y, r"generate: x has 784 non-finite values \(first at example 3\)"),
    "0-255": (X * 255, Y, r"generate: x has values in \[.*, 25\d.*\] \(first outside \[0, 1\] at example 0\); .*divide by 255"),
    "centred": (X - 0.5, Y, r"generate: x has values in \[-0\.4.*\] .*images must be in \[0, 1\]"),
    "label 10": (X, Y.at[2].set(10), r"generate: y has 1 values outside \[0, 10\) \(first at example 2: 10\)"),
    "label -1": (X, Y.at[4].set(-1), r"generate: y has 1 values outside \[0, 10\) \(first at example 4: -1\)"),
    "empty": (X[:0], Y[:0], r"generate: x is empty or not a batch \(shape \(0, 28, 28, 1\)\)"),
    "fewer labels": (X, Y[:4], r"generate: y has shape \(4,\) but x has 5 examples; pass one label per image"),
    "labels (N, 1)": (X, Y[:, None], r"generate: y has shape \(5, 1\) but x has 5 examples"),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_images_or_labels_are_one_clear_value_error(route, case):
    x, y, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        attack(route, x, y)


BAD_TARGETS = {
    "target 10": (jnp.array([1, 2, 10, 3, 4]), r"generate: target has 1 values outside \[0, 10\) or -1 \(untargeted\) \(first at example 2: 10\)"),
    "target -2": (jnp.array([-2, -1, -1, -1, -1]), r"generate: target has 1 values outside .* \(first at example 0: -2\)"),
    "fewer targets": (jnp.array([1, 2, 3]), r"generate: target has shape \(3,\) but x has 5 examples; pass one target per image"),
    "unknown mode": ("randm", r"generate: unknown target mode 'randm'; choose one of \['random', 'next', 'untargeted', 'all'\]"),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("case", sorted(BAD_TARGETS))
def test_bad_targets_are_one_clear_value_error(route, case):
    target, message = BAD_TARGETS[case]
    with pytest.raises(ValueError, match=message):
        attack(route, X, Y, target=target)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_the_edges_of_what_is_allowed_pass(route):
    """Pixels exactly 0 and 1, labels 0 and K - 1, untargeted (-1) among explicit targets."""
    x = X.at[0].set(0.0).at[1].set(1.0)
    y = jnp.array([0, 9, 3, 4, 5])
    made = attack(route, x, y, target=jnp.array([-1, 0, 9, -1, 1]))
    np.testing.assert_array_equal(made.adversarials.target, [-1, 0, 9, -1, 1])
    assert made.adversarials.x_adv.min() >= 0 and made.adversarials.x_adv.max() <= 1


def test_check_inputs_for_other_entry_points():
    """Names its caller; without num_classes, only the lower bounds of labels are checked."""
    check_inputs(np.zeros((2, 4)), np.array([0, 12]))  # K unknown: 12 may be a class
    with pytest.raises(ValueError, match=r"^attack_batch: y has 1 values outside \[0, K\)"):
        check_inputs(np.zeros((2, 4)), np.array([0, -3]), caller="attack_batch")
    with pytest.raises(ValueError, match=r"^attack_batch: x has 1 non-finite"):
        check_inputs(np.array([[0.0, np.nan]]), np.array([1]), np.array([-1]), 3, caller="attack_batch")
    with pytest.raises(ValueError, match=r"^generate: x is empty or not a batch \(shape \(5,\)\)"):
        check_inputs(np.zeros(5), np.zeros(5, int))
