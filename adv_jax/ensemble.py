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
  prefill_cache(run_cfgs)      trains the uncached models of several run configs, grouped by
                               architecture, and writes each to the cache under its own key
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jax.sharding import Mesh, PartitionSpec
from tqdm.auto import tqdm

from adv_jax import adversarial_training, checkpoint, devices
from adv_jax.data import Dataset, load_splits
from adv_jax.models import Model, Params, build_model
from adv_jax.train import TrainingDiverged, _check_finite, classification_loss, make_optimizer

log = logging.getLogger(__name__)
MINIBATCH_OPTIMIZERS = ("adam", "sgd")


def _run_once_options() -> dict | None:
    """Compiler options for a program that runs once. On CPU, LLVM at -O2 instead of -O3 compiles
    the vmapped initializers (K threefry streams) in about 1 s instead of 5.5 s, drawing the same
    bits as `Model.init`."""
    return {"xla_backend_optimization_level": 2} if jax.default_backend() == "cpu" else None


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
    return jax.jit(jax.vmap(model.init), compiler_options=_run_once_options())(init_keys), fit_keys


def _check_member_finite(losses: np.ndarray, epoch: int) -> None:
    """losses: (K, steps). Names the member whose loss went bad."""
    for k, member in enumerate(losses):
        try:
            _check_finite(member, epoch)
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


def _fit_minibatch(loss, params, lambdas, xs, ys, data_index, keys, *, optimizer, epochs: int,
                   batch_size: int, vmap_size: int, mesh: Mesh, members: int,
                   on_epoch=None) -> tuple[Any, np.ndarray, int]:
    """`train.fit_minibatch` for K members in one program. params: leaves (K, ...); lambdas (K, L);
    xs (D, N, 28, 28, 1), ys (D, N): the distinct training sets; data_index (K,): member k trains
    on xs[data_index[k]]; keys (K,); vmap_size: members batched per step; mesh: the devices the
    members are split over (K a multiple of its size); members: how many of the K are real, the
    rest padding. Returns params (all K), the real members' (members, epochs) mean losses, and
    steps per member."""
    n = xs.shape[1]
    batch_size = min(batch_size, n)
    num_batches = n // batch_size

    def member_epoch(state, epoch_key, lambdas, d, xs, ys):
        def step(state, index):
            params, opt_state = state
            # One gather of the minibatch from the member's own set: the set is never copied.
            value, grads = jax.value_and_grad(loss)(params, xs[d, index], ys[d, index], lambdas)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        order = jax.random.permutation(epoch_key, n)[: num_batches * batch_size]
        return jax.lax.scan(step, state, order.reshape(num_batches, batch_size))

    # The data are arguments, not constants (see train.fit_minibatch).
    @functools.partial(jax.jit, donate_argnums=0)
    @_over_members(mesh, members=4, replicated=2)
    def epoch(state, epoch_keys, lambdas, data_index, xs, ys):
        return jax.lax.map(lambda m: member_epoch(*m, xs, ys), (state, epoch_keys, lambdas, data_index),
                           batch_size=min(vmap_size, len(lambdas)))

    fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
    state, history = (params, jax.jit(jax.vmap(optimizer.init))(params)), []
    state, keys, lambdas, data_index = devices.split_members(mesh, (state, keys, lambdas, data_index))
    xs, ys = devices.replicate((xs, ys), mesh)
    for i in (bar := tqdm(range(epochs), desc=f"train x{members}", unit="epoch", leave=False)):
        state, losses = epoch(state, fold(keys, i), lambdas, data_index, xs, ys)
        losses = np.asarray(losses)[:members]
        _check_member_finite(losses, i)
        history.append(losses.mean(1))
        bar.set_postfix(loss=f"{history[-1].mean():.4f}")
        if on_epoch:
            on_epoch(i, history[-1])
    return state[0], np.array(history).reshape(epochs, -1).T, epochs * num_batches


def _fit_lbfgs(loss, params, lambdas, xs, ys, data_index, cfg, mesh: Mesh, members: int,
               chunk: int = 50, on_epoch=None) -> tuple[Any, list[list[float]], np.ndarray]:
    """`train.fit_lbfgs` for K members at once, split over `mesh`'s devices: each member stops at
    its own tolerance (a vmapped while_loop leaves a finished member unchanged while the others go
    on). `members` of the K are real, the rest padding, which neither stops nor reports anything.
    Returns params (all K), each real member's loss after each chunk until it converged, and its
    iteration count (members,)."""
    optimizer = optax.lbfgs()
    tolerance = cfg.lbfgs_tolerance

    def member_chunk(carry, stop, lambdas, x, y):
        objective = lambda p: loss(p, x, y, lambdas)  # noqa: E731
        value_and_grad = optax.value_and_grad_from_state(objective)

        def step(carry):
            params, state = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = optimizer.update(grad, state, params, value=value, grad=grad,
                                              value_fn=objective)
            return optax.apply_updates(params, updates), state

        def going(carry):
            count = otu.tree_get(carry[1], "count")
            grad_norm = otu.tree_norm(otu.tree_get(carry[1], "grad"))
            return (count == 0) | ((count < stop) & (grad_norm >= tolerance))
        carry = jax.lax.while_loop(going, step, carry)
        return (carry, otu.tree_get(carry[1], "value"), otu.tree_norm(otu.tree_get(carry[1], "grad")),
                otu.tree_get(carry[1], "count"))

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
        for i, stop in enumerate(range(chunk, cfg.lbfgs_steps + chunk, chunk)):
            carry, value, grad_norm, count = run_chunk(carry, lambdas, data_index,
                                                       jnp.int32(min(stop, cfg.lbfgs_steps)), xs, ys)
            value, grad_norm, count = (np.asarray(a)[:members] for a in (value, grad_norm, count))
            _check_member_finite(value[:, None], i)
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

    def loss(p, x, y, member_lambdas):
        return classification_loss(arch, p, x, y, train_cfg.decay_scale, train_cfg.lipschitz_penalty,
                                   member_lambdas)

    # Dropping the padding, and back to uncommitted arrays: like train_model's, these params may
    # then meet arrays placed on any devices.
    unpad = lambda tree: jax.tree.map(lambda a: jnp.asarray(np.asarray(a[:k])), tree)  # noqa: E731
    if train_cfg.optimizer == "lbfgs":
        params, history, steps = _fit_lbfgs(loss, params, lambdas, xs, ys, data_index, train_cfg,
                                            mesh, k, on_epoch=on_epoch)
        return unpad(params), history, steps
    n = xs.shape[1]
    steps = train_cfg.epochs * (n // min(train_cfg.batch_size, n))
    params, history, per_member = _fit_minibatch(
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


def group_key(cfg: Any) -> str | None:
    """Run configs with the same key can be trained together (None: never, e.g. an autoencoder
    model, whose pretraining is not vmapped). The key is the cache identity without the seed, the
    split and the decay coefficients; the training-set size is checked when the data are loaded.
    Adversarial pools and dropout (adv_jax/adversarial_training.py) are not vmapped either."""
    if cfg.model.autoencoder is not None or adversarial_training.enabled(cfg.train):
        return None
    identity = checkpoint.model_identity(cfg)
    identity.pop("seed")
    identity["data"].pop("split")
    identity["model"].pop("weight_decay", None)
    return json.dumps(identity, sort_keys=True, default=str)


def train_configs(cfgs: Sequence[Any], load: Callable[[Any], Dataset] | None = None,
                  on_epoch=None) -> list[tuple[Model, Params, dict[str, Any]]]:
    """Trains the models of several run configs (as `runner.train_or_load` would, without the
    cache), grouping members that can share one program. Returns (model, params, metrics) in order."""
    load = load or _training_set
    loaded: dict[str, Dataset] = {}
    groups: dict[tuple, list[int]] = {}
    member_data = []
    for i, cfg in enumerate(cfgs):
        source = json.dumps(checkpoint.model_identity(cfg)["data"], sort_keys=True) + str(cfg.model.classes)
        if source not in loaded:
            loaded[source] = load(cfg)
        member_data.append(loaded[source])
        if (key := group_key(cfg)) is None:
            raise ValueError(f"{cfg.model.name} cannot be trained in an ensemble (autoencoder "
                             "pretraining is not vmapped); train it with runner.train_or_load")
        groups.setdefault((key, len(member_data[i])), []).append(i)
    out: list = [None] * len(cfgs)
    for members in groups.values():
        models = [build_model(cfgs[i].model) for i in members]
        log.info("training %d x %s together", len(members), cfgs[members[0]].model.name)
        trained = train_models(models, cfgs[members[0]].train, [member_data[i] for i in members],
                               [jax.random.key(cfgs[i].seed) for i in members], on_epoch)
        for i, model, (params, metrics) in zip(members, models, trained):
            out[i] = (model, params, metrics)
    return out


def _training_set(cfg) -> Dataset:
    return load_splits(cfg.data, cfg.model.classes)["train"]


def prefill_cache(cfgs: Sequence[Any], min_members: int = 2) -> int:
    """Trains every model of `cfgs` that is missing from the cache (and has train.cache on) in
    ensembles of at least `min_members`, and writes each to the cache under its own key, so that
    `runner.train_or_load` then finds it. Returns how many models were trained."""
    pending, seen = [], set()
    for cfg in cfgs:
        if (cfg.train.cache and group_key(cfg) is not None and checkpoint.cache_key(cfg) not in seen
                and not (checkpoint.cache_entry(cfg) / checkpoint.PARAMS_FILE).exists()):
            seen.add(checkpoint.cache_key(cfg))
            pending.append(cfg)
    counts: dict[str, int] = {}
    for cfg in pending:
        counts[group_key(cfg)] = counts.get(group_key(cfg), 0) + 1
    pending = [cfg for cfg in pending if counts[group_key(cfg)] >= min_members]
    if not pending:
        return 0
    for cfg, (_, params, metrics) in zip(pending, train_configs(pending)):
        checkpoint.write_cache(cfg, params, metrics)
    return len(pending)
