"""Training: the paper's loss, minibatch optax optimizers or full-batch L-BFGS, and AE pretraining.

Loss (per example mean, then the paper's decay summed over layers):

    L(params) = mean_i CE(f(x_i), y_i) + sum_k lambda_k * sum(W_k^2) / k_units

A whole epoch is one jitted `lax.scan` over minibatches with the data kept on device; the host
only sees the per-step losses once per epoch (progress bar, divergence check).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

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
LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (params, x, y) -> scalar
OPTIMIZERS = ("adam", "sgd", "lbfgs")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the likely cause."""


def classification_loss(model: Model, params: Params, x: jax.Array, y: jax.Array,
                        decay_scale: float = 1.0, lipschitz_weight: float = 0.0,
                        lambdas: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy over the batch, plus decay_scale times the paper's decay, plus
    lipschitz_weight times log of the network's Lipschitz upper bound. `lambdas` (one per weighted
    layer) replace the layers' own decay coefficients (ensembles vmap over them)."""
    logits = model.apply(params, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss = ce + decay_scale * weight_decay(model.layers, params, lambdas)
    if lipschitz_weight:
        loss += lipschitz_weight * lipschitz_penalty(model, params, model.input_shape)
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


def _check_finite(losses: np.ndarray, epoch: int) -> None:
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        batch = int(bad[0])
        raise TrainingDiverged(
            f"loss became {losses[batch]} at epoch {epoch}, batch {batch} "
            f"(step {epoch * len(losses) + batch}). Likely cause: the learning rate is too high; "
            "lower train.learning_rate, or check the inputs for NaNs."
        )


def fit_minibatch(loss: LossFn, params: Any, data: Dataset, key: jax.Array, *,
                  optimizer: optax.GradientTransformation, epochs: int, batch_size: int,
                  on_epoch: Callable[[int, float], None] | None = None) -> tuple[Any, list[float], int]:
    """Minibatch training for `epochs`; returns params, each epoch's mean loss, and the step count.

    Each epoch visits a fresh permutation; the last partial batch is dropped.
    """
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    batch_size = min(batch_size, len(y))
    num_batches = len(y) // batch_size

    # The data are arguments, not closed-over constants: XLA would otherwise embed (and try to
    # constant-fold) the whole training set in the compiled program.
    @functools.partial(jax.jit, donate_argnums=0)
    def epoch(state, epoch_key, x, y):
        def step(state, index):
            params, opt_state = state
            value, grads = jax.value_and_grad(loss)(params, x[index], y[index])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        order = jax.random.permutation(epoch_key, len(y))[: num_batches * batch_size]
        return jax.lax.scan(step, state, order.reshape(num_batches, batch_size))

    state, history = (params, optimizer.init(params)), []
    for i in (bar := tqdm(range(epochs), desc="train", unit="epoch", leave=False)):
        state, losses = epoch(state, jax.random.fold_in(key, i), x, y)
        losses = np.asarray(losses)
        _check_finite(losses, i)
        history.append(float(losses.mean()))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if on_epoch:
            on_epoch(i, history[-1])
    return state[0], history, epochs * num_batches


def fit_lbfgs(loss: LossFn, params: Any, data: Dataset, cfg, chunk: int = 50,
              on_epoch: Callable[[int, float], None] | None = None) -> tuple[Any, list[float], int]:
    """Full-batch L-BFGS (optax, zoom line search) until |grad| < cfg.lbfgs_tolerance.

    Runs inside jit in chunks of `chunk` iterations; returns params, the loss after each chunk,
    and the number of iterations.
    """
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    optimizer = optax.lbfgs()

    @jax.jit
    def run_chunk(carry, stop, x, y):  # data as arguments: see fit_minibatch
        objective = lambda p: loss(p, x, y)  # noqa: E731
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
            return (count == 0) | ((count < stop) & (grad_norm >= cfg.lbfgs_tolerance))
        carry = jax.lax.while_loop(going, step, carry)
        return carry, otu.tree_get(carry[1], "value"), otu.tree_norm(otu.tree_get(carry[1], "grad"))

    carry, history = (params, optimizer.init(params)), []
    with tqdm(total=cfg.lbfgs_steps, desc="lbfgs", unit="it", leave=False) as bar:
        for i, stop in enumerate(range(chunk, cfg.lbfgs_steps + chunk, chunk)):
            carry, value, grad_norm = run_chunk(carry, min(stop, cfg.lbfgs_steps), x, y)
            value, grad_norm = float(value), float(grad_norm)
            _check_finite(np.array([value]), i)
            history.append(value)
            bar.update(int(otu.tree_get(carry[1], "count")) - bar.n)
            bar.set_postfix(loss=f"{value:.4f}", grad=f"{grad_norm:.1e}")
            if on_epoch:
                on_epoch(i, value)
            if grad_norm < cfg.lbfgs_tolerance:
                break
    return carry[0], history, int(otu.tree_get(carry[1], "count"))


def fit(loss: LossFn, params: Any, data: Dataset, key: jax.Array, cfg, on_epoch=None):
    """Dispatches on cfg.optimizer: minibatch adam/sgd, or full-batch lbfgs."""
    if cfg.optimizer == "lbfgs":
        return fit_lbfgs(loss, params, data, cfg, on_epoch=on_epoch)
    steps = cfg.epochs * (len(data) // min(cfg.batch_size, len(data)))
    return fit_minibatch(loss, params, data, key, optimizer=make_optimizer(cfg, steps),
                         epochs=cfg.epochs, batch_size=cfg.batch_size, on_epoch=on_epoch)


def train_classifier(model: Model, params: Params, data: Dataset, key: jax.Array, cfg,
                     frozen_layers: tuple[int, ...] = (), on_epoch=None) -> tuple[Params, list[float], int]:
    """Trains `params` on `data`; layers listed in `frozen_layers` keep their weights.

    Frozen layers stay in the optimized pytree with their gradient stopped (a zero gradient moves
    neither Adam, SGD nor L-BFGS), rather than being closed over: a closed-over array would be
    baked into the compiled loss as a constant. `train.adversarial` pools or `train.dropout` hand
    training to `adversarial_training.fit_adversarial`.
    """
    from adv_jax import adversarial_training  # imports this module

    if adversarial_training.enabled(cfg):
        return adversarial_training.fit_adversarial(model, params, data, key, cfg, frozen_layers,
                                                    on_epoch)

    def loss(p, x, y):
        p = tuple(jax.lax.stop_gradient(q) if i in frozen_layers else q for i, q in enumerate(p))
        return classification_loss(model, p, x, y, cfg.decay_scale, cfg.lipschitz_penalty)

    return fit(loss, params, data, key, cfg, on_epoch=on_epoch)


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
                         train_cfg) -> Params:
    """Trains the first layer as a sparse sigmoid autoencoder on images alone (no labels)."""
    first = model.layers[0]
    if first.kind != "dense" or first.activation != "sigmoid":
        raise ValueError("model.autoencoder needs a first dense sigmoid layer (e.g. hidden: [400])")
    n_in, n_hidden = params[0]["w"].shape
    init_key, fit_key = jax.random.split(key)
    decoder = {"w": jax.nn.initializers.glorot_normal()(init_key, (n_hidden, n_in)),
               "b": jnp.zeros(n_in)}
    loss = lambda p, x, y: sparse_autoencoder_loss(p[0], p[1], x, ae_cfg)  # noqa: E731
    (encoder, _), _, _ = fit_minibatch(loss, (params[0], decoder), data, fit_key,
                                    optimizer=optax.adam(ae_cfg.learning_rate),
                                    epochs=ae_cfg.epochs, batch_size=train_cfg.batch_size)
    return (encoder,) + tuple(params[1:])


def evaluate(model: Model, params: Params, splits: dict[str, Dataset]) -> dict[str, float]:
    """Error rate (fraction) on each named split."""
    return {name: error_rate(model, params, jnp.asarray(d.x), jnp.asarray(d.y))
            for name, d in splits.items()}


def train_model(model: Model, model_cfg, train_cfg, data: Dataset, key: jax.Array,
                on_epoch=None) -> tuple[Params, dict[str, Any]]:
    """init -> optional autoencoder pretraining -> classifier training. Returns params, metrics."""
    init_key, ae_key, fit_key = jax.random.split(key, 3)
    params = model.init(init_key)
    start, frozen = time.perf_counter(), ()
    if model_cfg.autoencoder is not None:
        params = pretrain_autoencoder(model, params, data, ae_key, model_cfg.autoencoder, train_cfg)
        frozen = (0,)
    params, history, steps = train_classifier(model, params, data, fit_key, train_cfg, frozen, on_epoch)
    params = jax.block_until_ready(params)
    final_loss = history[-1] if history else float("nan")
    return params, {"train/seconds": time.perf_counter() - start, "train/final_loss": final_loss,
                    "train/steps": steps}
