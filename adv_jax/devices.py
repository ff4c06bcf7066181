"""Splitting a batch across every local device (GPUs, TPU cores, or fake CPU devices).

A batch is padded to a multiple of the device count and placed with a `NamedSharding` that splits
its first axis over a one-dimensional mesh named "batch"; parameters are replicated. Jitted,
vmapped per-example code (attacks, predictions) then runs on every device at once, each on its
slice, with no communication: XLA partitions the computation from its inputs' shardings. On one
device all of this is a no-op placement, so the same code serves a laptop and an 8-GPU host.

Test on CPU with `XLA_FLAGS=--xla_force_host_platform_device_count=4`, set before jax is imported.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


@functools.cache
def batch_mesh() -> Mesh:
    """A 1-D mesh over all local devices, its axis named "batch"."""
    return Mesh(jax.local_devices(), (BATCH_AXIS,))


def device_count() -> int:
    return batch_mesh().size


def round_up(n: int) -> int:
    """The smallest multiple of the device count that is >= n (and >= one per device)."""
    d = device_count()
    return max(d, -(-n // d) * d)


def pad_rows(array: jax.Array, size: int) -> jax.Array:
    """Repeats the last row up to `size` rows, so every chunk has one shape (one compilation) and
    every device gets the same number of rows. Padded rows are real examples: no NaNs appear."""
    missing = size - len(array)
    return array if missing == 0 else jnp.concatenate([array, jnp.repeat(array[-1:], missing, 0)])


def shard_rows(*arrays: Any) -> tuple:
    """Places each array (rows first, row count a multiple of the device count) split by rows
    across the local devices. PRNG key arrays work too."""
    sharding = NamedSharding(batch_mesh(), PartitionSpec(BATCH_AXIS))
    for a in arrays:
        if len(a) % device_count():
            raise ValueError(f"{len(a)} rows do not split evenly over {device_count()} devices; "
                             "pad them first (adv_jax.devices.pad_rows / round_up)")
    return tuple(jax.device_put(a, sharding) for a in arrays)


def replicate(tree: Any) -> Any:
    """A copy of every array of `tree` on every local device (model parameters)."""
    return jax.device_put(tree, NamedSharding(batch_mesh(), PartitionSpec()))
