"""The Square attack (square.py): its L2 pattern and window schedule equal numpy transcriptions of
the official code (fra31/auto-attack, autoattack/square.py), and on a random linear model its
outputs stay in the box and the ball within the query budget, depend only on the key (a batch
gives each example what it gets alone), and fool it in few queries, targeted or not."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adv_jax.attacks.carlini_wagner import margin
from adv_jax.attacks.common import attack_batch
from adv_jax.attacks.square import Square, rectangle_pattern, square_pattern, window_side

N = 8
W = np.asarray(jax.random.normal(jax.random.key(0), (784, 10)), np.float32) * 0.05
FN = jax.tree_util.Partial(lambda w, x: x.reshape(len(x), -1) @ w, jnp.asarray(W))
# Like MNIST, many pixels exactly 0 or 1: the box binds.
IMAGES = jnp.clip(1.4 * jax.random.uniform(jax.random.key(1), (N, 28, 28, 1)) - 0.2, 0.0, 1.0)
PREDICTED = np.asarray(jnp.argmax(FN(IMAGES), -1), np.int32)
RUNNER_UP = np.asarray(jnp.argsort(FN(IMAGES), -1)[:, -2], np.int32)
# Example 0 is adversarial from the start: labelled as a class it is not predicted as, and its
# target the class it is predicted as.
FIRST = np.arange(N) == 0
LABELS = np.where(FIRST, RUNNER_UP, PREDICTED).astype(np.int32)
UNTARGETED = np.full(N, -1, np.int32)
TARGETED = np.where(FIRST, PREDICTED, RUNNER_UP).astype(np.int32)
FAR_TARGETED = np.where(FIRST, PREDICTED, (PREDICTED + 3) % 10).astype(np.int32)  # some run out
BUDGET = 300
# About 5 times the smallest L-inf and L2 distances (box aside) of the hardest example.
ATTACKS = {"linf": Square(0.15, "linf", queries=BUDGET), "l2": Square(3.0, "l2", queries=BUDGET)}


def run(attack, target, seed=0):
    x_adv, diagnostics = attack_batch(attack, FN, IMAGES, LABELS, target, key=jax.random.key(seed),
                                      chunk_size=N, progress=False)
    return np.asarray(x_adv), {k: np.asarray(v) for k, v in diagnostics.items()}


def margins(x_adv, target) -> np.ndarray:
    logits = FN(jnp.asarray(x_adv))
    return np.asarray(jax.vmap(margin)(logits, jnp.asarray(LABELS), jnp.asarray(target)))


# The official code, transcribed to numpy (its torch loops, norm 'L2').
def official_eta_rectangles(x, y):
    delta = np.zeros([x, y])
    x_c, y_c = x // 2 + 1, y // 2 + 1
    counter2 = [x_c - 1, y_c - 1]
    for counter in range(0, max(x_c, y_c)):
        delta[max(counter2[0], 0):min(counter2[0] + (2 * counter + 1), x),
              max(0, counter2[1]):min(counter2[1] + (2 * counter + 1), y)
              ] += 1.0 / (counter + 1) ** 2
        counter2[0] -= 1
        counter2[1] -= 1
    return delta / np.sqrt((delta**2).sum())


def official_eta(s):  # without its random transposition
    delta = np.zeros([s, s])
    delta[:s // 2] = official_eta_rectangles(s // 2, s)
    delta[s // 2:] = -1.0 * official_eta_rectangles(s - s // 2, s)
    return delta / np.sqrt((delta**2).sum())


def official_side(i, p_init, n_queries, n_features, norm):
    it = int(i / n_queries * 10000)
    points = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    p = p_init / 2 ** sum(it > point for point in points)
    s = int(round(math.sqrt(p * n_features)))
    if norm == "linf":
        return min(max(s, 1), 28)
    s = max(s, 3)
    return min(s + 1 if s % 2 == 0 else s, 28)


def test_pseudo_gaussian_pattern_is_the_official_nested_rectangles():
    for height, width in [(1, 3), (2, 5), (4, 4), (3, 8), (12, 25), (13, 25), (7, 2)]:
        rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
        ours = np.asarray(rectangle_pattern(rows, cols, height, width, 28))
        np.testing.assert_allclose(ours / np.linalg.norm(ours),
                                   official_eta_rectangles(height, width), rtol=1e-5, atol=1e-7)
    # Placed at (row, col) in a 28 x 28 image, the side traced: as the attack calls it.
    placed = jax.jit(lambda side, row, col: square_pattern(
        jnp.arange(28)[:, None] - row, jnp.arange(28)[None, :] - col, side, 28))
    for side in [3, 5, 7, 9, 25, 27]:
        row, col = min(2, 28 - side), min(1, 28 - side)
        ours = np.asarray(placed(side, row, col))
        np.testing.assert_allclose(ours[row:row + side, col:col + side], official_eta(side),
                                   rtol=1e-5, atol=1e-7)
        assert np.count_nonzero(ours) == side * side


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_window_side_follows_the_official_schedule(norm):
    for queries in (5000, BUDGET, 37):
        side_of = jax.jit(jax.vmap(lambda i: window_side(i, 0.8, queries, 28, 28, norm)))
        sides = side_of(jnp.arange(queries))
        expected = [official_side(i, 0.8, queries, 784, norm) for i in range(queries)]
        np.testing.assert_array_equal(np.asarray(sides), expected)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_inside_the_box_and_the_ball_within_the_budget(norm):
    attack = ATTACKS[norm]
    for target in (UNTARGETED, FAR_TARGETED):
        x_adv, diagnostics = run(attack, target)
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        delta = (x_adv - np.asarray(IMAGES)).reshape(N, -1)
        size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
        assert np.all(size <= attack.epsilon * (1 + 1e-5)), size
        queries = diagnostics["queries"]
        assert np.all((queries >= 1) & (queries <= BUDGET)) and np.all(diagnostics["evals"] == 0)
        # Example 0 starts adversarial: x itself after one query.
        assert queries[0] == 1 and np.array_equal(x_adv[0], IMAGES[0])
        assert np.all(size[1:] > 0)
        # It stops early only on success.
        assert np.all(margins(x_adv, target)[queries < BUDGET] < 0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_key_fixes_the_output_and_each_example_gets_what_it_gets_alone(norm):
    attack = ATTACKS[norm]
    target = np.where(np.arange(N) % 2, FAR_TARGETED, UNTARGETED).astype(np.int32)  # both kinds
    batch, diagnostics = run(attack, target, seed=7)
    again, _ = run(attack, target, seed=7)
    np.testing.assert_array_equal(batch, again)
    assert not np.array_equal(batch[1:], run(attack, target, seed=8)[0][1:])
    assert len(set(diagnostics["queries"].tolist())) > 2  # stops at different steps
    key = jax.random.key(7)
    one_image = lambda image: FN(image[None])[0]  # noqa: E731
    single = jax.jit(lambda *args: attack.with_diagnostics(one_image, *args))
    for i in range(N):
        alone, alone_diagnostics = single(IMAGES[i], LABELS[i], target[i],
                                          jax.random.fold_in(key, i))
        np.testing.assert_allclose(batch[i], alone, atol=1e-5)  # vmap may sum in another order
        assert alone_diagnostics["queries"] == diagnostics["queries"][i]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_an_easy_model_is_fooled_in_few_queries(norm):
    x_adv, diagnostics = run(ATTACKS[norm], UNTARGETED)
    fooled = np.asarray(jnp.argmax(FN(jnp.asarray(x_adv)), -1)) != LABELS
    assert fooled.mean() >= 7 / 8, diagnostics["queries"]
    assert np.median(diagnostics["queries"]) < BUDGET / 5, diagnostics["queries"]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targeted_success_means_reaching_the_target(norm):
    for target, least in [(TARGETED, 7 / 8), (FAR_TARGETED, 1 / 4)]:
        x_adv, diagnostics = run(ATTACKS[norm], target)
        predicted = np.asarray(jnp.argmax(FN(jnp.asarray(x_adv)), -1))
        succeeded = margins(x_adv, target) < 0
        assert np.array_equal(predicted == target, succeeded), (predicted, target)
        assert succeeded.mean() >= least, diagnostics["queries"]


def test_rejects_an_unknown_norm_and_a_budget_without_a_step():
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        Square(norm="l1")
    with pytest.raises(ValueError, match="queries must be at least 2"):
        Square(queries=1)
