"""Transfer-enhancing iterative attacks: MI-FGSM, DI-FGSM, TI-FGSM and their combination, as ONE
iterative loop whose hyperparameters switch each ingredient on.

Per iteration t = 0 .. steps-1, from x_0 = x (no random start), with J the attack objective of
gradient.py (CE on the label, or -CE on the target):

  g_hat   = grad_x J(T(x_t))                  DI (Xie et al. 2019): with probability
            `diversity_probability` (per iteration, from the key), T resizes the 28x28 image to
            r x r, r uniform in [28, resize_max), pads it at a random offset to
            resize_max x resize_max, and resizes that back to 28x28 (bilinear, differentiable);
            else T is the identity
  g_hat   = W * g_hat                          TI (Dong et al. 2019): a Gaussian kernel W of
            `kernel_size` x `kernel_size` pixels and std `kernel_sigma` pixels (1x1: identity)
  g_{t+1} = momentum g_t + g_hat / |g_hat|_1   MI (Dong et al. 2018); momentum 0: plain gradient
  x_{t+1} = Proj(x_t + alpha d(g_{t+1}))       d = sign (linf) or g / |g|_2 (l2);
            alpha = relative_step_size * epsilon; Proj onto the epsilon ball and [0, 1]

With momentum 0, diversity_probability 0 and kernel_size 1 this is iterative FGSM: PGD without a
random start and with step relative_step_size * epsilon. Units: pixels in [0, 1]; epsilon is the
largest per-pixel change (linf) or the Euclidean norm of the whole perturbation (l2; per-pixel
RMS = epsilon / 28). The loop is a `lax.fori_loop`; iteration t uses fold_in(key, t).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.attacks.common import FixedBudget, LogitsFn
from adv_jax.attacks.gradient import NORMS, attack_objective, project

__all__ = ["PRESETS", "MomentumIterative", "diverse_input", "gaussian_kernel", "preset",
           "smooth_gradient"]

TINY = 1e-12  # keeps a zero gradient's normalization finite


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """A (size, size) Gaussian of std `sigma` pixels, summing to 1; size 1 -> [[1.0]]."""
    offsets = np.arange(size) - (size - 1) / 2
    one_d = np.exp(-0.5 * (offsets / max(sigma, 1e-6)) ** 2)
    kernel = np.outer(one_d, one_d)
    return (kernel / kernel.sum()).astype(np.float32)


def smooth_gradient(grad: jax.Array, kernel: np.ndarray) -> jax.Array:
    """grad (H, W, C) convolved per channel with kernel (k, k), zero padding, same size."""
    if kernel.shape == (1, 1):
        return grad * kernel[0, 0]
    conv = lambda channel: jax.scipy.signal.convolve2d(channel, kernel, mode="same")  # noqa: E731
    return jnp.moveaxis(jax.vmap(conv, in_axes=-1)(grad), 0, -1)


def diverse_input(x: jax.Array, key: jax.Array, probability: float, resize_max: int) -> jax.Array:
    """DI's random resize-and-pad of x (H, W, C), applied with `probability`, else x itself.

    Resize to r x r (r uniform integer in [H, resize_max)), place at a uniform offset inside a
    zero resize_max x resize_max canvas, resize back to H x W. Differentiable in x."""
    height, width, channels = x.shape
    size_key, offset_key, apply_key = jax.random.split(key, 3)
    size = jax.random.randint(size_key, (), height, max(resize_max, height + 1))
    offset = jax.random.randint(offset_key, (2,), 0, resize_max - size + 1).astype(jnp.float32)
    scale = jnp.full((2,), size / height, jnp.float32)
    canvas = jax.image.scale_and_translate(x, (resize_max, resize_max, channels), (0, 1), scale,
                                           offset, method="linear", antialias=False)
    transformed = jax.image.resize(canvas, x.shape, method="linear")
    return jnp.where(jax.random.uniform(apply_key) < probability, transformed, x)


def _l2_norm(v: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(v ** 2))


@dataclasses.dataclass(frozen=True)
class MomentumIterative(FixedBudget):
    """MI / DI / TI / MI-DI-TI FGSM (module docstring); L-inf or L2, targeted or untargeted."""

    epsilon: float = 0.1  # ball radius: per-pixel (linf) or whole-image Euclidean (l2)
    norm: str = "linf"  # linf | l2
    steps: int = 10  # Dong et al. 2018: T = 10
    relative_step_size: float = 0.1  # alpha = epsilon / T (Dong et al. 2018)
    momentum: float = 0.0  # mu; MI-FGSM: 1.0
    diversity_probability: float = 0.0  # p; DI-FGSM: 0.5
    resize_max: int = 32  # DI: r in [28, resize_max), canvas resize_max x resize_max
    kernel_size: int = 1  # TI: Gaussian kernel width in pixels (1 = off)
    kernel_sigma: float = 1.0  # TI: its std in pixels

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {list(NORMS)}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}")

    @property
    def gradient_evals(self) -> int:
        """Forward and backward passes of one `perturb` (one gradient per step)."""
        return self.steps

    def gradient(self, logits_fn: LogitsFn, x_adv, label, target, key) -> jax.Array:
        """The DI- and TI-transformed gradient of the objective at x_adv (same shape)."""
        def objective(image):
            if self.diversity_probability > 0:  # static: no transform is traced when DI is off
                image = diverse_input(image, key, self.diversity_probability, self.resize_max)
            return attack_objective(logits_fn, image, label, target)

        kernel = gaussian_kernel(self.kernel_size, self.kernel_sigma)
        return smooth_gradient(jax.grad(objective)(x_adv), kernel)

    def perturb(self, logits_fn: LogitsFn, x, label, target, key, epsilon) -> jax.Array:
        """The attack at a given (possibly traced) epsilon; x (28, 28, 1) -> x_adv."""
        step_size = self.relative_step_size * epsilon

        def step(t, carry):
            x_adv, velocity = carry
            grad = self.gradient(logits_fn, x_adv, label, target, jax.random.fold_in(key, t))
            velocity = self.momentum * velocity + grad / (jnp.sum(jnp.abs(grad)) + TINY)
            if self.norm == "linf":
                direction = jnp.sign(velocity)
            else:
                direction = velocity / (_l2_norm(velocity) + TINY)
            return project(x_adv + step_size * direction, x, epsilon, self.norm), velocity

        x_adv, _ = jax.lax.fori_loop(0, self.steps, step, (x, jnp.zeros_like(x)))
        return x_adv


# Literature values (not tuned here): MI mu = 1.0, T = 10, alpha = eps / T (Dong et al. 2018);
# DI p = 0.5, resize by up to 4/28 = 14% (Xie et al. 2019: 299 -> [299, 330), 10%); TI kernel
# 7x7, sigma = (7 - 1) / 6 = 1 px (Dong et al. 2019's kernel rule, radius 3 sigma, scaled from
# 15x15 at 299 px to MNIST's 28 px: smaller kernels for smaller images).
PRESETS = {
    "mi_fgsm": {"momentum": 1.0},
    "di_fgsm": {"diversity_probability": 0.5},
    "ti_fgsm": {"kernel_size": 7, "kernel_sigma": 1.0},
    "mi_di_ti": {"momentum": 1.0, "diversity_probability": 0.5, "kernel_size": 7, "kernel_sigma": 1.0},
}


def preset(name: str):
    """The ATTACKS builder of a preset: MomentumIterative with the preset's values as defaults,
    any of them (and every other field) overridable by attack.params."""
    return functools.partial(MomentumIterative, **PRESETS[name])
