"""Exact minimum adversarial distortions of linear classifiers (FC10: logits z = x w + b, w (n, K)
as adv_jax stores a dense layer), the truth that attacks and certified bounds are measured against.

Reaching class t from x (n,) takes a perturbation d with x + d in the box [0, 1]^n and
(w_t - w_j) . (x + d) + (b_t - b_j) >= 0 for every j != t. The smallest such d is

    L2     a quadratic program (minimize |d|_2^2)            cvxpy, Clarabel
    L-inf  a linear program (minimize s, -s <= d_i <= s)      cvxpy, HiGHS
    L1     a linear program (d = p - q, p, q >= 0, minimize sum(p + q))

one per target; the untargeted minimum is the smallest over t != y (0 where x is already
misclassified), inf where the box makes a class unreachable. Each (norm, K, n) problem is
built once with cvxpy parameters for x and the target's constraint rows, then re-solved per
example and target. cvxpy and a solver come with the `lipschitz` extra (pip install -e
'.[lipschitz]'). Distances: L2 of the whole perturbation, L-inf per pixel, L1 summed; pixels in
[0, 1] (per-pixel RMS = L2 / sqrt(n)).
"""

from __future__ import annotations

import functools

import numpy as np

from adv_jax import extras

__all__ = ["NORMS", "linear_minimum", "minimum_distortions"]

NORMS = ("l2", "linf", "l1")
SOLVERS = {"l2": "CLARABEL", "linf": "HIGHS", "l1": "HIGHS"}


@functools.lru_cache(maxsize=16)
def _problem(norm: str, classes: int, n: int):
    """(problem, parameters x (n,), rows (K-1, n), offsets (K-1,), perturbation variable)."""
    extras.require("lipsdp")  # cvxpy
    import cvxpy as cp

    x, rows, offsets = cp.Parameter(n), cp.Parameter((classes - 1, n)), cp.Parameter(classes - 1)
    d = cp.Variable(n)
    constraints = [rows @ d >= -offsets, x + d >= 0, x + d <= 1]  # offsets: the margins at x
    if norm == "l2":
        objective = cp.sum_squares(d)
    elif norm == "linf":
        objective = cp.norm(d, "inf")
    else:
        objective = cp.norm(d, 1)
    return cp.Problem(cp.Minimize(objective), constraints), x, rows, offsets, d


def linear_minimum(w: np.ndarray, b: np.ndarray, x: np.ndarray, target: int, norm: str = "l2") -> tuple[float, np.ndarray | None]:
    """(the smallest |d|_norm that makes class `target` win, d (n,)) for logits x @ w + b, w (n, K)
    as adv_jax stores it; (inf, None) where the box rules it out. x (n,) flattened."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
    n, classes = w.shape
    others = [j for j in range(classes) if j != target]
    problem, x_param, rows, offsets, d = _problem(norm, classes, n)
    diff = (w[:, [target]] - w[:, others]).T.astype(np.float64)  # (K-1, n)
    x_param.value = x.astype(np.float64)
    rows.value = diff
    offsets.value = diff @ x.astype(np.float64) + (b[target] - b[others]).astype(np.float64)
    problem.solve(solver=SOLVERS[norm])
    if problem.status == "infeasible":  # the box keeps the target from winning
        return float("inf"), None
    if problem.status != "optimal" or d.value is None:
        raise RuntimeError(f"{SOLVERS[norm]} ended with status {problem.status!r} toward class {target}")
    ord_ = {"l2": 2, "linf": np.inf, "l1": 1}[norm]
    return float(np.linalg.norm(d.value, ord_)), d.value


def minimum_distortions(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, target: np.ndarray | None = None,
                        norm: str = "l2") -> np.ndarray:
    """Exact minimum distortions (N,) of images x (N, ...) with labels y: toward target[i] where
    it is >= 0, else the smallest over every class but y[i] (0 if already misclassified)."""
    flat = x.reshape(len(x), -1)
    target = np.full(len(x), -1) if target is None else np.asarray(target)
    out = np.empty(len(x))
    for i, (image, label, aim) in enumerate(zip(flat, y, target)):
        if aim >= 0:
            out[i] = linear_minimum(w, b, image, int(aim), norm)[0]
        elif np.argmax(image @ w + b) != label:
            out[i] = 0.0
        else:
            out[i] = min(linear_minimum(w, b, image, t, norm)[0] for t in range(w.shape[1]) if t != label)
    return out
