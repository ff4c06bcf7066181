"""Exact minimum adversarial distortions, the truth that attacks and certified bounds are measured
against: of linear classifiers (FC10: logits z = x w + b, w (n, K) as adv_jax stores a dense layer)
by convex programs, and of small ReLU networks by mixed-integer programs.

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

ReLU networks (a certify.DenseChain of ReLU hidden layers): the L-inf or L1 minimum toward each
target is a mixed-integer linear program (Tjeng et al. 2019) solved by HiGHS (highspy, which
cvxpy brings) with its primal heuristics off. The search is cut to the ball of radius `upper` (an
attack's distortion: the minimum lies inside it); there CROWN bounds every pre-activation to
[l, u]. A unit with u <= 0 is off, one with l >= 0 passes z through, and each unit in between gets
one binary a and the exact big-M hull h >= 0, h >= z, h <= u a, h <= z - l (1 - a). L2 would be a mixed-integer QP, which no
solver in scipy or HiGHS handles; it is left out.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from adv_jax import extras
from adv_jax.certify import DenseChain, as_numpy, chain_logits
from adv_jax.crown import layer_bounds, margin_lower_bounds

__all__ = ["NORMS", "MILP_NORMS", "SolvedStore", "linear_minimum", "minimum_distortions", "relu_minimum",
           "relu_minimum_distortions"]

NORMS = ("l2", "linf", "l1")
SOLVERS = {"l2": "CLARABEL", "linf": "HIGHS", "l1": "HIGHS"}
MILP_NORMS = ("linf", "l1")
TIME_LIMIT = 30.0  # seconds per example, over all its targets
MIP_GAP = 1e-4  # relative: the minimum to 4 digits, the solver stops at that
MIP_ABS_GAP = 1e-6  # HiGHS's absolute gap (its default): binds near 0
# Within the attack's ball HiGHS's primal heuristics find little that branching does not, yet on
# ReLU 20-20 they took most of the solve (sub-MIPs, RINS, RENS, feasibility jump: 8055 of 9888 LP
# iterations on one image). Off, its first 12 test images took 106 s against 313 s, same minima.
HIGHS_OPTIONS = {"output_flag": False, "mip_rel_gap": MIP_GAP, "mip_abs_gap": MIP_ABS_GAP,
                 "mip_heuristic_effort": 0.0, "mip_heuristic_run_feasibility_jump": False,
                 "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False,
                 "mip_heuristic_run_root_reduced_cost": False}
WIN_TOLERANCE = 1e-6  # logits: how far below a rival the solver's point may land (its tolerances)


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
                        norm: str = "l2", progress: bool = True) -> np.ndarray:
    """Exact minimum distortions (N,) of images x (N, ...) with labels y: toward target[i] where
    it is >= 0, else the smallest over every class but y[i] (0 if already misclassified); a
    progress bar in examples where `progress`."""
    from tqdm.auto import tqdm

    flat = x.reshape(len(x), -1)
    target = np.full(len(x), -1) if target is None else np.asarray(target)
    out = np.empty(len(x))
    examples = tqdm(zip(flat, y, target), total=len(x), desc=f"exact minima ({norm})", unit="ex", disable=not progress)
    for i, (image, label, aim) in enumerate(examples):
        if aim >= 0:
            out[i] = linear_minimum(w, b, image, int(aim), norm)[0]
        elif np.argmax(image @ w + b) != label:
            out[i] = 0.0
        else:
            out[i] = min(linear_minimum(w, b, image, t, norm)[0] for t in range(w.shape[1]) if t != label)
    return out



class _Rows:
    """Sparse constraint rows lo <= A v <= hi over `size` variables, gathered block by block."""

    def __init__(self, size: int):
        self.size, self.blocks, self.lo, self.hi = size, [], [], []

    def add(self, columns: list[tuple[int, np.ndarray]], lo, hi) -> None:
        """Rows sum_b M_b v[c_b : c_b + k_b], columns [(c_b, M_b (m, k_b))], between lo and hi."""
        m = columns[0][1].shape[0]
        parts = [sp.coo_matrix(block) for _, block in columns]
        rows = np.concatenate([p.row for p in parts])
        cols = np.concatenate([p.col + offset for (offset, _), p in zip(columns, parts)])
        data = np.concatenate([p.data for p in parts])
        self.blocks.append(sp.csr_matrix((data, (rows, cols)), shape=(m, self.size)))
        self.lo.append(np.broadcast_to(lo, (m,)))
        self.hi.append(np.broadcast_to(hi, (m,)))

    def matrix(self) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """(A (rows, size) CSR, lo (rows,), hi (rows,))."""
        return sp.vstack(self.blocks, format="csr"), np.concatenate(self.lo), np.concatenate(self.hi)


def _highs_milp(cost: np.ndarray, rows: _Rows, lower: np.ndarray, upper: np.ndarray, binary: slice,
                time_limit: float) -> tuple[str, np.ndarray | None]:
    """HiGHS (HIGHS_OPTIONS) on min cost . v, lo <= A v <= hi, lower <= v <= upper, v[binary]
    integral -> ("optimal" | "infeasible" | "time limit" | the model status's name, v or None)."""
    extras.require("highs")
    import highspy

    highs, inf = highspy.Highs(), highspy.kHighsInf
    for key, value in {**HIGHS_OPTIONS, "time_limit": float(time_limit)}.items():
        if highs.setOptionValue(key, value) != highspy.HighsStatus.kOk:
            raise RuntimeError(f"this highspy rejects the option {key}={value!r}; pip install 'highspy>=1.12'")
    matrix, lo, hi = rows.matrix()
    highs.passModel(_highs_lp(highspy, cost, matrix, np.where(np.isfinite(lo), lo, -inf),
                              np.where(np.isfinite(hi), hi, inf), lower, upper, binary))
    highs.run()
    status = highs.getModelStatus()
    names = {highspy.HighsModelStatus.kOptimal: "optimal", highspy.HighsModelStatus.kInfeasible: "infeasible",
             highspy.HighsModelStatus.kTimeLimit: "time limit"}
    found = np.asarray(highs.getSolution().col_value) if highs.getInfo().primal_solution_status else None
    return names.get(status, highs.modelStatusToString(status)), found


def _highs_lp(highspy, cost, matrix: sp.csr_matrix, row_lo, row_hi, lower, upper, binary: slice):
    """The highspy.HighsLp of `_highs_milp`'s program (rows stored row-wise, as built)."""
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(cost), matrix.shape[0]
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, lower, upper
    lp.row_lower_, lp.row_upper_ = row_lo, row_hi
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = matrix.indptr, matrix.indices, matrix.data
    kinds = np.full(len(cost), highspy.HighsVarType.kContinuous)
    kinds[binary] = highspy.HighsVarType.kInteger
    lp.integrality_ = list(kinds)
    return lp


def _network_rows(chain: DenseChain, bounds: list, rows: _Rows, offsets: np.ndarray) -> None:
    """The hidden layers' rows: h = z where l >= 0, the big-M hull where l < 0 < u (h = 0 where
    u <= 0 comes from h's column bounds). offsets: where x', each h_k and the binaries start."""
    binary = offsets[len(bounds) + 1]
    for k, (lo, hi) in enumerate(bounds):
        w, b, into, out = chain.weights[k], chain.biases[k], offsets[k], offsets[k + 1]
        eye, on, free = np.eye(len(b)), lo >= 0, (lo < 0) & (hi > 0)
        if on.any():
            rows.add([(into, w[on]), (out, -eye[on])], -b[on], -b[on])
        if free.any():
            diag = np.eye(int(free.sum()))
            rows.add([(into, w[free]), (out, -eye[free])], -np.inf, -b[free])  # h >= z
            rows.add([(out, eye[free]), (binary, -hi[free, None] * diag)], -np.inf, 0.0)  # h <= u a
            rows.add([(out, eye[free]), (into, -w[free]), (binary, -lo[free, None] * diag)],
                     -np.inf, b[free] - lo[free])  # h <= z - l (1 - a)
            binary += int(free.sum())


def _norm_rows(x: np.ndarray, rows: _Rows, start: int, norm: str, radius: float) -> None:
    """|x'_i - x_i| <= r (L-inf: one r at `start`, at most radius by its column bound) or <= r_i
    (L1: r (n,) from `start`, sum r <= radius)."""
    eye = np.eye(x.size)
    slack = -np.ones((x.size, 1)) if norm == "linf" else -eye
    rows.add([(0, eye), (start, slack)], -np.inf, x)
    rows.add([(0, -eye), (start, slack)], -np.inf, -x)
    if norm == "l1":
        rows.add([(start, np.ones((1, x.size)))], -np.inf, radius)


def relu_minimum(chain: DenseChain, x: np.ndarray, target: int, rivals, radius: float, bounds: list,
                 norm: str = "linf", time_limit: float = TIME_LIMIT) -> tuple[float, str, np.ndarray | None]:
    """(the smallest |d|_norm <= radius with z_target >= z_j at x + d for every j in `rivals`,
    "optimal" | "infeasible" (nothing within radius) | "time limit" (the distance of the best
    point found, or nan) | "failed" (the solver's point is not adversarial through the network in
    float64, or another solver status), x + d (n,) or None). Optimal is the minimum to MIP_GAP
    (relative, from above; MIP_ABS_GAP absolute near 0). chain: ReLU hidden layers, numpy float64; x (n,) flattened; bounds
    [(l, u)] of every hidden pre-activation over the L-inf ball of `radius` cut by the box
    (`crown.layer_bounds`)."""
    n, widths = x.size, [w.shape[0] for w in chain.weights[:-1]]
    binaries = sum(int(((lo < 0) & (hi > 0)).sum()) for lo, hi in bounds)
    offsets = np.cumsum([0, n, *widths, binaries])
    size = offsets[-1] + (1 if norm == "linf" else n)
    lower = np.concatenate([np.maximum(x - radius, 0), *[np.maximum(lo, 0) for lo, _ in bounds],
                            np.zeros(size - offsets[-2])])
    upper = np.concatenate([np.minimum(x + radius, 1), *[np.maximum(hi, 0) for _, hi in bounds],
                            np.ones(binaries), np.full(size - offsets[-1], radius)])
    rows = _Rows(size)
    _network_rows(chain, bounds, rows, offsets)
    _norm_rows(x, rows, offsets[-1], norm, radius)
    w, b, rivals = chain.weights[-1], chain.biases[-1], list(rivals)
    rows.add([(offsets[-3], w[target] - w[rivals])], b[rivals] - b[target], np.inf)
    cost = np.zeros(size)
    cost[offsets[-1]:] = 1.0
    status, found = _highs_milp(cost, rows, lower, upper, slice(offsets[-2], offsets[-1]), time_limit)
    if status == "infeasible":
        return float("inf"), "infeasible", None
    found = None if found is None else found[:n]
    if status not in ("optimal", "time limit") or (found is not None and not _wins(chain, found, target, rivals)):
        return float("nan"), "failed", None
    distance = float("nan") if found is None else float(np.linalg.norm(found - x, np.inf if norm == "linf" else 1))
    return distance, status, found


def _wins(chain: DenseChain, point: np.ndarray, target: int, rivals: list[int]) -> bool:
    """Whether z_target >= z_j (to WIN_TOLERANCE) at point for every rival, through the network
    in float64: the solver's integrality tolerance must not have let a unit cheat."""
    with jax.enable_x64(True):
        z = np.asarray(chain_logits(chain, point[None])[0])
    return bool(np.all(z[target] - z[rivals] >= -WIN_TOLERANCE))


@jax.jit
def _crown_bounds(chain: DenseChain, x, label, radius):
    """Per example of x (N, n): CROWN's [(l, u)] of every hidden layer over the L-inf ball of
    `radius` (N,), lower bounds of z_label - z_j (N, K), and the logits (N, K)."""
    def one(xi, yi, ri):
        return (layer_bounds(chain, xi, ri, "linf"), margin_lower_bounds(chain, xi, yi, ri, "linf"),
                chain_logits(chain, xi[None])[0])
    return jax.vmap(one)(x, label, radius)


def _plans(logits: np.ndarray, margins: np.ndarray, label: int, aim: int) -> list[tuple[int, list[int]]]:
    """(target, rivals it must beat) of each program to solve: the aim over every other class, or
    each class the label over CROWN cannot rule out, closest first (a small incumbent shrinks
    the later programs' radius)."""
    classes = len(logits)
    if aim >= 0:
        return [(aim, [j for j in range(classes) if j != aim])]
    return [(int(t), [label]) for t in np.argsort(-logits) if t != label and margins[t] <= 0]


def _solve_example(job: tuple) -> tuple[float, bool]:
    """(the smallest distance over the job's programs, solved): runs in a worker process."""
    chain, x, plans, radius, bounds, norm, time_limit = job
    best, solved, deadline = float("inf"), True, time.monotonic() + time_limit
    for target, rivals in plans:
        left = deadline - time.monotonic()
        if left <= 0:
            return best, False
        d, status, _ = relu_minimum(chain, x, target, rivals, min(best, radius), bounds, norm, left)
        solved &= status in ("optimal", "infeasible")
        best = min(best, d) if np.isfinite(d) else best  # a time limit's point: an upper bound
    # nothing within an attack's distance contradicts the attack: not solved
    return best, solved and (np.isfinite(best) or not np.isfinite(radius) or radius >= _REACH[norm](x.size))


_REACH = {"linf": lambda n: 1.0, "l1": float}  # the box's farthest point from any x, per norm


def _jobs(chain: DenseChain, flat: np.ndarray, y, target, radius, norm: str, time_limit: float):
    """(index, job) of every example not already adversarial (untargeted: misclassified;
    targeted: the target wins), CROWN run here by chunks of 100."""
    numpy_chain = as_numpy(chain)
    for start in range(0, len(flat), 100):
        part = slice(start, start + 100)
        with jax.enable_x64(True):
            bounds, margins, logits = jax.tree_util.tree_map(np.asarray, _crown_bounds(
                _jax64(chain), jnp.asarray(flat[part]), jnp.asarray(y[part]), jnp.asarray(radius[part])))
        for k, i in enumerate(range(len(flat))[part]):
            aim, winner = int(target[i]), int(np.argmax(logits[k]))
            if (winner == y[i]) if aim < 0 else (winner != aim):  # else 0: already there
                example_bounds = [(lo[k], hi[k]) for lo, hi in bounds]
                plans = _plans(logits[k], margins[k], int(y[i]), int(target[i]))
                yield i, (numpy_chain, flat[i], plans, float(radius[i]), example_bounds, norm, time_limit)


def _jax64(chain: DenseChain) -> DenseChain:
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), chain)


def _job_key(job: tuple) -> str:
    """What determines a job's answer but its time limit: the network, the image, the programs'
    targets and rivals, the radius, the norm and the solver's gap."""
    chain, x, plans, radius, _, norm, _ = job
    digest = hashlib.sha256(repr((plans, float(radius), norm, MIP_GAP, MIP_ABS_GAP, WIN_TOLERANCE)).encode())
    for array in (*chain.weights, *chain.biases, x):
        digest.update(np.ascontiguousarray(array, np.float64).tobytes())
    return digest.hexdigest()


class SolvedStore:
    """Finished examples on disk (one JSON line each, appended as they finish): a run stopped
    part way resumes where it stopped, and a run with a longer time limit re-solves only the
    examples a shorter one left unsolved."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.known = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                entry = json.loads(line)
                self.known[entry["key"]] = entry

    def get(self, key: str, time_limit: float) -> tuple[float, bool] | None:
        """(distance, solved) where a finished answer holds at this time limit, else None."""
        entry = self.known.get(key)
        if entry is None or not (entry["solved"] or entry["time_limit"] >= time_limit):
            return None
        return float(entry["distance"]), bool(entry["solved"])

    def put(self, key: str, distance: float, solved: bool, time_limit: float) -> None:
        entry = {"key": key, "distance": distance, "solved": solved, "time_limit": time_limit}
        self.known[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def relu_minimum_distortions(chain: DenseChain, x: np.ndarray, y: np.ndarray, target: np.ndarray | None = None,
                             upper: np.ndarray | None = None, norm: str = "linf", time_limit: float = TIME_LIMIT,
                             workers: int | None = None, progress: bool = True,
                             store: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(exact minimum distortions (N,), solved (N,) bool) of images x (N, ...) with labels y under
    a ReLU `chain`: toward target[i] where >= 0 (0 if it already wins), else any class but y[i]
    (0 if misclassified).
    upper (N,): distances at which an adversarial is known (an attack's; the search stays inside;
    inf or None: the whole box). Solved: the minimum to MIP_GAP (relative, from above), each
    program's point checked through the network in float64. Unsolved (the time limit per example,
    a solver failure, or nothing found within an attack's distance): the best point found (an
    upper bound) or inf. workers: processes solving examples side by side (None: one per core).
    store: a `SolvedStore` file that keeps every finished example (None: none kept)."""
    if norm not in MILP_NORMS:
        raise ValueError(f"the ReLU program takes norm {list(MILP_NORMS)}, not {norm!r} (L2 needs a mixed-integer QP)")
    if any(a != "relu" for a in chain.activations[:-1]):
        raise ValueError(f"the mixed-integer program needs ReLU hidden layers, not {chain.activations[:-1]}")
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    reach = _REACH[norm](flat.shape[1])
    target = np.full(len(x), -1) if target is None else np.asarray(target)
    upper = np.full(len(x), np.inf) if upper is None else np.asarray(upper, np.float64)
    out, solved = np.zeros(len(x)), np.ones(len(x), bool)  # misclassified: 0, solved
    kept = SolvedStore(store) if store is not None else None
    pending = []
    for i, job in _jobs(chain, flat, np.asarray(y), target, np.minimum(upper, reach), norm, time_limit):
        key = _job_key(job)
        if kept is not None and (known := kept.get(key, time_limit)) is not None:
            out[i], solved[i] = known
        else:
            pending.append((i, key, job))
    results = _map(_solve_example, [job for *_, job in pending], workers, progress)
    for (i, key, _), (distance, done) in zip(pending, results):
        out[i], solved[i] = distance, done
        if kept is not None:
            kept.put(key, float(distance), bool(done), time_limit)
    return out, solved


def _map(function, jobs, workers: int | None, progress: bool):
    """function over jobs, yielded in order as they finish, in `workers` spawned processes (1:
    here), with a progress bar."""
    from tqdm.auto import tqdm

    workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    bar = dict(total=len(jobs), desc="exact minima (MILP)", unit="ex", disable=not progress)
    if workers == 1:
        yield from tqdm(map(function, jobs), **bar)
        return
    context = multiprocessing.get_context("spawn")  # JAX's threads make fork unsafe
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from tqdm(pool.map(function, jobs), **bar)
