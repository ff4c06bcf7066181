"""What every attack shares: the per-example signature, success, distortion, batching.

An attack is a pure function of ONE example,

    attack(logits_fn, x, label, target, key) -> x_adv

  logits_fn: one input (*shape) -> logits (K,)         x, x_adv: (*shape), pixels in [0, 1]
  label: the true label (int32 scalar)                  target: wanted label, or -1 = untargeted
  key: a PRNG key (attacks without randomness ignore it)

with its hyperparameters bound beforehand: each attack is a frozen dataclass whose fields are the
hyperparameters and whose `__call__` is the function above, so it is hashable and can be a static
argument of `jax.jit`. An attack with something to report per example (evaluations used, the
penalty or epsilon reached) also has `with_diagnostics(logits_fn, x, label, target, key) ->
(x_adv, {name: scalar})`, and its `__call__` is that method's x_adv; `run_attack` calls either
kind. `attack_batch` vmaps it over examples against a BATCHED logits_fn, (B, *shape) -> (B, K);
an attack with its own `attack_batch` method (AutoAttack, run stage by stage) is handed the batch.
Distortion is the per-pixel RMS, sqrt(sum_i (x'_i - x_i)^2 / n).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from adv_jax import devices

LogitsFn = Callable[[jax.Array], jax.Array]
Attack = Callable[[LogitsFn, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
Diagnostics = dict[str, jax.Array]
UNTARGETED = -1


class FixedBudget:
    """Mixin for an attack with a budget `epsilon`, a
    `perturb(logits_fn, x, label, target, key, epsilon) -> x_adv` and a fixed count of gradient
    evaluations per example (`gradient_evals`): the per-example call at its own budget, and that
    call with {"evals": gradient_evals}."""

    def __call__(self, logits_fn, x, label, target, key) -> jax.Array:
        return self.perturb(logits_fn, x, label, target, key, self.epsilon)

    def with_diagnostics(self, logits_fn, x, label, target, key):
        return self(logits_fn, x, label, target, key), {"evals": jnp.int32(self.gradient_evals)}


def rms_distortion(x: jax.Array, x_adv: jax.Array) -> jax.Array:
    """Per-pixel RMS distance of one example, or of each example of a (B, ...) batch -> (B,)."""
    axes = tuple(range(1, x.ndim)) if x.ndim == 4 else None
    return jnp.sqrt(jnp.mean((x_adv - x) ** 2, axis=axes))


def is_adversarial(logits: jax.Array, label: jax.Array, target: jax.Array) -> jax.Array:
    """Reaches the target (targeted) or leaves the true label (target = -1). Batches broadcast."""
    predicted = jnp.argmax(logits, -1)
    return jnp.where(target >= 0, predicted == target, predicted != label)


def smallest_success(attempt: Callable[[jax.Array], tuple[jax.Array, jax.Array]], upper: float,
                     steps: int) -> tuple[jax.Array, jax.Array]:
    """Bisection on [0, upper] for the smallest scale whose attempt succeeds.

    attempt(scale) -> (x_adv, success). Returns the x_adv of the smallest success found, within
    upper / 2**steps of the threshold (the attempt at `upper` if nothing succeeds), and that
    scale (inf if nothing succeeds).
    """
    def bisect(_, carry):
        low, high, best = carry
        middle = 0.5 * (low + high)
        x_adv, success = attempt(middle)
        return (jnp.where(success, low, middle), jnp.where(success, middle, high),
                jnp.where(success, x_adv, best))

    x_widest, widest_succeeds = attempt(jnp.float32(upper))
    _, high, best = jax.lax.fori_loop(0, steps, bisect,
                                      (jnp.float32(0.0), jnp.float32(upper), x_widest))
    return best, jnp.where(widest_succeeds | (high < upper), high, jnp.inf)


def single_example(batch_logits_fn: LogitsFn) -> LogitsFn:
    """Turns a (B, *shape) -> (B, K) function into the per-example one attacks take; an ensemble
    (ensemble_source.Ensemble, anything with `per_example`) into the ensemble of its members'."""
    if hasattr(batch_logits_fn, "per_example"):
        return batch_logits_fn.per_example(single_example)
    return lambda x: batch_logits_fn(x[None])[0]


def run_attack(attack: Attack, logits_fn: LogitsFn, x: jax.Array, label: jax.Array,
               target: jax.Array, key: jax.Array) -> tuple[jax.Array, Diagnostics]:
    """One example's x_adv and diagnostics: `attack.with_diagnostics` where the attack has one,
    else `attack(...)` and no diagnostics."""
    if hasattr(attack, "with_diagnostics"):
        return attack.with_diagnostics(logits_fn, x, label, target, key)
    return attack(logits_fn, x, label, target, key), {}


def run_rows(attack: Attack, logits_fn: LogitsFn, x: jax.Array, label: jax.Array,
             target: jax.Array, keys: jax.Array) -> tuple[jax.Array, Diagnostics]:
    """Rows (P, ...) of examples against one example's logits_fn: the attack's own batching
    (`attack_rows`, e.g. L-BFGS's lanes) where it has one, else `run_attack` vmapped."""
    if hasattr(attack, "attack_rows"):
        return attack.attack_rows(logits_fn, x, label, target, keys)
    return jax.vmap(lambda *a: run_attack(attack, logits_fn, *a))(x, label, target, keys)


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


def split_arrays(fn: Any) -> tuple[list, Hashable]:
    """A callable's array leaves (traced arguments under jit) and the rest (a hashable static key).

    A plain function or lambda is one non-array leaf: static, whatever it closes over (constants).
    A pytree callable (`jax.tree_util.Partial`, an equinox or nnx module) passes its arrays as
    arguments, so one compilation serves every parameter set of the same shapes.
    """
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    arrays = [leaf if _is_array(leaf) else None for leaf in leaves]
    static = tuple(None if _is_array(leaf) else leaf for leaf in leaves)
    return arrays, (treedef, static)


def join_arrays(arrays: list, static: Hashable) -> Any:
    """The callable `split_arrays` took apart."""
    treedef, rest = static
    return treedef.unflatten([a if s is None else s for a, s in zip(arrays, rest)])


@functools.partial(jax.jit, static_argnums=0)
def _apply(static, arrays, x):
    return join_arrays(arrays, static)(x)


def batched_logits(logits_fn: LogitsFn, x: jax.Array, batch_size: int = 10000) -> jax.Array:
    """logits_fn (B, *shape) -> (B, K) on x (N, *shape), jitted, `batch_size` rows at a time."""
    if len(x) == 0:
        return jnp.zeros(jax.eval_shape(logits_fn, x).shape)
    arrays, static = split_arrays(logits_fn)
    return jnp.concatenate([_apply(static, arrays, x[i:i + batch_size])
                            for i in range(0, len(x), batch_size)])


def predicted_labels(logits_fn: LogitsFn, x) -> np.ndarray:
    """The argmax class (N,) of logits_fn on x (N, *shape), batched as `batched_logits`."""
    return np.asarray(jnp.argmax(batched_logits(logits_fn, jnp.asarray(x)), -1))


def held_predictor(logits_fn: LogitsFn, example_shape: tuple) -> Callable[[Any], np.ndarray]:
    """`predicted_labels` for one logits_fn as a `devices.held_program`: compiled once, its
    program surviving jax.clear_caches(); x (N, *example_shape) -> (N,) classes."""
    arrays, static = split_arrays(logits_fn)
    program = devices.held_program(lambda a, x: jnp.argmax(join_arrays(a, static)(x), -1), arrays,
                                   [example_shape])
    return program


@functools.partial(jax.jit, static_argnums=(0, 1))
def _attack_chunk(attack: Attack, static, arrays, x, label, target, keys):
    """The chunk's rows vmapped, once per device on its own rows (a shard_map): an attack's
    while_loop then stops when that device's examples are done, with no all-reduce of its
    condition across devices every trip and no wait for the other devices' slowest example."""
    def on_device(arrays, *rows):
        return run_rows(attack, single_example(join_arrays(arrays, static)), *rows)

    rows, copied = PartitionSpec(devices.BATCH_AXIS), PartitionSpec()
    # check_vma off: per-example loops mix per-row values with the replicated parameters.
    return jax.shard_map(on_device, mesh=devices.batch_mesh(), in_specs=(copied,) + (rows,) * 4,
                         out_specs=rows, check_vma=False)(arrays, x, label, target, keys)


def example_keys(key: jax.Array, n: int) -> jax.Array:
    """Example i's key (n,): key folded with i, so results do not depend on chunking."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def balanced_chunk(n: int, chunk_size: int) -> int:
    """Rows per chunk when n rows run in the fewest chunks of at most chunk_size, all of one size:
    300 rows at 250 run as 2 x 152, where 250 + 50 padded to 250 would compute 500. The size is
    rounded up to a multiple of 8 (nearby n share one compiled program) and of the device count
    (which may take it past chunk_size)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: a chunk holds at least one example")
    even = -(-n // -(-n // chunk_size))
    return devices.round_up(min(chunk_size, -(-even // 8) * 8))


def _batch_inputs(logits_fn: LogitsFn, x, y, target, key: jax.Array, chunk_size: int, keys=None):
    """(chunk size rounded for the devices, logits_fn's static part, its replicated arrays, the
    per-example inputs (x, y, target, keys)) that attack_batch feeds `_attack_chunk`."""
    chunk_size = balanced_chunk(len(x), chunk_size)
    arrays, static = split_arrays(logits_fn)
    if keys is None:
        keys = example_keys(key, len(x))
    rows = (x, jnp.asarray(y, jnp.int32), jnp.asarray(target, jnp.int32), keys)
    return chunk_size, static, devices.replicate(arrays), rows


def _chunk(rows: tuple, start: int, chunk_size: int) -> tuple:
    """Rows start..start+chunk_size of each input, the last chunk padded, split across devices."""
    return devices.shard_rows(*(devices.pad_rows(a[start:start + chunk_size], chunk_size) for a in rows))


def attack_batch(attack: Attack, logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                 target: jax.Array, *, key: jax.Array, chunk_size: int, progress: bool = True,
                 example_keys: jax.Array | None = None) -> tuple[jax.Array, dict[str, np.ndarray]]:
    """Runs `attack` against the batched `logits_fn` ((B, *shape) -> (B, K)) on every example:
    x (N, *shape) in [0, 1], true labels y and targets (N,) (-1: untargeted) -> x_adv (N, *shape)
    and the attack's diagnostics {name: (N,)} (empty if it reports none).

    Vmapped and jitted in the fewest chunks of at most `chunk_size`, all of one size
    (`balanced_chunk`, the last one padded), so the loop compiles once per attack, input shape,
    chunk size and logits_fn structure (`split_arrays`). Each chunk is split
    across all local devices (`adv_jax.devices`) with logits_fn's arrays replicated. Each example's key is folded in from its index (or given,
    example_keys (N,)), so results do not depend on chunking. `progress` shows a progress bar in
    examples. An attack with its own `attack_batch` (AutoAttack: stage by stage) runs that.
    """
    n = len(x)
    if n == 0:
        return x, {}
    if hasattr(attack, "attack_batch"):
        return attack.attack_batch(logits_fn, x, y, target, key=key, chunk_size=chunk_size, progress=progress,
                                   example_keys=example_keys)
    chunk_size, static, arrays, rows = _batch_inputs(logits_fn, x, y, target, key, chunk_size, example_keys)
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc=type(attack).__name__, unit="ex", leave=False, disable=not progress)
    parts = []
    for i in range(0, n, chunk_size):
        done = jax.block_until_ready(_attack_chunk(attack, static, arrays, *_chunk(rows, i, chunk_size)))
        parts.append(jax.tree_util.tree_map(lambda a, size=min(chunk_size, n - i): a[:size], done))
        bar.update(min(chunk_size, n - i))
    bar.close()
    x_adv = jnp.concatenate([p[0] for p in parts])
    diagnostics = {k: np.concatenate([np.asarray(p[1][k]) for p in parts]) for k in parts[0][1]}
    return x_adv, diagnostics


def compile_attack_batch(attack: Attack, logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                         target: jax.Array, *, key: jax.Array, chunk_size: int) -> None:
    """Compiles what `attack_batch` with the same arguments runs, without running it (every chunk
    has the first one's shape): a benchmark's warm-up that costs the compilation alone, where a
    warm-up call would cost a slow attack's whole run again."""
    if len(x) and not hasattr(attack, "attack_batch"):  # a staged attack compiles stage by stage as it runs
        chunk_size, static, arrays, rows = _batch_inputs(logits_fn, x, y, target, key, chunk_size)
        _attack_chunk.lower(attack, static, arrays, *_chunk(rows, 0, chunk_size)).compile()
