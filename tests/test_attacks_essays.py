"""The essays' fooling methods: essay 001's toy numbers, template addition (closed form on an
affine model, flips a trained FC10 from real images and from noise, smallest multiple), fooling
images to a stated confidence, and essay 000's pseudoinverse images of the 2-D bottleneck."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adv_jax.attacks.common import attack_batch
from adv_jax.attacks.essays import (
    FoolingImage,
    TemplateAddition,
    invert_affine_layers,
    pseudoinverse_fooling,
    region_points,
    template_direction,
    toy_logistic_example,
)
from adv_jax.config import compose
from adv_jax.data import load_splits
from adv_jax.models import Model, build_model, error_rate, logits_fn
from adv_jax.models.layers import Layer
from adv_jax.train import train_model


def _trained(overrides, classes=None):
    cfg = compose(overrides)
    splits = load_splits(cfg.data, classes=classes)
    model = build_model(cfg.model)
    params, _ = train_model(model, cfg.model, cfg.train, splits["train"], jax.random.key(0))
    return model, params, splits["test"]


@pytest.fixture(scope="module")
def fc10(mnist_dir):
    """Softmax regression on 2000 real digits, 10 Adam epochs (~1 s; about 15% test error)."""
    return _trained(["model=fc10", "train=adam", "train.epochs=10", "train.learning_rate=1e-2",
                     "data.train_limit=2000"])


@pytest.fixture(scope="module")
def bottleneck(mnist_dir):
    """Essay 000's 784-50-20-2 identity network with a softmax over digits 0-3, 3 Adam epochs."""
    return _trained(["model=bottleneck2d", "train=adam", "train.epochs=3", "data.train_limit=4000"],
                    classes=[0, 1, 2, 3])


def _batch(attack, model, params, x, label, target, seed=0):
    return attack_batch(attack, logits_fn(model, params), jnp.asarray(x),
                        jnp.asarray(label, jnp.int32), jnp.asarray(target, jnp.int32),
                        key=jax.random.key(seed), chunk_size=1000, progress=False)[0]


def test_toy_example_has_the_essays_numbers():
    toy = toy_logistic_example()
    assert toy.score_before == -3.0 and toy.score_after == 2.0
    np.testing.assert_array_equal(toy.x_adv, [1.5, -1.5, 3.5, -2.5, 2.5, 1.5, 1.5, -3.5, 4.5, 1.5])
    assert round(toy.probability_before, 4) == 0.0474 and round(toy.probability_after, 2) == 0.88


def test_template_on_an_affine_model_is_the_weight_difference_and_the_closed_form():
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(784, 2)) * 0.05).astype(np.float32)
    x = (0.5 + 0.1 * rng.uniform(-1, 1, size=(4, 28, 28, 1))).astype(np.float32)
    model = Model(layers=(Layer("dense", features=2),))
    params = ({"w": jnp.asarray(w), "b": jnp.zeros(2)},)
    label = np.argmax(x.reshape(4, -1) @ w, 1)
    one_image = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    unit_rms = lambda v: v / np.sqrt(np.mean(v**2))  # noqa: E731
    margin = template_direction(one_image, jnp.asarray(x[0]), label[0], 1 - label[0])
    np.testing.assert_allclose(margin.reshape(-1), unit_rms(w[:, 1 - label[0]] - w[:, label[0]]),
                               rtol=1e-4)
    score = template_direction(one_image, jnp.asarray(x[0]), label[0], 1 - label[0], "target_score")
    np.testing.assert_allclose(score.reshape(-1), unit_rms(w[:, 1 - label[0]]), rtol=1e-4)
    # The margin template points straight at the boundary: its smallest multiple is the distance.
    x_adv = _batch(TemplateAddition(), model, params, x, label, 1 - label)
    z = x.reshape(4, -1) @ w
    exact = np.abs(z[:, 1] - z[:, 0]) / np.linalg.norm(w[:, 1] - w[:, 0])
    found = np.linalg.norm((np.asarray(x_adv) - x).reshape(4, -1), axis=1)
    np.testing.assert_allclose(found, exact, rtol=1e-4)


@pytest.mark.parametrize("template", ["margin", "target_score"])
def test_template_flips_fc10_from_real_images_and_noise(fc10, template):
    model, params, test = fc10
    assert error_rate(model, params, jnp.asarray(test.x[:2000]), jnp.asarray(test.y[:2000])) < 0.2
    x, y = test.x[:12], test.y[:12]
    target = (y + 1) % 10
    noise = np.asarray(jax.random.uniform(jax.random.key(1), x.shape))
    noise_label = np.asarray(model.apply(params, jnp.asarray(noise)).argmax(1))
    attack = TemplateAddition(template=template)
    for start, label in ((x, y), (noise, noise_label)):
        x_adv = _batch(attack, model, params, start, label, target)
        np.testing.assert_array_equal(model.apply(params, x_adv).argmax(1), target)
        assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_template_multiple_is_the_smallest_that_succeeds(fc10):
    """The bisection's multiple matches the first success on a fine grid of multiples."""
    model, params, test = fc10
    x, y = jnp.asarray(test.x[:4]), test.y[:4]
    target = (y + 1) % 10
    x_adv = _batch(TemplateAddition(), model, params, x, y, target)
    one_image = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    grid = jnp.linspace(0.0, 1.0, 4001)
    for i in range(len(y)):
        source = int(model.apply(params, x[i:i + 1]).argmax())
        direction = template_direction(one_image, x[i], source, target[i])
        candidates = jnp.clip(x[i] + grid[:, None, None, None] * direction, 0, 1)
        first = int(jnp.argmax(model.apply(params, candidates).argmax(1) == target[i]))
        np.testing.assert_allclose(x_adv[i], candidates[first], atol=float(grid[1]) * 4)


@pytest.mark.parametrize("start", ["noise", "blank", "image"])
def test_fooling_images_reach_the_stated_confidence(fc10, start):
    model, params, test = fc10
    x, y = test.x[:10], test.y[:10]
    target = (y + 5) % 10
    images = _batch(FoolingImage(confidence=0.99, start=start), model, params, x, y, target)
    probability = jax.nn.softmax(model.apply(params, images))[np.arange(10), target]
    assert np.all(probability >= 0.99), probability
    assert images.min() >= 0 and images.max() <= 1
    if start == "noise":  # each example draws its own noise from its own key
        assert not np.allclose(images[0], images[1])


def test_pseudoinverse_images_of_far_points_are_classified_with_confidence(bottleneck):
    model, params, test = bottleneck
    assert error_rate(model, params, jnp.asarray(test.x), jnp.asarray(test.y)) < 0.12
    codes = model.apply(params, jnp.asarray(test.x[:2000]), stop=-1)  # (N, 2): the data, at z
    points = region_points(model, params, confidence=0.999)
    unbounded = np.flatnonzero(~np.isnan(points[:, 0]))
    assert len(unbounded) >= 3  # measured: all four classes' regions reach infinity
    # Push each point beyond every training code: further out, the confidence only grows.
    reach = 3 * float(jnp.linalg.norm(codes, axis=1).max())
    radius = np.linalg.norm(points[unbounded], axis=1, keepdims=True)
    far = points[unbounded] * np.maximum(1.0, reach / radius)
    images, probabilities = pseudoinverse_fooling(model, params, far)
    np.testing.assert_array_equal(probabilities.argmax(1), unbounded)
    assert np.all(probabilities.max(1) >= 0.99), probabilities
    np.testing.assert_allclose(model.apply(params, images, stop=-1), far, rtol=1e-3, atol=1e-2)


def test_inversion_needs_identity_layers():
    model = Model(layers=(Layer("dense", features=100, activation="sigmoid"),
                          Layer("dense", features=10)))
    params = ({"w": jnp.zeros((784, 100)), "b": jnp.zeros(100)},
              {"w": jnp.zeros((100, 10)), "b": jnp.zeros(10)})
    with pytest.raises(ValueError, match="dense identity layers"):
        invert_affine_layers(model, params, jnp.zeros((1, 100)))
