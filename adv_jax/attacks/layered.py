"""The layered model: what feature-level and model-related attacks take instead of a bare logits_fn.

An adv_jax model is a tuple of layers (adv_jax/models/layers.py), so `model.apply(params, x,
stop=k)` are the features at layer k and `model.apply(params, h, start=k)` the head on them.
ILA, FIA, NAA need those two halves, LinBP and Ghost change how each layer runs, SGM needs to
find the residual layers: none of that can be read off an opaque logits_fn. So they take

    layered(model, params) -> LayeredModel

in place of `adv_jax.models.logits_fn(model, params)`. A LayeredModel IS a batched logits_fn
(B, 28, 28, 1) -> (B, K), so `generate`, `attack_batch` and every other attack accept it
unchanged; it is a pytree whose leaves are the params (traced, one compilation per model
shape, as for `logits_fn`), and `per_example` gives the single-example form that
`common.single_example` hands to an attack. The layer k an attack works at is the attack's own
hyperparameter (`layer`, in its YAML), not part of the model: `split(k)` gives the pair
(features (*shape) -> (*h_shape), head (*h_shape) -> (K,)). An attack given anything else
refuses at its first call with one ValueError line (`require_layered`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from adv_jax.models import Model
from adv_jax.models.layers import Layer, LayerParams, apply_layer

__all__ = ["LayerFn", "LayeredModel", "layered", "require_layered"]

# How one layer runs: (index in model.layers, layer, its params, input batch) -> output batch.
LayerFn = Callable[[int, Layer, LayerParams, jax.Array], jax.Array]


def _plain(index: int, layer: Layer, params: LayerParams, h: jax.Array) -> jax.Array:
    del index
    return apply_layer(layer, params, h)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class LayeredModel:
    """An adv_jax Model with its params; batched (B, ...) or, after `per_example`, one example."""

    model: Model
    params: tuple
    batched: bool = True

    @property
    def depth(self) -> int:
        return len(self.model.layers)

    def run(self, x: jax.Array, start: int = 0, stop: int | None = None,
            layer_fn: LayerFn = _plain) -> jax.Array:
        """layers[start:stop] on x (the activations before layer `start`), each through
        layer_fn (default: the model's own forward pass) -> the activations after them."""
        h = jnp.asarray(x, jnp.float32)
        h = h if self.batched else h[None]  # the layers work on batches
        stop = self.depth if stop is None else stop
        for index in range(start, stop):
            h = layer_fn(index, self.model.layers[index], self.params[index], h)
        return h if self.batched else h[0]

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits: (B, *shape) -> (B, K), or (*shape) -> (K,) per example."""
        return self.run(x)

    def split(self, k: int) -> tuple[Callable, Callable]:
        """(features: x -> activations after layers[:k], head: those -> logits)."""
        return (lambda x: self.run(x, stop=k)), (lambda h: self.run(h, start=k))

    def per_example(self, single: Callable) -> "LayeredModel":
        """The one-example form (`common.single_example` calls this)."""
        del single
        return dataclasses.replace(self, batched=False)

    def tree_flatten(self):
        return (self.params,), (self.model, self.batched)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], tuple(children[0]), aux[1])


def layered(model: Model, params) -> LayeredModel:
    """The batched layered model of an adv_jax Model and its params (module docstring)."""
    return LayeredModel(model, tuple(params))


def require_layered(logits_fn, attack: str, layer: int | None = None) -> LayeredModel:
    """logits_fn itself when it is a LayeredModel (and `layer`, if given, is one of its hidden
    layers 1 .. depth-1), else a one-line ValueError naming what to pass instead."""
    if not isinstance(logits_fn, LayeredModel):
        raise ValueError(f"{attack} needs the split model, not a bare logits_fn "
                         f"({type(logits_fn).__name__}): pass "
                         f"adv_jax.attacks.layered(model, params) as the logits_fn")
    if layer is not None and logits_fn.depth < 2:
        raise ValueError(f"{attack} works on a hidden layer; this model has none (one layer)")
    if layer is not None and not 1 <= layer < logits_fn.depth:
        raise ValueError(f"{attack}: layer {layer} is not a hidden layer of this "
                         f"{logits_fn.depth}-layer model; choose 1 .. {logits_fn.depth - 1}")
    return logits_fn
