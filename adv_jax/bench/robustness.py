"""Robust accuracy as the field measures it: AutoAttack (adv_jax/attacks/autoattack.py) at a set
of L-inf and L2 budgets, with PGD (many steps, random restarts) on the same images as a sanity
check (AutoAttack must be at least as strong), per model and seed.

Each model entry of the config is trained (or loaded from the model cache) once per seed, by
`minnorm.model_run` with its overrides (after a search's chosen `recipe`, `with_recipes`) and
`seed=S`; its clean error is measured on the whole
test set, and both attacks run on the first `examples` test images (all of them: an image the
model gets wrong is not robust). Budgets: L-inf per pixel, L2 of the whole image (per-pixel RMS =
L2 / 28), pixels in [0, 1].
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adv_jax
import adv_jax.attacks
from adv_jax import checkpoint
from adv_jax.attacks import make_attack
from adv_jax.attacks.common import attack_batch, batched_logits, is_adversarial
from adv_jax.bench.foolbox_compare import split_images
from adv_jax.bench.minnorm import model_run
from adv_jax.bench.timing import median_seconds
from adv_jax.config import CONF_DIR
from adv_jax.reports import provenance, search

NORMS = ("linf", "l2")


def with_recipes(conf: dict) -> dict:
    """conf with each model's `recipe` (a scripts/report_search.py .json, from the repository
    root: the recipe chosen there, trained on every training image) turned into its overrides,
    before the entry's own; ValueError naming the file where it holds none."""
    def resolved(entry: dict) -> dict:
        if "recipe" not in entry:
            return entry
        recipe = search.chosen_recipe(CONF_DIR.parent / entry["recipe"])
        return {**entry, "overrides": [*recipe, *entry.get("overrides", [])]}

    return {**conf, "models": [resolved(entry) for entry in conf["models"]]}


def check(conf: dict) -> None:
    """Raises ValueError naming the first bad key (before any work)."""
    for budget in conf["budgets"]:
        if budget.get("norm") not in NORMS or not float(budget.get("epsilon", 0)) > 0:
            raise ValueError(f"robustness budgets: {budget} needs norm in {list(NORMS)} and epsilon > 0")
    for entry in conf["models"]:
        if not {"name", "label", "kind"} <= entry.keys() or not {"overrides", "recipe"} & entry.keys():
            raise ValueError(f"robustness models: {entry} needs name, label, kind and overrides or a recipe")
    names = [m["name"] for m in conf["models"]]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"robustness models: names must be unique and at least one, not {names}")
    if not conf["seeds"] or conf["examples"] < 1:
        raise ValueError("robustness: seeds must not be empty and examples must be >= 1")
    with_recipes(conf)  # every recipe readable


def autoattack(conf: dict, budget: dict):
    """The config's AutoAttack at one budget."""
    return make_attack("autoattack", {**conf["autoattack"], "norm": budget["norm"], "epsilon": budget["epsilon"]})


def pgd(conf: dict, budget: dict):
    """The sanity check's PGD at one budget: conf["pgd"]'s steps and restarts, Madry's step."""
    steps = conf["pgd"]["steps"]
    return make_attack("pgd", {"norm": budget["norm"], "epsilon": budget["epsilon"], "steps": steps,
                               "restarts": conf["pgd"]["restarts"], "relative_step_size": 2.5 / steps})


def robust(logits_fn, attack, x, y, key, chunk_size: int) -> tuple[np.ndarray, dict, float]:
    """(robust (N,) bool: still correctly classified after the attack, its diagnostics, seconds
    of the batched call, compilation included); a progress bar per call (a CNN's budget takes
    minutes)."""
    untargeted = jnp.full(len(y), -1, jnp.int32)
    start = time.perf_counter()
    x_adv, diagnostics = attack_batch(attack, logits_fn, x, y, untargeted, key=key, chunk_size=chunk_size)
    fooled = np.asarray(is_adversarial(batched_logits(logits_fn, x_adv), y, untargeted))
    return ~fooled, diagnostics, time.perf_counter() - start


def measure_budget(conf: dict, run: adv_jax.Run, x, y, budget: dict) -> dict:
    """AutoAttack and PGD at one budget: {"autoattack": robust accuracy, "stages": {stage:
    accuracy after it}, "evals", "queries" (means per image), "seconds", "pgd", "pgd_seconds",
    "robust": per image (AutoAttack), "pgd_robust"}."""
    key, chunk = jax.random.key(conf["seed"]), conf["chunk_size"]
    aa_robust, d, seconds = robust(run.logits_fn, autoattack(conf, budget), x, y, key, chunk)
    pgd_robust, _, pgd_seconds = robust(run.logits_fn, pgd(conf, budget), x, y, key, chunk)
    stages = {k.removeprefix("robust_after_"): float(np.mean(v)) for k, v in d.items() if k.startswith("robust_after_")}
    return {"autoattack": float(aa_robust.mean()), "stages": stages, "evals": float(np.mean(d["evals"])),
            "queries": float(np.mean(d["queries"])), "seconds": seconds, "pgd": float(pgd_robust.mean()),
            "pgd_seconds": pgd_seconds, "robust": aa_robust.tolist(), "pgd_robust": pgd_robust.tolist()}


def clean_error(run: adv_jax.Run) -> float:
    """Test error (%) over the whole test set."""
    x, y = split_images(run, "test")
    return float(100.0 * np.mean(np.asarray(jnp.argmax(batched_logits(run.logits_fn, x), -1)) != np.asarray(y)))


def attacked_images(conf: dict, run: adv_jax.Run) -> tuple[jax.Array, jax.Array]:
    """The first conf["examples"] test images (N, 28, 28, 1) and labels, misclassified ones included."""
    x, y = split_images(run, "test")
    return x[:conf["examples"]], y[:conf["examples"]]


def measure_model(conf: dict, run: adv_jax.Run, label: str) -> dict:
    """One trained model: {"clean_error", "budgets": [`measure_budget`, in conf's order]}."""
    x, y = attacked_images(conf, run)
    out = {"clean_error": clean_error(run), "budgets": []}
    for budget in conf["budgets"]:
        start = time.perf_counter()
        out["budgets"].append(measure_budget(conf, run, x, y, budget))
        m = out["budgets"][-1]
        print(f"  {label} {budget['norm']} {budget['epsilon']:g}: AutoAttack {100 * m['autoattack']:.1f}%, "
              f"PGD {100 * m['pgd']:.1f}% robust ({time.perf_counter() - start:.0f} s)", flush=True)
    return out


def speed(conf: dict, run: adv_jax.Run) -> dict:
    """AutoAttack's examples per second at conf["speed"]'s budget on `examples` images: the median
    of `repeats` calls after an untimed one (compilation)."""
    budget = conf["budgets"][conf["speed"]["budget"]]
    x, y = attacked_images(conf, run)
    attack, untargeted = autoattack(conf, budget), jnp.full(len(y), -1, jnp.int32)
    seconds, _ = median_seconds(lambda: attack_batch(attack, run.logits_fn, x, y, untargeted, key=jax.random.key(conf["seed"]),
                                                     chunk_size=conf["chunk_size"], progress=False),
                                conf["speed"]["repeats"])
    return {"budget": budget, "examples": len(y), "seconds": seconds, "ex_per_s": len(y) / seconds}


SAVED = "robustness.json"  # a model's measurements, in its run directory


def settings_stamp(conf: dict) -> dict:
    """What a model's measurements depend on besides the model: a saved file with another stamp
    is measured again."""
    return {k: conf[k] for k in ("examples", "seed", "budgets", "autoattack", "pgd")}


def saved_measurement(conf: dict, run_dir: Path) -> dict | None:
    """{"stamp", "measured", "measured_by"} that an earlier run (stopped later) saved in run_dir
    with the same `settings_stamp`, else None."""
    saved = run_dir / SAVED
    if saved.exists() and (old := json.loads(saved.read_text())).get("stamp") == settings_stamp(conf):
        return old
    return None


def measured_or_saved(conf: dict, entry: dict, seed: int, run_dir: Path, command: str) -> tuple[dict, str]:
    """(`measure_model` of the entry's model at this seed with the "machine" that measured it, the
    command that measured it): made now by `command`, or the `saved_measurement` with its own."""
    if (old := saved_measurement(conf, run_dir)) is not None:
        print(f"{entry['label']}, seed {seed}: read back from {run_dir / SAVED}", flush=True)
        return old["measured"], old.get("measured_by", command)
    print(f"{entry['label']}, seed {seed}:", flush=True)
    measured = {**measure_model(conf, model_run(entry, [*conf["common"], f"seed={seed}"], run_dir), entry["label"]),
                "machine": provenance.machine()}
    saved = {"stamp": settings_stamp(conf), "measured": measured, "measured_by": command}
    (run_dir / SAVED).write_text(json.dumps(saved))
    return measured, command


def model_key(conf: dict, entry: dict, seed: int) -> str:
    """The model cache's key of the entry's model at `seed` (its config and training images): the
    model a measurement was made on, known without training it."""
    return checkpoint.config_key(adv_jax.compose([*entry["overrides"], *conf["common"], f"seed={seed}"]))


def keep_stamp(conf: dict) -> dict:
    """What a kept measurement (--keep) must share besides its model: the settings and the
    attacks' code (adv_jax/attacks/*.py)."""
    return {**settings_stamp(conf), "attacks": checkpoint.package_source_sha256(adv_jax.attacks)[:16]}


def kept_measurement(kept: dict | None, conf: dict, entry: dict, seed: int, key: str) -> dict | None:
    """The entry's measurement at `seed` from an earlier run's .json, where it was made with the
    same `keep_stamp` on the model of this `model_key`, else None."""
    if not kept or kept.get("stamp") != keep_stamp(conf):
        return None
    old = kept["models"].get(entry["name"], {}).get("seeds", {}).get(str(seed))
    return old if old is not None and old.get("model_key") == key else None


def run(conf: dict, runs: Path, command: str, kept: dict | None = None, deadline: float = float("inf")) -> dict:
    """Every model of conf at every seed (each saved in its run directory <runs>/<name>_seed<S> as
    it finishes: a stopped run resumes), or kept from an earlier run's .json `kept` where it
    measured the same model with the same settings and attack code. No new measurement starts
    after `deadline` (time.monotonic()); those left are listed under "pending", to be made by a
    later run that keeps this one's .json. -> {"stamp": `keep_stamp`, "models": {name: {"label",
    "kind", "seeds": {seed: `measure_model` + "model_key" and "measured_by" (the command)}}} (models
    with at least one seed), "pending": {label: [seeds]}, "speed": {name: `speed`} for
    conf["speed"]["models"] at the first seed}."""
    check(conf)
    conf = with_recipes(conf)
    out = {"stamp": keep_stamp(conf), "models": {}, "pending": {}, "speed": {}}
    for entry in conf["models"]:
        seeds = {}
        for seed in conf["seeds"]:
            measured, kept_here = seed_measurement(conf, entry, seed, runs, command, kept, deadline)
            if measured is None:
                out["pending"].setdefault(entry["label"], []).append(seed)
                continue
            seeds[str(seed)] = measured
            if seed == conf["seeds"][0] and entry["name"] in conf["speed"]["models"]:
                known = (kept or {}).get("speed", {}).get(entry["name"]) if kept_here else None
                run_dir = runs / f"{entry['name']}_seed{seed}"
                out["speed"][entry["name"]] = known or speed(conf, model_run(entry, [*conf["common"], f"seed={seed}"], run_dir))
        if seeds:
            out["models"][entry["name"]] = {"label": entry["label"], "kind": entry["kind"], "seeds": seeds}
    return out


def seed_measurement(conf: dict, entry: dict, seed: int, runs: Path, command: str, kept: dict | None,
                     deadline: float) -> tuple[dict | None, bool]:
    """(the entry's measurement at `seed`: kept from `kept`, read back from its run directory, or
    made now, with its "model_key" and "measured_by"; None where it would start past `deadline`,
    whether it was kept)."""
    key, run_dir = model_key(conf, entry, seed), runs / f"{entry['name']}_seed{seed}"
    if (old := kept_measurement(kept, conf, entry, seed, key)) is not None:
        print(f"{entry['label']}, seed {seed}: kept (measured by `{old['measured_by']}`)", flush=True)
        return old, True
    if saved_measurement(conf, run_dir) is None and time.monotonic() > deadline:
        return None, False
    measured, measured_by = measured_or_saved(conf, entry, seed, run_dir, command)
    return {**measured, "model_key": key, "measured_by": measured_by}, False


def configured(conf: dict, examples: int | None = None, seeds: str | None = None, models: str | None = None) -> dict:
    """conf with the command line's choices (None: the config's): `examples`, comma-separated
    `seeds` and `models` (`only_models`), checked (`check`: ValueError naming the bad key)."""
    if examples is not None:
        conf = {**conf, "examples": examples}
    if seeds is not None:
        if not all(s.strip().lstrip("-").isdigit() for s in seeds.split(",")):
            raise ValueError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2")
        conf = {**conf, "seeds": [int(s) for s in seeds.split(",")]}
    if models is not None:
        conf = only_models(conf, models.split(","))
    check(conf)
    return conf


def only_models(conf: dict, names: list[str]) -> dict:
    """conf with the named models alone, and a note naming the ones left out (--models)."""
    unknown = sorted(set(names) - {m["name"] for m in conf["models"]})
    if unknown:
        raise ValueError(f"--models {unknown} are not in the config; choose from {[m['name'] for m in conf['models']]}")
    left_out = [m["label"] for m in conf["models"] if m["name"] not in names]
    return {**conf, "models": [m for m in conf["models"] if m["name"] in names],
            "notes": [*conf.get("notes", []), f"Left out of this run (--models): {', '.join(left_out) or 'none'}."]}
