"""The training core: one `fit` over (loss, state, data, plan, hooks), built from one pure train
step, one epoch loop and one full-batch L-BFGS chunk. It knows no feature: a regime (a loss, a
plan, hooks) plugs into it from above.

  fit(loss, state, data, plan, hooks, key) -> (state, history, steps)
      loss(params, decay, aux, (x, y), key) -> scalar; state: TrainState(params, opt_state, decay,
      aux); data: (x (N, ...), y (N,)); plan: MinibatchPlan (optimizer, epochs, EpochPlan) or
      LbfgsPlan (iterations, tolerance, restarts); hooks: Hooks(refresh, before, on_epoch)
  train_step(state, batch, key) -> (state, metrics)   one optimizer step; `make_train_step`
  epoch(state, key, x, y) -> (state, losses)          one jitted `lax.scan` over minibatches, the
                                                      data on device; `make_epoch`
  lbfgs_chunk / minimize_lbfgs                        L-BFGS steps in jit; its host loop

Regimes on `fit`, here: `fit_classifier`, the plain classifier loss

    L(params) = mean_i CE(f(x_i), y_i) + sum_k lambda_k * sum(W_k^2) / k_units

and `pretrain_autoencoder` (a sparse autoencoder's loss); `train_model` runs init -> pretraining ->
classifier, each regime passed in. Adversarial training (adv_jax/adversarial_training.py) is one
more regime: a mixed loss, pools in `TrainState.aux`, a refresh hook, L-BFGS restarts. Ensembles
(adv_jax/ensemble.py) vmap or shard `epoch` and `lbfgs_chunk` over members.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from tqdm.auto import tqdm

from adv_jax.data import Dataset
from adv_jax.lipschitz import lipschitz_penalty
from adv_jax.models import Model, Params, error_rate
from adv_jax.models.layers import weight_decay

log = logging.getLogger(__name__)
OPTIMIZERS = ("adam", "sgd", "lbfgs")
MINIBATCH_OPTIMIZERS = ("adam", "sgd")
# loss(params, decay, aux, (x, y), key) -> scalar; decay: None (each layer's own lambda) or (L,);
# aux: what else the regime's loss reads (TrainState.aux); key: None under full-batch L-BFGS
LossFn = Callable[[Any, Any, Any, tuple[jax.Array, jax.Array], Any], jax.Array]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN, infinite or exploded; the message names the step and the likely cause."""


class TrainState(NamedTuple):
    """Everything a train step reads and writes. decay: None or (L,) per-layer lambdas (ensembles
    vmap over them); aux: whatever else a regime's loss reads (adversarial pools), () when none."""

    params: Any
    opt_state: Any
    decay: Any = None
    aux: Any = ()


class EpochPlan(NamedTuple):
    """How an epoch of n images is cut: `blocks` blocks of `per_block` minibatches of
    `batch_size` (the remainder dropped); a `Hooks.refresh` runs before each block."""

    batch_size: int
    blocks: int
    per_block: int

    @classmethod
    def for_data(cls, n: int, batch_size: int, blocks: int = 1) -> "EpochPlan":
        batch_size = min(batch_size, n)
        batches = n // batch_size
        blocks = max(1, min(blocks, batches))
        return cls(batch_size, blocks, batches // blocks)

    @property
    def steps(self) -> int:
        return self.blocks * self.per_block


class MinibatchPlan(NamedTuple):
    """Minibatch training: `epochs` epochs cut as `epoch`, stepped by `optimizer`."""

    optimizer: optax.GradientTransformation
    epochs: int
    epoch: EpochPlan
    desc: str = "train"  # the progress bar's and the log's name

    @property
    def steps(self) -> int:
        return self.epochs * self.epoch.steps


class LbfgsPlan(NamedTuple):
    """Full-batch L-BFGS: `restarts` runs of ceil(max_steps / restarts) iterations, each stopping
    early where |grad| < tolerance and starting a fresh L-BFGS memory (a `Hooks.before` may change
    the loss between restarts, e.g. its aux)."""

    max_steps: int
    tolerance: float
    restarts: int = 1
    desc: str = "lbfgs"


class Hooks(NamedTuple):
    """Where a regime plugs into `fit`; None: nothing.
    refresh(state, x, y, key) -> state   traced in the jitted epoch, before each block of minibatches
    before(i, state, x, y) -> state      on the host, before epoch i or L-BFGS restart i
    on_epoch(i, loss)                    on the host, after epoch i or L-BFGS chunk i (logging)"""

    refresh: Callable | None = None
    before: Callable | None = None
    on_epoch: Callable | None = None


def classification_loss(model: Model, params: Params, x: jax.Array, y: jax.Array,
                        decay_scale: float = 1.0, lipschitz_weight: float = 0.0,
                        lambdas: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy over the batch, plus decay_scale times the paper's decay, plus
    lipschitz_weight times log of the network's Lipschitz upper bound. `lambdas` (one per weighted
    layer) replace the layers' own decay coefficients."""
    logits = model.apply(params, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + regularizer(model, params, decay_scale, lipschitz_weight, lambdas)


def regularizer(model: Model, params: Params, decay_scale: float, lipschitz_weight: float,
                lambdas: jax.Array | None) -> jax.Array:
    """decay_scale x the paper's decay + lipschitz_weight x log(Lipschitz upper bound)."""
    total = decay_scale * weight_decay(model.layers, params, lambdas)
    if lipschitz_weight:
        total += lipschitz_weight * lipschitz_penalty(model, params, model.input_shape)
    return total


def freeze(params: Params, frozen_layers: tuple[int, ...]) -> Params:
    """Frozen layers stay in the optimized pytree with their gradient stopped (a zero gradient
    moves neither Adam, SGD nor L-BFGS): a closed-over array would be baked into the compiled loss."""
    return tuple(jax.lax.stop_gradient(p) if i in frozen_layers else p for i, p in enumerate(params))


def make_loss(model: Model, cfg, frozen_layers: tuple[int, ...] = ()) -> LossFn:
    """The plain training loss of train config `cfg`: `classification_loss`, frozen layers'
    gradient stopped; `decay` replaces the layers' lambdas (None: their own); aux and key unused."""

    def loss(params, decay, aux, batch, key):
        x, y = batch
        return classification_loss(model, freeze(params, frozen_layers), x, y, cfg.decay_scale,
                                   cfg.lipschitz_penalty, decay)

    return loss


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """Adam or SGD with a constant or cosine-decayed learning rate."""
    if cfg.schedule == "cosine":
        rate = optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps, 1))
    elif cfg.schedule == "constant":
        rate = cfg.learning_rate
    else:
        raise ValueError(f"unknown train.schedule {cfg.schedule!r}; choose one of ['constant', 'cosine']")
    if cfg.optimizer == "adam":
        return optax.adam(rate)
    if cfg.optimizer == "sgd":
        return optax.sgd(rate, momentum=cfg.momentum or None)
    raise ValueError(f"unknown train.optimizer {cfg.optimizer!r}; choose one of {list(OPTIMIZERS)}")


def minibatch_plan(cfg, n: int, blocks: int = 1) -> MinibatchPlan:
    """Train config `cfg`'s minibatch plan for n images, each epoch cut into `blocks` blocks."""
    epoch = EpochPlan.for_data(n, cfg.batch_size, blocks)
    return MinibatchPlan(make_optimizer(cfg, cfg.epochs * epoch.steps), cfg.epochs, epoch)


def lbfgs_plan(cfg, restarts: int = 1) -> LbfgsPlan:
    """Train config `cfg`'s full-batch L-BFGS plan (lbfgs_steps, lbfgs_tolerance)."""
    return LbfgsPlan(cfg.lbfgs_steps, cfg.lbfgs_tolerance, restarts)


def make_train_step(loss: LossFn, optimizer: optax.GradientTransformation):
    """train_step(state, batch, key) -> (state, {"loss": scalar}): one optimizer step on batch
    (x (B, ...), y (B,)). Pure; jitted inside the epoch."""

    def train_step(state: TrainState, batch, key):
        value, grads = jax.value_and_grad(loss)(state.params, state.decay, state.aux, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state._replace(params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state), {"loss": value}

    return train_step


def make_epoch(train_step, plan: EpochPlan, refresh=None):
    """epoch(state, key, x, y) -> (state, losses (steps,)): a fresh permutation of the training
    set, minibatches gathered on device, `refresh(state, x, y, key)` before each block.
    Unjitted: callers jit, vmap or shard it."""

    def epoch(state, epoch_key, x, y):
        def step(state, inputs):
            index, step_key = inputs
            state, metrics = train_step(state, (x[index], y[index]), step_key)
            return state, metrics["loss"]

        def block(state, inputs):
            batches, block_key = inputs
            if refresh is not None:
                state = refresh(state, x, y, jax.random.fold_in(block_key, 0))
            step_keys = jax.random.split(jax.random.fold_in(block_key, 1), plan.per_block)
            return jax.lax.scan(step, state, (batches, step_keys))

        # Plain training orders by the epoch key itself, as it always has (cached models stay valid).
        order_key, blocks_key = (jax.random.split(epoch_key) if refresh is not None
                                 else (epoch_key, jax.random.fold_in(epoch_key, 1)))
        order = jax.random.permutation(order_key, len(y))[: plan.steps * plan.batch_size]
        state, losses = jax.lax.scan(block, state, (
            order.reshape(plan.blocks, plan.per_block, plan.batch_size),
            jax.random.split(blocks_key, plan.blocks)))
        return state, losses.reshape(-1)

    return epoch


def check_finite(losses: np.ndarray, epoch: int, first_loss: float | None = None) -> None:
    """Raises TrainingDiverged on a NaN/inf loss, or on one over 1000x the first step's (and over
    100): a learning rate far too high need not overflow to show that training has failed."""
    bad = np.flatnonzero(~np.isfinite(losses))
    if first_loss is not None and not bad.size:
        bad = np.flatnonzero(losses > max(1000 * first_loss, 100.0))
    if bad.size:
        batch = int(bad[0])
        raise TrainingDiverged(
            f"loss became {losses[batch]:.4g} at epoch {epoch}, batch {batch} "
            f"(step {epoch * len(losses) + batch}). Likely cause: the learning rate is too high; "
            "lower train.learning_rate, or check the inputs for NaNs."
        )


def run_epochs(epoch, state, key: jax.Array, x, y, epochs: int, *, desc: str = "train",
               on_epoch=None, before_epoch=None) -> tuple[Any, list]:
    """The host loop: `epochs` calls of the jitted `epoch`, each epoch's losses checked; returns
    the final state and each epoch's mean loss. `before_epoch(i, state, x, y) -> state` may
    change the state."""
    history, first, start = [], None, time.perf_counter()
    for i in (bar := tqdm(range(epochs), desc=desc, unit="epoch", leave=False)):
        if before_epoch is not None:
            state = before_epoch(i, state, x, y)
        state, losses = epoch(state, jax.random.fold_in(key, i), x, y)
        losses = np.asarray(losses)
        first = losses[0] if first is None else first
        check_finite(losses, i, first)
        history.append(losses.mean(-1))
        bar.set_postfix(loss=f"{np.mean(history[-1]):.4f}")
        if on_epoch:
            on_epoch(i, history[-1])
    log.info("%s: %d epochs, last epoch's loss %.4f, %.1f s", desc, epochs, np.mean(history[-1]),
             time.perf_counter() - start)
    return state, history


def lbfgs_chunk(objective, optimizer, tolerance: float):
    """chunk(carry, stop) -> (carry, value, grad_norm, count): L-BFGS steps until the iteration
    count reaches `stop` or |grad| < tolerance. carry = (params, optimizer state). Pure; the single
    model jits it, an ensemble vmaps it over members (each stops on its own)."""
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad,
                                          value_fn=objective)
        return optax.apply_updates(params, updates), state

    def going(carry, stop):
        count = otu.tree_get(carry[1], "count")
        grad_norm = otu.tree_norm(otu.tree_get(carry[1], "grad"))
        return (count == 0) | ((count < stop) & (grad_norm >= tolerance))

    def chunk(carry, stop):
        carry = jax.lax.while_loop(lambda c: going(c, stop), step, carry)
        state = carry[1]
        return (carry, otu.tree_get(state, "value"), otu.tree_norm(otu.tree_get(state, "grad")),
                otu.tree_get(state, "count"))

    return chunk


def lbfgs_stops(max_steps: int, chunk: int = 50) -> list[int]:
    """The iteration counts at which the host looks at an L-BFGS run (progress, divergence)."""
    return [min(stop, max_steps) for stop in range(chunk, max_steps + chunk, chunk)]


def minimize_lbfgs(objective, params, batch: tuple, max_steps: int, tolerance: float, *,
                   desc: str = "lbfgs", on_epoch=None) -> tuple[Any, list[float], int]:
    """Full-batch L-BFGS (optax, zoom line search) of objective(params, batch) until |grad| <
    tolerance or max_steps iterations, in jitted chunks of 50; returns params, the objective after
    each chunk, and the iteration count. One restart of `fit`'s L-BFGS."""
    optimizer = optax.lbfgs()

    @jax.jit
    def run_chunk(carry, stop, batch):  # data as arguments: see `fit`
        return lbfgs_chunk(lambda p: objective(p, batch), optimizer, tolerance)(carry, stop)

    batch = jax.tree.map(jnp.asarray, batch)
    carry, history, grad_norm, start = (params, optimizer.init(params)), [], float("inf"), time.perf_counter()
    with tqdm(total=max_steps, desc=desc, unit="it", leave=False) as bar:
        for i, stop in enumerate(lbfgs_stops(max_steps)):
            carry, value, grad_norm, count = run_chunk(carry, stop, batch)
            value, grad_norm = float(value), float(grad_norm)
            check_finite(np.array([value]), i, history[0] if history else None)
            history.append(value)
            bar.update(int(count) - bar.n)
            bar.set_postfix(loss=f"{value:.4f}", grad=f"{grad_norm:.1e}")
            if on_epoch:
                on_epoch(i, value)
            if grad_norm < tolerance:
                break
    count = int(otu.tree_get(carry[1], "count"))
    if history:  # none when max_steps is 0
        log.info("%s: %s at iteration %d (gradient norm %.2e, tolerance %.0e), loss %.4f, %.1f s",
                 desc, "converged" if grad_norm < tolerance else "stopped at the limit", count,
                 grad_norm, tolerance, history[-1], time.perf_counter() - start)
    return carry[0], history, count


def _fit_lbfgs(loss: LossFn, state: TrainState, x, y, plan: LbfgsPlan, hooks: Hooks):
    """`fit` by full-batch L-BFGS: plan.restarts calls of `minimize_lbfgs`, hooks.before ahead of
    each; the loss sees state.decay and state.aux as the restart began, its key None."""
    objective = lambda p, batch: loss(p, batch[2], batch[3], batch[:2], None)  # noqa: E731
    history, steps = [], 0
    per_restart = -(-plan.max_steps // plan.restarts)
    for r in range(plan.restarts):
        if hooks.before is not None:
            state = hooks.before(r, state, x, y)
        on_chunk = hooks.on_epoch and (lambda i, value, done=len(history): hooks.on_epoch(done + i, value))
        params, losses, count = minimize_lbfgs(
            objective, state.params, (x, y, state.decay, state.aux), per_restart, plan.tolerance,
            desc=plan.desc if plan.restarts == 1 else f"{plan.desc} {r}", on_epoch=on_chunk)
        state, history, steps = state._replace(params=params), history + losses, steps + count
    return state, history, steps


def fit(loss: LossFn, state: TrainState, data, plan: MinibatchPlan | LbfgsPlan,
        hooks: Hooks = Hooks(), key: jax.Array | None = None) -> tuple[TrainState, list[float], int]:
    """Trains state.params on data (x (N, ...), y (N,)) by `plan`, with the regime's `hooks`.
    Returns the final state, the loss history (each epoch's mean, or the objective after each
    L-BFGS chunk) and the optimizer step count. key: minibatch order and loss keys (L-BFGS: unused)."""
    # The data are arguments, not closed-over constants: XLA would otherwise embed (and try to
    # constant-fold) the whole training set in the compiled program.
    x, y = jnp.asarray(data[0]), jnp.asarray(data[1])
    if isinstance(plan, LbfgsPlan):
        return _fit_lbfgs(loss, state, x, y, plan, hooks)
    epoch = jax.jit(make_epoch(make_train_step(loss, plan.optimizer), plan.epoch, hooks.refresh),
                    donate_argnums=0)
    state, history = run_epochs(epoch, state, key, x, y, plan.epochs, desc=plan.desc,
                                on_epoch=hooks.on_epoch, before_epoch=hooks.before)
    return state, [float(h) for h in history], plan.steps


def fit_classifier(model: Model, params: Params, data: Dataset, key: jax.Array, cfg,
                   frozen_layers: tuple[int, ...] = (), on_epoch=None) -> tuple[Params, list[float], int]:
    """The plain classifier regime: `make_loss` fitted by cfg.optimizer (minibatch, or full-batch
    L-BFGS until |grad| < lbfgs_tolerance, at most lbfgs_steps iterations); layers in
    `frozen_layers` keep their weights. Returns params, the loss history, the step count."""
    if cfg.adversarial.layers or cfg.dropout.input > 0 or cfg.dropout.hidden > 0:
        # Refused, never silently dropped: pools and dropout are a regime of their own.
        raise ValueError("train.adversarial.layers and train.dropout train through "
                         "adversarial_training.fit_classifier (trained.train_or_load picks it)")
    loss, hooks = make_loss(model, cfg, frozen_layers), Hooks(on_epoch=on_epoch)
    if cfg.optimizer == "lbfgs":
        state, history, steps = fit(loss, TrainState(params, None), data, lbfgs_plan(cfg), hooks)
    else:
        plan = minibatch_plan(cfg, len(data))
        state, history, steps = fit(loss, TrainState(params, plan.optimizer.init(params)), data,
                                    plan, hooks, key)
    return state.params, history, steps


def sparse_autoencoder_loss(encoder: dict, decoder: dict, x: jax.Array, cfg) -> jax.Array:
    """0.5 * |x_hat - x|^2 per image + beta * sum_j KL(rho || rho_hat_j) + the paper's decay.

    x: (B, 28, 28, 1); rho_hat_j is hidden unit j's mean activation over the batch.
    """
    flat = x.reshape(x.shape[0], -1)
    code = jax.nn.sigmoid(flat @ encoder["w"] + encoder["b"])
    recon = jax.nn.sigmoid(code @ decoder["w"] + decoder["b"])
    rho, rho_hat = cfg.sparsity_target, jnp.clip(code.mean(0), 1e-6, 1 - 1e-6)
    kl = rho * jnp.log(rho / rho_hat) + (1 - rho) * jnp.log((1 - rho) / (1 - rho_hat))
    decay = cfg.weight_decay * (jnp.sum(encoder["w"] ** 2) / encoder["w"].shape[1]
                                + jnp.sum(decoder["w"] ** 2) / decoder["w"].shape[1])
    return 0.5 * jnp.sum((recon - flat) ** 2, -1).mean() + cfg.sparsity_weight * kl.sum() + decay


def pretrain_autoencoder(model: Model, params: Params, data: Dataset, key: jax.Array, ae_cfg,
                         train_cfg) -> tuple[Params, dict[str, float]]:
    """The pretraining regime: the first layer trained as a sparse sigmoid autoencoder on images
    alone (labels unused), fitted by minibatch Adam, or (ae_cfg.optimizer lbfgs) by full-batch
    L-BFGS for at most ae_cfg.lbfgs_steps iterations (stopping early below
    train_cfg.lbfgs_tolerance), as the paper's era did. Returns params and the autoencoder's
    metrics (its optimizer steps and final objective)."""
    first = model.layers[0]
    if first.kind != "dense" or first.activation != "sigmoid":
        raise ValueError("model.autoencoder needs a first dense sigmoid layer (e.g. hidden: [400])")
    n_in, n_hidden = params[0]["w"].shape
    init_key, fit_key = jax.random.split(key)
    decoder = {"w": jax.nn.initializers.glorot_normal()(init_key, (n_hidden, n_in)),
               "b": jnp.zeros(n_in)}
    pair = (params[0], decoder)
    loss = lambda p, decay, aux, batch, key: sparse_autoencoder_loss(p[0], p[1], batch[0], ae_cfg)  # noqa: E731
    if ae_cfg.optimizer == "lbfgs":
        plan = LbfgsPlan(ae_cfg.lbfgs_steps, train_cfg.lbfgs_tolerance, desc="autoencoder")
        state, history, steps = fit(loss, TrainState(pair, None), data, plan)
    else:
        plan = MinibatchPlan(optax.adam(ae_cfg.learning_rate), ae_cfg.epochs,
                             EpochPlan.for_data(len(data), train_cfg.batch_size), desc="autoencoder")
        state, history, steps = fit(loss, TrainState(pair, plan.optimizer.init(pair)), data, plan,
                                    key=fit_key)
    return (state.params[0],) + tuple(params[1:]), {"train/autoencoder_steps": steps,
                                                    "train/autoencoder_loss": history[-1]}


def evaluate(model: Model, params: Params, splits: dict[str, Dataset]) -> dict[str, float]:
    """Error rate (fraction) on each named split."""
    return {name: error_rate(model, params, jnp.asarray(d.x), jnp.asarray(d.y))
            for name, d in splits.items()}


def check_trained(model: Model, params: Params, data: Dataset, history: list[float]) -> None:
    """A finished model at chance level on its own training set with a loss well above the
    uniform guess's ln(classes) is confidently wrong: it diverged (raises, never cached)."""
    if not history or len(data) < 100 or not history[-1] > 1.5 * np.log(model.num_classes):
        return
    chance = 1.0 - 1.0 / model.num_classes
    error = error_rate(model, params, jnp.asarray(data.x[:2000]), jnp.asarray(data.y[:2000]))
    if error >= chance - 0.05:
        raise TrainingDiverged(f"the trained model's training error is {100 * error:.1f}% (chance: "
                               f"{100 * chance:.0f}%) with final loss {history[-1]:.4g}. Likely cause: "
                               "the learning rate is too high; lower train.learning_rate.")


def train_model(model: Model, model_cfg, train_cfg, data: Dataset, key: jax.Array,
                on_epoch=None, pretrain=pretrain_autoencoder,
                classifier=fit_classifier) -> tuple[Params, dict[str, Any]]:
    """init -> optional autoencoder pretraining -> classifier training. Returns params, metrics.
    `pretrain`, `classifier`: regimes with pretrain_autoencoder's and fit_classifier's signature
    and result (adv_jax/trained.py passes the cached pretraining, and
    adversarial_training.fit_classifier where train_cfg asks for pools or dropout)."""
    init_key, ae_key, fit_key = jax.random.split(key, 3)
    params = model.init(init_key)
    start, frozen, ae_metrics = time.perf_counter(), (), {}
    if model_cfg.autoencoder is not None:
        params, ae_metrics = pretrain(model, params, data, ae_key, model_cfg.autoencoder, train_cfg)
        frozen = (0,)
    params, history, steps = classifier(model, params, data, fit_key, train_cfg, frozen, on_epoch)
    params = jax.block_until_ready(params)
    check_trained(model, params, data, history)
    final_loss = history[-1] if history else float("nan")
    return params, {"train/seconds": time.perf_counter() - start, "train/final_loss": final_loss,
                    "train/steps": steps, **ae_metrics}
