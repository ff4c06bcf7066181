"""The minimum-distortion bracket per example: certified from below (CROWN and alpha-CROWN,
`crown.certified_radius`; for L2 also the curvature certificate, `curvature.certified_radius`, on
smooth networks, and the Lipschitz bracket, `certify.certified_distortion` with global and local pair
constants), known exactly where it can be (adv_jax/exact.py) and attacked from above, on the same
images. The attacked and exact sides are read from the minimum-norm benchmark's measurements
(results/bench_minnorm.json: the best of its attacks per example, its exact column); this module
adds the certified side on those images (the split indices it stored), after checking that the
model is the one measured there (its params' sha256).

Distances in the model's unit: per-pixel RMS (L2 / sqrt(784)) or L-inf per pixel, pixels in [0, 1].
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adv_jax
from adv_jax import certify, checkpoint, crown, curvature, exact
from adv_jax.attacks.common import batched_logits
from adv_jax.attacks.targets import choose_targets
from adv_jax.bench.foolbox_compare import correctly_classified, split_images
from adv_jax.bench.minnorm import model_run, unit_scale
from adv_jax.lipschitz import pair_lipschitz
from adv_jax.reports import provenance, settings
from adv_jax.reports.bench_minnorm import EXACT

CHUNK = 100  # examples per CROWN call (its backward passes hold (width, 784) per example)
ALPHA_RADIUS_STEPS = 10  # alpha-CROWN's bisection from CROWN's radius: to 1/1024 of the gap to the attack's


def sides(mode: dict) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """(best attacked distance (N,), {attack: (N,)}, exact (N,) or None, solved (N,) or None) from a
    bench_minnorm mode's measurements; inf where nothing succeeded."""
    attacks = {name: np.asarray(m["d"], np.float64) for name, m in mode.items() if name != EXACT}
    best = np.min(np.stack(list(attacks.values())), axis=0)
    if EXACT not in mode:
        return best, attacks, None, None
    return best, attacks, np.asarray(mode[EXACT]["d"], np.float64), np.asarray(mode[EXACT]["solved"], bool)


def _radii(one, desc: str, x, y, target, upper, lower=None) -> np.ndarray:
    """one(x, y, target, upper, lower) -> a certified radius, jitted and vmapped over the examples
    (N,) by chunks of CHUNK, with a progress bar; lower (N,) defaults to 0."""
    from tqdm.auto import tqdm

    radius = jax.jit(jax.vmap(one))
    lower = jnp.zeros_like(upper) if lower is None else lower
    out = []
    for start in tqdm(range(0, len(x), CHUNK), desc=desc, unit="chunk"):
        part = slice(start, start + CHUNK)
        out.append(np.asarray(radius(x[part], y[part], target[part], upper[part], lower[part])))
    return np.concatenate(out)


def _crown_radii(chain, x, y, target, upper, norm: str, slope_steps: int = 0, lower=None) -> np.ndarray:
    """CROWN's certified radius (N,) per example (target (N,), -1: untargeted), raw norm.
    slope_steps > 0: alpha-CROWN's, by ALPHA_RADIUS_STEPS of bisection between `lower` (N,)
    (CROWN's radii: its bounds are at least CROWN's) and upper."""
    def one(xi, yi, ti, ui, li):
        if slope_steps == 0:
            return crown.certified_radius(chain, xi, yi, ui, norm, target=ti)
        return crown.certified_radius(chain, xi, yi, ui, norm, ALPHA_RADIUS_STEPS, slope_steps, lower=li, target=ti)

    return _radii(one, "alpha-CROWN" if slope_steps else "CROWN", x, y, target, upper, lower)


def _curvature_radii(chain, x, y, target, upper) -> np.ndarray:
    """The curvature certificate's L2 radius (N,) per example (adv_jax/curvature.py), raw L2."""
    mixtures = bool(np.any(np.asarray(target) >= 0))  # only targeted certificates use them

    def one(xi, yi, ti, ui, _):
        return curvature.certified_radius(chain, xi, yi, ui, ti, mixtures=mixtures)

    return _radii(one, "curvature", x, y, target, upper)


def lipschitz_radii(run, chain, x, y, target, upper) -> dict[str, np.ndarray]:
    """{"lipschitz global", "lipschitz local"}: the certified L2 bracket (raw L2) with the global
    pair constants, and with constants certified on the ball of radius `upper` (capped there)."""
    logits = certify.chain_logits(chain, x)
    global_ = certify.certified_distortion(logits, y, target, pair_lipschitz(run.model, run.params))
    grams, _ = certify.local_output_gram(chain, x, upper, progress=True)
    local = jnp.minimum(upper, certify.certified_distortion(logits, y, target, certify.pair_constants(grams)))
    return {"lipschitz global": np.asarray(global_), "lipschitz local": np.asarray(jnp.maximum(global_, local))}


def certified(run, x, y, target, best: np.ndarray, norm: str,
              slope_steps: int = 0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """({method: certified lower bound (N,) in the model's unit}, {method: seconds}) on images x
    (N, ...) with labels y and targets (N,) (-1: untargeted); best (N,): the attacked distance (the
    search's upper end), same unit.
    Methods: crown, alpha-crown (slope_steps > 0), and for L2 the curvature certificate (smooth
    activations only) and the Lipschitz bracket."""
    scale = unit_scale(run, norm)
    reach = scale  # the box's farthest point (sqrt(n) in L2, 1 in L-inf): where no attack succeeded
    with jax.enable_x64(True):
        chain = certify.dense_chain(run.model, run.params)
        flat = jnp.asarray(x, jnp.float64).reshape(len(x), -1)
        upper = jnp.asarray(np.where(np.isfinite(best), best * scale, reach), jnp.float64)
        methods, seconds = {}, {}
        start = time.perf_counter()
        y, target = jnp.asarray(y), jnp.asarray(target)
        crown_radii = _crown_radii(chain, flat, y, target, upper, norm)
        methods["crown"] = crown_radii / scale
        seconds["crown"] = time.perf_counter() - start
        if slope_steps > 0:
            start = time.perf_counter()
            methods["alpha-crown"] = _crown_radii(chain, flat, y, target, upper, norm, slope_steps,
                                                  jnp.asarray(crown_radii)) / scale
            seconds["alpha-crown"] = time.perf_counter() - start
        if norm == "l2" and all(a in curvature.SMOOTH for a in chain.activations):
            start = time.perf_counter()
            methods["curvature"] = _curvature_radii(chain, flat, y, target, upper) / scale
            seconds["curvature"] = time.perf_counter() - start
        if norm == "l2":
            start = time.perf_counter()
            methods.update({k: v / scale for k, v in lipschitz_radii(run, chain, flat, y, target, upper).items()})
            seconds["lipschitz"] = time.perf_counter() - start
    return methods, seconds


def measured_images(run, measured: dict, split: str) -> tuple[jax.Array, jax.Array]:
    """The images (N, 28, 28, 1) and labels bench_minnorm measured: by the indices it stored (older
    measurements: the first N the model classifies correctly, as it chose them)."""
    if "indices" not in measured:
        return correctly_classified(run, measured["images"], split)
    x, y = split_images(run, split)
    indices = np.asarray(measured["indices"], int)
    return x[indices], y[indices]


def same_model(label: str, run, measured: dict) -> None:
    """Raises ValueError where bench_minnorm measured another model than `run`'s (retrained since):
    its distances would be paired with the wrong network."""
    stored = measured.get("params_sha256")
    if stored is not None and stored != checkpoint.params_fingerprint(run.params):
        raise ValueError(f"{label}: the model in {run.path} is not the one the minimum-norm measurements "
                         "were made on (params sha256 differs); rerun scripts/bench_minnorm.py on it")


def measure_model(run, entry: dict, measured: dict, mode: str, slope_steps: int = 0, seed: int = 0) -> dict:
    """One model: its bench_minnorm measurements (`measured`, for this model, in target `mode`,
    whose targets its `seed` drew) and its certified side -> {"norm", "images", "attacked" (N,),
    "attacks" {name: (N,)}, "exact", "solved", "certified" {method: (N,)}, "seconds", "machine"
    (`provenance.machine`: the seconds are its)}, as lists."""
    best, attacks, minima, solved = sides(measured["modes"][mode])
    split = measured.get("split", "test")
    x, y = measured_images(run, measured, split)
    target = choose_targets(mode, batched_logits(run.logits_fn, x), y, key=jax.random.key(seed))
    norm = measured["norm"]
    methods, seconds = certified(run, x, y, target, best, norm, slope_steps)
    listed = lambda a: None if a is None else np.asarray(a).tolist()  # noqa: E731
    return {"norm": norm, "images": len(y), "split": split, "mode": mode, "targets": np.asarray(target).tolist(),
            "attacked": best.tolist(),
            "attacks": {k: v.tolist() for k, v in attacks.items()}, "exact": listed(minima),
            "solved": listed(solved), "exact_gap": exact.MIP_GAP if entry.get("exact") == "relu_milp" else 0.0,
            "exact_abs_gap": exact.MIP_ABS_GAP if entry.get("exact") == "relu_milp" else 0.0,
            "certified": {k: v.tolist() for k, v in methods.items()}, "seconds": seconds,
            "machine": provenance.machine()}


def check(conf: dict, minnorm_conf: dict, measured: dict) -> list[dict]:
    """conf's models as bench_minnorm's entries, each measured there in conf's mode; else one
    ValueError naming what is missing (before any work)."""
    entries = {e["name"]: e for e in minnorm_conf["models"]}
    unknown = [name for name in conf["models"] if name not in entries]
    if unknown:
        raise ValueError(f"bracket models {unknown} are not bench_minnorm models; choose from {sorted(entries)}")
    alpha_unknown = [name for name in conf.get("alpha_crown_models") or [] if name not in entries]
    if alpha_unknown:
        raise ValueError(f"alpha_crown_models {alpha_unknown} are not bench_minnorm models; choose from {sorted(entries)}")
    chosen = [entries[name] for name in conf["models"]]
    missing = [e["label"] for e in chosen if conf["mode"] not in measured["models"].get(e["label"], {}).get("modes", {})]
    if missing:
        raise ValueError(f"the minimum-norm measurements lack {missing} in mode {conf['mode']!r}; "
                         "run scripts/bench_minnorm.py with them first")
    return chosen


def alpha_crown_steps(conf: dict, name: str) -> int:
    """conf's alpha-CROWN steps for the model `name`: 0 where alpha_crown_models (null: all) leaves it out."""
    chosen = conf.get("alpha_crown_models")
    return conf.get("alpha_crown_steps", 0) if chosen is None or name in chosen else 0


def run(conf: dict, minnorm_conf: dict, measured: dict, runs: Path) -> dict[str, dict]:
    """Every model of conf (bench_minnorm's names, measured there): {label: `measure_model`}."""
    entries = check(conf, minnorm_conf, measured)
    models = [model_run(entry, minnorm_conf["common"], runs / entry["name"]) for entry in entries]
    for entry, model in zip(entries, models):  # every model checked before any is certified
        same_model(entry["label"], model, measured["models"][entry["label"]])
    out = {}
    for entry, model in zip(entries, models):
        print(f"{entry['label']}: certifying", flush=True)
        out[entry["label"]] = measure_model(model, entry, measured["models"][entry["label"]], conf["mode"],
                                            alpha_crown_steps(conf, entry["name"]), minnorm_conf["seed"])
        print(f"  done in {sum(out[entry['label']]['seconds'].values()):.1f} s", flush=True)
    return out


def from_minnorm(conf: dict, minnorm_path: Path, runs: Path) -> dict[str, dict]:
    """`run` on the minimum-norm measurements saved at minnorm_path (scripts/bench_minnorm.py's
    .json), checked first; ValueError naming what is missing."""
    if not minnorm_path.exists():
        raise ValueError(f"--minnorm {minnorm_path} does not exist; run scripts/bench_minnorm.py first")
    minnorm_conf = settings.load("bench_minnorm", conf.get("minnorm_config"))
    measured = json.loads(minnorm_path.read_text())
    check(conf, minnorm_conf, measured)
    return run(conf, minnorm_conf, measured, runs)
