"""Per-layer Lipschitz bounds (Szegedy et al. 2014, section 4.3) and empirical lower bounds.

For phi = phi_K o ... o phi_1, ||phi(x) - phi(x + r)||_2 <= L ||r||_2 with L = prod_k L_k, where
L_k = ||W_k|| * (activation's largest slope). `layer_table` walks `model.layers` (the one layer
enumeration) and gives each L_k; `network_bound` multiplies them.

Operator norms (largest singular values):
  dense   exact SVD of w (in, out), or power iteration. Flattening an NHWC tensor is an isometry.
  conv    2-D DFT. With circular padding on an N_h x N_w grid and stride s (s | N), the map is
          block diagonal in frequency: for each of the (N_h/s)(N_w/s) output frequencies eta,

              y~(eta) = B(eta) x~(alias(eta)),   B(eta) = (1/s) [A(eta + a M) for a in [0, s)^2],

          x~, y~ unitary DFTs, M = N/s, A(xi) the D x C matrix of the kernel's Fourier
          coefficients, so ||W|| = max_eta ||B(eta)|| (exact). Zero padding ("SAME", "VALID",
          explicit pairs): an upper bound, see `conv_operator_norm`.
  maxpool sqrt(max number of windows holding one pixel) <= ceil(k/s), see `maxpool_lipschitz`.

Where 1/s comes from (1-D, per axis): z the stride-1 output, y[i] = z[s i]. Then
sum_i z[s i] e^{-2 pi i eta i / M} = (M/N) sum_a z^(eta + a M) (unnormalized DFTs), and converting
both sides to unitary DFTs (factors 1/sqrt(M), 1/sqrt(N)) leaves (M/N) sqrt(N/M) = 1/sqrt(s). Two
axes give 1/s. Check: a 1x1 delta kernel at stride s is plain subsampling, norm 1, and indeed
B = (1/s)[1, ..., 1] (s^2 ones) has norm 1.

Lower bounds of the logits' Lipschitz constant, which must sit below the product:
`jacobian_norm` / `max_jacobian_norm` (power iteration with jvp/vjp at data points) and
`pair_ratio_bound` (||f(x') - f(x)|| / ||x' - x|| over given pairs).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax import certify, extras, lipsdp
from adv_jax.models.layers import ACTIVATION_LIPSCHITZ, Layer, apply_layer
from adv_jax.run_files import LipschitzResult

__all__ = [
    "DEFAULT_METHODS", "METHODS", "bracket_summary", "certified_bounds", "circular_conv",
    "conv_operator_norm", "dense_operator_norm", "jacobian_norm", "layer_table", "lipschitz_penalty",
    "max_jacobian_norm", "maxpool_lipschitz", "measure", "network_bound", "pair_lipschitz",
    "pair_ratio_bound",
]

log = logging.getLogger(__name__)
Array = jax.Array
Padding = Union[str, Sequence[tuple[int, int]]]  # "CIRCULAR" | "SAME" | "VALID" | ((lo, hi), (lo, hi))
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------- linear algebra

def _unit(v: Array) -> Array:
    """v / |v|_2. Rescaled by the largest entry first: squaring entries near 1e-20 underflows
    float32 and would divide by `tiny` instead of the true norm; max(., tiny) keeps 0 at 0, not NaN."""
    v = v / jnp.maximum(jnp.max(jnp.abs(v)), jnp.finfo(v.dtype).tiny)
    return v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(v.dtype).tiny)


def _power_norm(forward: Callable, backward: Callable, v0: Array, iters: int) -> Array:
    """||A v|| after `iters` steps of power iteration on A^T A from v0: a LOWER bound on ||A||."""
    v = jax.lax.fori_loop(0, iters, lambda _, v: _unit(backward(forward(v))), _unit(v0))
    return jnp.linalg.norm(forward(v))


def _max_singular_value(blocks: Array) -> Array:
    """max over a batch (B, m, n) of the largest singular value. Scalar.

    Square blocks go to svd directly; otherwise the smaller Gram matrix does (sigma_max(B)^2 =
    sigma_max(B B^H)), which on CPU is ~10x faster than svd of a wide block. (jax's complex
    eigvalsh is slower still.)
    """
    m, n = blocks.shape[-2:]
    if m == n:
        return jnp.max(jnp.linalg.svd(blocks, compute_uv=False)[..., 0])
    h = jnp.conj(jnp.swapaxes(blocks, -1, -2))
    gram = blocks @ h if m < n else h @ blocks
    return jnp.sqrt(jnp.max(jnp.linalg.svd(gram, compute_uv=False)[..., 0]))


def dense_operator_norm(w: Array, method: str = "svd", iters: int = 100,
                        key: Array | None = None) -> Array:
    """Largest singular value of w (in, out), the L2 norm of x -> x @ w. Scalar.

    "svd": exact. "power": `iters` steps of power iteration from a random start (needs `key`); it
    never overshoots, so it is a lower bound that converges to the norm.
    """
    if method == "svd":
        return jnp.linalg.svd(w, compute_uv=False)[0]
    if method != "power":
        raise ValueError(f"unknown method {method!r}; choose 'svd' or 'power'")
    if key is None:
        raise ValueError("method='power' needs a PRNG key")
    return _dense_power_norm(w, key, iters)


@functools.partial(jax.jit, static_argnames="iters")
def _dense_power_norm(w: Array, key: Array, iters: int) -> Array:
    v0 = jax.random.normal(key, w.shape[:1], w.dtype)
    return _power_norm(lambda v: v @ w, lambda u: w @ u, v0, iters)


# ----------------------------------------------------------------------------- convolutions

def circular_conv(x: Array, kernel: Array, stride: int = 1) -> Array:
    """The map whose norm `conv_operator_norm(..., "CIRCULAR")` is: image (H, W, C) -> (H/s, W/s, D).

    y[i, j, d] = sum_{u, v, c} x[(s i + u) mod H, (s j + v) mod W, c] kernel[u, v, c, d], the
    cross-correlation of `lax.conv_general_dilated` on a periodic image (any k, also k > H).
    """
    (h, w, _), (kh, kw) = x.shape, kernel.shape[:2]
    if h % stride or w % stride:
        raise ValueError(f"stride {stride} must divide the {h}x{w} grid")
    wrapped = jnp.pad(x, ((0, kh - 1), (0, kw - 1), (0, 0)), mode="wrap")
    return jax.lax.conv_general_dilated(wrapped[None], kernel, (stride, stride), "VALID",
                                        dimension_numbers=_DIMENSIONS)[0]


@functools.partial(jax.jit, static_argnames=("grid_hw", "stride"))
def _circular_norm(kernel: Array, grid_hw: tuple[int, int], stride: int) -> Array:
    """Exact norm of `circular_conv` with kernel (kh, kw, C, D) on a grid_hw grid."""
    (kh, kw, c, d), (nh, nw), s = kernel.shape, grid_hw, stride
    # Kernel taps u and u + N hit the same pixel: fold the kernel onto the grid (handles k > N).
    rows, cols = jnp.arange(kh)[:, None] % nh, jnp.arange(kw)[None, :] % nw
    folded = jnp.zeros((nh, nw, c, d), kernel.dtype).at[rows, cols].add(kernel)
    # fft2 uses e^{-i...}, A(xi) in the docstring e^{+i...}: A(xi) = conj(fft(-xi)), and xi -> -xi
    # maps alias sets onto alias sets, so the set of blocks' norms is the same.
    spectrum = jnp.fft.fft2(folded, axes=(0, 1))
    mh, mw = nh // s, nw // s
    # xi = a M + eta: splitting each frequency axis as (a, eta) groups the s^2 aliases of eta.
    blocks = spectrum.reshape(s, mh, s, mw, c, d).transpose(1, 3, 5, 0, 2, 4)
    if not jnp.iscomplexobj(kernel):
        # Real kernel: B(-eta) is B(eta) conjugated with its columns permuted, same norm; so half
        # the output frequencies (eta_w <= M_w / 2) cover all of them.
        blocks = blocks[:, : mw // 2 + 1]
    return _max_singular_value(blocks.reshape(-1, d, s * s * c) / s)


def _zero_padding_grid(n: int, k: int, s: int, pad: tuple[int, int]) -> int:
    """Smallest periodic grid (a multiple of s) on which the zero-padded 1-D conv is exact."""
    lo, hi = pad
    if lo < 0 or hi < 0:
        raise ValueError(f"negative padding {pad} is not supported")
    out = (n + lo + hi - k) // s + 1
    if out < 1:
        raise ValueError(f"a window of {k} does not fit an input of {n} padded by {pad}")
    # The input must fit at offset lo, and the last kept output reads up to s (out - 1) + k - 1.
    need = max(lo + n, s * (out - 1) + k)
    return -(-need // s) * s


def conv_operator_norm(kernel: Array, input_hw: tuple[int, int], stride: int = 1,
                       padding: Padding = "CIRCULAR") -> Array:
    """L2 operator norm of the conv with kernel HWIO (kh, kw, C, D) on (H, W, C) images. Scalar.

    "CIRCULAR": exact, the norm of `circular_conv` (H and W divisible by the stride).
    "SAME", "VALID" or explicit ((lo, hi), (lo, hi)) zero padding, as `lax.conv_general_dilated`
    pads: a GUARANTEED UPPER BOUND. Per axis take the grid G = the smallest multiple of s with
    G >= lo + H (the padded image fits) and G >= s (out - 1) + k (the last kept output reads no
    wrapped pixel). Then  conv = R o circ_G o E  exactly, with E the zero-embedding of the image at
    offset lo and R the restriction to the first `out` outputs; ||E|| = ||R|| = 1, so
    ||conv|| <= ||circ_G||, computed exactly by FFT.
    """
    input_hw, ksize = tuple(input_hw), tuple(kernel.shape[:2])
    if isinstance(padding, str) and padding == "CIRCULAR":
        if any(n % stride for n in input_hw):
            raise ValueError(f"stride {stride} must divide the {input_hw} grid for circular padding")
        return _circular_norm(kernel, input_hw, stride)
    if isinstance(padding, str):
        pads = jax.lax.padtype_to_pads(input_hw, ksize, (stride, stride), padding)
    else:
        pads = [tuple(p) for p in padding]
    grid = tuple(_zero_padding_grid(n, k, stride, p) for n, k, p in zip(input_hw, ksize, pads))
    return _circular_norm(kernel, grid, stride)


# ----------------------------------------------------------------------------- max-pooling

def maxpool_lipschitz(kernel: int, stride: int, input_hw: tuple[int, int] | None = None,
                      padding: str = "VALID") -> float:
    """L2 Lipschitz constant of max-pooling (window k, step s), channel by channel.

    |max_w x - max_w y| <= max_{i in w} |x_i - y_i|, so ||P x - P y||^2 <= sum_w max_{i in w} d_i^2
    <= sum_i m_i d_i^2 <= (max_i m_i) ||d||^2, m_i = number of windows holding pixel i. A unit
    bump at a pixel with the most windows (x = 0, y = e_i) attains it, so L = sqrt(max_i m_i).
    Per axis at most ceil(k/s) windows hold a pixel, and pixel counts are products of axis counts,
    so L <= ceil(k/s): 1 when windows do not overlap (s >= k). Without `input_hw` this worst case
    ceil(k/s) is returned; with it, the exact sqrt(max_i m_i) for that input and padding.
    """
    if input_hw is None:
        return float(-(-kernel // stride))
    pads = jax.lax.padtype_to_pads(tuple(input_hw), (kernel, kernel), (stride, stride), padding)
    most = 1
    for n, (lo, hi) in zip(input_hw, pads):
        starts = np.arange(0, n + lo + hi - kernel + 1, stride) - lo
        pixels = np.arange(n)[:, None]
        most *= int(np.max(np.sum((pixels >= starts) & (pixels < starts + kernel), axis=1)))
    return math.sqrt(most)


# ----------------------------------------------------------------------------- the layer table

# No global Lipschitz constant: layer norm divides by the input's spread, attention's softmax
# weighs products of the input with itself (Kim et al. 2021), a module is opaque. Their rows say
# operator_norm = bound = inf, so the product is inf: "not available", never a wrong number.
UNBOUNDED_KINDS = ("layernorm", "self_attention", "module")


def _layer_operator_norm(layer: Layer, params: dict, in_shape: tuple[int, ...]) -> tuple[Array, bool]:
    """(norm of the layer's linear or pooling part on in_shape inputs, whether it is exact).

    residual: ||I + B|| <= 1 + prod of the branch layers' bounds (an upper bound). linear,
    token_linear: ||W|| (the same W on every token or channel: block diagonal, exact).
    global_avgpool over n positions: 1 / sqrt(n) (exact). tokens: a reshape and a shift, 1."""
    if layer.kind in ("dense", "linear", "token_linear"):
        return dense_operator_norm(params["w"]), True
    if layer.kind == "conv":
        norm = conv_operator_norm(params["w"], in_shape[:2], layer.stride, layer.padding)
        return norm, False  # zero padding: the enlarged-grid upper bound
    if layer.kind in UNBOUNDED_KINDS:
        return jnp.asarray(jnp.inf), False
    if layer.kind == "residual":
        return 1.0 + _chain_bound(layer.branch, params["branch"], in_shape), False
    if layer.kind == "global_avgpool":
        return jnp.asarray(1.0 / math.sqrt(math.prod(in_shape[:-1]))), True
    if layer.kind == "tokens":
        return jnp.asarray(1.0), True
    return jnp.asarray(maxpool_lipschitz(layer.kernel, layer.stride, in_shape[:2], layer.padding)), True


def _chain_bound(layers, params, input_shape) -> Array:
    """prod over layers of operator norm x activation factor (a residual branch's)."""
    total = jnp.ones((), jnp.float32)
    for _, layer, p, shape in _walk_layers(layers, params, input_shape):
        total = total * _layer_operator_norm(layer, p, shape)[0] * ACTIVATION_LIPSCHITZ[layer.activation]
    return total


def _walk(model, params, input_shape):
    """Yields (index, layer, params, per-example input shape) along model.layers."""
    return _walk_layers(model.layers, params, input_shape)


def _walk_layers(layers, params, input_shape):
    shape = tuple(input_shape)
    for index, (layer, p) in enumerate(zip(layers, params)):
        yield index, layer, p, shape
        out = jax.eval_shape(functools.partial(apply_layer, layer), p,
                             jax.ShapeDtypeStruct((1,) + shape, jnp.float32))
        shape = tuple(out.shape[1:])


def _shape_string(layer: Layer, params: dict) -> str:
    if layer.kind in ("dense", "linear", "token_linear"):
        return "x".join(map(str, params["w"].shape))
    if layer.kind == "conv":
        kh, kw, c, d = params["w"].shape
        return f"{c}x{kh}x{kw}x{d}"  # paper's Table 5 order: in x k x k x out
    if layer.kind == "maxpool":
        return f"{layer.kernel}x{layer.kernel}"
    if layer.kind == "residual":
        return "[" + ", ".join(_shape_string(inner, p) or inner.kind
                               for inner, p in zip(layer.branch, params["branch"])) + "]"
    if layer.kind == "module":
        return layer.module.target
    return f"{layer.features}/{layer.heads} heads" if layer.kind == "self_attention" else ""


def layer_table(model, params, input_shape: tuple[int, ...] = (28, 28, 1)) -> list[dict[str, Any]]:
    """One row per layer of model.layers: index, kind, shape, input (HxWxC), stride, padding,
    operator_norm, activation (its Lipschitz factor), bound = operator_norm * activation, and
    exact (False: operator_norm is an upper bound: `conv_operator_norm`'s zero padding, a residual
    layer's 1 + branch product). A layer without a bound (UNBOUNDED_KINDS, or a residual holding
    one) has operator_norm = bound = inf: the network's product is then not available (inf)."""
    rows = []
    for index, layer, p, shape in _walk(model, params, input_shape):
        norm, exact = _layer_operator_norm(layer, p, shape)
        factor = ACTIVATION_LIPSCHITZ[layer.activation]
        rows.append(dict(
            index=index, kind=layer.kind, shape=_shape_string(layer, p),
            input="x".join(map(str, shape)),
            stride=layer.stride if layer.kind in ("conv", "maxpool") else None,
            padding=layer.padding if layer.kind in ("conv", "maxpool") else None,
            operator_norm=float(norm), activation=factor, bound=float(norm) * factor, exact=exact,
        ))
    return rows


def network_bound(table: list[dict[str, Any]]) -> float:
    """prod_k L_k: an upper bound on the L2 Lipschitz constant from images to logits."""
    return math.prod(row["bound"] for row in table)


def lipschitz_penalty(model, params, input_shape: tuple[int, ...] = (28, 28, 1)) -> Array:
    """log(network_bound) = sum_k log(||W_k|| * activation factor). Scalar, differentiable.

    Uses the same exact norms as `layer_table` (SVD for dense layers, the FFT norm for convs), not
    power iteration; gradients reach each weight matrix through its top singular direction (and,
    for a conv, its worst frequency). Pooling and activation factors are constants. The log makes
    the penalty scale-free per layer: doubling one W_k adds log 2 whatever the other layers.
    """
    unbounded = sorted({layer.kind for layer in _flat_layers(model.layers)} & set(UNBOUNDED_KINDS))
    if unbounded:
        raise ValueError(f"train.lipschitz_penalty needs a Lipschitz bound of every layer; this "
                         f"model's {unbounded} layers have none: set train.lipschitz_penalty=0")
    total = jnp.zeros((), jnp.float32)
    for _, layer, p, shape in _walk(model, params, input_shape):
        norm, _ = _layer_operator_norm(layer, p, shape)
        total += jnp.log(norm * ACTIVATION_LIPSCHITZ[layer.activation])
    return total


def _flat_layers(layers):
    """Every layer, residual branches' included."""
    for layer in layers:
        yield layer
        yield from _flat_layers(layer.branch)


# ----------------------------------------------------------------------------- lower bounds

ASCENT_STARTS = 32  # test images the Jacobian ascent starts from
ASCENT_STEP = 0.3  # L2 length of the first ascent step (pixels in [0, 1]), decayed linearly to 0
ASCENT_POWER_ITERS = 5  # power steps per ascent step (warm-started from the last)

def jacobian_norm(logits_fn_single: Callable[[Array], Array], x: Array, key: Array,
                  iters: int = 50) -> Array:
    """Largest singular value of d logits / d x at one image x (28, 28, 1), logits (K,). Scalar.

    Power iteration on J^T J with a jvp (J v) and its transpose (J^T u); ||J v|| for a unit v never
    exceeds ||J||, so this is a lower bound on the network's Lipschitz constant.
    """
    jvp, vjp = _jacobian_maps(logits_fn_single, x)
    return _power_norm(jvp, vjp, jax.random.normal(key, x.shape, x.dtype), iters)


def _jacobian_maps(fn: Callable[[Array], Array], x: Array) -> tuple[Callable, Callable]:
    """(v -> J v, u -> J^T u) of fn's Jacobian J at x."""
    _, jvp = jax.linearize(fn, x)
    transposed = jax.linear_transpose(jvp, x)
    return jvp, lambda u: transposed(u)[0]


def max_jacobian_norm(logits_fn_single: Callable[[Array], Array], xs: Array, key: Array,
                      iters: int = 50) -> Array:
    """max over images xs (B, 28, 28, 1) of `jacobian_norm`, vmapped, one key per image. Scalar."""
    keys = jax.random.split(key, xs.shape[0])
    per_image = jax.vmap(lambda x, k: jacobian_norm(logits_fn_single, x, k, iters))
    return jnp.max(jax.jit(per_image)(xs, keys))


def jacobian_ascent(logits_fn_single: Callable[[Array], Array], starts: Array, key: Array, steps: int,
                    step_size: float = ASCENT_STEP, power_iters: int = ASCENT_POWER_ITERS, box: bool = True) -> Array:
    """The largest ||J(x) v|| found by gradient ascent over x from each start (B, 28, 28, 1): each
    step refines v, the top right singular vector of the Jacobian J(x) (warm-started power steps),
    then moves x along the normalized gradient of ||J(x) v||^2, a step of L2 length `step_size`
    decayed linearly to 0 (box: clipped to [0, 1]; else anywhere). ||J(x) v|| for a unit v never exceeds ||J(x)||, so every
    value found is a lower bound on the Lipschitz constant (over the box, or everywhere). Scalar."""
    def stretch(x, v):
        return jnp.sum(jax.jvp(logits_fn_single, (x,), (v,))[1] ** 2)

    def refine(x, v):
        jvp, vjp = _jacobian_maps(logits_fn_single, x)
        return jax.lax.fori_loop(0, power_iters, lambda _, v: _unit(vjp(jvp(v))), v)

    def one(x, key):
        def step(i, carry):
            x, v, best = carry
            v = refine(x, v)
            best = jnp.maximum(best, jnp.sqrt(stretch(x, v)))
            grad = jax.grad(stretch)(x, v)
            x = x + step_size * (1.0 - i / steps) * _unit(grad)  # decayed to 0: settle on a peak
            return (jnp.clip(x, 0.0, 1.0) if box else x), v, best

        v0 = _unit(jax.random.normal(key, x.shape, x.dtype))
        x, v, best = jax.lax.fori_loop(0, steps, step, (x, v0, jnp.zeros((), x.dtype)))
        return jnp.maximum(best, jnp.sqrt(stretch(x, refine(x, v))))

    return jnp.max(jax.jit(jax.vmap(one))(starts, jax.random.split(key, len(starts))))


def pair_ratio_bound(logits_fn_batch: Callable[[Array], Array], x: Array, x_adv: Array) -> Array:
    """max_i ||f(x'_i) - f(x_i)||_2 / ||x'_i - x_i||_2 over pairs (B, ...); equal pairs skipped."""
    out = jnp.linalg.norm((logits_fn_batch(x_adv) - logits_fn_batch(x)).reshape(len(x), -1), axis=1)
    dist = jnp.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)
    return jnp.max(jnp.where(dist > 0, out / jnp.where(dist > 0, dist, 1.0), 0.0))


# ----------------------------------------------------------------------------- certified bounds

METHODS = ("product", "eclipse_fast", "lipsdp")
DEFAULT_METHODS = ("product", "eclipse_fast")


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _lipsdp_or_reason(chain, max_size: int, solver: str) -> tuple[float | None, str | None]:
    reason = lipsdp.too_large(chain, max_size)
    if reason is None and not extras.installed("lipsdp"):
        reason = extras.install_hint("lipsdp")
    return (None, reason) if reason else (lipsdp.lipsdp(chain, solver)["bound"], None)


def certified_bounds(model, params, methods: Sequence[str] = DEFAULT_METHODS, *,
                     lipsdp_max_size: int = lipsdp.DEFAULT_MAX_SIZE, lipsdp_solver: str = "SCS",
                     product: float | None = None) -> dict[str, Any]:
    """{"bounds": {method: L2 Lipschitz constant of the logits}, "seconds": {method: s},
    "skipped": {method: why}} for `methods` (of METHODS). ECLipsE-Fast and LipSDP need a dense
    network (adv_jax/certify.py, adv_jax/lipsdp.py); `product` may be given (the layer table's)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown Lipschitz methods {unknown}; choose from {list(METHODS)}")
    out: dict[str, Any] = {"bounds": {}, "seconds": {}, "skipped": {}}
    if "product" in methods:
        table = None if product is not None else (lambda: network_bound(layer_table(model, params, model.input_shape)))
        value, seconds = (product, 0.0) if table is None else _timed(table)
        out["bounds"]["product"], out["seconds"]["product"] = float(value), seconds
    with jax.enable_x64(True):
        try:
            chain = certify.dense_chain(model, params)
        except certify.NotDense as err:
            out["skipped"].update({m: str(err) for m in methods if m != "product"})
            return out
        runs = {"eclipse_fast": lambda: (float(certify.eclipse_fast(chain)), None),
                "lipsdp": lambda: _lipsdp_or_reason(chain, lipsdp_max_size, lipsdp_solver)}
        for method in (m for m in methods if m != "product"):
            (value, reason), seconds = _timed(runs[method])
            if reason:
                log.info("Lipschitz method %s skipped: %s", method, reason)
                out["skipped"][method] = reason
            else:
                out["bounds"][method], out["seconds"][method] = value, seconds
    return out


def pair_lipschitz(model, params, certified: float | None = None) -> Array:
    """(K, K) certified constants of x -> z_j - z_t (float64): the smallest of ECLipsE-Fast's per
    pair, the product's per pair and sqrt(2) x `certified` (|z_j - z_t| <= sqrt(2) ||z||)."""
    pairs = _pair_constants_of(certify.dense_chain(model, params))
    return pairs if certified is None else jnp.minimum(pairs, math.sqrt(2) * certified)


@jax.jit
def _pair_constants_of(chain) -> Array:
    """The smaller of ECLipsE-Fast's and the product's (K, K) pair constants: one compiled
    program (op by op it costs a second of dispatch and compilation)."""
    p, _, _ = certify.output_gram(chain)
    return jnp.minimum(certify.pair_constants(p), certify.product_pair_constants(chain))


def bracket_summary(model, params, attacked: dict[str, np.ndarray], certified: float | None = None,
                    local: bool = True, progress: bool = False, local_examples: int | None = None
                    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Certified lower bounds on the distortion of each successful attacked example, beside the
    attack's (`certify.bracket`). attacked: x, x_adv, y, target, success (N, ...). Local
    constants go to the first `local_examples` successes (None = all; the global bound stands
    for the rest). Returns (summary of means in per-pixel RMS = L2 / sqrt(pixels), and with
    `local` how many examples got local constants and the fraction of those certified;
    per-example L2 arrays)."""
    ok = np.asarray(attacked["success"], bool)
    with jax.enable_x64(True):
        chain = certify.dense_chain(model, params)
        per = certify.bracket(chain, *(jnp.asarray(np.asarray(attacked[k])[ok])
                                       for k in ("x", "x_adv", "y", "target")),
                              pair_lipschitz(model, params, certified), local, progress, local_examples)
        per = certify.as_numpy(per)
    successes = int(ok.sum())
    tried = (successes if local_examples is None else min(successes, local_examples)) if local else 0
    scale = 1 / math.sqrt(math.prod(model.input_shape))
    best = per.get("local", per["global"])
    mean_rms = lambda name: float(per[name].mean() * scale) if name in per and ok.any() else None  # noqa: E731
    summary = {"examples": int(ok.sum()), "mean_attack_rms": mean_rms("attack"),
               "mean_lower_rms_global": mean_rms("global"), "mean_lower_rms_local": mean_rms("local"),
               "local_examples": tried,
               "local_certified": float(per["local_certified"][:tried].mean()) if tried else None}
    summary["ratio"] = (summary["mean_attack_rms"] / float(best.mean() * scale)
                        if ok.any() and best.mean() > 0 else None)
    return summary, per


# ----------------------------------------------------------------------------- one network

def _measured_lower_bounds(model, params, test_x, pairs, key, images: int, power_iters: int,
                           ascent_steps: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """({name: lower bound}, {name: seconds}) for "jacobian", "jacobian_ascent" and "pair_ratio"
    (see `measure`)."""
    apply = lambda x: model.apply(params, x)  # noqa: E731
    values, seconds = {}, {}
    if images and test_x is not None:
        single = lambda x: apply(x[None])[0]  # noqa: E731
        values["jacobian"], seconds["jacobian"] = _timed(lambda: float(max_jacobian_norm(
            single, jnp.asarray(test_x[:images]), key, power_iters)))
        if ascent_steps:
            starts = jnp.asarray(test_x[:min(images, ASCENT_STARTS)])
            values["jacobian_ascent"], seconds["jacobian_ascent"] = _timed(lambda: float(jacobian_ascent(
                single, starts, jax.random.fold_in(key, 1), ascent_steps)))
    if pairs is not None:
        x, x_adv = (np.asarray(a) for a in pairs)
        moved = np.any(x_adv != x, axis=tuple(range(1, x.ndim)))  # (P,); P = 0 when no success
        if moved.any():
            values["pair_ratio"], seconds["pair_ratio"] = _timed(lambda: float(pair_ratio_bound(
                apply, jnp.asarray(x[moved]), jnp.asarray(x_adv[moved]))))
    return values, seconds


def measure(model, params, test_x: Array | None, pairs: tuple[Array, Array] | None, *, key: Array,
            images: int, power_iters: int, ascent_steps: int = 0, methods: Sequence[str] = DEFAULT_METHODS,
            lipsdp_max_size: int = lipsdp.DEFAULT_MAX_SIZE, lipsdp_solver: str = "SCS",
            attacked: dict[str, np.ndarray] | None = None, local: bool = True,
            local_examples: int | None = None, progress: bool = False) -> LipschitzResult:
    """Upper and lower Lipschitz bounds of one trained network: what lipschitz.json holds.

    test_x (N, 28, 28, 1): the Jacobian bound is the max over its first `images` (none if 0 or
    test_x is None), `power_iters` iterations each, from `key`; with `ascent_steps`, the
    Jacobian ascent (`jacobian_ascent`) from the first ASCENT_STARTS of them. pairs (x, x_adv), each (P, ...):
    adversarial pairs for the pair-ratio bound; pairs with x_adv == x carry no slope and are
    dropped, and with none left there is no pair bound. methods: certified upper bounds to
    compute (`certified_bounds`). attacked (x, x_adv, y, target, success arrays): the attack's
    examples, for the certified distortion bracket of a dense network (`bracket_summary`), with
    local constants on its first `local_examples` successes when `local`.
    progress: bars for the slow stages, and a log line with each stage's seconds.

    Returns a run_files.LipschitzResult (what lipschitz.json holds; `.metrics()` its flat
    entries), all Python floats.
    """
    start = time.perf_counter()
    table = layer_table(model, params, model.input_shape)
    product = network_bound(table)
    product_seconds = time.perf_counter() - start
    say = log.info if progress else log.debug  # a line per stage: none is silent for long
    say("Lipschitz: product of the layers' bounds %.4g, %.1f s", product, product_seconds)
    lower, lower_seconds = _measured_lower_bounds(model, params, test_x, pairs, key, images, power_iters,
                                                  ascent_steps)
    say("Lipschitz: lower bounds %s", "  ".join(f"{m}={v:.4g} ({lower_seconds[m]:.1f} s)"
                                                for m, v in lower.items()) or "none")
    found = certified_bounds(model, params, methods, lipsdp_max_size=lipsdp_max_size,
                             lipsdp_solver=lipsdp_solver, product=product)
    say("Lipschitz: certified bounds %s", "  ".join(f"{m}={v:.4g} ({found['seconds'].get(m, 0.0):.1f} s)"
                                                    for m, v in found["bounds"].items()) or "none")
    found["seconds"].update({"product": product_seconds} if "product" in methods else {})
    result = LipschitzResult(layers=table, upper_bound=product, bounds=found["bounds"],
                             lower_bounds=lower, seconds={**found["seconds"], **lower_seconds},
                             skipped=found["skipped"])
    if attacked is not None and "eclipse_fast" not in found["skipped"] and np.any(attacked["success"]):
        say("certified bracket on the %d successful examples: global constants, then local ones",
            int(np.sum(attacked["success"])))
        (summary, _), seconds = _timed(lambda: bracket_summary(model, params, attacked, result.certified,
                                                               local, progress, local_examples))
        result = dataclasses.replace(result, bracket={**summary, "seconds": seconds})
        log.info("certified bracket on %d attacked examples: mean RMS distortion %.4g (attack), lower "
                 "bound %.4g (global)%s, %.1f s", summary["examples"], summary["mean_attack_rms"],
                 summary["mean_lower_rms_global"], "" if not local else
                 f", {summary['mean_lower_rms_local']:.4g} (local constants on "
                 f"{summary['local_examples']}, certified on {100 * summary['local_certified']:.1f}%)",
                 seconds)
    return result
