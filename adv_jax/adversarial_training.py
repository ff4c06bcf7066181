"""Adversarial training with a refreshed pool of adversarial examples (paper, section 4.2), and
training-time dropout.

The paper kept "a pool of adversarial examples, a random subset of which is continuously
replaced by newly generated adversarial examples and which is mixed into the original training
set all the time", and found adversarials of the higher layers' outputs the most useful. Here:

  pool for layer k   (source images x (P, 28, 28, 1), labels y (P,), delta (P, *shape_k)): the
                     point clip(h_k(x) + delta, 0, 1) with label y, where h_k is the input
                     of layer k (h_0 = the image, h_k = the sigmoid output of layer k - 1, so in
                     [0, 1] like an image). Storing the perturbation, not the point, keeps a
                     hidden pool meaningful while the layers below it keep training.
  refresh            `refresh_size` random pool slots get new adversarials: random training
                     images, targets from `target`, the attack run on the sub-network
                     layers[k:] by `jax.vmap` (the same per-example attacks as `attack=`).
  loss term          `mixed_cross_entropy`: mean CE over the clean batch and `batch_size` random
                     entries of each pool (one combined batch). A hidden pool's point has its
                     gradient stopped below layer k: it trains layers k and above only.
  regime             `fit_classifier`, a regime on the training core `train.fit` (which imports
                     nothing of this module): `make_loss` (the term above plus train.regularizer),
                     the pools in `TrainState.aux`, and hooks. Minibatch: an epoch runs
                     `refreshes_per_epoch` blocks, each a refresh (`make_refresh`, traced in the
                     epoch) then its minibatches; before `start_epoch` the state holds no pools
                     (clean training), then `fill_pools` fills every slot once. Full-batch L-BFGS:
                     `lbfgs_restarts` restarts, the pools filled or refreshed before each and
                     their points held fixed through it (`frozen_points`).

PGD training (Madry et al. 2018; train.adversarial.pgd_epsilon > 0): every minibatch is replaced
by its L-inf PGD adversarials against the current parameters (`madry_batch`, gradients stopped),
the inner maximization of the robust objective; it combines with the pools and with dropout.

Dropout (train.dropout) drops inputs and hidden units in training steps only, with keys split
from the step's key; `model.apply(params, x)` stays deterministic for evaluation and attacks.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adv_jax import train
from adv_jax.attacks import PGD, make_attack
from adv_jax.attacks.targets import choose_targets
from adv_jax.models import Model, Params

log = logging.getLogger(__name__)
POOL_TARGETS = ("random", "next", "untargeted")
MADRY_KEY = 2 ** 20  # fold_in(step key, MADRY_KEY): PGD training's random starts (pools use 0 .. 2 L)


class Pool(NamedTuple):
    """Adversarial perturbations of layer `k`'s input for the training images `x`."""

    x: jax.Array  # (P, 28, 28, 1) the source training images
    y: jax.Array  # (P,) their labels
    delta: jax.Array  # (P, *input shape of layer k): the perturbation, in that layer's units


def enabled(cfg) -> bool:
    """Whether train config `cfg` asks for pools or dropout (`fit_classifier`; else the plain
    `train.fit_classifier`)."""
    return (bool(cfg.adversarial.layers) or cfg.adversarial.pgd_epsilon > 0 or cfg.dropout.input > 0
            or cfg.dropout.hidden > 0)


def layer_input_shape(model: Model, k: int) -> tuple[int, ...]:
    """Per-example shape of the input of model.layers[k] (k = 0: the image)."""
    shape = jax.eval_shape(lambda x: model.apply(model.init(jax.random.key(0)), x, stop=k),
                           jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)).shape
    return tuple(shape[1:])


def check_config(model: Model, cfg) -> None:
    """Clear errors for settings this training mode cannot honour."""
    adv, drop = cfg.adversarial, cfg.dropout
    if cfg.optimizer == "lbfgs" and (drop.input or drop.hidden):
        raise ValueError("train.dropout needs a minibatch optimizer (train=adam or train=sgd), "
                         "not full-batch lbfgs")
    if cfg.optimizer == "lbfgs" and adv.layers and not adv.start_epoch < adv.lbfgs_restarts:
        raise ValueError(f"train.adversarial.start_epoch={adv.start_epoch}: with train=lbfgs the pools "
                         f"join at that restart, so it must be below lbfgs_restarts={adv.lbfgs_restarts}")
    if adv.pgd_epsilon and (cfg.optimizer == "lbfgs" or adv.pgd_epsilon < 0 or adv.pgd_steps < 1):
        raise ValueError(f"train.adversarial.pgd_epsilon={adv.pgd_epsilon} (pgd_steps={adv.pgd_steps}): "
                         "PGD training needs a minibatch optimizer (train=adam or train=sgd), a "
                         "positive radius and pgd_steps >= 1")
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
    """Replaces pool entries `slots` (R,) by adversarials of R random training images (x, y)
    against the current model's layers[k:]. Traceable: a vmapped attack inside the caller's jit."""
    index_key, target_key, attack_key = jax.random.split(key, 3)
    index = jax.random.randint(index_key, slots.shape, 0, len(y))
    params = jax.lax.stop_gradient(params)
    h = model.apply(params, x[index], stop=k)
    logits_fn = lambda point: model.apply(params, point[None], start=k)[0]  # noqa: E731
    target = choose_targets(target_mode, model.apply(params, h, start=k), y[index], key=target_key)
    keys = jax.random.split(attack_key, len(slots))
    h_adv = jax.vmap(attack, in_axes=(None, 0, 0, 0, 0))(logits_fn, h, y[index], target, keys)
    return Pool(pool.x.at[slots].set(x[index]), pool.y.at[slots].set(y[index]),
                pool.delta.at[slots].set(h_adv - h))


def pool_points(model: Model, params: Params, k: int, pool: Pool, rows: jax.Array) -> jax.Array:
    """The current points of pool entries `rows`: clip(h_k(x) + delta, 0, 1), with the gradient
    stopped below layer k (a hidden pool trains the layers above it)."""
    h = jax.lax.stop_gradient(model.apply(params, pool.x[rows], stop=k))
    return jnp.clip(h + pool.delta[rows], 0.0, 1.0)


def madry_batch(model: Model, params: Params, x: jax.Array, y: jax.Array, key: jax.Array,
                adv) -> jax.Array:
    """x's (B, 28, 28, 1) L-inf PGD adversarials against params, from a random start in the
    pgd_epsilon cube, pgd_steps steps of 2.5 pgd_epsilon / pgd_steps (Madry et al.); no gradient
    flows through them."""
    attack = PGD(epsilon=adv.pgd_epsilon, norm="linf", steps=adv.pgd_steps,
                 relative_step_size=2.5 / adv.pgd_steps, random_start=True)
    frozen = jax.lax.stop_gradient(params)

    def one(image, label, image_key):
        return attack(lambda z: model.apply(frozen, z[None])[0], image, label, jnp.int32(-1), image_key)

    keys = jax.random.split(key, len(x))
    return jax.lax.stop_gradient(jax.vmap(one)(x, y, keys))


def mixed_cross_entropy(model: Model, params: Params, pools: tuple[Pool, ...], x: jax.Array,
                        y: jax.Array, key: jax.Array, cfg) -> jax.Array:
    """Mean CE over the batch (x (B, ...), y (B,); with PGD training, its adversarials) and
    `cfg.adversarial.batch_size` random entries of each pool, with training-time dropout: the
    loss term of pooled training."""
    adv, drop = cfg.adversarial, cfg.dropout
    if adv.pgd_epsilon:
        x = madry_batch(model, params, x, y, jax.random.fold_in(key, MADRY_KEY), adv)
    logits = dropout_apply(model, params, x, jax.random.fold_in(key, 0), drop.input, drop.hidden)
    total = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    count = len(y)
    for j, (k, pool) in enumerate(zip(adv.layers, pools)):
        rows = jax.random.randint(jax.random.fold_in(key, 2 * j + 1), (adv.batch_size,), 0,
                                  len(pool.y))
        logits = dropout_apply(model, params, pool_points(model, params, k, pool, rows),
                               jax.random.fold_in(key, 2 * j + 2), drop.input, drop.hidden, start=k)
        total += optax.softmax_cross_entropy_with_integer_labels(logits, pool.y[rows]).sum()
        count += adv.batch_size
    return total / count


def frozen_points(model: Model, params: Params, layers, pools: tuple[Pool, ...]) -> tuple:
    """((points, labels) per pool): every entry's point under `params`, held fixed for one
    L-BFGS restart, so the restart's loss is one function of the parameters (a point that
    moved with the layers below it, its gradient stopped, would hand the line search a
    gradient that is not the loss's)."""
    return tuple((pool_points(model, params, k, pool, jnp.arange(len(pool.y))), pool.y)
                 for k, pool in zip(layers, pools))


def full_batch_cross_entropy(model: Model, params: Params, layers, points: tuple, x: jax.Array,
                             y: jax.Array) -> jax.Array:
    """Mean CE over all clean images (x (N, ...), y (N,)) and every pool point (`frozen_points`;
    pool j's points are inputs of layer layers[j]): the loss term of pooled full-batch L-BFGS."""
    total = optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).sum()
    count = len(y)
    for k, (inputs, labels) in zip(layers, points):
        total += optax.softmax_cross_entropy_with_integer_labels(
            model.apply(params, inputs, start=k), labels).sum()
        count += len(labels)
    return total / count


def blocks_per_epoch(cfg) -> int:
    """Refresh blocks an epoch is cut into: `refreshes_per_epoch` with pools, else 1."""
    return cfg.adversarial.refreshes_per_epoch if cfg.adversarial.layers else 1


def warn_if_fewer_blocks(cfg, blocks: int, n: int, batch_size: int) -> None:
    if cfg.adversarial.layers and blocks < cfg.adversarial.refreshes_per_epoch:
        log.warning("%d training images make only %d batches of %d per epoch: refreshing the pool "
                    "before every batch instead of train.adversarial.refreshes_per_epoch=%d times",
                    n, blocks, batch_size, cfg.adversarial.refreshes_per_epoch)


def _refresh_all(attack, model: Model, cfg, params, pools, x, y, key, first_slot=None):
    """New adversarials in refresh_size slots of every pool: random slots, or (filling) the
    consecutive slots from `first_slot`."""
    adv, new = cfg.adversarial, []
    for j, (k, pool) in enumerate(zip(adv.layers, pools)):
        slot_key, attack_key = jax.random.split(jax.random.fold_in(key, j))
        if first_slot is None:
            slots = jax.random.permutation(slot_key, adv.pool_size)[: adv.refresh_size]
        else:
            slots = (first_slot + jnp.arange(adv.refresh_size)) % adv.pool_size
        new.append(refresh_pool(attack, model, params, k, adv.target, pool, x, y, slots, attack_key))
    return tuple(new)


def make_refresh(model: Model, cfg):
    """refresh(state, x, y, key) -> state, the pool-refresh hook (`train.Hooks.refresh`): new
    adversarials in `refresh_size` random slots of every pool in state.aux; a state without
    pools (clean epochs, dropout alone) is left as it is."""
    attack = make_attack(cfg.adversarial.attack, cfg.adversarial.attack_params) if cfg.adversarial.layers else None

    def refresh(state, x, y, key):
        if not state.aux:
            return state
        return state._replace(aux=_refresh_all(attack, model, cfg, state.params, state.aux, x, y, key))

    return refresh


def fill_pools(model: Model, cfg, params: Params, x: jax.Array, y: jax.Array,
               key: jax.Array) -> tuple[Pool, ...]:
    """Every pool, each slot filled once against `params`, refresh_size at a time (one compiled
    refresh, looped); x (N, 28, 28, 1), y (N,) the training set."""
    adv = cfg.adversarial
    attack = make_attack(adv.attack, adv.attack_params)
    empty = tuple(Pool(jnp.zeros((adv.pool_size, *model.input_shape), jnp.float32),
                       jnp.zeros(adv.pool_size, jnp.int32),
                       jnp.zeros((adv.pool_size, *layer_input_shape(model, k)), jnp.float32))
                  for k in adv.layers)

    @jax.jit
    def fill(params, pools, x, y):
        def one(r, pools):
            return _refresh_all(attack, model, cfg, params, pools, x, y, jax.random.fold_in(key, r),
                                first_slot=r * adv.refresh_size)
        return jax.lax.fori_loop(0, -(-adv.pool_size // adv.refresh_size), one, pools)

    return fill(params, empty, x, y)


def make_loss(model: Model, cfg, frozen_layers: tuple[int, ...] = ()) -> train.LossFn:
    """The loss of adversarial training (`train.LossFn`): `mixed_cross_entropy` over a minibatch
    (aux: the pools), or with train=lbfgs `full_batch_cross_entropy` (aux: (pools, their frozen
    points)); plus train.regularizer."""
    full_batch = cfg.optimizer == "lbfgs"

    def loss(params, decay, aux, batch, key):
        params = train.freeze(params, frozen_layers)
        x, y = batch
        if full_batch:
            ce = full_batch_cross_entropy(model, params, cfg.adversarial.layers, aux[1], x, y)
        else:
            ce = mixed_cross_entropy(model, params, aux, x, y, key, cfg)
        return ce + train.regularizer(model, params, cfg.decay_scale, cfg.lipschitz_penalty, decay)

    return loss


def _minibatch_before(model: Model, cfg, key: jax.Array):
    """before(i, state, x, y) -> state: the pools join the state at epoch `start_epoch`, filled once."""

    def before(i, state, x, y):
        if cfg.adversarial.layers and i == cfg.adversarial.start_epoch:
            return state._replace(aux=fill_pools(model, cfg, state.params, x, y, key))
        return state

    return before


def _lbfgs_before(model: Model, cfg, key: jax.Array):
    """before(r, state, x, y) -> state: restart r's pools (filled at `start_epoch`, refreshed at
    each later restart) and their points under the restart's first params, held fixed through the
    restart so its loss is one function of the parameters: aux = (pools, points)."""
    adv, refresh = cfg.adversarial, jax.jit(make_refresh(model, cfg))

    def before(r, state, x, y):
        pools = state.aux[0] if state.aux else ()
        if r == adv.start_epoch:
            pools = fill_pools(model, cfg, state.params, x, y, jax.random.fold_in(key, r))
        elif r > adv.start_epoch:
            pools = refresh(state._replace(aux=pools), x, y, jax.random.fold_in(key, r)).aux
        return state._replace(aux=(pools, frozen_points(model, state.params, adv.layers, pools)))

    return before


def fit_classifier(model: Model, params: Params, data, key: jax.Array, cfg,
                   frozen_layers: tuple[int, ...] = (), on_epoch=None) -> tuple[Params, list[float], int]:
    """The adversarial-training regime, `train.fit_classifier`'s signature and result: `make_loss`
    on `train.fit` with the pool hooks. Minibatch: `refreshes_per_epoch` blocks an epoch, the pools
    joining at `start_epoch`. train=lbfgs: `lbfgs_restarts` restarts of ceil(lbfgs_steps /
    lbfgs_restarts) iterations, the pools filled or refreshed before each (the loss changes
    between restarts, so each starts a fresh L-BFGS memory)."""
    check_config(model, cfg)
    loss = make_loss(model, cfg, frozen_layers)
    if cfg.optimizer == "lbfgs":
        hooks = train.Hooks(before=_lbfgs_before(model, cfg, key), on_epoch=on_epoch)
        state, history, steps = train.fit(loss, train.TrainState(params, None), data,
                                          train.lbfgs_plan(cfg, cfg.adversarial.lbfgs_restarts), hooks)
        return state.params, history, steps
    plan = train.minibatch_plan(cfg, len(data), blocks_per_epoch(cfg))
    warn_if_fewer_blocks(cfg, plan.epoch.blocks, len(data), plan.epoch.batch_size)
    pool_key, key = jax.random.split(key)
    hooks = train.Hooks(make_refresh(model, cfg), _minibatch_before(model, cfg, pool_key), on_epoch)
    state, history, steps = train.fit(loss, train.TrainState(params, plan.optimizer.init(params)),
                                      data, plan, hooks, key)
    return state.params, history, steps
