"""What every attack shares: the per-example signature, success, distortion, batching.

An attack is a pure function of ONE example,

    attack(logits_fn, x, label, target, key) -> x_adv

  logits_fn: one image (28, 28, 1) -> logits (K,)      x, x_adv: (28, 28, 1) in [0, 1]
  label: the true label (int32 scalar)                  target: wanted label, or -1 = untargeted
  key: a PRNG key (attacks without randomness ignore it)

with its hyperparameters bound beforehand: each attack is a frozen dataclass whose fields are the
hyperparameters and whose `__call__` is the function above, so it is hashable and can be a static
argument of `jax.jit`. `attack_batch` vmaps it over examples. Distortion is the per-pixel RMS, sqrt(sum_i (x'_i - x_i)^2 / n).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from adv_jax import devices

LogitsFn = Callable[[jax.Array], jax.Array]
Attack = Callable[[LogitsFn, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
UNTARGETED = -1


def rms_distortion(x: jax.Array, x_adv: jax.Array) -> jax.Array:
    """Per-pixel RMS distance of one example, or of each example of a (B, ...) batch -> (B,)."""
    axes = tuple(range(1, x.ndim)) if x.ndim == 4 else None
    return jnp.sqrt(jnp.mean((x_adv - x) ** 2, axis=axes))


def is_adversarial(logits: jax.Array, label: jax.Array, target: jax.Array) -> jax.Array:
    """Reaches the target (targeted) or leaves the true label (target = -1). Batches broadcast."""
    predicted = jnp.argmax(logits, -1)
    return jnp.where(target >= 0, predicted == target, predicted != label)


def smallest_success(attempt: Callable[[jax.Array], tuple[jax.Array, jax.Array]], upper: float,
                     steps: int) -> jax.Array:
    """Bisection on [0, upper] for the smallest scale whose attempt succeeds.

    attempt(scale) -> (x_adv, success). Returns the x_adv of the smallest success found, within
    upper / 2**steps of the threshold; the attempt at `upper` if nothing succeeds.
    """
    def bisect(_, carry):
        low, high, best = carry
        middle = 0.5 * (low + high)
        x_adv, success = attempt(middle)
        return (jnp.where(success, low, middle), jnp.where(success, middle, high),
                jnp.where(success, x_adv, best))

    x_widest, _ = attempt(jnp.float32(upper))
    return jax.lax.fori_loop(0, steps, bisect, (jnp.float32(0.0), jnp.float32(upper), x_widest))[2]


def single_example(batch_logits_fn: LogitsFn) -> LogitsFn:
    """Turns a (B, 28, 28, 1) -> (B, K) function into the per-example one attacks take."""
    return lambda x: batch_logits_fn(x[None])[0]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _attack_chunk(attack: Attack, model, params, x, label, target, keys):
    logits_fn = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    return jax.vmap(attack, in_axes=(None, 0, 0, 0, 0))(logits_fn, x, label, target, keys)


def attack_batch(attack: Attack, model, params, x: jax.Array, label: jax.Array,
                 target: jax.Array, key: jax.Array, chunk_size: int = 10000,
                 progress: bool = False) -> jax.Array:
    """Runs `attack` against `model.apply(params, .)` on every example, vmapped and jitted, in
    chunks of `chunk_size`: x (N, 28, 28, 1), label and target (N,) -> x_adv (N, 28, 28, 1).

    Each example gets its own key, folded in from its index, so results do not depend on chunking.
    Params are traced arguments (not constants), so one compilation serves every model of a shape.
    Each chunk is split across all local devices (`adv_jax.devices`; chunk_size is rounded up to
    a multiple of the device count) with the params replicated. `progress` shows a progress bar.
    """
    n = len(x)
    if n == 0:
        return x
    chunk_size = devices.round_up(min(chunk_size, n))
    params = devices.replicate(params)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    label, target = jnp.asarray(label, jnp.int32), jnp.asarray(target, jnp.int32)
    starts = range(0, n, chunk_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=type(attack).__name__, unit="chunk", leave=False)
    parts = []
    for i in starts:
        stop = min(i + chunk_size, n)
        chunk = devices.shard_rows(*(devices.pad_rows(a[i:stop], chunk_size)
                                     for a in (x, label, target, keys)))
        parts.append(jax.block_until_ready(_attack_chunk(attack, model, params, *chunk))[: stop - i])
    return jnp.concatenate(parts)
