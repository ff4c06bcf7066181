"""The token layers of the vision transformer and the MLP-Mixer (conf/model/vit_small.yaml,
mixer_small.yaml), as pure functions of arrays; `adv_jax.models.layers` dispatches to them.

Shapes per batch: a patch embedding (a conv with kernel = stride = patch) gives (B, H, W, C);
`tokens` makes it (B, T, C), T = H * W, and adds a learned position embedding (T, C). Then

  linear          (B, T, C) -> (B, T, F)   x @ w + b on each token (w (C, F)): channel mixing
  token_linear    (B, T, C) -> (B, F, C)   w^T x + b on each channel (w (T, F)): token mixing
  layernorm       (B, T, C) -> (B, T, C)   (x - mean) / sqrt(var + 1e-6) * scale + bias, over C
  self_attention  (B, T, C) -> (B, T, C)   softmax(q k^T / sqrt(C / heads)) v per head, then w_out

Layer norm and attention have no global Lipschitz constant (the division by the standard
deviation, and the softmax of products of the input with itself; Kim et al. 2021), so
`adv_jax.lipschitz.layer_table` marks them unbounded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
LAYERNORM_EPS = 1e-6


def init_tokens(in_shape: tuple[int, ...]) -> tuple[dict[str, Array], tuple[int, ...]]:
    """(H, W, C) -> params {"pos": (H*W, C) zeros} and the output shape (H*W, C). Zeros: the
    embedding starts as no shift and is learned like a bias."""
    if len(in_shape) != 3:
        raise ValueError(f"tokens needs (H, W, C) inputs, got per-example shape {in_shape}")
    h, w, c = in_shape
    return {"pos": jnp.zeros((h * w, c), jnp.float32)}, (h * w, c)


def apply_tokens(params: dict[str, Array], x: Array) -> Array:
    """(B, H, W, C) -> (B, H*W, C) plus the position embedding."""
    b, h, w, c = x.shape
    return x.reshape(b, h * w, c) + params["pos"]


def init_layernorm(in_shape: tuple[int, ...]) -> dict[str, Array]:
    c = in_shape[-1]
    return {"scale": jnp.ones(c, jnp.float32), "bias": jnp.zeros(c, jnp.float32)}


def apply_layernorm(params: dict[str, Array], x: Array) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LAYERNORM_EPS) * params["scale"] + params["bias"]


def token_linear(params: dict[str, Array], x: Array) -> Array:
    """(B, T, C) -> (B, F, C): the same affine map of the T tokens for every channel."""
    return jnp.einsum("btc,tf->bfc", x, params["w"]) + params["b"][:, None]


def init_attention(key: Array, width: int, heads: int, in_shape: tuple[int, ...]) -> dict[str, Array]:
    """Glorot-initialized w_qkv (C, 3C), w_out (C, C) and zero biases for (T, C) inputs."""
    if len(in_shape) != 2 or in_shape[-1] != width:
        raise ValueError(f"self_attention of width {width} needs (T, {width}) inputs, got {in_shape}")
    if heads < 1 or width % heads:
        raise ValueError(f"self_attention: width {width} is not a multiple of heads={heads}")
    glorot = jax.nn.initializers.glorot_normal()
    k_qkv, k_out = jax.random.split(key)
    return {"w_qkv": glorot(k_qkv, (width, 3 * width), jnp.float32),
            "b_qkv": jnp.zeros(3 * width, jnp.float32),
            "w_out": glorot(k_out, (width, width), jnp.float32),
            "b_out": jnp.zeros(width, jnp.float32)}


def apply_attention(params: dict[str, Array], x: Array, heads: int) -> Array:
    """Multi-head self-attention over the tokens of x (B, T, C), no mask."""
    b, t, c = x.shape
    qkv = (x @ params["w_qkv"] + params["b_qkv"]).reshape(b, t, 3, heads, c // heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, heads, C / heads) each
    weights = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(c / heads), axis=-1)
    mixed = jnp.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, c)
    return mixed @ params["w_out"] + params["b_out"]
