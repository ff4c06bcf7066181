"""Certified L2 Lipschitz bounds tighter than the layer product, and certified distortion brackets.

Networks of dense layers f(x) = W_l phi(... phi(W_0 x + b_0) ...) + b_l, every hidden unit i of
layer k slope-restricted in [0, beta_ki] (sigmoid 1/4, ReLU and tanh 1, identity 1: [1, 1] is
inside [0, 1]). W_k here is (out, in), the transpose of adv_jax's w. Bounds are on the logits,
in logits per unit L2 distance in pixel space (images in [0, 1]^784).

The LMI (LipSDP-Neuron, Fazlyab et al. 2019, with alpha = 0). Fold the slopes into the weights
(W_{k-1} <- diag(beta_k) W_{k-1}; then every slope is in [0, 1]). For diagonal T_k >= 0, each unit
obeys dv_i (dz_i - dv_i) >= 0, and ||W_l dx_l||^2 <= rho ||dx_0||^2 holds whenever the block
tridiagonal matrix with diagonal (I, 2 T_1, ..., 2 T_l - W_l^T W_l / rho) and off-diagonal
blocks -T_k W_{k-1} is PSD (the constraints' sum, S-procedure). Its block LDL^T (ECLipsE, Xu &
Sivaranjani 2024) reads

    X_0 = I,   X_k = 2 T_k - T_k G_k T_k,   G_k = W_{k-1} X_{k-1}^{-1} W_{k-1}^T,
    PSD  <=>  every X_k > 0  and  rho >= lambda_max(W_l X_l^{-1} W_l^T)  (`output_gram`).

So any T with every X_k > 0 certifies L = sqrt(lambda_max(W_l X_l^{-1} W_l^T)): `schur_bound`
evaluates it for given T (the check of LipSDP's solution, adv_jax/lipsdp.py).

ECLipsE-Fast (`eclipse_fast`): T_k = t_k I with t_k = 1 / lambda_max(G_k), which maximizes the
smallest eigenvalue 2 t - t^2 lambda_max(G_k) of X_k; then X_k's eigenvalues lie in
[t_k, 2 t_k] (condition number <= 2). By induction lambda_max(G_{k+1}) <= ||W_k||^2 / t_k, so the
bound never exceeds the product; with no hidden layer it is ||W_0|| exactly.

Pairs (`pair_constants`): x -> z_j - z_t is the same network with W_l replaced by the row
w_j - w_t, and X_l does not depend on W_l, so its constant is sqrt(P_jj + P_tt - 2 P_jt) with
P = W_l X_l^{-1} W_l^T: one P serves all K^2 pairs.

Local (`local_output_gram`): on the ball B(x, eps) intersected with the box [0, 1]^784, each
pre-activation lies in an interval (interval arithmetic, intersected with z(x) +- eps
sqrt(diag(W X^{-1} W^T)), the same certificate per unit), and a unit's slope there is at most
`MAX_SLOPE_ON[activation](lo, hi)`; those slopes give a local constant valid on that set. Per
example and layer it needs no eigendecomposition: t from a few power steps, then one Cholesky of
X_k (shifted by a hair) that both certifies X_k > 0 and yields W X_k^{-1} W^T through triangular
solves (`_certified_factor`); an example whose Cholesky fails keeps the global P.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

from adv_jax.models.layers import ACTIVATION_LIPSCHITZ, ACTIVATIONS

__all__ = [
    "MAX_SLOPE_ON", "DenseChain", "NotDense", "as_numpy", "bracket", "certified_distortion",
    "chain_logits", "dense_chain", "eclipse_fast", "local_output_gram", "output_gram",
    "pair_constants", "product_bound", "product_pair_constants", "schur_bound",
]

Array = jax.Array
POWER_ITERS = 10  # power steps per local layer: the estimate sets T_k, the Cholesky certifies it
CHOLESKY_SHIFT = 1e-9  # relative to t: far above float64 rounding, far below any bound's digits
LOCAL_CHUNK = 1000  # images per jitted call of the local bracket (a progress-bar step)
LOCAL_BATCH = 64  # images vmapped together inside a call: 2.5x faster than 1000 on FC100


def _sigmoid_slope(z):
    s = jax.nn.sigmoid(z)
    return s * (1 - s)


# The largest slope of each activation on [lo, hi]: its derivative at the point nearest 0
# (sigmoid and tanh are steepest at 0), ReLU 1 if any point is > 0.
MAX_SLOPE_ON = {
    "sigmoid": lambda lo, hi: _sigmoid_slope(jnp.clip(0.0, lo, hi)),
    "tanh": lambda lo, hi: 1 - jnp.tanh(jnp.clip(0.0, lo, hi)) ** 2,
    "relu": lambda lo, hi: (hi > 0).astype(hi.dtype),
    "identity": lambda lo, hi: jnp.ones_like(hi),
}


class NotDense(ValueError):
    """The model has layers other than dense ones (convolutions, pooling)."""


@functools.partial(jax.tree_util.register_dataclass, data_fields=["weights", "biases"],
                   meta_fields=["activations"])
@dataclasses.dataclass(frozen=True)
class DenseChain:
    """A dense network as matrices: weights[k] (n_{k+1}, n_k) = W_k, biases[k] (n_{k+1},), and
    activations[k] the activation after W_k; the last one is "identity" (logits)."""

    weights: tuple[Array, ...]
    biases: tuple[Array, ...]
    activations: tuple[str, ...]

    @property
    def hidden_slopes(self) -> tuple[float, ...]:
        """beta_k of each hidden layer's activation (global slope bound)."""
        return tuple(ACTIVATION_LIPSCHITZ[a] for a in self.activations[:-1])

    @property
    def lmi_size(self) -> int:
        """Dimension of the LipSDP matrix once the input is reduced to W_0's rank."""
        n_out, n_in = self.weights[0].shape
        return min(n_out, n_in) * (len(self.weights) > 1) + sum(w.shape[0] for w in self.weights[:-1])


def dense_chain(model, params, dtype=jnp.float64) -> DenseChain:
    """The model's dense layers as a `DenseChain` in `dtype` (float64 needs jax.enable_x64).
    A non-identity activation on the last layer becomes a hidden layer followed by an identity
    matrix. Raises NotDense for conv or pooling layers."""
    if any(layer.kind != "dense" for layer in model.layers):
        kinds = sorted({layer.kind for layer in model.layers} - {"dense"})
        raise NotDense(f"certified bounds need dense layers only; this model has {kinds}")
    weights = [jnp.asarray(p["w"], dtype).T for p in params]
    biases = [jnp.asarray(p["b"], dtype) for p in params]
    activations = [layer.activation for layer in model.layers]
    if activations[-1] != "identity":
        k = weights[-1].shape[0]
        weights, biases = weights + [jnp.eye(k, dtype=dtype)], biases + [jnp.zeros(k, dtype)]
        activations = activations + ["identity"]
    return DenseChain(tuple(weights), tuple(biases), tuple(activations))


# ----------------------------------------------------------------------------- global bounds

def product_bound(chain: DenseChain) -> Array:
    """prod_k ||W_k|| beta_k (the paper's bound). Scalar."""
    norms = [jnp.linalg.norm(w, 2) for w in chain.weights]
    return math.prod(chain.hidden_slopes) * jnp.prod(jnp.stack(norms))


def _schur_step(w: Array, x_inv: Array | None, slopes: Array, t: Array | None):
    """One block of the LDL^T for hidden layer k: W_{k-1} (n_k, n_{k-1}), X_{k-1}^{-1} (None =
    I), slopes (n_k,), T_k = diag(t) (None: the ECLipsE-Fast choice t = 1 / lambda_max(G_k) for
    every unit). Returns (X_k^{-1}, smallest eigenvalue of X_k, t)."""
    h = w @ w.T if x_inv is None else w @ x_inv @ w.T
    g = slopes[:, None] * h * slopes[None, :]
    if t is None:
        top = jnp.linalg.eigvalsh(g)[-1]
        # Raising lambda_max only lowers t: still X_k > 0, so the floor keeps the bound valid.
        t = jnp.full(g.shape[:1], 1.0 / jnp.maximum(top, jnp.finfo(g.dtype).tiny ** 0.5))
    x = 2 * jnp.diag(t) - t[:, None] * g * t[None, :]
    values, vectors = jnp.linalg.eigh(x)
    return (vectors / values) @ vectors.T, values[0], t


def output_gram(chain: DenseChain, slopes: Sequence[Array] | None = None,
                multipliers: Sequence[Array] | None = None) -> tuple[Array, Array, list[Array]]:
    """(P = W_l X_l^{-1} W_l^T (K, K), smallest eigenvalue over the X_k (inf with no hidden
    layer), the T_k diagonals used).

    slopes[k] (n_{k+1},): upper slopes of hidden layer k (default its activation's beta).
    multipliers[k] (n_{k+1},): the diagonal of T_k (default the ECLipsE-Fast choice). The bound
    sqrt(lambda_max(P)) holds only if the smallest eigenvalue is > 0.
    """
    x_inv, least, used = None, jnp.asarray(jnp.inf, chain.weights[0].dtype), []
    for k, w in enumerate(chain.weights[:-1]):
        beta = (jnp.full(w.shape[:1], chain.hidden_slopes[k], w.dtype) if slopes is None
                else slopes[k])
        x_inv, low, t = _schur_step(w, x_inv, beta, None if multipliers is None else multipliers[k])
        least, used = jnp.minimum(least, low), used + [t]
    w = chain.weights[-1]
    return (w @ w.T if x_inv is None else w @ x_inv @ w.T), least, used


def eclipse_fast(chain: DenseChain) -> Array:
    """ECLipsE-Fast's certified L2 Lipschitz constant of the logits. Scalar."""
    p, _, _ = output_gram(chain)
    return jnp.sqrt(jnp.linalg.eigvalsh(p)[-1])


def schur_bound(chain: DenseChain, multipliers: Sequence[Array]) -> Array:
    """The constant certified by diagonal multipliers T_k (one (n_k,) per hidden layer): exact
    for that T, or inf where some X_k is not positive definite. Scalar."""
    p, least, _ = output_gram(chain, multipliers=multipliers)
    return jnp.where(least > 0, jnp.sqrt(jnp.linalg.eigvalsh(p)[-1]), jnp.inf)


# ----------------------------------------------------------------------------- pairs of classes

@jax.jit
def pair_constants(p: Array) -> Array:
    """(..., K, K) Lipschitz constants of x -> z_j - z_t from P (..., K, K) = W_l X_l^{-1} W_l^T."""
    d = jnp.diagonal(p, axis1=-2, axis2=-1)
    return jnp.sqrt(jnp.maximum(d[..., :, None] + d[..., None, :] - 2 * p, 0.0))


def product_pair_constants(chain: DenseChain) -> Array:
    """(K, K): ||w_j - w_t|| times the product of the hidden layers' bounds."""
    w = chain.weights[-1]
    rest = [jnp.linalg.norm(m, 2) for m in chain.weights[:-1]]
    scale = math.prod(chain.hidden_slopes) * (jnp.prod(jnp.stack(rest)) if rest else 1.0)
    return scale * jnp.linalg.norm(w[:, None, :] - w[None, :, :], axis=-1)


# ----------------------------------------------------------------------------- local bounds

def _first_interval(chain: DenseChain, x: Array, eps: Array) -> tuple[Array, Array]:
    """Pre-activation interval of layer 0 over B(x, eps) and the box [0, 1]: x (n,), eps scalar."""
    w, b = chain.weights[0], chain.biases[0]
    z = w @ x + b
    ball = eps * jnp.linalg.norm(w, axis=1)
    lo, hi = jnp.clip(x - eps, 0.0, 1.0), jnp.clip(x + eps, 0.0, 1.0)
    mid, rad = w @ ((lo + hi) / 2) + b, jnp.abs(w) @ ((hi - lo) / 2)
    return jnp.maximum(z - ball, mid - rad), jnp.minimum(z + ball, mid + rad)


def _power_estimate(g: Array, iters: int) -> Array:
    """Rayleigh quotient of g (n, n) PSD after `iters` power steps from its diagonal: at most
    lambda_max(g), and close to it (only an estimate: `_certified_factor` checks what it gives)."""
    v = jnp.diagonal(g) + jnp.finfo(g.dtype).tiny ** 0.5

    def step(_, v):
        u = g @ v
        return u / jnp.maximum(jnp.linalg.norm(u), jnp.finfo(g.dtype).tiny)

    v = jax.lax.fori_loop(0, iters, step, v / jnp.linalg.norm(v))
    return v @ g @ v


def _certified_factor(g: Array, iters: int) -> tuple[Array, Array]:
    """(L lower triangular with L L^T <= X = 2 t I - t^2 g, whether X > 0 is certified), for
    g (n, n) = diag(s) H diag(s) and t = 1 / (power estimate of lambda_max(g)).

    No eigendecomposition: X > 0 is proven by a Cholesky of X - SHIFT t I succeeding (its rounding
    error, ~n u ||X||, is far below the shift), and L of that shifted X only enlarges X^{-1}
    downstream, which keeps every constant built from it an upper bound. If the estimate were
    below lambda_max / 2, X would not be PD: the Cholesky fails and `ok` is False."""
    t = 1.0 / jnp.maximum(_power_estimate(g, iters), jnp.finfo(g.dtype).tiny ** 0.5)
    eye = jnp.eye(g.shape[0], dtype=g.dtype)
    chol = jnp.linalg.cholesky((2 - CHOLESKY_SHIFT) * t * eye - t * t * g)
    return chol, jnp.all(jnp.isfinite(chol))


def _local_gram_one(chain: DenseChain, h0: Array, fallback: Array, x: Array, eps: Array,
                    iters: int) -> tuple[Array, Array]:
    """(P (K, K), certified locally) with slopes bounded on B(x, eps) cap [0, 1]^n; x (n,),
    h0 = W_0 W_0^T. Where a layer's X_k is not certified, P is `fallback` (the global P)."""
    lo, hi = _first_interval(chain, x, eps)
    z, h, ok = chain.weights[0] @ x + chain.biases[0], h0, jnp.asarray(True)
    for k, w in enumerate(chain.weights[1:]):
        act, b = chain.activations[k], chain.biases[k + 1]
        slopes = MAX_SLOPE_ON[act](lo, hi)
        chol, ok_k = _certified_factor(slopes[:, None] * h * slopes[None, :], iters)
        y = jax.scipy.linalg.solve_triangular(chol, w.T, lower=True)
        h, ok = y.T @ y, ok & ok_k  # H_{k+1} = W_{k+1} X_k^{-1} W_{k+1}^T
        f, a_lo, a_hi = (ACTIVATIONS[act](v) for v in (z, lo, hi))
        z = w @ f + b
        mid, rad = w @ ((a_lo + a_hi) / 2) + b, jnp.abs(w) @ ((a_hi - a_lo) / 2)
        ball = eps * jnp.sqrt(jnp.maximum(jnp.diagonal(h), 0.0))
        lo, hi = jnp.maximum(z - ball, mid - rad), jnp.minimum(z + ball, mid + rad)
    return jnp.where(ok, h, fallback), ok


@functools.partial(jax.jit, static_argnames=("iters",))
def _local_grams(chain: DenseChain, h0: Array, fallback: Array, x: Array, eps: Array,
                 iters: int) -> tuple[Array, Array]:
    # vmapped LOCAL_BATCH examples at a time: their (batch, hidden, hidden) matrices stay in cache
    one = lambda row: _local_gram_one(chain, h0, fallback, *row, iters)  # noqa: E731
    return jax.lax.map(one, (x, eps), batch_size=LOCAL_BATCH)


def local_output_gram(chain: DenseChain, x: Array, eps: Array, *, chunk_size: int = LOCAL_CHUNK,
                      iters: int = POWER_ITERS, progress: bool = False) -> tuple[Array, Array]:
    """((N, K, K) local P per image, (N,) bool: certified locally, else the global P):
    x (N, ...) images in [0, 1], eps (N,) L2 radii. Jitted and vmapped over `chunk_size` images
    at a time (the last chunk padded), with a progress bar in images when `progress`."""
    flat = x.reshape(len(x), -1).astype(chain.weights[0].dtype)
    eps = jnp.asarray(eps, flat.dtype)
    h0, fallback = _shared_grams(chain)
    bar = _progress_bar(len(flat), progress)
    # a few images are not padded to a whole chunk
    chunk_size = max(1, min(chunk_size, -(-len(flat) // LOCAL_BATCH) * LOCAL_BATCH))
    parts = []
    # One Cholesky per example and layer goes to LAPACK; OpenBLAS's threads gain nothing on
    # 100 x 100 matrices and, spinning while they wait, cost several times over on a busy CPU.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        for start in range(0, len(flat), chunk_size):
            rows = [_pad(a[start:start + chunk_size], chunk_size) for a in (flat, eps)]
            p, ok = jax.block_until_ready(_local_grams(chain, h0, fallback, *rows, iters=iters))
            size = min(chunk_size, len(flat) - start)
            parts.append((p[:size], ok[:size]))
            bar.update(size)
    bar.close()
    if not parts:
        return jnp.zeros((0,) + fallback.shape, flat.dtype), jnp.zeros(0, bool)
    return jnp.concatenate([p for p, _ in parts]), jnp.concatenate([o for _, o in parts])


@jax.jit
def _shared_grams(chain: DenseChain) -> tuple[Array, Array]:
    """(W_0 W_0^T, the global P): what every example's local chain starts from or falls back to."""
    w0 = chain.weights[0]
    return w0 @ w0.T, output_gram(chain)[0]


def _pad(a: Array, size: int) -> Array:
    """a's rows padded to `size` by repeating its last row (a padded row's result is dropped)."""
    return a if len(a) == size else jnp.concatenate([a, jnp.repeat(a[-1:], size - len(a), 0)])


def _progress_bar(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="local bracket", unit="ex", disable=not show, leave=False)


# ----------------------------------------------------------------------------- the bracket

def _radius(margin: Array, lip: Array) -> Array:
    """margin / lip where margin > 0 (inf where lip = 0: the gap cannot close), else 0."""
    return jnp.where(margin <= 0, 0.0, jnp.where(lip > 0, margin / jnp.where(lip > 0, lip, 1.0), jnp.inf))


@jax.jit
def certified_distortion(logits: Array, y: Array, target: Array, pair_l: Array) -> Array:
    """Certified lower bound (N,) on the L2 distortion (pixel space, [0, 1] units) that makes
    the classifier output `target` (or, target = -1, anything but y).

    logits (N, K) at the clean images, y and target (N,), pair_l (K, K) or (N, K, K): Lipschitz
    constants of x -> z_j - z_t. Targeted: reaching t needs z_t >= z_j for every j, so the bound
    is max_j max(z_j - z_t, 0) / L_jt. Untargeted: 0 if already misclassified, else
    min_{j != y} (z_y - z_j) / L_yj. Divide by sqrt(784) for adv_jax's per-pixel RMS.
    """
    n, k = logits.shape
    pair_l, rows = jnp.broadcast_to(pair_l, (n, k, k)), jnp.arange(n)
    t = jnp.maximum(target, 0)
    targeted = jnp.max(_radius(logits - logits[rows, t][:, None], pair_l[rows, :, t]), axis=1)
    to_j = _radius(logits[rows, y][:, None] - logits, pair_l[rows, y, :])
    to_j = jnp.where(jnp.arange(k)[None, :] == y[:, None], jnp.inf, to_j)
    untargeted = jnp.where(jnp.argmax(logits, 1) == y, jnp.min(to_j, axis=1), 0.0)
    return jnp.where(target >= 0, targeted, untargeted)


def as_numpy(tree):
    """Arrays of a pytree as numpy float64 (for JSON and tables)."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def chain_logits(chain: DenseChain, x: Array) -> Array:
    """Logits (N, K) of images x (N, ...) through the chain, in the chain's dtype."""
    h = x.reshape(len(x), -1).astype(chain.weights[0].dtype)
    for w, b, act in zip(chain.weights, chain.biases, chain.activations):
        h = ACTIVATIONS[act](h @ w.T + b)
    return h


def bracket(chain: DenseChain, x: Array, x_adv: Array, y: Array, target: Array, pair_l: Array,
            local: bool = True, progress: bool = False, local_examples: int | None = None
            ) -> dict[str, Array]:
    """Per example (N,), L2 in pixel space: "attack" = ||x_adv - x||, "global" =
    `certified_distortion` with the global pair constants pair_l (K, K), and with `local`,
    "local" = max(global, min(eps, margin / local constant)), the local constants certified on
    B(x, eps) cap [0, 1]^n with eps = the attack's distortion (if a smaller adversarial existed it
    would lie in that ball, so the bound holds; it never exceeds eps), and "local_certified"
    (bool: the local constants were certified; else the global ones stand in). x, x_adv (N, ...).
    local_examples: only the first that many get local constants (None = all); beyond them
    "local" is the global bound (still certified) and "local_certified" False."""
    logits = chain_logits(chain, x)
    attack = jnp.linalg.norm((x_adv - x).reshape(len(x), -1).astype(logits.dtype), axis=1)
    out = {"attack": attack, "global": certified_distortion(logits, y, target, pair_l)}
    if local:
        m = len(x) if local_examples is None else min(local_examples, len(x))
        grams, certified = local_output_gram(chain, x[:m], attack[:m], progress=progress)
        radius = jnp.minimum(attack[:m], certified_distortion(logits[:m], y[:m], target[:m],
                                                              pair_constants(grams)))
        out["local"] = out["global"].at[:m].max(radius)
        out["local_certified"] = jnp.zeros(len(x), bool).at[:m].set(certified)
    return out
