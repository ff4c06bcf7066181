"""Models: a frozen tuple of layers with pure `init(key) -> params` and `apply(params, x) -> logits`.

Every model in adv_jax (fc10, fc100, fc123, fc200, ae400, conv, bottleneck2d and any widths from
config) is a `Model` built by `build_model` from its `conf/model/*.yaml` entry.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from adv_jax import devices
from adv_jax.models.layers import (
    ACTIVATION_LIPSCHITZ,
    ACTIVATIONS,
    Layer,
    LayerParams,
    apply_layer,
    describe,
    init_layer,
    weight_decay,
)

__all__ = [
    "ACTIVATIONS", "ACTIVATION_LIPSCHITZ", "Layer", "Model", "Params", "build_model", "describe",
    "error_rate", "logits_fn", "num_params", "predict",
]

Params = tuple[LayerParams, ...]


@dataclasses.dataclass(frozen=True)
class Model:
    """A feed-forward classifier on (B, 28, 28, 1) images in [0, 1].

    Frozen and hashable, so it can be a static argument of `jax.jit`.
    """

    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...] = (28, 28, 1)

    @property
    def num_classes(self) -> int:
        return self.layers[-1].features

    def init(self, key: jax.Array) -> Params:
        """Parameters for `key`: one compiled program per model (eager initializers compile
        one program per layer shape, seconds each on CPU). Inside a trace (vmap, jit) it is
        traced as part of the caller's program."""
        if isinstance(key, jax.core.Tracer):
            return self._init_layers(key)
        return _init_program(self)(key)

    def _init_layers(self, key: jax.Array) -> Params:
        params, shape = [], self.input_shape
        for layer, layer_key in zip(self.layers, jax.random.split(key, len(self.layers))):
            p, shape = init_layer(layer, layer_key, shape)
            params.append(p)
        return tuple(params)

    def apply(self, params: Params, x: jax.Array, *, start: int = 0, stop: int | None = None):
        """Runs layers[start:stop] on a batch: images (B, 28, 28, 1) -> logits (B, num_classes).

        With `start`/`stop`, x and the result are the activations before and after those layers
        (unit analysis, per-layer adversarial training).
        """
        for layer, p in zip(self.layers[start:stop], params[start:stop]):
            x = apply_layer(layer, p, x)
        return x

    def weight_decay(self, params: Params) -> jax.Array:
        return weight_decay(self.layers, params)

    def summary(self, params: Params) -> list[str]:
        return [describe(layer, p) for layer, p in zip(self.layers, params)]


def num_params(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def _per_layer(value: Any, count: int, what: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * count
    values = [float(v) for v in value]
    if len(values) != count:
        raise ValueError(f"model.{what} has {len(values)} entries but the model has {count} "
                         f"weighted layers; give one value or one per layer")
    return values


def build_model(cfg: Any) -> Model:
    """Builds a `Model` from a model config (`conf/model/*.yaml`, schema `ModelConfig`).

    Layout: each conv block (conv, then max-pooling if `pool > 1`), then one dense layer per
    `hidden` width with `activation`, then a linear output layer with one unit per class.
    """
    num_classes = len(cfg.classes) if cfg.classes else 10
    specs: list[dict] = []
    for block in cfg.conv:
        specs.append(dict(kind="conv", features=block.features, kernel=block.kernel,
                          stride=block.stride, padding=block.padding, activation=block.activation))
        if block.pool > 1:
            specs.append(dict(kind="maxpool", kernel=block.pool, stride=block.pool, padding="VALID"))
    specs += [dict(kind="dense", features=h, activation=cfg.activation) for h in cfg.hidden]
    specs.append(dict(kind="dense", features=num_classes, activation="identity"))

    weighted = [s for s in specs if s["kind"] != "maxpool"]
    for spec, lam in zip(weighted, _per_layer(cfg.weight_decay, len(weighted), "weight_decay")):
        spec["weight_decay"] = lam
    return Model(layers=tuple(Layer(**s) for s in specs))


def _float32_logits(model: Model, params: Params, x: jax.Array) -> jax.Array:
    return model.apply(params, jnp.asarray(x, jnp.float32))


@functools.lru_cache(maxsize=64)
def _init_program(model: Model):
    return jax.jit(model._init_layers, compiler_options=devices.run_once_compiler_options())


def logits_fn(model: Model, params: Params) -> jax.tree_util.Partial:
    """A jittable function from images (B, 28, 28, 1) in [0, 1] to logits (B, num_classes).

    A pytree (`jax.tree_util.Partial`) whose leaves are the params, so the attacks' jitted loop
    traces them as arguments: one compilation serves every params of the same model.
    """
    return jax.tree_util.Partial(_float32_logits, model, params)


@functools.partial(jax.jit, static_argnums=0)
def _predict_batch(model: Model, params: Params, x: jax.Array) -> jax.Array:
    return jnp.argmax(model.apply(params, x), -1)


def predict(model: Model, params: Params, x: jax.Array, batch_size: int = 10000) -> jax.Array:
    """Predicted labels (N,) for images (N, 28, 28, 1), evaluated in batches of `batch_size`, each
    split across all local devices (`adv_jax.devices`)."""
    if len(x) == 0:
        return jnp.zeros((0,), jnp.int32)
    params, parts = devices.replicate(params), []
    for i in range(0, len(x), batch_size):
        chunk = jnp.asarray(x[i:i + batch_size])
        (padded,) = devices.shard_rows(devices.pad_rows(chunk, devices.round_up(len(chunk))))
        parts.append(_predict_batch(model, params, padded)[: len(chunk)])
    return jnp.concatenate(parts)


def error_rate(model: Model, params: Params, x: jax.Array, y: jax.Array, batch_size: int = 10000) -> float:
    """Fraction of (N, 28, 28, 1) images whose predicted label differs from y (N,)."""
    if len(x) == 0:
        return float("nan")
    return float(jnp.mean(predict(model, params, x, batch_size) != y))

