"""The essays' fooling methods (seeds/000 and seeds/001), on the common attack interface.

(a) Template addition (essay 001). For a linear classifier Z = W^T x + b the input gradient of
    a class score is that class's weight vector, so adding a multiple of the template
    w_target - w_source (or of w_target alone, the essay's recipe) fools it, from a real image
    or from noise. For any model the template is the input gradient of the same score at x.
    `TemplateAddition` finds the smallest multiple that succeeds; `toy_logistic_example` is
    the essay's 10-dimensional example (score -3 -> 2 by adding 0.5 w).
(b) Fooling images (essays 000 and 001, after Nguyen et al.): start from noise, a blank image
    or x and ascend log p_target, projected to [0, 1], until p_target >= confidence.
(c) Pseudoinverse inversion (essay 000). For a network whose first layers are affine (identity
    activations), map chosen points z of a hidden layer back to an input with the
    Moore-Penrose pseudoinverses: h_{i} = (h_{i+1} - b_i) pinv(W_i). Points far out in a
    class's region of the 2-D bottleneck give inputs classified with probability ~1.

Units: pixels in [0, 1] (inversion images are not clipped: they are whatever the pseudoinverse
gives); template multiples are measured as the template's per-pixel RMS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adv_jax.attacks.common import LogitsFn, is_adversarial, smallest_success

Params = Sequence[Any]  # one entry per layer; dense layers {"w": (d_in, d_out), "b": (d_out,)}


class LayeredModel(Protocol):
    """What the pseudoinverse functions need of a model (`adv_jax.models.Model` has it; attacks
    sit below models and do not import them): layers with .kind and .activation, an input shape,
    and apply(params, x (B, *input_shape)) -> logits (B, K)."""
    layers: tuple
    input_shape: tuple[int, ...]

    def apply(self, params: Params, x: jax.Array) -> jax.Array: ...

__all__ = ["FoolingImage", "TemplateAddition", "ToyExample", "invert_affine_layers",
           "pseudoinverse_fooling", "region_points", "template_direction",
           "toy_logistic_example"]

TEMPLATES = ("margin", "target_score")
STARTS = ("noise", "blank", "image")


class ToyExample(NamedTuple):
    x: np.ndarray  # (10,) input
    w: np.ndarray  # (10,) weights of the class-1 score s = w . x (bias 0)
    x_adv: np.ndarray  # x + step * w
    score_before: float  # -3.0
    score_after: float  # 2.0
    probability_before: float  # sigmoid(-3) = 0.0474
    probability_after: float  # sigmoid(2) = 0.8808


def toy_logistic_example(step: float = 0.5) -> ToyExample:
    """Essay 001's binary logistic regression: x_adv = x + step * w raises the score by
    step * |w|^2 = 0.5 * 10 = 5, from -3 (P(class 1) = 5%) to 2 (88%)."""
    x = np.array([2, -1, 3, -2, 2, 2, 1, -4, 5, 1], np.float64)
    w = np.array([-1, -1, 1, -1, 1, -1, 1, 1, -1, 1], np.float64)
    x_adv = x + step * w
    sigmoid = lambda s: float(1.0 / (1.0 + np.exp(-s)))  # noqa: E731
    before, after = float(w @ x), float(w @ x_adv)
    return ToyExample(x, w, x_adv, before, after, sigmoid(before), sigmoid(after))


def _runner_up(logits: jax.Array, label: jax.Array) -> jax.Array:
    return jnp.argmax(logits.at[label].set(-jnp.inf))


def template_direction(logits_fn: LogitsFn, x: jax.Array, source: jax.Array,
                       target: jax.Array, template: str = "margin") -> jax.Array:
    """grad_x (Z_target - Z_source) ("margin"; = w_t - w_s for a linear model) or
    grad_x Z_target ("target_score"; = w_t), scaled to unit per-pixel RMS. Shape of x."""
    def score(image):
        logits = logits_fn(image)
        return logits[target] - (logits[source] if template == "margin" else 0.0)
    grad = jax.grad(score)(x)
    return grad / (jnp.sqrt(jnp.mean(grad**2)) + 1e-12)


def _check(kind: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {list(choices)}")


@dataclasses.dataclass(frozen=True)
class TemplateAddition:
    """x_adv = clip(x + a * template, 0, 1) with the smallest a in [0, max_rms] that succeeds
    (bisection); `template` is computed once, at x. Targeted: source = the prediction at x
    (the true class for a real image; whatever noise looks like for noise). Untargeted: source
    = label, target = the runner-up class at x. If a = max_rms fails, returns that attempt."""

    template: str = "margin"  # margin: grad (Z_t - Z_s) | target_score: grad Z_t (essay 001)
    max_rms: float = 1.0  # largest multiple, as per-pixel RMS of a * template before clipping
    search_steps: int = 20  # bisection rounds: a is found within max_rms / 2**search_steps

    def __post_init__(self):
        _check("template", self.template, TEMPLATES)

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key):
        """The attack and {"multiple": the smallest successful a (0: x already succeeds; inf:
        none up to max_rms), "evals": 1 (the template's gradient)}."""
        del key  # deterministic
        logits = logits_fn(x)
        targeted = target >= 0
        source = jnp.where(targeted, jnp.argmax(logits), label)
        wanted = jnp.where(targeted, target, _runner_up(logits, label))
        direction = template_direction(logits_fn, x, source, wanted, self.template)

        def attempt(multiple):
            x_adv = jnp.clip(x + multiple * direction, 0.0, 1.0)
            return x_adv, is_adversarial(logits_fn(x_adv), label, target)

        best, multiple = smallest_success(attempt, self.max_rms, self.search_steps)
        already = is_adversarial(logits, label, target)
        diagnostics = {"multiple": jnp.where(already, 0.0, multiple), "evals": jnp.int32(1)}
        return jnp.where(already, x, best), diagnostics


@dataclasses.dataclass(frozen=True)
class FoolingImage:
    """Adam ascent on log p_target from noise, a blank image or x, each step clipped to
    [0, 1], until p_target >= confidence or `steps` run out. Untargeted: the target is the
    runner-up class at the start. Returns the image (28, 28, 1); distortion is not the point."""

    confidence: float = 0.99
    start: str = "noise"  # noise: uniform [0, 1] from the key | blank: all zeros | image: x
    steps: int = 1000  # at most
    learning_rate: float = 0.02  # Adam step, pixels

    def __post_init__(self):
        _check("start", self.start, STARTS)

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key):
        """The image and {"steps": Adam steps taken (int32), "evals": the same (one gradient each)}."""
        if self.start == "noise":
            x = jax.random.uniform(key, x.shape, x.dtype)
        elif self.start == "blank":
            x = jnp.zeros_like(x)
        wanted = jnp.where(target >= 0, target, _runner_up(logits_fn(x), label))
        log_probability = lambda image: jax.nn.log_softmax(logits_fn(image))[wanted]  # noqa: E731
        optimizer = optax.adam(self.learning_rate)
        threshold = jnp.log(jnp.float32(self.confidence))

        def step(carry):
            i, image, opt_state, _ = carry
            grad = jax.grad(lambda v: -log_probability(v))(image)
            updates, opt_state = optimizer.update(grad, opt_state)
            image = jnp.clip(optax.apply_updates(image, updates), 0.0, 1.0)
            return i + 1, image, opt_state, log_probability(image)

        def going(carry):
            return (carry[0] < self.steps) & (carry[3] < threshold)

        carry = (0, x, optimizer.init(x), log_probability(x))
        steps, image, _, _ = jax.lax.while_loop(going, step, carry)
        return image, {"steps": steps, "evals": steps}


def _affine_prefix(model: LayeredModel, stop: int) -> None:
    for layer in model.layers[:stop]:
        if layer.kind != "dense" or layer.activation != "identity":
            raise ValueError(f"pseudoinverse inversion needs dense identity layers before layer "
                             f"{stop}; got {layer.kind} {layer.activation}")


def invert_affine_layers(model: LayeredModel, params: Params, hidden: jax.Array,
                         stop: int | None = None) -> jax.Array:
    """hidden (N, d): activations after layers[:stop] (default: all but the output layer)
    -> inputs (N, *model.input_shape) that those layers map exactly onto them (each W_i has
    full column rank, so pinv(W_i) W_i = I): h_i = (h_{i+1} - b_i) pinv(W_i)."""
    stop = len(model.layers) - 1 if stop is None else stop
    _affine_prefix(model, stop)
    h = jnp.asarray(hidden, jnp.float32)
    for p in reversed(params[:stop]):
        h = (h - p["b"]) @ jnp.linalg.pinv(p["w"])
    return h.reshape((h.shape[0],) + model.input_shape)


def region_points(model: LayeredModel, params: Params, confidence: float = 0.999,
                  angles: int = 3600) -> np.ndarray:
    """For each class c, a point z of the 2-D last hidden layer where the output layer gives
    p_c >= confidence: along the direction d that most favors c (maximizes the least margin
    min_j (w_c - w_j) . d), at the smallest radius that reaches `confidence`. (K, 2); a row is
    NaN where c's region is bounded (w_c inside the hull of the others), as no far point exists."""
    w, b = (np.asarray(params[-1][k], np.float64) for k in ("w", "b"))  # (2, K), (K,)
    if w.shape[0] != 2 or model.layers[-1].kind != "dense":
        raise ValueError(f"region_points needs a dense output layer on a 2-D layer; got {w.shape}")
    theta = np.linspace(0.0, 2 * np.pi, angles, endpoint=False)
    directions = np.stack([np.cos(theta), np.sin(theta)], 1)  # (A, 2)
    scores = directions @ w  # (A, K): the slope of each logit along each direction
    num_classes = w.shape[1]
    needed = np.log((num_classes - 1) * confidence / (1 - confidence))  # logit lead for p_c
    points = np.full((num_classes, 2), np.nan)
    for c in range(num_classes):
        slopes = np.delete(scores[:, [c]] - scores, c, axis=1)  # (A, K-1)
        best = int(np.argmax(slopes.min(1)))
        if slopes[best].min() <= 0:
            continue
        bias_lead = np.delete(b[c] - b, c)
        radius = max(0.0, float(np.max((needed - bias_lead) / slopes[best])))
        points[c] = radius * directions[best]
    return points


def pseudoinverse_fooling(model: LayeredModel, params: Params, points) -> tuple[jax.Array, jax.Array]:
    """Images (N, 28, 28, 1) inverted from points (N, d) of the last hidden layer, and the
    model's class probabilities on those images (N, K), computed by running the model on them."""
    images = invert_affine_layers(model, params, points)
    return images, jax.nn.softmax(model.apply(params, images), -1)
