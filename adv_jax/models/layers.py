"""The one layer enumeration every model is made of.

A model is a tuple of `Layer`s plus a parameter pytree of the same length: one dict per layer,
`{"w", "b"}` for dense and conv layers and `{}` for layers without weights. The forward pass,
the weight decay and the Lipschitz bounds all walk this same tuple, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
LayerParams = dict[str, Array]

ACTIVATIONS = {
    "identity": lambda z: z,
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}
# Largest slope of each activation: its Lipschitz constant.
ACTIVATION_LIPSCHITZ = {"identity": 1.0, "sigmoid": 0.25, "relu": 1.0, "tanh": 1.0}
LAYER_KINDS = ("dense", "conv", "maxpool")


def _choose(kind: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {sorted(choices)}")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer: an affine map or a pooling, followed by an activation.

    kind: "dense" (flattens its input's trailing dims), "conv" (kernel HWIO, cross-correlation as
    `lax.conv_general_dilated` computes it) or "maxpool" (window `kernel`, step `stride`).
    features: output units (dense) or channels (conv). padding: "SAME" or "VALID".
    weight_decay: lambda in the paper's penalty lambda * sum(w^2) / features.
    """

    kind: str
    features: int = 0
    kernel: int = 1
    stride: int = 1
    padding: str = "VALID"
    activation: str = "identity"
    weight_decay: float = 0.0

    def __post_init__(self):
        _choose("layer kind", self.kind, LAYER_KINDS)
        _choose("activation", self.activation, ACTIVATIONS)
        _choose("padding", self.padding, ("SAME", "VALID"))

    @property
    def has_weights(self) -> bool:
        return self.kind in ("dense", "conv")


def init_layer(layer: Layer, key: Array, in_shape: tuple[int, ...]) -> tuple[LayerParams, tuple]:
    """Parameters for one layer and its per-example output shape, given its input shape."""
    if layer.kind == "maxpool":
        return {}, _out_shape(layer, in_shape)
    # Glorot for saturating units, He for ReLU: keeps the first activations in range.
    scale = 2.0 if layer.activation == "relu" else 1.0
    initializer = jax.nn.initializers.variance_scaling(scale, "fan_avg", "truncated_normal")
    if layer.kind == "dense":
        w_shape = (_size(in_shape), layer.features)
    else:
        w_shape = (layer.kernel, layer.kernel, in_shape[-1], layer.features)
    params = {"w": initializer(key, w_shape, jnp.float32), "b": jnp.zeros(layer.features, jnp.float32)}
    return params, _out_shape(layer, in_shape)


def apply_layer(layer: Layer, params: LayerParams, x: Array) -> Array:
    """x: (B, ...) batch -> the layer's activations (B, ...)."""
    if layer.kind == "dense":
        z = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
    elif layer.kind == "conv":
        z = _conv(x, params["w"], layer.stride, layer.padding) + params["b"]
    else:
        z = _max_pool(layer, x)
    return ACTIVATIONS[layer.activation](z)


def _conv(x: Array, w: Array, stride: int, padding: str) -> Array:
    """`lax.conv_general_dilated(x, w, (stride, stride), padding)` with x NHWC (B, H, W, C) and w
    HWIO (k, k, C, O), as one matmul of the image's patches (B, H', W', k*k*C) with w: inside a
    loop XLA's CPU convolution keeps a slow layout for few channels, a matmul does not. On the conv
    net (conf/model/conv.yaml, batch 100) an attack's step takes 6.7 ms against 30.5, a training
    step 9.0 ms against 55.8. The patches hold k*k*C values per output position."""
    k = w.shape[0]
    pads = jax.lax.padtype_to_pads(x.shape[1:3], (k, k), (stride, stride), padding)
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out_h, out_w = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    taps = [x[:, i: i + stride * (out_h - 1) + 1: stride, j: j + stride * (out_w - 1) + 1: stride]
            for i in range(k) for j in range(k)]
    return jnp.concatenate(taps, axis=-1) @ w.reshape(-1, w.shape[-1])


def _max_pool(layer: Layer, x: Array) -> Array:
    """Max over windows of x (B, H, W, C). Non-overlapping VALID windows (the conv blocks' pools)
    are a reshape and a max: the same values as `reduce_window`, whose gradient (XLA's
    select-and-scatter) is several times slower on a CPU."""
    k = layer.kernel
    if layer.stride == k and layer.padding == "VALID":
        b, h, w, c = x.shape
        h, w = h // k, w // k
        tiles = x[:, : h * k, : w * k].reshape(b, h, k, w, k, c)
        return tiles.max(axis=(2, 4))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1),
                                 (1, layer.stride, layer.stride, 1), layer.padding)


def weight_decay(layers: tuple[Layer, ...], params: tuple[LayerParams, ...],
                 lambdas: Array | None = None) -> Array:
    """The paper's penalty: sum over layers of lambda_k * sum(w^2) / k, k = units in the layer.

    lambdas: (number of weighted layers,) used instead of each layer's own `weight_decay`, so
    that lambda can be traced data (an ensemble vmaps over it; adv_jax/ensemble.py).
    """
    total = jnp.zeros((), jnp.float32)
    weighted = [(layer, p) for layer, p in zip(layers, params) if layer.has_weights]
    for j, (layer, p) in enumerate(weighted):
        lam = layer.weight_decay if lambdas is None else lambdas[j]
        if lambdas is not None or lam:
            total += lam * jnp.sum(p["w"] ** 2) / layer.features
    return total


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _out_shape(layer: Layer, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    if layer.kind == "dense":
        return (layer.features,)
    if len(in_shape) != 3:
        raise ValueError(f"{layer.kind} layer needs (H, W, C) inputs, got per-example shape {in_shape}")
    h, w, c = in_shape
    out_c = layer.features if layer.kind == "conv" else c
    if layer.padding == "SAME":
        return (-(-h // layer.stride), -(-w // layer.stride), out_c)
    if layer.kernel > min(h, w):
        raise ValueError(f"{layer.kind} window {layer.kernel} is larger than its {h}x{w} input")
    return ((h - layer.kernel) // layer.stride + 1, (w - layer.kernel) // layer.stride + 1, out_c)


def describe(layer: Layer, params: LayerParams | dict[str, Any]) -> str:
    """A short human-readable description, e.g. 'dense 784x100 sigmoid'."""
    if layer.kind == "dense":
        shape = "x".join(map(str, params["w"].shape))
    elif layer.kind == "conv":
        k, _, c, d = params["w"].shape
        shape = f"{c}x{k}x{k}x{d}/{layer.stride}"
    else:
        shape = f"{layer.kernel}x{layer.kernel}/{layer.stride}"
    return f"{layer.kind} {shape} {layer.activation}"
