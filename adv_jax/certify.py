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
`MAX_SLOPE_ON[activation](lo, hi)`; those slopes give a local constant valid on that set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.models.layers import ACTIVATION_LIPSCHITZ, ACTIVATIONS

__all__ = [
    "MAX_SLOPE_ON", "DenseChain", "NotDense", "as_numpy", "bracket", "certified_distortion",
    "chain_logits", "dense_chain", "eclipse_fast", "local_output_gram", "output_gram",
    "pair_constants", "product_bound", "product_pair_constants", "schur_bound",
]

Array = jax.Array


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


def _local_gram_one(chain: DenseChain, x: Array, eps: Array) -> Array:
    """P (K, K) of ECLipsE-Fast with slopes bounded on B(x, eps) cap [0, 1]^n; x (n,)."""
    lo, hi = _first_interval(chain, x, eps)
    z, x_inv = chain.weights[0] @ x + chain.biases[0], None
    for k, w in enumerate(chain.weights[1:]):
        act = chain.activations[k]
        slopes = MAX_SLOPE_ON[act](lo, hi)
        x_inv, _, _ = _schur_step(chain.weights[k], x_inv, slopes, None)
        f, a_lo, a_hi = (ACTIVATIONS[act](v) for v in (z, lo, hi))
        z = w @ f + chain.biases[k + 1]
        mid, rad = w @ ((a_lo + a_hi) / 2) + chain.biases[k + 1], jnp.abs(w) @ ((a_hi - a_lo) / 2)
        ball = eps * jnp.sqrt(jnp.maximum(jnp.einsum("ij,jk,ik->i", w, x_inv, w), 0.0))
        lo, hi = jnp.maximum(z - ball, mid - rad), jnp.minimum(z + ball, mid + rad)
    w = chain.weights[-1]
    return w @ w.T if x_inv is None else w @ x_inv @ w.T


def local_output_gram(chain: DenseChain, x: Array, eps: Array) -> Array:
    """(N, K, K) local P per image: x (N, ...) images in [0, 1], eps (N,) L2 radii."""
    flat = x.reshape(len(x), -1).astype(chain.weights[0].dtype)
    one = lambda xi, ei: _local_gram_one(chain, xi, ei)  # noqa: E731
    return jax.jit(jax.vmap(one))(flat, jnp.asarray(eps, flat.dtype))


# ----------------------------------------------------------------------------- the bracket

def _radius(margin: Array, lip: Array) -> Array:
    """margin / lip where margin > 0 (inf where lip = 0: the gap cannot close), else 0."""
    return jnp.where(margin <= 0, 0.0, jnp.where(lip > 0, margin / jnp.where(lip > 0, lip, 1.0), jnp.inf))


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
            local: bool = True) -> dict[str, Array]:
    """Per example (N,), L2 in pixel space: "attack" = ||x_adv - x||, "global" =
    `certified_distortion` with the global pair constants pair_l (K, K), and with `local`,
    "local" = max(global, min(eps, margin / local constant)), the local constants certified on
    B(x, eps) cap [0, 1]^n with eps = the attack's distortion (if a smaller adversarial existed it
    would lie in that ball, so the bound holds; it never exceeds eps). x, x_adv (N, ...)."""
    logits = chain_logits(chain, x)
    attack = jnp.linalg.norm((x_adv - x).reshape(len(x), -1).astype(logits.dtype), axis=1)
    out = {"attack": attack, "global": certified_distortion(logits, y, target, pair_l)}
    if local:
        local_l = pair_constants(local_output_gram(chain, x, attack))
        radius = jnp.minimum(attack, certified_distortion(logits, y, target, local_l))
        out["local"] = jnp.maximum(out["global"], radius)
    return out
