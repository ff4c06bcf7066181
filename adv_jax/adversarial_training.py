"""Adversarial training with a refreshed pool of adversarial examples (paper, section 4.2), and
training-time dropout.

The paper kept "a pool of adversarial examples, a random subset of which is continuously
replaced by newly generated adversarial examples and which is mixed into the original training
set all the time", and found adversarials of the higher layers' outputs the most useful. Here:

  pool for layer k   (index (P,) into the training set, delta (P, *shape_k)): the point
                     clip(h_k(x[index]) + delta, 0, 1) with label y[index], where h_k is the input
                     of layer k (h_0 = the image, h_k = the sigmoid output of layer k - 1, so in
                     [0, 1] like an image). Storing the perturbation, not the point, keeps a
                     hidden pool meaningful while the layers below it keep training.
  refresh            `refresh_size` random pool slots get new adversarials: random training
                     images, targets from `target`, the attack run on the sub-network
                     layers[k:] by `jax.vmap` (the same per-example attacks as `attack=`).
  step               loss = mean CE over the clean batch and `batch_size` random entries of each
                     pool (one combined batch) + the paper's decay. A hidden pool's point has its
                     gradient stopped below layer k: it trains layers k and above only.
  epoch              one jitted `lax.scan` over `refreshes_per_epoch` blocks, each a refresh then
                     a scan over its minibatches; the pools live on device. Before `start_epoch`
                     training is clean, then the whole pool is filled once.

Dropout (train.dropout) drops inputs and hidden units in training steps only, with keys split
from the step's key; `model.apply(params, x)` stays deterministic for evaluation and attacks.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from adv_jax.attacks import make_attack
from adv_jax.attacks.targets import choose_targets
from adv_jax.data import Dataset
from adv_jax.models import Model, Params
from adv_jax.train import _check_finite, make_optimizer  # train.py imports this module lazily

log = logging.getLogger(__name__)
POOL_TARGETS = ("random", "next", "untargeted")


class Pool(NamedTuple):
    """Adversarial perturbations of layer `k`'s input for training images `index`."""

    index: jax.Array  # (P,) int32 positions in the training set
    delta: jax.Array  # (P, *input shape of layer k): the perturbation, in that layer's units


def enabled(cfg) -> bool:
    """Whether train config `cfg` asks for pools or dropout (else plain `train.fit` trains)."""
    return bool(cfg.adversarial.layers) or cfg.dropout.input > 0 or cfg.dropout.hidden > 0


def layer_input_shape(model: Model, k: int) -> tuple[int, ...]:
    """Per-example shape of the input of model.layers[k] (k = 0: the image)."""
    shape = jax.eval_shape(lambda x: model.apply(model.init(jax.random.key(0)), x, stop=k),
                           jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)).shape
    return tuple(shape[1:])


def check_config(model: Model, cfg) -> None:
    """Clear errors for settings this training mode cannot honour."""
    adv, drop = cfg.adversarial, cfg.dropout
    if cfg.optimizer == "lbfgs":
        raise ValueError("train.adversarial / train.dropout need a minibatch optimizer "
                         "(train=adam or train=sgd), not full-batch lbfgs")
    for name, rate in (("input", drop.input), ("hidden", drop.hidden)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"train.dropout.{name}={rate}: a drop rate must be in [0, 1)")
    if (drop.input or drop.hidden) and any(layer.kind != "dense" for layer in model.layers):
        raise ValueError("train.dropout is for fully connected models (dense layers only)")
    if not adv.layers:
        return
    for k in adv.layers:
        if not 0 <= k < len(model.layers):
            raise ValueError(f"train.adversarial.layers: {k} is not a layer input of this "
                             f"{len(model.layers)}-layer model; use 0 (images) .. {len(model.layers) - 1}")
        if k > 0 and model.layers[k - 1].activation != "sigmoid":
            raise ValueError(f"train.adversarial.layers: {k} follows a "
                             f"{model.layers[k - 1].activation} layer; hidden pools need sigmoid "
                             "outputs, whose range [0, 1] is the attacks' box")
    if len(set(adv.layers)) != len(adv.layers):
        raise ValueError(f"train.adversarial.layers lists a layer twice: {list(adv.layers)}")
    if adv.target not in POOL_TARGETS:
        raise ValueError(f"train.adversarial.target={adv.target!r}; choose one of {list(POOL_TARGETS)}")
    if not 0 < adv.refresh_size <= adv.pool_size:
        raise ValueError(f"train.adversarial.refresh_size={adv.refresh_size} must be in "
                         f"1..pool_size ({adv.pool_size})")
    if adv.refreshes_per_epoch < 1 or adv.batch_size < 1 or adv.start_epoch < 0:
        raise ValueError("train.adversarial needs refreshes_per_epoch >= 1, batch_size >= 1 and "
                         f"start_epoch >= 0; got {adv}")
    make_attack(adv.attack, adv.attack_params)  # an unknown attack or parameter fails here


def dropout_apply(model: Model, params: Params, x: jax.Array, key: jax.Array, input_rate: float,
                  hidden_rate: float, start: int = 0) -> jax.Array:
    """Logits of layers[start:] with inverted dropout on the input of every layer: `input_rate`
    on the images (start = 0), `hidden_rate` on hidden activations. x: (B, ...) -> (B, K)."""
    for i in range(start, len(model.layers)):
        rate = input_rate if i == 0 else hidden_rate
        if rate > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - rate, x.shape)
            x = jnp.where(keep, x / (1.0 - rate), 0.0)
        x = model.apply(params, x, start=i, stop=i + 1)
    return x


def refresh_pool(attack, model: Model, params: Params, k: int, target_mode: str, pool: Pool,
                 x: jax.Array, y: jax.Array, slots: jax.Array, key: jax.Array) -> Pool:
    """Replaces pool entries `slots` (R,) by adversarials of R random training images against the
    current model's layers[k:]. Traceable: a vmapped attack inside the caller's jit."""
    index_key, target_key, attack_key = jax.random.split(key, 3)
    index = jax.random.randint(index_key, slots.shape, 0, len(y))
    params = jax.lax.stop_gradient(params)
    h = model.apply(params, x[index], stop=k)
    logits_fn = lambda point: model.apply(params, point[None], start=k)[0]  # noqa: E731
    target = choose_targets(target_mode, model.apply(params, h, start=k), y[index], key=target_key)
    keys = jax.random.split(attack_key, len(slots))
    h_adv = jax.vmap(attack, in_axes=(None, 0, 0, 0, 0))(logits_fn, h, y[index], target, keys)
    return Pool(pool.index.at[slots].set(index), pool.delta.at[slots].set(h_adv - h))


def pool_points(model: Model, params: Params, k: int, pool: Pool, x: jax.Array,
                rows: jax.Array) -> jax.Array:
    """The current points of pool entries `rows`: clip(h_k(x) + delta, 0, 1), with the gradient
    stopped below layer k (a hidden pool trains the layers above it)."""
    h = jax.lax.stop_gradient(model.apply(params, x[pool.index[rows]], stop=k))
    return jnp.clip(h + pool.delta[rows], 0.0, 1.0)


def make_loss(model: Model, cfg, frozen_layers: tuple[int, ...] = ()) -> Callable:
    """loss(params, pools, x_train, y_train, batch_index, key) -> scalar: mean CE over the clean
    batch and `cfg.adversarial.batch_size` random entries of each pool, plus the paper's decay."""
    adv, drop = cfg.adversarial, cfg.dropout

    def loss(params, pools, x, y, batch, key):
        params = tuple(jax.lax.stop_gradient(p) if i in frozen_layers else p
                       for i, p in enumerate(params))
        logits = dropout_apply(model, params, x[batch], jax.random.fold_in(key, 0),
                               drop.input, drop.hidden)
        total = optax.softmax_cross_entropy_with_integer_labels(logits, y[batch]).sum()
        count = len(batch)
        for j, (k, pool) in enumerate(zip(adv.layers, pools)):
            rows = jax.random.randint(jax.random.fold_in(key, 2 * j + 1), (adv.batch_size,), 0,
                                      len(pool.index))
            points = pool_points(model, params, k, pool, x, rows)
            logits = dropout_apply(model, params, points, jax.random.fold_in(key, 2 * j + 2),
                                   drop.input, drop.hidden, start=k)
            total += optax.softmax_cross_entropy_with_integer_labels(logits, y[pool.index[rows]]).sum()
            count += adv.batch_size
        return total / count + cfg.decay_scale * model.weight_decay(params)

    return loss


def fit_adversarial(model: Model, params: Params, data: Dataset, key: jax.Array, cfg,
                    frozen_layers: tuple[int, ...] = (),
                    on_epoch: Callable[[int, float], None] | None = None) -> tuple[Params, list[float], int]:
    """Minibatch training (cfg.optimizer adam/sgd, cfg.epochs, cfg.batch_size, cfg.schedule) with
    pools and dropout as configured; returns params, each epoch's mean loss, and the step count.

    Each epoch visits a fresh permutation in `refreshes_per_epoch` equal blocks of minibatches
    (the remainder, fewer than `refreshes_per_epoch` batches, is dropped; with fewer batches than
    that, one block per batch)."""
    check_config(model, cfg)
    adv = cfg.adversarial
    attack = make_attack(adv.attack, adv.attack_params) if adv.layers else None
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    batch_size = min(cfg.batch_size, len(y))
    num_batches = len(y) // batch_size
    blocks = min(adv.refreshes_per_epoch, num_batches) if adv.layers else 1
    if adv.layers and blocks < adv.refreshes_per_epoch:
        log.warning("%d training images make only %d batches of %d per epoch: refreshing the pool "
                    "before every batch instead of train.adversarial.refreshes_per_epoch=%d times",
                    len(y), num_batches, batch_size, adv.refreshes_per_epoch)
    per_block = num_batches // blocks
    steps_per_epoch = blocks * per_block
    optimizer = make_optimizer(cfg, cfg.epochs * steps_per_epoch)
    loss = make_loss(model, cfg, frozen_layers)
    pool_key, key = jax.random.split(key)

    def refresh_all(params, pools, x, y, refresh_key, first_slot=None):
        """New adversarials in refresh_size slots of every pool: random slots, or (filling) the
        consecutive slots from `first_slot`."""
        new = []
        for j, (k, pool) in enumerate(zip(adv.layers, pools)):
            slot_key, attack_key = jax.random.split(jax.random.fold_in(refresh_key, j))
            if first_slot is None:
                slots = jax.random.permutation(slot_key, adv.pool_size)[: adv.refresh_size]
            else:
                slots = (first_slot + jnp.arange(adv.refresh_size)) % adv.pool_size
            new.append(refresh_pool(attack, model, params, k, adv.target, pool, x, y, slots, attack_key))
        return tuple(new)

    # The data are arguments, not closed-over constants (see train.fit_minibatch).
    @functools.partial(jax.jit, static_argnums=4, donate_argnums=0)
    def epoch(state, epoch_key, x, y, use_pools):
        def step(state, inputs):
            batch, step_key = inputs
            params, opt_state, pools = state
            active = pools if use_pools else ()
            value, grads = jax.value_and_grad(lambda p: loss(p, active, x, y, batch, step_key))(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, pools), value

        def block(state, inputs):
            batches, block_key = inputs
            params, opt_state, pools = state
            if use_pools:
                pools = refresh_all(params, pools, x, y, jax.random.fold_in(block_key, 0))
            step_keys = jax.random.split(jax.random.fold_in(block_key, 1), per_block)
            return jax.lax.scan(step, (params, opt_state, pools), (batches, step_keys))

        order_key, blocks_key = jax.random.split(epoch_key)
        order = jax.random.permutation(order_key, len(y))[: steps_per_epoch * batch_size]
        state, losses = jax.lax.scan(block, state, (order.reshape(blocks, per_block, batch_size),
                                                    jax.random.split(blocks_key, blocks)))
        return state, losses.reshape(-1)

    @jax.jit
    def fill(params, pools, x, y, fill_key):
        """Fills every slot once, refresh_size at a time (one compiled refresh, looped)."""
        def one(r, pools):
            return refresh_all(params, pools, x, y, jax.random.fold_in(fill_key, r),
                               first_slot=r * adv.refresh_size)
        return jax.lax.fori_loop(0, -(-adv.pool_size // adv.refresh_size), one, pools)

    pools = tuple(Pool(jnp.zeros(adv.pool_size, jnp.int32),
                       jnp.zeros((adv.pool_size, *layer_input_shape(model, k)), jnp.float32))
                  for k in adv.layers)
    state, history = (params, optimizer.init(params), pools), []
    for i in (bar := tqdm(range(cfg.epochs), desc="adversarial train", unit="epoch", leave=False)):
        use_pools = bool(adv.layers) and i >= adv.start_epoch
        if use_pools and i == adv.start_epoch:
            state = (state[0], state[1], fill(state[0], state[2], x, y, pool_key))
        state, losses = epoch(state, jax.random.fold_in(key, i), x, y, use_pools)
        losses = np.asarray(losses)
        _check_finite(losses, i)
        history.append(float(losses.mean()))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if on_epoch:
            on_epoch(i, history[-1])
    return state[0], history, cfg.epochs * steps_per_epoch

