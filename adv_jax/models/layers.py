"""The one layer enumeration every model is made of.

A model is a tuple of `Layer`s plus a parameter pytree of the same length: one dict per layer,
`{"w", "b"}` for dense and conv layers and `{}` for layers without weights. The forward pass,
the weight decay and the Lipschitz bounds all walk this same tuple, so they cannot disagree.

Beyond the paper's dense, conv and maxpool (docs/models.md):
  residual        act(x + branch(x)): `Layer.branch` is a tuple of layers, its params
                  {"branch": (params of each)}; `apply_residual` scales the branch's gradient (SGM)
  global_avgpool  mean over every axis between the batch and the channels: (B, ..., C) -> (B, C)
  tokens, linear, token_linear, layernorm, self_attention: adv_jax/models/tokens.py
  module          a flax.linen / flax.nnx / equinox module (adv_jax/models/external.py), params a
                  flat dict {path: array}
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from adv_jax.models.external import decay_sum
from adv_jax.models.tokens import (
    apply_attention,
    apply_layernorm,
    apply_tokens,
    init_attention,
    init_layernorm,
    init_tokens,
    token_linear,
)

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
LAYER_KINDS = ("dense", "conv", "maxpool", "residual", "global_avgpool", "tokens", "linear",
               "token_linear", "layernorm", "self_attention", "module")
# Layers with a decay coefficient of their own (one lambda each, also in ensembles' lambda vectors).
WEIGHTED_KINDS = ("dense", "conv", "linear", "token_linear", "self_attention", "residual", "module")


def _choose(kind: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {sorted(choices)}")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer: an affine map or a pooling, followed by an activation.

    kind: "dense" (flattens its input's trailing dims), "conv" (kernel HWIO, cross-correlation as
    `lax.conv_general_dilated` computes it), "maxpool" (window `kernel`, step `stride`), or one of
    the kinds in the module docstring. features: output units (dense, linear, token_linear: tokens
    out), channels (conv) or width (self_attention). padding: "SAME" or "VALID".
    weight_decay: lambda in the paper's penalty lambda * sum(w^2) / features (a residual layer's
    lambda covers its whole branch, whose own layers keep 0). heads: self_attention's.
    branch: a residual layer's layers. module: a kind "module" layer's ModuleAdapter.
    """

    kind: str
    features: int = 0
    kernel: int = 1
    stride: int = 1
    padding: str = "VALID"
    activation: str = "identity"
    weight_decay: float = 0.0
    heads: int = 0
    branch: tuple["Layer", ...] = ()
    module: Any = None

    def __post_init__(self):
        _choose("layer kind", self.kind, LAYER_KINDS)
        _choose("activation", self.activation, ACTIVATIONS)
        _choose("padding", self.padding, ("SAME", "VALID"))
        if (self.kind == "residual") != bool(self.branch):
            raise ValueError("a residual layer needs a branch, and only a residual layer has one")
        if any(layer.weight_decay for layer in self.branch):
            raise ValueError("a residual branch's layers take no weight_decay: the residual "
                             "layer's own lambda covers its branch")
        if (self.kind == "module") != (self.module is not None):
            raise ValueError("a module layer needs a ModuleAdapter, and only a module layer has one")

    @property
    def has_weights(self) -> bool:
        return self.kind in WEIGHTED_KINDS


def init_layer(layer: Layer, key: Array, in_shape: tuple[int, ...]) -> tuple[LayerParams, tuple]:
    """Parameters for one layer and its per-example output shape, given its input shape."""
    if layer.kind not in ("dense", "conv", "maxpool"):
        return _init_other(layer, key, in_shape)
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
    elif layer.kind == "maxpool":
        z = _max_pool(layer, x)
    else:
        z = _apply_other(layer, params, x)
    return ACTIVATIONS[layer.activation](z)


def _affine_init(layer: Layer, key: Array, w_shape: tuple[int, ...]) -> LayerParams:
    scale = 2.0 if layer.activation == "relu" else 1.0  # as init_layer: He for ReLU, else Glorot
    initializer = jax.nn.initializers.variance_scaling(scale, "fan_avg", "truncated_normal")
    return {"w": initializer(key, w_shape, jnp.float32), "b": jnp.zeros(layer.features, jnp.float32)}


def _init_other(layer: Layer, key: Array, in_shape: tuple[int, ...]) -> tuple[Any, tuple]:
    """init_layer for the kinds beyond dense, conv and maxpool."""
    kind = layer.kind
    if kind == "residual":
        params, out = init_chain(layer.branch, key, in_shape)
        if out != tuple(in_shape):
            raise ValueError(f"a residual branch maps {in_shape} to {out}: the skip needs the same shape")
        return {"branch": params}, out
    if kind == "global_avgpool":
        return {}, (in_shape[-1],)
    if kind == "tokens":
        return init_tokens(in_shape)
    if kind == "layernorm":
        return init_layernorm(in_shape), tuple(in_shape)
    if kind == "self_attention":
        return init_attention(key, layer.features, layer.heads, in_shape), tuple(in_shape)
    if kind == "module":
        return layer.module.init(key), (layer.module.num_classes,)
    if kind == "linear":
        return _affine_init(layer, key, (in_shape[-1], layer.features)), (*in_shape[:-1], layer.features)
    if len(in_shape) != 2:  # token_linear
        raise ValueError(f"token_linear needs (T, C) inputs, got per-example shape {in_shape}")
    return _affine_init(layer, key, (in_shape[0], layer.features)), (layer.features, in_shape[1])


def _apply_other(layer: Layer, params: Any, x: Array) -> Array:
    """apply_layer's affine or pooling part for the kinds beyond dense, conv and maxpool."""
    kind = layer.kind
    if kind == "residual":
        return x + apply_chain(layer.branch, params["branch"], x)
    if kind == "global_avgpool":
        return x.mean(axis=tuple(range(1, x.ndim - 1)))
    if kind == "tokens":
        return apply_tokens(params, x)
    if kind == "layernorm":
        return apply_layernorm(params, x)
    if kind == "self_attention":
        return apply_attention(params, x, layer.heads)
    if kind == "module":
        return layer.module.apply(params, x)
    if kind == "linear":
        return x @ params["w"] + params["b"]
    return token_linear(params, x)


def init_chain(layers: tuple[Layer, ...], key: Array, in_shape: tuple[int, ...]) -> tuple[tuple, tuple]:
    """Params of a sequence of layers (a model's, a residual branch's) and its output shape."""
    params, shape = [], tuple(in_shape)
    for layer, layer_key in zip(layers, jax.random.split(key, len(layers))):
        p, shape = init_layer(layer, layer_key, shape)
        params.append(p)
    return tuple(params), tuple(shape)


def apply_chain(layers: tuple[Layer, ...], params: tuple, x: Array, branch_grad_scale: float = 1.0) -> Array:
    """x through `layers` in turn; residual layers through `apply_residual` with branch_grad_scale."""
    for layer, p in zip(layers, params):
        if layer.kind == "residual" and branch_grad_scale != 1.0:
            x = apply_residual(layer, p, x, branch_grad_scale)
        else:
            x = apply_layer(layer, p, x)
    return x


def residual_parts(layer: Layer, params: LayerParams, x: Array) -> tuple[Array, Array]:
    """(skip, branch) of a residual layer on x (B, ...): its output is act(skip + branch)."""
    return x, apply_chain(layer.branch, params["branch"], x)


def scale_gradient(z: Array, scale: float) -> Array:
    """z in the forward pass (exactly), scale * dz in the backward pass."""
    frozen = jax.lax.stop_gradient(z)
    return frozen + scale * (z - frozen)


def apply_residual(layer: Layer, params: LayerParams, x: Array, branch_grad_scale: float = 1.0) -> Array:
    """act(x + branch(x)), the branch's gradient multiplied by branch_grad_scale (Skip Gradient
    Method, Wu et al. 2020: gamma < 1 favours the skip's gradient); the value is apply_layer's."""
    skip, branch = residual_parts(layer, params, x)
    return ACTIVATIONS[layer.activation](skip + scale_gradient(branch, branch_grad_scale))


def _conv(x: Array, w: Array, stride: int, padding: str) -> Array:
    """`lax.conv_general_dilated(x, w, (stride, stride), padding)` with x NHWC (B, H, W, C) and w
    HWIO (k, k, C, O). Inside a vmapped attack loop XLA's CPU convolution keeps a slow layout for
    few channels; a matmul of the image's patches does not, so every derivative goes through the
    patches (`_conv_patches`). The forward value is XLA's convolution, 2.6x faster on the ResNet
    at batch 1024, except for a one-channel input, whose XLA convolution slows attack steps."""
    if w.shape[2] == 1:
        return _conv_patches(x, w, stride, padding)
    dtype = jnp.result_type(x, w)  # XLA's convolution takes one dtype; the matmul would promote
    return _conv_xla(x.astype(dtype), w.astype(dtype), stride, padding)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_xla(x: Array, w: Array, stride: int, padding: str) -> Array:
    """XLA's convolution of x (B, H, W, C) with w (k, k, C, O), differentiated by `_conv_xla_jvp`."""
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(_conv_xla.defjvp, symbolic_zeros=True)
def _conv_xla_jvp(stride: int, padding: str, primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    """The convolution is bilinear: its tangent is conv(dx, w) + conv(x, dw), each through the
    patches, skipping an argument that is not differentiated (attacks: w, training: x). JAX
    calls this rule only when at least one of them is."""
    (x, w), (dx, dw) = primals, tangents
    out = _conv_xla(x, w, stride, padding)
    if type(dw) is SymbolicZero:
        return out, _conv_patches(dx, w, stride, padding)
    if type(dx) is SymbolicZero:
        return out, _conv_patches(x, dw, stride, padding)
    return out, _conv_patches(dx, w, stride, padding) + _conv_patches(x, dw, stride, padding)


def _conv_patches(x: Array, w: Array, stride: int, padding: str) -> Array:
    """`_conv` as one matmul of the image's patches (B, H', W', k*k*C) with w: on the conv net
    (conf/model/conv.yaml, batch 100) an attack's step takes 6.7 ms against XLA's 30.5, a training
    step 9.0 ms against 55.8."""
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
            total += _layer_decay(layer, p, lam)
    return total


def _layer_decay(layer: Layer, params: Any, lam) -> Array:
    if layer.kind in ("dense", "conv"):  # the operations in their original order: the same bits
        return lam * jnp.sum(params["w"] ** 2) / layer.features
    return lam * unit_decay(layer, params)


def unit_decay(layer: Layer, params: Any) -> Array:
    """A weighted layer's decay at lambda = 1: sum(w^2) / features over its weight matrices
    (attention: w_qkv and w_out; residual: each branch layer's own, summed; module: sum(w^2) of
    every weight array of ndim >= 2, not divided). Biases, norms and position embeddings: none."""
    if layer.kind == "module":
        return decay_sum(params)
    total = jnp.zeros((), jnp.float32)
    if layer.kind == "residual":
        for inner, p in zip(layer.branch, params["branch"]):
            if inner.has_weights:
                total += unit_decay(inner, p)
        return total
    for name, w in params.items():
        if name.startswith("w"):
            total += jnp.sum(w ** 2)
    return total / layer.features


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
    if layer.kind in ("dense", "linear", "token_linear"):
        shape = "x".join(map(str, params["w"].shape))
    elif layer.kind == "conv":
        k, _, c, d = params["w"].shape
        shape = f"{c}x{k}x{k}x{d}/{layer.stride}"
    elif layer.kind == "maxpool":
        shape = f"{layer.kernel}x{layer.kernel}/{layer.stride}"
    elif layer.kind == "residual":
        shape = "[" + "; ".join(describe(inner, p) for inner, p in zip(layer.branch, params["branch"])) + "]"
    elif layer.kind == "self_attention":
        shape = f"{layer.features}/{layer.heads} heads"
    elif layer.kind == "module":
        shape = f"{layer.module.target} ({layer.module.framework})"
    else:  # global_avgpool, tokens, layernorm
        shape = "x".join(map(str, params["pos"].shape)) if layer.kind == "tokens" else ""
    return f"{layer.kind} {shape} {layer.activation}"
