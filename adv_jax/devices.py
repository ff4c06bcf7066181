"""Splitting a batch across every local device (GPUs, TPU cores, or fake CPU devices).

A batch is padded to a multiple of the device count and placed with a `NamedSharding` that splits
its first axis over a one-dimensional mesh named "batch"; parameters are replicated. Jitted,
vmapped per-example code (attacks, predictions) then runs on every device at once, each on its
slice, with no communication: XLA partitions the computation from its inputs' shardings. On one
device all of this is a no-op placement, so the same code serves a laptop and an 8-GPU host.

On a CPU host `use_cpu_devices` (config key `cpu_devices`, default one device per core) makes
each core a device: a one-device program leaves a core idle through its small, single-threaded
ops, while a batch or ensemble split over per-core devices keeps both busy (results/bench.md).
Test on CPU with `XLA_FLAGS=--xla_force_host_platform_device_count=4`, set before jax is imported.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"
MEMBER_AXIS = "members"
log = logging.getLogger(__name__)


def use_compilation_cache(directory: str | None) -> None:
    """Keeps compiled programs in `directory` (JAX's persistent compilation cache: keyed by the
    program, the JAX version and the device), read back by any later process; None: off."""
    if directory is not None:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))


def use_cpu_devices(count: int | str = "auto") -> int:
    """Asks JAX for `count` CPU devices ("auto": one per core this process may use) and returns
    how many it has (0 when JAX runs without its CPU backend). Only JAX's first operation fixes the
    count: called later, or with the count set by XLA_FLAGS (--xla_force_host_platform_device_count)
    or JAX_NUM_CPU_DEVICES, it changes nothing, and an explicit count that does not hold is logged."""
    if count == "auto":
        wanted = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    else:
        try:
            wanted = int(count)
        except (TypeError, ValueError):
            wanted = 0
        if wanted < 1:
            raise ValueError(f"cpu_devices must be 'auto' or a positive count, got {count!r}")
    set_elsewhere = ("XLA_FLAGS" if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
                     else "JAX_NUM_CPU_DEVICES" if "JAX_NUM_CPU_DEVICES" in os.environ else None)
    if set_elsewhere is None:
        try:
            jax.config.update("jax_num_cpu_devices", wanted)
            log.info("JAX CPU devices: %d (cpu_devices=%s)", wanted, count)
        except RuntimeError:  # JAX already started: its device count is fixed for this process
            pass
    try:
        have = len(jax.devices("cpu"))
    except RuntimeError:  # JAX_PLATFORMS without cpu
        return 0
    if count != "auto" and have != wanted:
        log.warning("cpu_devices=%s ignored: JAX runs with %d CPU devices in this process (%s)", count,
                    have, f"set by {set_elsewhere}" if set_elsewhere else "fixed by its first operation")
    return have


@functools.cache
def run_once_compiler_options() -> dict | None:
    """Compiler options for a program that runs once per process (initializers). On CPU, LLVM at
    -O2 instead of -O3 compiles a model's initializer (threefry streams) about 3x faster, drawing
    the same bits (-O1 and below do not)."""
    return {"xla_backend_optimization_level": 2} if jax.default_backend() == "cpu" else None


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


HELD_CHUNK = 1024  # rows per call of a held program


def held_program(fn: Callable, consts: Any, row_shapes: list[tuple], chunk: int = HELD_CHUNK) -> Callable:
    """fn(consts, *rows) -> one array (N, ...), on float32 row batches (N, *row_shape) of one N: compiled once, ahead of
    time, for `chunk` rows and held by the returned function, so that jax.clear_caches() (a job
    freeing its one-off programs) never makes it compile again; the last chunk is padded. Returns
    numpy arrays."""
    specs = [jax.ShapeDtypeStruct((chunk, *shape), jnp.float32) for shape in row_shapes]
    out = jax.eval_shape(fn, consts, *specs)
    program = jax.jit(fn).lower(consts, *specs).compile()

    def apply(*rows: Any) -> np.ndarray:
        n, parts = len(rows[0]), []
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            padded = (np.asarray(r[start:start + size], np.float32) for r in rows)
            # host-side padding: an eager jnp op would itself compile again after clear_caches()
            parts.append(np.asarray(program(consts, *(np.concatenate([p, np.repeat(p[-1:], chunk - size, 0)])
                                                      for p in padded)))[:size])
        return np.concatenate(parts) if parts else np.zeros((0, *out.shape[1:]), out.dtype)

    return apply


def shard_rows(*arrays: Any) -> tuple:
    """Places each array (rows first, row count a multiple of the device count) split by rows
    across the local devices. PRNG key arrays work too."""
    sharding = NamedSharding(batch_mesh(), PartitionSpec(BATCH_AXIS))
    for a in arrays:
        if len(a) % device_count():
            raise ValueError(f"{len(a)} rows do not split evenly over {device_count()} devices; "
                             "pad them first (adv_jax.devices.pad_rows / round_up)")
    return tuple(jax.device_put(a, sharding) for a in arrays)


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
    """A copy of every array of `tree` on every device of `mesh` (default: all local devices)."""
    return jax.device_put(tree, NamedSharding(mesh or batch_mesh(), PartitionSpec()))


def member_mesh(members: int) -> Mesh:
    """A 1-D mesh, axis "members", over the fewest local devices that hold `members` ensemble
    members at the fewest members per device (5 members on 4 devices: 3 devices, 2 each)."""
    local = jax.local_devices()
    per_device = -(-members // len(local))
    return Mesh(local[: -(-members // per_device)], (MEMBER_AXIS,))


def split_members(mesh: Mesh, tree: Any) -> Any:
    """Every array of `tree` (members first, their count a multiple of the mesh size) split by
    members over `mesh`'s devices."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(MEMBER_AXIS)))
