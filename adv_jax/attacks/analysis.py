"""Why adversarial examples transfer (Tramer et al. 2017; Demontis et al. 2019): gradient
alignment between two models and distances to a model's decision boundary along directions.

All per example, vmapped, against BATCHED logits_fns (B, *shape) -> (B, K); pixels in [0, 1];
distances are Euclidean norms of the whole perturbation (per-pixel RMS = distance / 28 on
MNIST).

  input_gradients(logits_fn, x, y)              grad_x CE(f(x), y) per example  (N, *shape)
  gradient_cosine(fn_a, fn_b, x, y)             cosine of the two models' input gradients (N,)
  boundary_distance(logits_fn, x, directions)   the smallest t >= 0 at which f's prediction at
      x + t u (u = direction / |direction|_2; not clipped to [0, 1]) differs from its prediction
      at x: a grid of `grid` points on (0, max_distance], then `refine` bisections of the first
      bracket. inf where the prediction does not change up to max_distance.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from adv_jax.attacks.common import LogitsFn, join_arrays, single_example, split_arrays
from adv_jax.attacks.gradient import cross_entropy

__all__ = ["boundary_distance", "gradient_cosine", "input_gradients", "random_directions"]

TINY = 1e-12


@functools.partial(jax.jit, static_argnums=0)
def _gradients(static, arrays, x, y):
    one = single_example(join_arrays(arrays, static))
    return jax.vmap(jax.grad(lambda image, label: cross_entropy(one(image), label)))(x, y)


def input_gradients(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
    """grad_x CE(f(x), y) for x (N, *shape), labels y (N,) -> (N, *shape)."""
    arrays, static = split_arrays(logits_fn)
    return _gradients(static, arrays, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32))


def gradient_cosine(fn_a: LogitsFn, fn_b: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
    """Cosine similarity (N,) of the two models' loss gradients at the true labels; 0 where a
    gradient vanishes."""
    a = input_gradients(fn_a, x, y).reshape(len(x), -1)
    b = input_gradients(fn_b, x, y).reshape(len(x), -1)
    norms = jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1)
    return jnp.sum(a * b, axis=1) / jnp.maximum(norms, TINY)


def _distance_one(one: LogitsFn, x, direction, max_distance, grid: int, refine: int):
    unit = direction / (jnp.sqrt(jnp.sum(direction ** 2)) + TINY)
    start = jnp.argmax(one(x))
    changed = lambda t: jnp.argmax(one(x + t * unit)) != start  # noqa: E731
    ts = max_distance * jnp.arange(1, grid + 1, dtype=jnp.float32) / grid
    hits = jax.vmap(changed)(ts)
    first = jnp.argmax(hits)
    low, high = jnp.where(first > 0, ts[first - 1], 0.0), ts[first]

    def bisect(_, bracket):
        lo, hi = bracket
        middle = 0.5 * (lo + hi)
        hit = changed(middle)
        return jnp.where(hit, lo, middle), jnp.where(hit, middle, hi)

    _, high = jax.lax.fori_loop(0, refine, bisect, (low, high))
    return jnp.where(jnp.any(hits), high, jnp.inf)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _distances(static, arrays, x, directions, grid, refine, max_distance):
    one = single_example(join_arrays(arrays, static))
    run = lambda xi, di: _distance_one(one, xi, di, max_distance, grid, refine)  # noqa: E731
    return jax.vmap(run)(x, directions)


def boundary_distance(logits_fn: LogitsFn, x: jax.Array, directions: jax.Array, *,
                      max_distance: float = 20.0, grid: int = 64, refine: int = 20) -> jax.Array:
    """Distance (N,) from each x (N, *shape) to logits_fn's decision boundary along directions
    (N, *shape) (module docstring); resolution max_distance / grid / 2**refine."""
    arrays, static = split_arrays(logits_fn)
    return _distances(static, arrays, jnp.asarray(x, jnp.float32),
                      jnp.asarray(directions, jnp.float32), grid, refine, jnp.float32(max_distance))


def random_directions(key: jax.Array, shape: tuple[int, ...], count: int) -> jax.Array:
    """`count` standard Gaussian directions of each example's shape: (count, *shape)."""
    return jax.random.normal(key, (count, *shape), jnp.float32)
