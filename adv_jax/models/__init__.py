"""Models: a frozen tuple of layers with pure `init(key) -> params` and `apply(params, x) -> logits`.

Every model in adv_jax (fc10, fc100, fc123, fc200, ae400, conv, bottleneck2d and any widths from
config; resnet_small, vit_small, mixer_small from `model.arch`; any flax/equinox module from
`model._target_`) is a `Model` built by `build_model` from its `conf/model/*.yaml` entry.
Residual layers for attacks that treat skips apart (SGM): `branch_scaled_logits_fn`.
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
    apply_chain,
    apply_layer,
    apply_residual,
    describe,
    init_layer,
    residual_parts,
    weight_decay,
)
from adv_jax.models.zoo import ARCHITECTURES

__all__ = [
    "ACTIVATIONS", "ACTIVATION_LIPSCHITZ", "Layer", "Model", "Params", "apply_residual",
    "branch_scaled_logits_fn", "build_model", "describe", "error_rate", "logits_fn", "num_params",
    "predict", "residual_parts",
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

    Layout (arch "layers"): each conv block (conv, then max-pooling if `pool > 1`), then one dense
    layer per `hidden` width with `activation`, then a linear output layer with one unit per
    class. Other `model.arch` values (and any `model._target_`): `_build_family`.
    """
    if cfg.get("_target_") or cfg.get("arch", "layers") != "layers":
        return _build_family(cfg)
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


def _build_family(cfg: Any) -> Model:
    """resnet, vit, mixer (adv_jax/models/zoo.py) + hidden dense layers + output layer; or the
    one module layer of `_target_`. One lambda per weighted layer (a residual layer's covers its
    branch; a module's all its weight arrays)."""
    arch = "module" if cfg.get("_target_") else cfg.arch
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model.arch {arch!r}; choose one of {['layers', *sorted(ARCHITECTURES)]}")
    layers = ARCHITECTURES[arch](cfg)
    if arch != "module":
        num_classes = len(cfg.classes) if cfg.classes else 10
        layers += [Layer("dense", features=h, activation=cfg.activation) for h in cfg.hidden]
        layers.append(Layer("dense", features=num_classes))
    elif cfg.hidden or cfg.conv or cfg.classes:
        raise ValueError("model._target_: the module is the whole model; leave model.hidden, "
                         "model.conv and model.classes empty")
    count = sum(layer.has_weights for layer in layers)
    lambdas = iter(_per_layer(cfg.weight_decay, count, "weight_decay"))
    return Model(layers=tuple(dataclasses.replace(layer, weight_decay=next(lambdas))
                              if layer.has_weights else layer for layer in layers))


def branch_scaled_logits_fn(model: Model, params: Params, branch_grad_scale: float) -> jax.tree_util.Partial:
    """`logits_fn` whose residual layers pass gradients through their branch times
    branch_grad_scale and through their skip unchanged (the Skip Gradient Method, Wu et al.
    2020); the logits are the model's own. Per layer: `residual_parts`, `apply_residual`."""
    return jax.tree_util.Partial(_branch_scaled_logits, model, branch_grad_scale, params)


def _branch_scaled_logits(model: Model, branch_grad_scale: float, params: Params, x: jax.Array) -> jax.Array:
    return apply_chain(model.layers, params, jnp.asarray(x, jnp.float32), branch_grad_scale)


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

