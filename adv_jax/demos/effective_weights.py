"""Essay 004 ("book-smart, not street-smart") on a 784-64-64-10 ReLU network (`relu64`).

For neurons of each layer: the input of bounded L2 norm that most activates the neuron (its
"effective weights"; for the first layer exactly its weight vector, deeper by projected gradient
ascent) looks like noise, while the test images averaged with weights = the neuron's activity
look like a digit. Measured: Pearson correlation of each pattern with the mean test image of the
neuron's preferred class (the class it is most active on), per layer. And the overlay trick: a
correctly classified 7 plus the smallest multiple of output neuron 0's pattern that makes the
network say 0.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.attacks.common import smallest_success
from adv_jax.demos.common import Context, DemoParams, grid, show


@dataclasses.dataclass
class Params(DemoParams):
    model: str = "relu64"
    train: str = "adam"
    shown: int = 8  # neurons drawn per layer (the first ones; the output layer: digits 0..)
    ascent_steps: int = 300  # projected gradient ascent steps for the deeper layers
    overlay_source: int = 7  # digits of this class...
    overlay_target: int = 0  # ...pushed to this one with the target output neuron's pattern
    overlay_examples: int = 100  # correctly classified test digits of overlay_source used
    overlay_max_rms: float = 2.0  # largest multiple tried, per-pixel RMS before clipping


def _pre_activations(model, weights, layer: int, x):
    """(B, units) pre-activation of dense layer `layer` for images x (B, 28, 28, 1)."""
    h = model.apply(weights, x, stop=layer)
    p = weights[layer]
    return h.reshape(h.shape[0], -1) @ p["w"] + p["b"]


def activities(model, weights, layer: int, x) -> jax.Array:
    """(B, units), non-negative: ReLU of the hidden layers, softmax probability at the output."""
    z = _pre_activations(model, weights, layer, x)
    return jax.nn.softmax(z, -1) if layer == len(model.layers) - 1 else jax.nn.relu(z)


@functools.partial(jax.jit, static_argnums=(0, 2, 4))
def max_activating_inputs(model, weights, layer: int, radius, steps: int, key) -> jax.Array:
    """(units, 28, 28, 1): per neuron, the input of L2 norm `radius` maximizing its pre-activation
    (projected gradient ascent on the sphere from a random start; exact for the first layer)."""
    units = weights[layer]["w"].shape[1]
    if layer == 0:
        w = weights[0]["w"].T  # (units, 784)
        x = radius * w / jnp.linalg.norm(w, axis=1, keepdims=True)
        return x.reshape(units, 28, 28, 1)

    def project(x):
        return radius * x / jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=1)[:, None, None, None]

    def objective(x):  # sum over neurons of neuron i's pre-activation on input i
        return jnp.trace(_pre_activations(model, weights, layer, x))

    def step(_, x):
        g = jax.grad(objective)(x)
        g = g / (jnp.linalg.norm(g.reshape(units, -1), axis=1)[:, None, None, None] + 1e-12)
        return project(x + 0.1 * radius * g)

    start = project(jax.random.normal(key, (units, 28, 28, 1)))
    return jax.lax.fori_loop(0, steps, step, start)


def activity_weighted_average(act: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(units, 28, 28, 1): sum_n a_n x_n / sum_n a_n per neuron; zeros for a neuron never active."""
    total = act.sum(0)
    flat = act.T @ x.reshape(len(x), -1) / np.where(total > 0, total, 1.0)[:, None]
    return flat.reshape(-1, 28, 28, 1)


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation over pixels of matching rows of a, b (N, ...) -> (N,)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def overlay(model, weights, x, pattern, target: int, max_rms: float):
    """x (N, 28, 28, 1) + the smallest multiple m of pattern (scaled to per-pixel RMS 1) that
    makes the model predict `target`, clipped to [0, 1] -> (x_over (N, ...), m (N,), success (N,))."""
    direction = pattern / jnp.sqrt(jnp.mean(pattern**2))

    def one(image):
        def attempt(m):
            candidate = jnp.clip(image + m * direction, 0.0, 1.0)
            return candidate, jnp.argmax(model.apply(weights, candidate[None])[0]) == target
        return smallest_success(attempt, max_rms, 20)[0]

    x_over = jax.jit(jax.vmap(one))(jnp.asarray(x))
    success = jnp.argmax(model.apply(weights, x_over), -1) == target
    return x_over, success


def _dense_layers(model, name: str) -> list[int]:
    """Indices of the model's layers, all of which must be dense (else ValueError)."""
    dense = [i for i, layer in enumerate(model.layers) if layer.kind == "dense"]
    if len(dense) != len(model.layers):
        raise ValueError(f"effective_weights needs a fully connected model; {name} has "
                         f"{[layer.kind for layer in model.layers]}")
    return dense


def _preferred_class_means(act: np.ndarray, y: np.ndarray, class_means: np.ndarray) -> np.ndarray:
    """act (N, units), y (N,), class_means (10, 28, 28, 1) -> (units, 28, 28, 1): per neuron, the
    mean test image of the class it is most active on."""
    per_class = np.stack([act[y == c].mean(0) for c in range(10)])  # (10, units)
    return class_means[per_class.argmax(0)]


def _correlation_stats(pattern, average, target_images, global_mean, alive) -> dict:
    """Mean correlations over alive units (units,) of pattern and average (units, 28, 28, 1) with
    target_images (units, 28, 28, 1), plain and centered on global_mean (28, 28, 1)."""
    r_pattern = _correlation(pattern, target_images)[alive]
    r_average = _correlation(average, target_images)[alive]
    # The same without the shape every digit shares: corr(p - mean image, class mean - mean image)
    rc_pattern = _correlation(pattern - global_mean, target_images - global_mean)[alive]
    rc_average = _correlation(average - global_mean, target_images - global_mean)[alive]
    return {
        "corr_effective_weights": float(r_pattern.mean()),
        "corr_activity_average": float(r_average.mean()),
        "fraction_units_average_higher": float(np.mean(r_average > r_pattern)),
        "corr_centered_effective_weights": float(rc_pattern.mean()),
        "corr_centered_activity_average": float(rc_average.mean()),
    }


def _measure_layer(model, weights, layer: int, x, test, class_means, global_mean, radius, steps,
                   key):
    """One dense layer on the test images x (N, 28, 28, 1) -> (row dict, pattern, average), the
    latter two (units, 28, 28, 1): max-activating inputs and activity-weighted averages."""
    act = np.asarray(activities(model, weights, layer, x))  # (N, units)
    pattern = np.asarray(max_activating_inputs(model, weights, layer, radius, steps, key))
    average = activity_weighted_average(act, test.x)
    alive = act.sum(0) > 0
    target_images = _preferred_class_means(act, test.y, class_means)
    achieved = np.asarray(jnp.diag(_pre_activations(model, weights, layer, jnp.asarray(pattern))))
    row = {
        "layer": layer, "units": int(len(alive)), "active_units": int(alive.sum()),
        **_correlation_stats(pattern, average, target_images, global_mean, alive),
        "mean_max_pre_activation": float(achieved.mean()),
        "mean_test_pre_activation": float(np.asarray(
            _pre_activations(model, weights, layer, x[:1000])).mean()),
    }
    return row, pattern, average


def _plot_layers(ctx: Context, params: Params, dense, patterns, averages, radius: float) -> None:
    """Figure effective_weights: per layer k, patterns[k] and averages[k] (units, 28, 28, 1) of
    its first `shown` neurons in two rows."""
    shown = params.shown
    fig, axes = grid(2 * len(dense), shown)
    for k, layer in enumerate(dense):
        for c in range(min(shown, patterns[k].shape[0])):
            show(axes[2 * k, c], patterns[k][c], f"L{layer + 1} n{c}", signed=True, fontsize=7)
            show(axes[2 * k + 1, c], averages[k][c] / max(averages[k][c].max(), 1e-12))
        axes[2 * k, 0].set_ylabel("max. activating", fontsize=7)
        axes[2 * k + 1, 0].set_ylabel("activity avg.", fontsize=7)
    fig.suptitle(f"{params.model}: norm-{radius:.1f} input that most activates each neuron (blue +, "
                 "red -) vs test images averaged by its activity (last layer: output units)",
                 fontsize=8)
    ctx.save(fig, "effective_weights")


def _plot_overlay(ctx: Context, params: Params, originals, pattern, x_over, probs, distortion):
    """Figure effective_weights_overlay: up to 6 columns of original (S, 28, 28, 1), the pattern
    (28, 28, 1), and the overlaid x_over (S, ...) titled by probs (S, 10) and distortion (S,)."""
    fig, axes = grid(3, 6, size=1.5)
    for c in range(min(6, len(originals))):
        show(axes[0, c], originals[c], f"{params.overlay_source}")
        show(axes[1, c], pattern, signed=True)
        show(axes[2, c], x_over[c])
        axes[2, c].set_xlabel(f"-> {probs[c].argmax()} (p {probs[c].max():.2f})\n"
                              f"rms {distortion[c]:.3f}", fontsize=7)
    axes[1, 0].set_ylabel(f"neuron {params.overlay_target}", fontsize=8)
    fig.suptitle(f"a {params.overlay_source} plus output neuron {params.overlay_target}'s pattern "
                 "(smallest multiple that flips it)", fontsize=9)
    ctx.save(fig, "effective_weights_overlay")


def _overlay_trick(ctx: Context, params: Params, model, weights, test, x, output_patterns,
                   out: int) -> dict:
    """Correctly classified overlay_source test digits (of x (N, 28, 28, 1)) plus the smallest
    multiple of output_patterns[overlay_target] (of (10, 28, 28, 1)) that flips them; draws them."""
    source = np.where((test.y == params.overlay_source) & (np.asarray(
        jnp.argmax(model.apply(weights, x), -1)) == test.y))[0][: params.overlay_examples]
    pattern = jnp.asarray(output_patterns[params.overlay_target])
    x_over, success = overlay(model, weights, test.x[source], pattern, params.overlay_target,
                              params.overlay_max_rms)
    success = np.asarray(success)
    distortion = np.sqrt(np.mean((np.asarray(x_over) - test.x[source]) ** 2, axis=(1, 2, 3)))
    probs = np.asarray(jax.nn.softmax(model.apply(weights, x_over), -1))
    _plot_overlay(ctx, params, test.x[source], pattern, x_over, probs, distortion)
    return {"examples": int(len(source)), "success_rate": float(success.mean()),
            "median_distortion": float(np.median(distortion[success])) if success.any() else None,
            "mean_probability_of_target": float(probs[success, params.overlay_target].mean())
            if success.any() else None, "output_layer": out}


def run(ctx: Context, params: Params) -> dict:
    """Per-layer correlations, the two figures and the overlay trick on test images (N, 28, 28, 1)."""
    model, weights, numbers = ctx.model(params.model, "full", params.train)
    dense = _dense_layers(model, params.model)
    test = ctx.splits("full")["test"]
    x = jnp.asarray(test.x)
    radius = float(np.mean(np.linalg.norm(test.x.reshape(len(test.x), -1), axis=1)))
    class_means = np.stack([test.x[test.y == c].mean(0) for c in range(10)])
    global_mean = test.x.mean(0)
    key = jax.random.key(ctx.cfg.seed)

    layers, patterns, averages = [], [], []
    for layer in dense:
        row, pattern, average = _measure_layer(model, weights, layer, x, test, class_means,
                                               global_mean, radius, params.ascent_steps,
                                               jax.random.fold_in(key, layer))
        layers.append(row)
        patterns.append(pattern)
        averages.append(average)

    _plot_layers(ctx, params, dense, patterns, averages, radius)
    # The overlay trick with the output neuron of overlay_target.
    overlay_numbers = _overlay_trick(ctx, params, model, weights, test, x, patterns[-1], dense[-1])
    return {
        "model": numbers,
        "input_norm_bound": radius,
        "layers": layers,
        "overlay": overlay_numbers,
        "claim_average_correlates_more": bool(all(
            r["corr_activity_average"] > r["corr_effective_weights"] for r in layers)),
    }
