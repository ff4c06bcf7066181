"""Every minimum-norm attack of adv_jax, and foolbox 3.3.4's DDN and L2 FMN, on the same models,
images and targets: per attack its distances, seconds and evaluations, for results/bench_minnorm.md
(settings: conf/report/bench_minnorm.yaml; the markdown and the optimality score:
adv_jax/reports/bench_minnorm.py). The images are the test set's, or those of the config's `split`
(conf/report/select_refined.yaml: held-out P2). A model's run directory not finished is made
first (`adv_jax.run` with the config entry's overrides).

foolbox is optional: without it its rows are left out (the report says so).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adv_jax
from adv_jax.attacks import attack_batch, compile_attack_batch, make_attack
from adv_jax.attacks.common import batched_logits, is_adversarial, rms_distortion
from adv_jax.attacks.targets import choose_targets
from adv_jax.bench.foolbox_compare import correctly_classified
from adv_jax.bench.timing import median_seconds
from adv_jax.reports.runs import is_finished


def foolbox_available() -> bool:
    return importlib.util.find_spec("foolbox") is not None


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


def distances(logits_fn, x, y, target, x_adv) -> np.ndarray:
    """Per-pixel RMS distortion of each example (N,), inf where x_adv is not adversarial."""
    success = np.asarray(is_adversarial(batched_logits(logits_fn, x_adv), y, target))
    return np.where(success, np.asarray(rms_distortion(x, x_adv), np.float64), np.inf)


def measure(conf: dict, logits_fn, x, y, target, with_foolbox: bool) -> dict[str, dict]:
    """{attack name: {"d": (N,) RMS distortion (inf: not fooled), "seconds", "evals" (N,) or None}}
    for every attack of conf on x, y, target, as lists."""
    key, repeats = jax.random.key(conf["seed"]), conf["repeats"]
    runs = [(e.get("label", e["name"]), lambda e=e: run_ours(e, logits_fn, x, y, target, key, repeats))
            for e in conf["attacks"]]
    if with_foolbox:
        runs += [(e["name"], lambda e=e: run_foolbox(e, logits_fn, x, y, target, repeats))
                 for e in conf.get("foolbox", [])]
    measured = {}
    for name, run in runs:
        seconds, x_adv, evals = run()
        measured[name] = {"d": distances(logits_fn, x, y, target, x_adv).tolist(), "seconds": seconds,
                          "evals": None if evals is None else np.asarray(evals).tolist()}
        print(f"  {name}: {seconds:.1f} s", flush=True)
    return measured


def measure_model(run: adv_jax.Run, conf: dict, with_foolbox: bool, examples: int) -> dict:
    """One model on its first `examples` correctly classified images of conf's `split` (default:
    the test set): {"images", "split", "modes": {target mode: `measure`}}."""
    split = conf.get("split", "test")
    x, y = correctly_classified(run, examples, split)
    logits = batched_logits(run.logits_fn, x)
    by_mode = {}
    for mode in conf["target_modes"]:
        target = choose_targets(mode, logits, y, key=jax.random.key(conf["seed"]))
        print(f"{run.path}, {mode}:", flush=True)
        by_mode[mode] = measure(conf, run.logits_fn, x, y, target, with_foolbox)
    return {"images": len(y), "split": split, "modes": by_mode}


def run(conf: dict, runs: Path, run_dirs: dict[str, Path]) -> dict:
    """Every model of conf (from run_dirs[name] or runs/<name>): {"foolbox": whether its rows were
    measured, "models": {label: `measure_model`}}."""
    with_foolbox = foolbox_available() and bool(conf.get("foolbox"))
    models = {}
    for entry in conf["models"]:
        model = model_run(entry, conf["common"], Path(run_dirs.get(entry["name"], runs / entry["name"])))
        models[entry["label"]] = measure_model(model, conf, with_foolbox, entry.get("examples", conf["examples"]))
    return {"foolbox": with_foolbox, "models": models}
