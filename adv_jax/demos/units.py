"""The paper's section 3: are single units more interpretable than random directions?

For the last hidden layer phi(x) of each model, the test images x maximizing <phi(x), e_i> for
units e_i (natural basis) and <phi(x), v> for random unit directions v (Gaussian, normalized).
The paper: both look equally "semantically coherent". Made testable by two numbers per direction,
averaged over all units and as many random directions: the label purity of the top images (the
share of the most common label among them) and their mean pairwise cosine similarity in pixel
space; chance levels (random test images) beside them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.demos.common import Context, DemoParams, grid, show


@dataclasses.dataclass
class Params(DemoParams):
    # key -> [conf/model entry, training split, conf/train entry]
    models: dict = dataclasses.field(default_factory=lambda: {
        "fc100": ["fc100", "p1", "lbfgs"], "conv": ["conv", "p1", "adam"]})
    top: int = 8  # images per direction
    shown: int = 4  # units and random directions drawn per model
    random_directions: Optional[int] = None  # how many random directions (null = as many as units)


def hidden_features(model, weights, x, batch: int = 2000) -> np.ndarray:
    """(N, d): the last hidden layer's activations for images (N, 28, 28, 1)."""
    stop = len(model.layers) - 1
    apply = jax.jit(lambda xb: model.apply(weights, xb, stop=stop).reshape(len(xb), -1))
    return np.concatenate([np.asarray(apply(jnp.asarray(x[i:i + batch])))
                           for i in range(0, len(x), batch)])


def top_images(features: np.ndarray, directions: np.ndarray, top: int) -> np.ndarray:
    """(D, top) indices of the images with the largest <phi(x), v>, best first, per direction
    (rows of directions (D, d))."""
    scores = features @ directions.T  # (N, D)
    return np.argsort(-scores, axis=0)[:top].T


def purity(labels: np.ndarray) -> np.ndarray:
    """(D, k) labels -> (D,) share of the most common label in each row."""
    counts = np.stack([(labels == c).sum(1) for c in range(10)], 1)
    return counts.max(1) / labels.shape[1]


def pixel_similarity(images: np.ndarray) -> np.ndarray:
    """(D, k, 28, 28, 1) -> (D,) mean cosine similarity over the k(k-1)/2 pairs of each row."""
    flat = images.reshape(images.shape[0], images.shape[1], -1)
    flat = flat / (np.linalg.norm(flat, axis=2, keepdims=True) + 1e-12)
    gram = np.einsum("dip,djp->dij", flat, flat)
    k = flat.shape[1]
    return (gram.sum((1, 2)) - k) / (k * (k - 1))


def coherence(test, top: np.ndarray) -> dict:
    """Mean label purity and pixel similarity of the top images of each direction."""
    return {"label_purity": float(purity(test.y[top]).mean()),
            "pixel_similarity": float(pixel_similarity(test.x[top]).mean())}


def run(ctx: Context, params: Params) -> dict:
    rng = np.random.default_rng(ctx.cfg.seed)
    results = {}
    for key, (name, split, train) in params.models.items():
        model, weights, numbers = ctx.model(name, split, train)
        test = ctx.splits(split)["test"]
        features = hidden_features(model, weights, test.x)
        d = features.shape[1]
        units = np.eye(d)
        count = params.random_directions or d
        random = rng.standard_normal((count, d))
        random /= np.linalg.norm(random, axis=1, keepdims=True)
        top_units = top_images(features, units, params.top)
        top_random = top_images(features, random, params.top)
        chance = rng.permutation(len(test.x))[: count * params.top].reshape(-1, params.top)
        results[key] = {"model": numbers, "hidden_units": d, "random_directions": count,
                        "units": coherence(test, top_units),
                        "random_directions_top": coherence(test, top_random),
                        "random_images": coherence(test, chance)}
        results[key]["purity_units_minus_random"] = (
            results[key]["units"]["label_purity"]
            - results[key]["random_directions_top"]["label_purity"])

        shown = min(params.shown, d)
        fig, axes = grid(2 * shown, params.top, size=0.9)
        for r, (label, tops) in enumerate([(f"unit {i}", top_units[i]) for i in range(shown)] +
                                          [(f"random {i}", top_random[i]) for i in range(shown)]):
            for c, index in enumerate(tops):
                show(axes[r, c], test.x[index])
            axes[r, 0].set_ylabel(label, fontsize=7)
        u, v = results[key]["units"], results[key]["random_directions_top"]
        fig.suptitle(f"{key}: test images maximizing a unit (top) or a random direction (bottom)\n"
                     f"label purity over all: units {u['label_purity']:.2f}, random "
                     f"{v['label_purity']:.2f}", fontsize=8)
        ctx.save(fig, f"units_{key}")

    # The paper's claim is one-sided: the natural basis is no better than random directions for
    # inspecting properties of the layer. Testable form: units' top images are not purer than
    # random directions' by more than 0.1, and random directions' top images are far purer than
    # random images (they too pick out semantic properties).
    return {**results, "claim_units_no_purer_than_random_directions": {
        k: bool(r["purity_units_minus_random"] < 0.1
                and r["random_directions_top"]["label_purity"] > r["random_images"]["label_purity"] + 0.2)
        for k, r in results.items()}}
