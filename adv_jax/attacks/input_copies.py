"""Input transformations averaged over copies: the input-transformation ingredient of the
transfer families (transfer_families.py).

Each function maps one image x (H, W, C), pixels in [0, 1], to K copies (K, H, W, C); the attack
then ascends grad_x (1/K) sum_k J(copy_k(x)), the chain rule through each copy included (the
papers differentiate with respect to x, so SI's copy x / 2^i contributes 2^-i grad J):

  scale  SI (Lin et al. 2020)            copy_i = x / 2^i, i = 0 .. m-1
  admix  Admix (Wang et al. 2021)        copy_{j,i} = (x + eta x'_j) / 2^i, x'_j drawn from a
         fixed pool of images of classes other than the label (`ImagePool`; see below)
  sia    SIA (Wang et al. 2023)          the image cut at random rows and columns into s x s
         blocks, each block given one random transform of eight (below)
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

__all__ = ["ImagePool", "admix_copies", "blank_pool", "class_pool", "mnist_pool", "scale_copies", "shuffle_rotate",
           "structure_invariant"]

SIA_OPS = 8  # roll rows, roll columns, flip rows, flip columns, rotate 180, scale, noise, dropout
SIA_NOISE = 16 / 255  # SIA's additive noise amplitude, in pixel intensity (unchanged at 28 px)
SIA_DROP = 0.1  # SIA's dropout probability (dropout2d: a 1-channel block is kept or zeroed)


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


def _random_blocks(key: jax.Array, size: int, blocks: int):
    """Cuts 0..size at blocks-1 distinct random positions: per index (size,), its block number,
    block start and block end."""
    inner = jnp.sort(jax.random.choice(key, jnp.arange(1, size), (blocks - 1,), replace=False))
    cuts = jnp.concatenate([jnp.zeros(1, inner.dtype), inner, jnp.full(1, size, inner.dtype)])
    block = jnp.searchsorted(cuts[1:], jnp.arange(size), side="right")
    return block, cuts[block], cuts[block + 1]


def structure_invariant(x: jax.Array, key: jax.Array, blocks: int) -> jax.Array:
    """SIA's copy of x (H, W, C): blocks x blocks random blocks, each with one transform drawn
    uniformly of SIA_OPS (op 0/1: roll rows/columns inside the block, 2/3: flip them, 4: both
    flips = rotate 180, 5: times U(0, 1), 6: plus U(-16/255, 16/255) noise, 7: dropout). SIA's
    resize and DCT low-pass transforms are not included. Differentiable in x (a gather)."""
    height, width, _ = x.shape
    keys = jax.random.split(key, 7)
    rows, r0, r1 = (a[:, None] for a in _random_blocks(keys[0], height, blocks))
    cols, c0, c1 = (a[None, :] for a in _random_blocks(keys[1], width, blocks))
    per_pixel = lambda values: values[rows, cols]  # (blocks, blocks, ...) -> (H, W, ...)  # noqa: E731
    op = per_pixel(jax.random.randint(keys[2], (blocks, blocks), 0, SIA_OPS))
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
    return x[source_r, source_c] * gain + jnp.where(op[..., None] == 6, noise, 0.0)


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
