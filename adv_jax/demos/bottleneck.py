"""Essay 000's deep half: a 784-50-20-2 identity network on digits 0-3 (`bottleneck2d`), its 2-D
last hidden layer with the output layer's class regions, and points chosen far from the data in
each region inverted through the affine layers with Moore-Penrose pseudoinverses into images the
network classifies as that region's class with probability >= 0.99.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from adv_jax.attacks.essays import pseudoinverse_fooling, region_points
from adv_jax.demos.common import Context, DemoParams
from adv_jax.demos.iris import CLASS_COLORS

COLORS = np.vstack([CLASS_COLORS, [[0.84, 0.15, 0.16]]])  # four digits


@dataclasses.dataclass
class Params(DemoParams):
    model: str = "bottleneck2d"  # a conf/model entry with dense identity layers and a 2-D last one
    train: str = "lbfgs"  # conf/train entry
    confidence: float = 0.999  # each point reaches at least this probability of its class...
    distance: float = 3.0  # ...and lies this many times the data's radius from the origin
    plotted: int = 2000  # test points drawn in the hidden-layer scatter


def far_points(model, params, hidden: np.ndarray, confidence: float, distance: float) -> np.ndarray:
    """(K, 2): per class, the point of `region_points` (its most favoured direction, radius where
    p_class >= confidence) moved out along that direction to at least `distance` x the 99th
    percentile norm of the data's hidden points. NaN rows: classes whose region is bounded."""
    points = region_points(model, params, confidence)
    radius = float(np.percentile(np.linalg.norm(hidden, axis=1), 99))
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    return points * np.maximum(1.0, distance * radius / np.where(norms > 0, norms, 1.0))


def _regions(ax, model, weights, stop: int, span: float, resolution: int = 300) -> None:
    """The output layer's class regions on [-span, span]^2, faded where it is unsure."""
    axis = np.linspace(-span, span, resolution)
    zz = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    logits = model.apply(weights, jnp.asarray(zz, jnp.float32), start=stop)
    probs = np.asarray(jax.nn.softmax(logits, -1)).reshape(resolution, resolution, -1)
    strength = np.clip((probs.max(-1) - 0.25) / 0.75, 0, 1)[..., None]
    rgb = np.clip(COLORS[probs.argmax(-1)] * strength + (1 - strength), 0, 1)
    ax.imshow(rgb, origin="lower", extent=(-span, span, -span, span), aspect="auto")
    ax.contour(axis, axis, probs.max(-1), levels=[0.99], colors="k", linewidths=0.6)


def run(ctx: Context, params: Params) -> dict:
    model, weights, numbers = ctx.model(params.model, "full", params.train)
    classes = list(ctx.model_config(params.model).model.classes or range(model.num_classes))
    test = ctx.splits("full", classes)["test"]
    stop = len(model.layers) - 1
    hidden = np.asarray(model.apply(weights, jnp.asarray(test.x), stop=stop))
    points = far_points(model, weights, hidden, params.confidence, params.distance)
    bounded = np.isnan(points).any(1)
    chosen = np.where(~bounded)[0]
    images, probs = pseudoinverse_fooling(model, weights, jnp.asarray(points[chosen], jnp.float32))
    images, probs = np.asarray(images), np.asarray(probs)
    clipped = np.asarray(jax.nn.softmax(model.apply(weights, jnp.clip(images, 0, 1)), -1))
    reached = np.asarray(model.apply(weights, jnp.asarray(images), stop=stop))

    fig = plt.figure(figsize=(14, 4.8))
    data_span = 1.3 * float(np.percentile(np.abs(hidden), 99.5))
    far_span = 1.15 * max(float(np.abs(points[chosen]).max()) if len(chosen) else 0.0, data_span)
    shown = np.random.default_rng(ctx.cfg.seed).permutation(len(hidden))[: params.plotted]
    for k, (span, title) in enumerate(((data_span, "near the data (test points)"),
                                       (far_span, "far from it: the chosen points"))):
        ax = fig.add_axes([0.04 + 0.3 * k, 0.1, 0.25, 0.78])
        _regions(ax, model, weights, stop, span)
        ax.scatter(hidden[shown, 0], hidden[shown, 1], c=0.55 * COLORS[test.y[shown]], s=3,
                   linewidths=0)  # darker than their region, to be seen on it
        for c in chosen:
            ax.plot(*points[c], "k*", ms=11)
            ax.annotate(f"digit {classes[c]}", points[c], fontsize=8, xytext=(5, 5),
                        textcoords="offset points")
        ax.set_xlim(-span, span), ax.set_ylim(-span, span)
        ax.set_title(f"{params.model}'s 2-D layer, {title}\n(black line: p = 0.99)", fontsize=9)
        if k == 0:
            for c, digit in enumerate(classes):
                ax.plot([], [], "s", color=COLORS[c], label=str(digit))
            ax.legend(fontsize=7, loc="lower left")
    for i, c in enumerate(chosen):
        image_ax = fig.add_axes([0.64 + 0.17 * (i % 2), 0.52 - 0.45 * (i // 2), 0.12, 0.34])
        image_ax.imshow(images[i].reshape(28, 28), cmap="gray", interpolation="nearest")
        image_ax.set_xticks([]), image_ax.set_yticks([])
        image_ax.set_title(f"-> {classes[int(probs[i].argmax())]}, p = {probs[i].max():.4f}\n"
                           f"z = ({points[c][0]:.0f}, {points[c][1]:.0f})", fontsize=8)
        image_ax.set_xlabel(f"pixels in [{images[i].min():.2f}, {images[i].max():.2f}]", fontsize=7)
    ctx.save(fig, "bottleneck_inversion")

    chosen_probs = probs[np.arange(len(chosen)), chosen] if len(chosen) else np.zeros(0)
    return {
        "model": {**numbers, "test_accuracy": 1 - numbers["test_error"], "digits": classes},
        "bounded_classes": [classes[c] for c in np.where(bounded)[0]],
        "points": [{"digit": classes[c], "z": points[c].tolist(),
                    "predicted": classes[int(probs[i].argmax())],
                    "probability_of_region_class": float(chosen_probs[i]),
                    "probability_clipped_to_0_1": float(clipped[i, c]),
                    "pixel_min": float(images[i].min()), "pixel_max": float(images[i].max()),
                    "hidden_reached": reached[i].tolist()}
                   for i, c in enumerate(chosen)],
        "confidence": params.confidence, "distance": params.distance,
        "data_radius_99pct": float(np.percentile(np.linalg.norm(hidden, axis=1), 99)),
        "min_probability": float(chosen_probs.min()) if len(chosen) else float("nan"),
        "claim_inverted_above_0.99": bool(len(chosen) == len(classes) and chosen_probs.min() >= 0.99),
    }
