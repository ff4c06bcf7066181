"""Why examples transfer, per ordered model pair (source s, target t) of a transfer-attacks study
(Tramer et al. 2017; Demontis et al. 2019), on the first experiment.transfer.analysis_examples
attacked images:

  cosine       cosine of s's and t's input gradients of CE at the true label
  along        distance to t's decision boundary along s's minimum-norm direction (the
               `direction_attack`, L-BFGS, at its own size): x + r u, u = delta_s / |delta_s|_2
  random       the same along random Gaussian directions: median over `random_directions` per image
  own          t's own minimum-norm distortion |delta_t|_2 (its own `direction_attack` example)
  transferred  t errs on s's `reference_attack` example at reference_norm, budgets[reference_budget]

Distances are Euclidean norms of the whole perturbation (per-pixel RMS = that / 28), inf where
t's prediction does not change within max_distance. `pair_summary` relates them to the transfer
outcome: the transfer rate per cosine quartile and per `along` quartile.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.attacks.analysis import boundary_distance, gradient_cosine, random_directions
from adv_jax.attacks.budgets import perturbation_norm

RANDOM_KEY = 7  # fold_in(key(seed), RANDOM_KEY) draws the random directions


def quartile_rates(values: np.ndarray, transferred: np.ndarray) -> list[dict]:
    """Transfer rate (percent) in each quartile of `values` (ties broken by order): 4 x {low,
    high, n, rate}."""
    order = np.argsort(values, kind="stable")
    out = []
    for part in np.array_split(order, 4):
        if len(part) == 0:
            continue
        out.append({"low": float(values[part].min()), "high": float(values[part].max()), "n": int(len(part)),
                    "rate": 100.0 * float(transferred[part].mean())})
    return out


def pair_summary(s: str, t: str, arrays: dict[str, np.ndarray]) -> dict:
    """The numbers of one pair that tables show, from its arrays (module docstring)."""
    along, own, rand = arrays["along"], arrays["own"], arrays["random"]
    finite_along = np.where(np.isfinite(along), along, np.nan)
    return {"source": s, "target": t, "n": int(len(along)), "mean_cosine": float(np.mean(arrays["cosine"])),
            "median_along": float(np.median(along)), "median_random": float(np.median(rand)),
            "median_own": float(np.median(own)),
            "median_along_over_own": float(np.nanmedian(finite_along / np.maximum(own, 1e-12))),
            "random_not_found": 100.0 * float(np.mean(~np.isfinite(rand))),
            "transfer_rate": 100.0 * float(arrays["transferred"].mean()),
            "by_cosine": quartile_rates(arrays["cosine"], arrays["transferred"]),
            "by_along": quartile_rates(np.nan_to_num(along, posinf=np.inf), arrays["transferred"])}


def pair_arrays(fns: dict, s: str, t: str, x, y, directions: dict, references: dict,
                random_median: dict, max_distance: float) -> dict[str, np.ndarray]:
    """The per-example arrays of pair (s, t), (n,) each."""
    delta_s = directions[s] - x
    return {"cosine": np.asarray(gradient_cosine(fns[s], fns[t], x, y)),
            "along": np.asarray(boundary_distance(fns[t], x, delta_s, max_distance=max_distance)),
            "random": random_median[t],
            "own": np.asarray(perturbation_norm(jnp.asarray(directions[t] - x), "l2")),
            "transferred": np.asarray(jnp.argmax(fns[t](jnp.asarray(references[s])), -1)) != np.asarray(y)}


def random_medians(cfg, fns: dict, x: np.ndarray) -> dict[str, np.ndarray]:
    """Per target model, the median over random directions of the boundary distance, (n,)."""
    spec = cfg.experiment.transfer
    key = jax.random.fold_in(jax.random.key(cfg.seed), RANDOM_KEY)
    dirs = random_directions(key, x.shape, spec.random_directions)
    return {t: np.median(np.stack([np.asarray(boundary_distance(fn, x, d, max_distance=spec.max_distance))
                                   for d in dirs]), axis=0) for t, fn in fns.items()}


def pair_analysis(cfg, run_dir: Path, fns: dict, data: dict, kept: dict) -> list[dict]:
    """Every ordered model pair's summary; the per-example arrays go to analysis.npz. Empty when
    analysis_examples is 0 or no direction_attack / reference_attack is set."""
    spec = cfg.experiment.transfer
    n = min(spec.analysis_examples, len(data["y"]))
    if n == 0 or spec.direction_attack is None or spec.reference_attack is None:
        return []
    x, y = data["x"][:n], data["y"][:n]
    directions = {s: kept[(spec.direction_attack, s, "own")][0][:n] for s in fns}
    references = {s: kept[(spec.reference_attack, s, spec.reference_norm)][spec.reference_budget][:n]
                  for s in fns}
    medians = random_medians(cfg, fns, x)
    saved, out = {}, []
    for s in fns:
        for t in fns:
            arrays = pair_arrays(fns, s, t, x, y, directions, references, medians, spec.max_distance)
            saved.update({f"{s}__{t}__{k}": v for k, v in arrays.items()})
            out.append(pair_summary(s, t, arrays))
    np.savez_compressed(run_dir / "analysis.npz", **saved)
    return out
