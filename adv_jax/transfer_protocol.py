"""The fair transfer protocol's measurements (TA-Bench; Zhao et al., "Revisiting transferable
adversarial images"): adversarials rounded to 8-bit pixels before any victim sees them, success
over all images and over the images every model classifies correctly, 95% bootstrap intervals
over images, and the imperceptibility of each set (L2, L-inf, SSIM).

Images are (N, 28, 28, 1) float32 in [0, 1]; rates are percentages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import binom

from adv_jax import devices

SSIM_WINDOW = 7  # scikit-image's default: a 7x7 uniform window, sample covariances
SSIM_K = (0.01, 0.03)  # Wang et al. 2004's constants, data range 1


def to_8bit(x: np.ndarray) -> np.ndarray:
    """x rounded to the nearest of the 256 levels an 8-bit image file holds (still in [0, 1])."""
    return (np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def bootstrap_interval(hits: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval (percent) of the success rate of `hits` (N,) bool.
    Resampling N images with replacement, k of them hits, draws Binomial(N, k / N) hits; so the
    interval is that binomial's quantiles, exactly, with no resampling noise. N = 0: (nan, nan)."""
    n = len(hits)
    if n == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    low, high = binom.ppf([tail, 1.0 - tail], n, float(np.mean(hits)))
    return 100.0 * float(low) / n, 100.0 * float(high) / n


def rate(hits: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """{rate, low, high (percent), n} of `hits` (N,) bool."""
    low, high = bootstrap_interval(hits, confidence)
    return {"rate": 100.0 * float(np.mean(hits)) if len(hits) else float("nan"), "low": low,
            "high": high, "n": int(len(hits))}


def fooled(predictions: np.ndarray, y: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N,) bool: the victim's class is not y (untargeted, target -1) or is the target."""
    return np.where(target >= 0, predictions == target, predictions != y)


@jax.jit
def ssim(x: jax.Array, x_adv: jax.Array) -> jax.Array:
    """Mean structural similarity per image (N,) of two (N, H, W, 1) batches in [0, 1], as
    scikit-image's `structural_similarity(data_range=1)` computes it: 7x7 uniform windows where
    they fit whole, sample (co)variances."""
    size = SSIM_WINDOW * SSIM_WINDOW

    def window_sums(a, axis):
        # lag differences of a cumulative sum: on CPU a one-channel 7x7 convolution is far slower
        c, n = jnp.cumsum(a, axis=axis), a.shape[axis]
        part = functools.partial(jax.lax.slice_in_dim, c, axis=axis)
        return jnp.concatenate([part(SSIM_WINDOW - 1, SSIM_WINDOW), part(SSIM_WINDOW, n) - part(0, n - SSIM_WINDOW)], axis)

    def mean(a):
        return window_sums(window_sums(a, 1), 2) / size

    mx, my = mean(x), mean(x_adv)
    unbiased = size / (size - 1.0)
    vx = unbiased * (mean(x * x) - mx * mx)
    vy = unbiased * (mean(x_adv * x_adv) - my * my)
    cov = unbiased * (mean(x * x_adv) - mx * my)
    c1, c2 = SSIM_K[0] ** 2, SSIM_K[1] ** 2
    s = (2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(1, 2, 3))


def held_ssim(image_shape: tuple = (28, 28, 1)) -> Callable:
    """`ssim` as a devices.held_program: compiled once, surviving jax.clear_caches()."""
    return devices.held_program(lambda _, x, x_adv: ssim(x, x_adv), (), [image_shape, image_shape])


def imperceptibility(x: np.ndarray, x_adv: np.ndarray, ssims: np.ndarray | None = None) -> dict[str, float]:
    """Mean L2 (whole image), mean L-inf and mean SSIM of the perturbations x_adv - x; `ssims`:
    the images' SSIM (N,) when already computed."""
    delta = (x_adv - x).reshape(len(x), -1)
    return {"l2": float(np.mean(np.linalg.norm(delta, axis=1))),
            "linf": float(np.mean(np.max(np.abs(delta), axis=1))),
            "ssim": float(np.mean(ssim(jnp.asarray(x), jnp.asarray(x_adv)) if ssims is None else ssims))}


def every_model_correct(clean_predictions: dict[str, np.ndarray], y: np.ndarray) -> np.ndarray:
    """(N,) bool: the images every model classifies correctly when clean (TA-Bench's filter)."""
    return np.all([p == y for p in clean_predictions.values()], axis=0)


def matched_steps(evals: float, steps: int, budget: int) -> int:
    """Iterations an attack gets under a budget of `budget` gradient evaluations per image, when
    `steps` iterations cost it `evals`: at least one."""
    return max(1, int(budget // (evals / steps)))
