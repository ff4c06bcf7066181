"""Every minimum-norm attack of adv_jax, and foolbox 3.3.4's DDN and L2 FMN, on the same models,
images and targets: per attack its distances, seconds and evaluations, and, for a model whose
entry names an `exact` solver, each example's exact minimum beside them, for
results/bench_minnorm.md (settings: conf/report/bench_minnorm.yaml; the markdown and the
optimality score: adv_jax/reports/bench_minnorm.py). The images are the test set's, or those of
the config's `split` (conf/report/select_refined.yaml: held-out P2). A model's run directory not
finished is made first (`adv_jax.run` with the config entry's overrides).

Each model is measured in its entry's `norm`: l2 (the default), distances in per-pixel RMS
|x' - x|_2 / sqrt(784), or linf, distances in max_i |x'_i - x_i|; pixels in [0, 1].

foolbox is optional: without it its rows are left out (the report says so).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adv_jax
from adv_jax import certify, checkpoint, exact
from adv_jax.attacks import attack_batch, compile_attack_batch, make_attack
from adv_jax.attacks.common import batched_logits, is_adversarial, rms_distortion
from adv_jax.attacks.targets import choose_targets
from adv_jax.bench.foolbox_compare import correctly_classified
from adv_jax.bench.timing import median_seconds
from adv_jax.reports import provenance
from adv_jax.reports.runs import is_finished

NORMS = ("l2", "linf")  # a model entry's `norm`
EXACT_SOLVERS = ("linear", "relu_milp")  # a model entry's `exact`
UPPER_MARGIN = 1.001  # the MILP searches within the best attack's distance times this (float32 slack)


def foolbox_available() -> bool:
    return importlib.util.find_spec("foolbox") is not None


def model_settings(conf: dict, entry: dict) -> dict:
    """conf as one model entry sees it: its `norm` (default l2), its own `attacks` and `foolbox`
    lists where it has them (foolbox by default: the top-level list for l2 models, none for linf,
    as foolbox's rows are L2 attacks), its `target_modes` and its `exact` solver (None: no exact
    column)."""
    norm, solver = entry.get("norm", "l2"), entry.get("exact")
    if norm not in NORMS:
        raise ValueError(f"model {entry['name']}: unknown norm {norm!r}; choose one of {list(NORMS)}")
    if solver is not None and solver not in EXACT_SOLVERS:
        raise ValueError(f"model {entry['name']}: unknown exact {solver!r}; choose one of {list(EXACT_SOLVERS)}")
    if solver == "relu_milp" and norm not in exact.MILP_NORMS:
        raise ValueError(f"model {entry['name']}: exact relu_milp takes norm {list(exact.MILP_NORMS)}, not {norm!r}")
    foolbox = entry.get("foolbox", (conf.get("foolbox") or []) if norm == "l2" else [])
    return {**conf, "norm": norm, "exact": solver, "attacks": entry.get("attacks", conf["attacks"]),
            "foolbox": foolbox, "target_modes": entry.get("target_modes", conf["target_modes"])}


def model_run(entry: dict, common: list[str], run_dir: Path) -> adv_jax.Run:
    """The run in run_dir, made there first (adv_jax.run with the entry's overrides) if unfinished."""
    if not is_finished(run_dir):
        adv_jax.run(adv_jax.compose([*entry["overrides"], *common]), run_dir)
    return adv_jax.load_run(run_dir)


@functools.lru_cache(maxsize=None)
def attack_config(name: str):
    """conf/attack/<name>.yaml, composed once per name (every model and target mode reads it)."""
    return adv_jax.compose([f"attack={name}"]).attack


def our_attack(entry: dict):
    """(attack, chunk size) of an adv_jax entry: conf/attack/<name>.yaml's params + entry params."""
    cfg = attack_config(entry["name"])
    attack = make_attack(entry["name"], {**cfg.params, **entry.get("params", {})})
    return attack, cfg.chunk_size or getattr(attack, "chunk_size", 1000)


def run_ours(entry: dict, logits_fn, x, y, target, key, repeats: int):
    """(seconds, x_adv (N, 28, 28, 1), evals per example or None) of one adv_jax attack."""
    attack, chunk = our_attack(entry)
    compile_attack_batch(attack, logits_fn, x, y, target, key=key, chunk_size=chunk)
    seconds, (x_adv, diagnostics) = median_seconds(lambda: attack_batch(
        attack, logits_fn, x, y, target, key=key, chunk_size=chunk, progress=False), repeats,
        warm_up=False)
    return seconds, x_adv, diagnostics.get("evals")


def run_foolbox(entry: dict, logits_fn, x, y, target, repeats: int):
    """(seconds, x_adv, None) of one foolbox attack on fb.JAXModel(jitted logits_fn)."""
    import foolbox as fb

    fmodel = fb.JAXModel(jax.jit(logits_fn), bounds=(0.0, 1.0))
    attack = getattr(fb.attacks, entry["attack"])(**entry.get("params", {}))
    targeted = bool(np.all(np.asarray(target) >= 0))
    criterion = fb.criteria.TargetedMisclassification(target) if targeted else fb.criteria.Misclassification(y)
    seconds, (x_adv, _, _) = median_seconds(lambda: attack(fmodel, x, criterion, epsilons=None),
                                            repeats)
    return seconds, jnp.asarray(x_adv), None


def distances(logits_fn, x, y, target, x_adv, norm: str = "l2") -> np.ndarray:
    """Distortion of each example (N,) of x, x_adv (N, 28, 28, 1): per-pixel RMS (l2) or the
    largest pixel change max_i |x'_i - x_i| (linf); inf where x_adv is not adversarial."""
    success = np.asarray(is_adversarial(batched_logits(logits_fn, x_adv), y, target))
    if norm == "l2":
        size = rms_distortion(x, x_adv)
    else:
        size = jnp.max(jnp.abs(x_adv - x), axis=tuple(range(1, x.ndim)))
    return np.where(success, np.asarray(size, np.float64), np.inf)


def measure(conf: dict, logits_fn, x, y, target, with_foolbox: bool) -> dict[str, dict]:
    """{attack name: {"d": (N,) distortion in conf's `norm` (`distances`; inf: not fooled),
    "seconds", "evals" (N,) or None}} for every attack of conf on x, y, target, as lists."""
    key, repeats = jax.random.key(conf["seed"]), conf["repeats"]
    runs = [(e.get("label", e["name"]), lambda e=e: run_ours(e, logits_fn, x, y, target, key, repeats))
            for e in conf["attacks"]]
    if with_foolbox:
        runs += [(e["name"], lambda e=e: run_foolbox(e, logits_fn, x, y, target, repeats))
                 for e in conf.get("foolbox", [])]
    measured = {}
    for name, run in runs:
        seconds, x_adv, evals = run()
        d = distances(logits_fn, x, y, target, x_adv, conf.get("norm", "l2"))
        measured[name] = {"d": d.tolist(), "seconds": seconds,
                          "evals": None if evals is None else np.asarray(evals).tolist()}
        print(f"  {name}: {seconds:.1f} s", flush=True)
    return measured


def unit_scale(run: adv_jax.Run, norm: str) -> float:
    """Raw norm / the model's unit: sqrt(784) = 28 from per-pixel RMS to L2, 1 for L-inf."""
    return math.sqrt(math.prod(run.model.input_shape)) if norm == "l2" else 1.0


def linear_minima(chain: certify.DenseChain, x, y, target, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """(`exact.minimum_distortions` (N,) in the raw norm, solved (N,): all, a convex program is
    solved or raises) of a one-layer chain, logits x_flat @ w + b with w = weights[0].T (784, 10)."""
    if len(chain.weights) != 1:
        raise ValueError(f"exact: linear needs a single dense layer; this model has {len(chain.weights)}")
    w, b = np.asarray(chain.weights[0]).T, np.asarray(chain.biases[0])
    return exact.minimum_distortions(w, b, x, y, target, norm), np.ones(len(x), bool)


def exact_minima(conf: dict, run: adv_jax.Run, x, y, target, best: np.ndarray) -> dict:
    """Each example's exact minimum distortion in the model's unit by conf's `exact` solver
    (adv_jax/exact.py): "linear", a convex program per target class; "relu_milp", a mixed-integer
    program searched within the best attack's distance `best` (N,) x UPPER_MARGIN, at most
    `exact_time_limit` seconds per example, each finished example kept in the model cache's
    exact/<params sha256>.jsonl (`exact.SolvedStore`: a stopped run resumes). -> {"method", "d" (N,) (inf: unreachable, or unsolved
    with nothing found), "solved" (N,) bool, "seconds": the solver's wall time}, as lists."""
    scale, norm = unit_scale(run, conf["norm"]), conf["norm"]
    x, y, target = np.asarray(x, np.float64), np.asarray(y), np.asarray(target)
    start = time.perf_counter()
    with jax.enable_x64(True):  # the chain and the programs in float64
        chain = certify.dense_chain(run.model, run.params)
        if conf["exact"] == "linear":
            d, solved = linear_minima(chain, x, y, target, norm)
        else:
            upper = np.where(np.isfinite(best), best * scale * UPPER_MARGIN, np.inf)
            store = Path(run.config.cache_dir).expanduser() / "exact" / f"{checkpoint.params_fingerprint(run.params)}.jsonl"
            d, solved = exact.relu_minimum_distortions(chain, x, y, target, upper, norm=norm, store=store,
                                                       time_limit=conf.get("exact_time_limit", exact.TIME_LIMIT))
    return {"method": conf["exact"], "d": (np.asarray(d, np.float64) / scale).tolist(),
            "solved": np.asarray(solved, bool).tolist(), "seconds": time.perf_counter() - start}


def measure_mode(conf: dict, run: adv_jax.Run, x, y, target, with_foolbox: bool) -> dict[str, dict]:
    """`measure` on one target mode and, where conf names an `exact` solver, the exact minima
    (`exact_minima`) beside the attacks under the key "exact"."""
    measured = measure(conf, run.logits_fn, x, y, target, with_foolbox)
    if conf.get("exact"):
        best = np.min(np.array([m["d"] for m in measured.values()], np.float64), axis=0)
        measured["exact"] = exact_minima(conf, run, x, y, target, best)
        print(f"  exact ({conf['exact']}): {measured['exact']['seconds']:.1f} s", flush=True)
    return measured


def measure_model(run: adv_jax.Run, conf: dict, with_foolbox: bool, examples: int) -> dict:
    """One model (conf: `model_settings`) on its first `examples` correctly classified images of
    conf's `split` (default: the test set): {"images", "split", "indices" (in the split),
    "params_sha256" (`checkpoint.params_fingerprint`), "norm", "modes": {target mode: `measure_mode`},
    "machine" (`provenance.machine`: its speeds are this machine's)}."""
    split = conf.get("split", "test")
    x, y, indices = correctly_classified(run, examples, split, with_indices=True)
    logits = batched_logits(run.logits_fn, x)
    by_mode = {}
    for mode in conf["target_modes"]:
        target = choose_targets(mode, logits, y, key=jax.random.key(conf["seed"]))
        print(f"{run.path}, {mode}:", flush=True)
        by_mode[mode] = measure_mode(conf, run, x, y, target, with_foolbox)
    return {"images": len(y), "split": split, "indices": indices.tolist(),
            "params_sha256": checkpoint.params_fingerprint(run.params), "norm": conf.get("norm", "l2"),
            "modes": by_mode, "machine": provenance.machine()}


def run(conf: dict, runs: Path, run_dirs: dict[str, Path]) -> dict:
    """Every model of conf (from run_dirs[name] or runs/<name>), each with `model_settings`:
    {"foolbox": whether its rows were measured, "foolbox_missing": whether a model wanted them
    but foolbox is not installed, "models": {label: `measure_model`}}."""
    settings = [(entry, model_settings(conf, entry)) for entry in conf["models"]]  # bad entries fail first
    wanted = any(s["foolbox"] for _, s in settings)
    with_foolbox = wanted and foolbox_available()
    models = {}
    for entry, own in settings:
        model = model_run(entry, conf["common"], Path(run_dirs.get(entry["name"], runs / entry["name"])))
        models[entry["label"]] = measure_model(model, own, with_foolbox, entry.get("examples", conf["examples"]))
    return {"foolbox": with_foolbox, "foolbox_missing": wanted and not with_foolbox, "models": models}


def merge(conf: dict, parts: list[dict]) -> dict:
    """Measurements saved by separate runs (`run`'s dicts, e.g. --models on different machines) as
    one, their models in conf's order, each with the command that measured it ("measured_by"); a
    model measured twice keeps the last part's."""
    models = {label: {**m, "measured_by": m.get("measured_by") or " and ".join(part.get("commands", ["?"]))}
              for part in parts for label, m in part["models"].items()}
    order = [e["label"] for e in conf["models"] if e["label"] in models]
    return {"foolbox": any(part["foolbox"] for part in parts),
            "foolbox_missing": any(part.get("foolbox_missing", False) for part in parts),
            "commands": [c for part in parts for c in part.get("commands", [])],
            "models": {label: models[label] for label in order + [k for k in models if k not in order]}}


def only_models(conf: dict, names: list[str]) -> dict:
    """conf with the named models alone, and a note saying which were left out (--models)."""
    left_out = [m["label"] for m in conf["models"] if m["name"] not in names]
    return {**conf, "models": [m for m in conf["models"] if m["name"] in names],
            "notes": [*conf.get("notes", []), f"Left out of this run (--models): {', '.join(left_out) or 'none'}."]}
