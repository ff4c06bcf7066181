"""LipSDP-Neuron (Fazlyab et al. 2019) through cvxpy, its answer checked exactly in float64.

The LMI is the one of adv_jax/certify.py (alpha = 0, slopes folded into the weights): minimize
rho over rho and diagonal T_k >= 0 subject to

    [[rho I,  -(T_1 W_0)^T, 0, ...], [-T_1 W_0, 2 T_1, -(T_2 W_1)^T, ...], ...,
     [..., -T_l W_{l-1}, 2 T_l - W_l^T W_l]]  PSD,

and the certified constant is sqrt(rho). Two exact reductions keep it small: each W_k is scaled
to norm 1 (the relaxation allows every slope in [0, 1], a cone, so scaling W_{k-1} by c and W_k
by 1/c changes nothing; the bound is multiplied back by prod ||W_k||), and the input is reduced to
W_0's row space: only W_0 W_0^T enters the Schur complement of the rho I block, and U S (from
W_0 = U S V^T) has the same Gram matrix with min(n_0, n_1) columns.

The solver's T is never trusted: `certify.schur_bound` recomputes the constant it certifies
(exactly, for that T), and where an inaccurate T is not feasible, the mixtures with the
ECLipsE-Fast multipliers (feasible; the feasible set is convex) are tried. The bound returned is
the best of those, never above ECLipsE-Fast's.

cvxpy and a solver (SCS by default; `pip install -e '.[lipschitz]'`) are optional: imported only
when solving.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from adv_jax import certify

__all__ = ["DEFAULT_MAX_SIZE", "checked_bound", "lipsdp", "normalized_chain", "too_large"]

DEFAULT_MAX_SIZE = 400  # LMI dimension (reduced input + hidden units) solved by default
MIXTURES = (0.0, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0)  # weight of the ECLipsE-Fast multipliers


def too_large(chain: certify.DenseChain, max_size: int) -> str | None:
    """Why LipSDP is skipped for this network (None: solve it)."""
    if chain.lmi_size > max_size:
        return (f"LMI of size {chain.lmi_size} (reduced input + hidden units) exceeds "
                f"lipschitz.lipsdp_max_size={max_size}")
    return None


def normalized_chain(chain: certify.DenseChain) -> tuple[certify.DenseChain, float]:
    """The chain with slopes folded into the weights and each weight scaled to norm 1 (float64,
    every hidden slope in [0, 1]), and the product of the norms it was divided by: the original's
    certified constants are the normalized one's times that product (module docstring)."""
    weights = [np.asarray(w, np.float64) for w in chain.weights]
    for k, beta in enumerate(chain.hidden_slopes):
        weights[k] = beta * weights[k]
    norms = [np.linalg.norm(w, 2) for w in weights]
    scaled = tuple(jnp.asarray(w / n) for w, n in zip(weights, norms))
    identity = ("identity",) * len(scaled)
    return certify.DenseChain(scaled, tuple(jnp.zeros(w.shape[0]) for w in scaled), identity), float(np.prod(norms))


def _lmi(weights: list[np.ndarray], rho, lams):
    """The cvxpy matrix of the module docstring; weights[0] (n_1, r) is the reduced input map."""
    import cvxpy as cp

    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]
    blocks = [[np.zeros((a, b)) for b in sizes] for a in sizes]
    blocks[0][0] = rho * np.eye(sizes[0])
    for k, lam in enumerate(lams, start=1):
        couple = -cp.diag(lam) @ weights[k - 1]
        blocks[k][k - 1], blocks[k - 1][k] = couple, couple.T
        blocks[k][k] = 2 * cp.diag(lam)
    blocks[-1][-1] = blocks[-1][-1] - weights[-1].T @ weights[-1]
    return cp.bmat(blocks)


def _solve(weights: list[np.ndarray], solver: str) -> tuple[float, list[np.ndarray], str]:
    """(rho, T diagonals, solver status) of the normalized SDP (weights (out, in), float64)."""
    import cvxpy as cp

    u, s, _ = np.linalg.svd(weights[0], full_matrices=False)
    rho = cp.Variable()
    lams = [cp.Variable(w.shape[0], nonneg=True) for w in weights[:-1]]
    matrix = _lmi([u * s] + weights[1:], rho, lams)
    problem = cp.Problem(cp.Minimize(rho), [(matrix + matrix.T) / 2 >> 0])
    problem.solve(solver=solver)
    if rho.value is None or not all(lam.value is not None for lam in lams):
        return float("nan"), [], problem.status
    return float(rho.value), [np.maximum(lam.value, 0.0) for lam in lams], problem.status


def checked_bound(chain: certify.DenseChain, rho: float, lams: list[np.ndarray]) -> float:
    """The smallest constant that `certify.schur_bound` certifies among the mixtures
    (1 - theta) (rho, T) + theta (rho_fast, T_fast), theta in MIXTURES, of the solver's answer
    with ECLipsE-Fast's (both in the rho-at-input form of the LMI, which is linear in (rho, T)).
    theta = 1 is ECLipsE-Fast itself, so the result never exceeds it."""
    p, _, fast_t = certify.output_gram(chain)
    rho_fast = float(jnp.linalg.eigvalsh(p)[-1])
    best = float(np.sqrt(rho_fast))
    if not lams or not np.isfinite(rho) or rho <= 0:
        return best
    for theta in MIXTURES:
        r = (1 - theta) * rho + theta * rho_fast
        mixed = [((1 - theta) * a + theta * rho_fast * np.asarray(b)) / r for a, b in zip(lams, fast_t)]
        best = min(best, float(certify.schur_bound(chain, [jnp.asarray(m) for m in mixed])))
    return best


def lipsdp(chain: certify.DenseChain, solver: str = "SCS") -> dict:
    """LipSDP-Neuron on a float64 chain (needs jax.enable_x64). Returns {"bound": the checked
    certified constant, "solver_bound": sqrt(rho) as the solver reported it, "status",
    "solver_seconds"}; without hidden layers both are ||W_0||, no solve."""
    if len(chain.weights) == 1:
        norm = float(jnp.linalg.norm(chain.weights[0], 2))
        return dict(bound=norm, solver_bound=norm, status="no hidden layer", solver_seconds=0.0)
    normalized, scale = normalized_chain(chain)
    start = time.perf_counter()
    rho, lams, status = _solve([np.asarray(w) for w in normalized.weights], solver)
    seconds = time.perf_counter() - start
    bound = checked_bound(normalized, rho, lams) * scale
    return dict(bound=bound, solver_bound=float(np.sqrt(max(rho, 0.0)) * scale) if np.isfinite(rho) else None,
                status=status, solver_seconds=seconds)
