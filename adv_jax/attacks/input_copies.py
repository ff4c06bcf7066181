"""Input transformations averaged over copies: the input-transformation ingredient of the
transfer families (transfer_families.py).

Each function maps one image x (H, W, C), pixels in [0, 1], to K copies (K, H, W, C); the attack
then ascends grad_x (1/K) sum_k J(copy_k(x)), the chain rule through each copy included (the
papers differentiate with respect to x, so SI's copy x / 2^i contributes 2^-i grad J):

  scale  SI (Lin et al. 2020)            copy_i = x / 2^i, i = 0 .. m-1
  admix  Admix (Wang et al. 2021)        copy_{j,i} = (x + eta x'_j) / 2^i, x'_j drawn from a
         fixed pool of images of classes other than the label (`ImagePool`; see below)
  sia    SIA (Wang et al. 2023)          the image cut at random rows and columns into s x s
         blocks, each block given one random transform of the paper's ten (below)
  bsr    BSR (Wang et al. 2024)          the image cut into n x n equal blocks, the blocks
         shuffled and each rotated by a random angle in [-tau, tau] degrees

Admix on a per-example attack: the mixing images cannot come from the attacked batch (the attack
sees one example), so they come from an `ImagePool` held as the attack's field: a constant of
the compiled attack, hashable by content. `mnist_pool(per_class)` is the registry's default: the
first `per_class` MNIST training images of each digit (the attacker's own data, never the
attacked test images).
"""

from __future__ import annotations

import functools
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax import data

__all__ = ["ImagePool", "admix_copies", "blank_pool", "class_pool", "dct_lowpass_operator", "mnist_pool",
           "resize_operator", "scale_copies", "shuffle_rotate", "structure_invariant"]

# SIA's ten block transforms, as the authors' code (github xiaosen-wang/SIT, attack.py) lists them:
SIA_OPS = 10  # roll rows, roll columns, flip rows, flip columns, rotate 180, scale, noise, dropout,
#               resize, DCT low-pass
SIA_NOISE = 16 / 255  # SIA's additive noise amplitude, in pixel intensity (unchanged at 28 px)
SIA_DROP = 0.1  # SIA's dropout probability (dropout2d: a 1-channel block is kept or zeroed)
# The authors' code: a block of n px resized to int(0.8 n) + 1 px and back (bilinear). Their
# clamp to [0, 1] after it is left out: bilinear weights are convex, so a [0, 1] block stays there.
SIA_RESIZE = 0.8
# The authors' code (low_ratio): the int(0.4 n) highest DCT frequencies per axis zeroed, i.e.
# ceil(0.6 n) kept; like theirs, no clamp after (the low-pass may overshoot [0, 1] slightly).
SIA_DCT_CUT = 0.4


class ImagePool:
    """Images (P, *shape) in [0, 1] and their labels (P,), equal and hashed by content, so that an
    attack holding one stays a hashable static argument of jit."""

    def __init__(self, images, labels):
        self.images = np.asarray(images, np.float32)
        self.labels = np.asarray(labels, np.int32)
        self._digest = hashlib.sha1(self.images.tobytes() + self.labels.tobytes()).hexdigest()

    def __eq__(self, other) -> bool:
        return isinstance(other, ImagePool) and self._digest == other._digest

    def __hash__(self) -> int:
        return hash(self._digest)

    def __repr__(self) -> str:
        return f"ImagePool({len(self.labels)} images of shape {self.images.shape[1:]})"


def blank_pool() -> ImagePool:
    """Ten blank images, one per class: an admix pool where only its shape matters (checking an
    attack's params before any data is read)."""
    return ImagePool(np.zeros((10, 28, 28, 1), np.float32), np.arange(10))


def class_pool(images, labels, per_class: int = 2) -> ImagePool:
    """The first `per_class` images of each of the 10 classes of images (N, *shape), labels (N,)."""
    labels = np.asarray(labels)
    index = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    return ImagePool(np.asarray(images)[index], labels[index])


@functools.lru_cache(maxsize=4)
def mnist_pool(per_class: int = 2) -> ImagePool:
    """The first `per_class` MNIST training images of each digit, read as the data config does:
    ADV_JAX_MNIST_DIR, else the download cache (ADV_JAX_CACHE_DIR or ~/.cache/adv_jax). A job
    passes its own data's pool (`class_pool`) instead."""
    cache = os.path.expanduser(os.environ.get("ADV_JAX_CACHE_DIR", "~/.cache/adv_jax"))
    train = data.load_mnist(mnist_dir=os.environ.get("ADV_JAX_MNIST_DIR"),
                            download_dir=os.path.join(cache, "mnist"))["train"]
    return class_pool(train.x, train.y, per_class)


def scale_copies(images: jax.Array, scales: int) -> jax.Array:
    """images (J, *shape) -> (J * scales, *shape): each image / 2^i, i = 0 .. scales-1, image-major."""
    divisors = 2.0 ** jnp.arange(scales, dtype=images.dtype)
    copies = images[:, None] / divisors.reshape(1, scales, *(1,) * (images.ndim - 1))
    return copies.reshape(-1, *images.shape[1:])


def admix_copies(x: jax.Array, key: jax.Array, label: jax.Array, pool: ImagePool, mixes: int,
                 strength: float, scales: int) -> jax.Array:
    """x (*shape) -> (mixes * scales, *shape): `mixes` pool images of other classes than `label`
    (uniform, with replacement), each added as strength * x' to x, then scale_copies."""
    other = jnp.asarray(pool.labels) != label
    pick = jax.random.choice(key, len(pool.labels), (mixes,), p=other / jnp.sum(other))
    return scale_copies(x[None] + strength * jnp.asarray(pool.images)[pick], scales)


def _random_cuts(key: jax.Array, size: int, blocks: int) -> jax.Array:
    """The cuts (blocks + 1,) of 0..size into blocks: 0, blocks-1 distinct random positions, size."""
    inner = jnp.sort(jax.random.choice(key, jnp.arange(1, size), (blocks - 1,), replace=False))
    return jnp.concatenate([jnp.zeros(1, inner.dtype), inner, jnp.full(1, size, inner.dtype)])


def _blocks_of(cuts: jax.Array, size: int):
    """Per index 0..size-1 (size,): its block number, block start and block end under cuts."""
    block = jnp.searchsorted(cuts[1:], jnp.arange(size), side="right")
    return block, cuts[block], cuts[block + 1]


def _draw_sia_ops(key: jax.Array, blocks: int) -> jax.Array:
    """Each block's transform (blocks, blocks), uniform over 0 .. SIA_OPS-1."""
    return jax.random.randint(key, (blocks, blocks), 0, SIA_OPS)


def _sia_resized_size(size):
    """The size a block of `size` pixels is resized to and back from: int(0.8 size) + 1 as the
    reference code computes it (1 <= it <= size; equal to size for size <= 5)."""
    return jnp.floor(SIA_RESIZE * size).astype(jnp.int32) + 1


def _sia_kept_frequencies(size):
    """How many of a block's `size` DCT frequencies per axis the low-pass keeps: all but the
    int(0.4 size) highest, as the reference code zeroes them (= ceil(0.6 size); all of them for
    size <= 2, where the reference's empty slice `[-0:]` would zero the whole block instead)."""
    return size - jnp.floor(SIA_DCT_CUT * size).astype(jnp.int32)


def _bilinear_matrix(out_size, in_size, length: int) -> jax.Array:
    """(length, length): M[a, j] = the weight of input sample j in output sample a of a 1-D bilinear
    resize of in_size samples to out_size (both traced, <= length; zero beyond them), as torch's
    F.interpolate(mode="bilinear", align_corners=False): no antialiasing, the source coordinate
    (a + 1/2) in/out - 1/2 clamped to [0, in - 1]."""
    index = jnp.arange(length)
    source = jnp.clip((index + 0.5) * (in_size / out_size) - 0.5, 0, in_size - 1)
    weight = jnp.maximum(0.0, 1 - jnp.abs(source[:, None] - index[None, :]))
    return jnp.where((index[:, None] < out_size) & (index[None, :] < in_size), weight, 0.0)


def resize_operator(size, resized, length: int) -> jax.Array:
    """(length, length): a 1-D block of `size` samples (local indices 0..size-1) resized to
    `resized` samples and back, bilinear (the identity when resized == size)."""
    down = _bilinear_matrix(resized, size, length)
    up = _bilinear_matrix(size, resized, length)
    return jnp.matmul(up, down, precision=jax.lax.Precision.HIGHEST)


def dct_lowpass_operator(size, kept, length: int) -> jax.Array:
    """(length, length): the orthogonal projection of a 1-D block of `size` samples (local indices
    0..size-1) onto its `kept` lowest orthonormal DCT-II frequencies, i.e. DCT, frequencies
    k >= kept zeroed, inverse DCT (the identity when kept == size)."""
    k, j = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    basis = jnp.sqrt(jnp.where(k == 0, 1.0, 2.0) / size) * jnp.cos(jnp.pi * (2 * j + 1) * k / (2 * size))
    basis = jnp.where((k < kept) & (j < size), basis, 0.0)
    return jnp.matmul(basis.T, basis, precision=jax.lax.Precision.HIGHEST)


def _placed(local: jax.Array, start) -> jax.Array:
    """The (L, L) operator `local` on local indices 0.. of a block starting at `start`, as the
    (L, L) operator on the whole axis (local is zero beyond the block, so is the result)."""
    index = jnp.arange(local.shape[0]) - start
    inside = index >= 0  # local is zero past the block's end
    clipped = jnp.maximum(index, 0)
    return jnp.where(inside[:, None] & inside[None, :], local[clipped[:, None], clipped[None, :]], 0.0)


def _axis_operators(cuts: jax.Array, length: int) -> jax.Array:
    """SIA's two linear transforms of each block of one axis cut at `cuts`: (2, blocks, L, L),
    [0] resize (op 8), [1] DCT low-pass (op 9), each acting on its block's indices only."""
    def of_block(start, end):
        size = end - start
        resize = resize_operator(size, _sia_resized_size(size), length)
        lowpass = dct_lowpass_operator(size, _sia_kept_frequencies(size), length)
        return jnp.stack([_placed(resize, start), _placed(lowpass, start)])
    return jax.vmap(of_block, out_axes=1)(cuts[:-1], cuts[1:])


def _smoothed(x: jax.Array, ops: jax.Array, row_cuts: jax.Array, col_cuts: jax.Array) -> jax.Array:
    """x (H, W, C) under each block pair's separable linear transform: (blocks, blocks, H, W, C),
    entry [a, b] = R_a x C_b^T per channel, R_a and C_b row block a's and column block b's DCT
    low-pass where ops[a, b] == 9, else their resize; right inside block (a, b) only (the caller
    keeps only that)."""
    blocks = ops.shape[0]
    pick = (ops == 9).astype(jnp.int32)
    rows = _axis_operators(row_cuts, x.shape[0])[pick, jnp.arange(blocks)[:, None]]  # (blocks, blocks, H, H)
    cols = _axis_operators(col_cuts, x.shape[1])[pick, jnp.arange(blocks)[None, :]]  # (blocks, blocks, W, W)
    return jnp.einsum("abri,ijc,absj->abrsc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def structure_invariant(x: jax.Array, key: jax.Array, blocks: int) -> jax.Array:
    """SIA's copy of x (H, W, C): blocks x blocks random blocks, each with one transform drawn
    uniformly of SIA_OPS (op 0/1: roll rows/columns inside the block, 2/3: flip them, 4: both
    flips = rotate 180, 5: times U(0, 1), 6: plus U(-16/255, 16/255) noise, 7: dropout, 8: resized
    to int(0.8 n) + 1 px and back, bilinear, per axis, 9: DCT low-pass, the int(0.4 n) highest
    frequencies of each axis zeroed; n: the block's size along the axis). Differentiable in x (a
    gather, or for ops 8 and 9 a linear map R x C^T); jittable and vmappable (the block sizes are
    traced)."""
    height, width, _ = x.shape
    keys = jax.random.split(key, 7)
    row_cuts, col_cuts = _random_cuts(keys[0], height, blocks), _random_cuts(keys[1], width, blocks)
    rows, r0, r1 = (a[:, None] for a in _blocks_of(row_cuts, height))
    cols, c0, c1 = (a[None, :] for a in _blocks_of(col_cuts, width))
    per_pixel = lambda values: values[rows, cols]  # (blocks, blocks, ...) -> (H, W, ...)  # noqa: E731
    block_ops = _draw_sia_ops(keys[2], blocks)
    op = per_pixel(block_ops)
    shift = per_pixel(jax.random.randint(keys[3], (blocks, blocks, 2), 0, max(height, width)))
    r, c = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    source_r = jnp.select([op == 0, (op == 2) | (op == 4)],
                          [r0 + (r - r0 + shift[..., 0]) % (r1 - r0), r0 + r1 - 1 - r], r)
    source_c = jnp.select([op == 1, (op == 3) | (op == 4)],
                          [c0 + (c - c0 + shift[..., 1]) % (c1 - c0), c0 + c1 - 1 - c], c)
    factor = per_pixel(jax.random.uniform(keys[4], (blocks, blocks)))
    kept = per_pixel(jax.random.bernoulli(keys[5], 1 - SIA_DROP, (blocks, blocks))) / (1 - SIA_DROP)
    gain = jnp.select([op == 5, op == 7], [factor, kept], 1.0)[..., None]
    noise = jax.random.uniform(keys[6], x.shape, minval=-SIA_NOISE, maxval=SIA_NOISE)
    moved = x[source_r, source_c] * gain + jnp.where(op[..., None] == 6, noise, 0.0)
    smoothed = _smoothed(x, block_ops, row_cuts, col_cuts)[rows, cols, r, c]
    return jnp.where(op[..., None] >= 8, smoothed, moved)


def shuffle_rotate(x: jax.Array, key: jax.Array, blocks: int, max_degrees: float) -> jax.Array:
    """BSR's copy of x (H, W, C), H and W multiples of `blocks`: output block b shows input block
    perm[b] rotated about its centre by an angle U(-max_degrees, max_degrees) (bilinear; corners
    rotated in from outside the block are 0). Differentiable in x."""
    height, width, _ = x.shape
    if height % blocks or width % blocks:
        raise ValueError(f"bsr: {blocks} blocks do not divide a {height}x{width} image")
    bh, bw = height // blocks, width // blocks
    perm_key, angle_key = jax.random.split(key)
    perm = jax.random.permutation(perm_key, blocks * blocks)
    angle = jnp.deg2rad(jax.random.uniform(angle_key, (blocks * blocks,), minval=-max_degrees,
                                           maxval=max_degrees))
    r, c = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    block = (r // bh) * blocks + c // bw
    u, v = r % bh - (bh - 1) / 2, c % bw - (bw - 1) / 2  # offsets from the block's centre
    cos, sin = jnp.cos(angle[block]), jnp.sin(angle[block])
    su, sv = cos * u + sin * v, -sin * u + cos * v  # the output offset rotated back
    inside = (jnp.abs(su) <= (bh - 1) / 2) & (jnp.abs(sv) <= (bw - 1) / 2)
    source = perm[block]
    coords = [(source // blocks) * bh + (bh - 1) / 2 + su, (source % blocks) * bw + (bw - 1) / 2 + sv]
    sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, coords, order=1)  # noqa: E731
    rotated = jax.vmap(sample, in_axes=-1, out_axes=-1)(x)
    return jnp.where(inside[..., None], rotated, 0.0)
