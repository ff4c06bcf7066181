"""Many models of one architecture trained as ONE jitted, vmapped program.

Members share the layer structure, the training config and the training-set size; they differ in
seed, weight decay and training split. The decay coefficients are data (a (K, L) array, L =
weighted layers), each member indexes a stack of the distinct training sets, and every member keeps
its own key, minibatch order, optimizer state and (L-BFGS) stopping test. So member k ends where
`train.train_model` ends for it alone, up to floating-point reassociation (XLA fuses the batched
program differently; tests/test_ensemble.py bounds the difference).

Why: K compilations become one, and the members run side by side. They are split evenly over the
local devices (`devices.member_mesh`, a `shard_map` with no communication): GPUs, TPU cores, or on
a CPU host one device per core (config `cpu_devices`). Within a device `vmap_size` sets how many
members each step batches: `lax.map(member_epoch, members, batch_size=vmap_size)`, groups of
vmap_size members vmapped, the groups one after another in the same program. All of a device's
members at once (the default on accelerators) is what an MNIST MLP, which leaves a GPU mostly
idle, needs. On a CPU a batched matmul of 8 members runs no faster than 8 single ones
(results/bench.md), so there the default is 1, and the gain comes from the per-core devices: one
FC100 step leaves a core idle through its small single-threaded ops, two devices keep both busy.

  init_members(model, keys)    stacked initial params (as train_model draws them) and fit keys
  vmap_models(model, lambdas, train_cfg, xs, ys, data_index, keys)  stacked params, losses, steps
  train_models(models, train_cfg, datasets, keys)      [(params, metrics)], like train_model per member
adv_jax/trained.py groups run configs into such ensembles (`trained.train_or_load_all`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec
from tqdm.auto import tqdm

from adv_jax import devices
from adv_jax.data import Dataset
from adv_jax.models import Model, Params
from adv_jax.train import (
    EpochPlan,
    TrainingDiverged,
    TrainState,
    check_finite,
    lbfgs_chunk,
    lbfgs_stops,
    make_epoch,
    make_loss,
    make_optimizer,
    make_train_step,
)

log = logging.getLogger(__name__)


def default_vmap_size(members: int) -> int:
    """Members batched per step when not given, of a device's `members`: 1 on CPU, all of them on
    an accelerator."""
    return 1 if jax.default_backend() == "cpu" else members


def architecture(model: Model) -> Model:
    """The model with every decay coefficient set to 0: what ensemble members must share."""
    return Model(tuple(dataclasses.replace(layer, weight_decay=0.0) for layer in model.layers),
                 model.input_shape)


def decay_lambdas(model: Model) -> np.ndarray:
    """The model's decay coefficients, one per weighted layer: (L,) float32."""
    return np.array([layer.weight_decay for layer in model.layers if layer.has_weights], np.float32)


def init_members(model: Model, keys: jax.Array) -> tuple[Params, jax.Array]:
    """Each member's `train.train_model` initialization for its key, bit for bit, stacked: params
    with leaves (K, ...), and the members' fit keys (K,)."""
    # The same key use as train.train_model: init, (autoencoder), fit.
    init_keys, _, fit_keys = jnp.moveaxis(jax.vmap(lambda key: jax.random.split(key, 3))(keys), 1, 0)
    return jax.jit(jax.vmap(model.init), compiler_options=devices.run_once_compiler_options())(init_keys), fit_keys


def check_members(losses: np.ndarray, epoch: int, first: np.ndarray) -> None:
    """losses: (K, steps), first: (K,) each member's first loss. Names the member that diverged."""
    for k, member in enumerate(losses):
        try:
            check_finite(member, epoch, first[k])
        except TrainingDiverged as e:
            raise TrainingDiverged(f"ensemble member {k}: {e}") from None


def _over_members(mesh: Mesh, members: int, replicated: int):
    """Decorator: the function runs once per device of `mesh` on that device's members, its first
    `members` arguments split along the member axis, the next `replicated` copied to every device,
    every output split along the member axis."""
    split, copied = PartitionSpec(devices.MEMBER_AXIS), PartitionSpec()
    # check_vma off: optax's line search mixes per-member and shared values in its branches, which
    # the varying-axis check rejects; no value ever crosses devices here (no collectives).
    return functools.partial(jax.shard_map, mesh=mesh, in_specs=(split,) * members + (copied,) * replicated,
                             out_specs=split, check_vma=False)


def fit_members_minibatch(loss, params, lambdas, xs, ys, data_index, keys, *, optimizer, epochs: int,
                          batch_size: int, vmap_size: int, mesh: Mesh, members: int,
                          on_epoch=None) -> tuple[Any, np.ndarray, int]:
    """`train.fit`'s minibatch path for K members in one program: the one train step and epoch of
    adv_jax/train.py, mapped over members. params: leaves (K, ...); lambdas (K, L);
    xs (D, N, 28, 28, 1), ys (D, N): the distinct training sets; data_index (K,): member k trains
    on xs[data_index[k]]; keys (K,); vmap_size: members batched per step; mesh: the devices the
    members are split over (K a multiple of its size); members: how many of the K are real, the
    rest padding. Returns params (all K), the real members' (members, epochs) mean losses, and
    steps per member."""
    plan = EpochPlan.for_data(xs.shape[1], batch_size)
    member_epoch = make_epoch(make_train_step(loss, optimizer), plan)

    # The data are arguments, not constants (see train.fit).
    @functools.partial(jax.jit, donate_argnums=0)
    @_over_members(mesh, members=3, replicated=2)
    def epoch(state, epoch_keys, data_index, xs, ys):
        return jax.lax.map(lambda m: member_epoch(m[0], m[1], xs[m[2]], ys[m[2]]),
                           (state, epoch_keys, data_index), batch_size=min(vmap_size, len(data_index)))

    fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
    state = TrainState(params, jax.jit(jax.vmap(optimizer.init))(params), decay=lambdas)
    state, keys, data_index = devices.split_members(mesh, (state, keys, data_index))
    xs, ys = devices.replicate((xs, ys), mesh)
    history, first = [], None
    for i in (bar := tqdm(range(epochs), desc=f"train x{members}", unit="epoch", leave=False)):
        state, losses = epoch(state, fold(keys, i), data_index, xs, ys)
        losses = np.asarray(losses)[:members]
        first = losses[:, 0] if first is None else first
        check_members(losses, i, first)
        history.append(losses.mean(1))
        bar.set_postfix(loss=f"{history[-1].mean():.4f}")
        if on_epoch:
            on_epoch(i, history[-1])
    return state.params, np.array(history).reshape(epochs, -1).T, epochs * plan.steps


def fit_members_lbfgs(loss, params, lambdas, xs, ys, data_index, cfg, mesh: Mesh, members: int,
                      on_epoch=None) -> tuple[Any, list[list[float]], np.ndarray]:
    """`train.minimize_lbfgs` for K members at once, split over `mesh`'s devices: the one L-BFGS chunk
    of adv_jax/train.py vmapped, so each member stops at its own tolerance (a vmapped while_loop
    leaves a finished member unchanged while the others go on). `members` of the K are real, the
    rest padding, which neither stops nor reports anything. Returns params (all K), each real
    member's loss after each chunk until it converged, and its iteration count (members,)."""
    optimizer, tolerance = optax.lbfgs(), cfg.lbfgs_tolerance

    def member_chunk(carry, stop, lambdas, x, y):
        objective = lambda p: loss(p, lambdas, (), (x, y), None)  # noqa: E731
        return lbfgs_chunk(objective, optimizer, tolerance)(carry, stop)

    @jax.jit
    @_over_members(mesh, members=3, replicated=3)
    def run_chunk(carry, lambdas, data_index, stop, xs, ys):
        if xs.shape[0] == 1:  # one shared set: broadcast it, no per-member copy
            return jax.vmap(member_chunk, in_axes=(0, None, 0, None, None))(
                carry, stop, lambdas, xs[0], ys[0])
        # full batch: each member needs its whole set; gathered once per chunk
        return jax.vmap(member_chunk, in_axes=(0, None, 0, 0, 0))(
            carry, stop, lambdas, xs[data_index], ys[data_index])

    carry = (params, jax.jit(jax.vmap(optimizer.init))(params))
    carry, lambdas, data_index = devices.split_members(mesh, (carry, lambdas, data_index))
    xs, ys = devices.replicate((xs, ys), mesh)
    history: list[list[float]] = [[] for _ in range(members)]
    done = np.zeros(members, bool)
    with tqdm(total=cfg.lbfgs_steps, desc=f"lbfgs x{members}", unit="it", leave=False) as bar:
        for i, stop in enumerate(lbfgs_stops(cfg.lbfgs_steps)):
            carry, value, grad_norm, count = run_chunk(carry, lambdas, data_index, jnp.int32(stop), xs, ys)
            value, grad_norm, count = (np.asarray(a)[:members] for a in (value, grad_norm, count))
            check_members(value[:, None], i, np.array([h[0] if h else v for h, v in zip(history, value)]))
            for m in np.flatnonzero(~done):
                history[m].append(float(value[m]))
            done |= grad_norm < tolerance
            bar.update(int(count.max()) - bar.n)
            bar.set_postfix(loss=f"{value.mean():.4f}", done=f"{done.sum()}/{members}")
            if on_epoch:
                on_epoch(i, value)
            if done.all():
                break
    return carry[0], history, count


def vmap_models(model: Model, lambdas, train_cfg, xs, ys, data_index, keys,
                on_epoch=None, vmap_size: int | None = None) -> tuple[Params, list[list[float]], np.ndarray]:
    """Trains K members of `model`'s architecture as one program, split over the local devices,
    each member from `train_model`'s initialization for its key.

    lambdas: (K, L) decay coefficients; xs (D, N, 28, 28, 1), ys (D, N): the distinct training
    sets; data_index (K,) ints in [0, D); keys (K,) PRNG keys; vmap_size: members batched per
    minibatch step on a device (None: `default_vmap_size`; L-BFGS vmaps all of a device's).
    Returns params whose leaves are stacked (K, ...), each member's loss history, and each
    member's optimizer steps (K,).
    """
    arch = architecture(model)
    lambdas = jnp.asarray(lambdas, jnp.float32)
    data_index = jnp.asarray(data_index, jnp.int32)
    if lambdas.ndim != 2 or lambdas.shape[1] != len(decay_lambdas(model)):
        raise ValueError(f"lambdas must be (members, {len(decay_lambdas(model))} weighted layers), "
                         f"got shape {lambdas.shape}")
    k = len(lambdas)
    if len(keys) != k or len(data_index) != k:
        raise ValueError(f"{k} members' lambdas but {len(keys)} keys and {len(data_index)} data indices")
    # Members are split evenly over the devices; padding repeats the last member, dropped at the end.
    mesh = devices.member_mesh(k)
    padded = mesh.size * -(-k // mesh.size)
    lambdas, data_index, keys = (devices.pad_rows(a, padded) for a in (lambdas, data_index, keys))
    params, fit_keys = init_members(arch, keys)

    loss = make_loss(arch, train_cfg)

    # Dropping the padding, and back to uncommitted arrays: like train_model's, these params may
    # then meet arrays placed on any devices.
    unpad = lambda tree: jax.tree.map(lambda a: jnp.asarray(np.asarray(a[:k])), tree)  # noqa: E731
    if train_cfg.optimizer == "lbfgs":
        params, history, steps = fit_members_lbfgs(loss, params, lambdas, xs, ys, data_index,
                                                   train_cfg, mesh, k, on_epoch=on_epoch)
        return unpad(params), history, steps
    n = xs.shape[1]
    steps = train_cfg.epochs * (n // min(train_cfg.batch_size, n))
    params, history, per_member = fit_members_minibatch(
        loss, params, lambdas, xs, ys, data_index, fit_keys,
        optimizer=make_optimizer(train_cfg, steps), epochs=train_cfg.epochs,
        batch_size=train_cfg.batch_size, vmap_size=vmap_size or default_vmap_size(padded // mesh.size),
        mesh=mesh, members=k, on_epoch=on_epoch)
    return unpad(params), [list(h) for h in history], np.full(k, per_member)


def train_models(models: Sequence[Model], train_cfg, datasets: Sequence[Dataset],
                 keys: Sequence[jax.Array], on_epoch=None,
                 vmap_size: int | None = None) -> list[tuple[Params, dict[str, Any]]]:
    """`train.train_model` for each (model, dataset, key), all trained together.

    The models must share their layers except for the decay coefficients; the datasets must have
    one size (P1 and P2 do). Returns each member's params and metrics; `train/seconds` is the
    whole ensemble's wall time (compilation included), `train/ensemble_size` its member count.
    """
    if not (len(models) == len(datasets) == len(keys)) or not models:
        raise ValueError(f"need one dataset and one key per model: got {len(models)} models, "
                         f"{len(datasets)} datasets, {len(keys)} keys")
    arch = architecture(models[0])
    for i, m in enumerate(models):
        if architecture(m) != arch:
            raise ValueError(f"ensemble member {i} has another architecture than member 0; only "
                             "seed, weight decay and training split may differ")
    position: dict[int, int] = {}  # id(dataset) -> its row in xs: each distinct set stored once
    unique: list[Dataset] = []
    for d in datasets:
        if id(d) not in position:
            position[id(d)] = len(unique)
            unique.append(d)
    sizes = {len(d) for d in unique}
    if len(sizes) != 1:
        raise ValueError(f"ensemble members need training sets of one size, got sizes {sorted(sizes)} "
                         "(use data.train_limit, or train them separately)")
    xs = jnp.stack([jnp.asarray(d.x) for d in unique])
    ys = jnp.stack([jnp.asarray(d.y) for d in unique])
    data_index = np.array([position[id(d)] for d in datasets])
    lambdas = np.stack([decay_lambdas(m) for m in models])
    start = time.perf_counter()
    params, history, steps = vmap_models(models[0], lambdas, train_cfg, xs, ys, data_index,
                                         jnp.stack(list(keys)), on_epoch, vmap_size)
    params = jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    return [(jax.tree.map(lambda a, k=k: a[k], params),
             {"train/seconds": seconds, "train/final_loss": float(h[-1]) if h else float("nan"),
              "train/steps": int(s), "train/ensemble_size": len(models)})
            for k, (h, s) in enumerate(zip(history, steps))]
