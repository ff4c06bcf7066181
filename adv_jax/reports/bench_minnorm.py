"""Writes results/bench_minnorm.md: every minimum-norm attack of adv_jax, and foolbox 3.3.4's DDN
and L2 FMN, on the same models, images and targets: success, distortion, speed and AttackBench's
optimality score (`optimality`; settings: conf/report/bench_minnorm.yaml). The images are the
test set's, or those of the config's `split` (conf/report/select_refined.yaml: held-out P2).

foolbox is optional: without it its rows are left out, with a note saying so.
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
from adv_jax.reports import provenance, settings
from adv_jax.reports.bench_foolbox import correctly_classified
from adv_jax.reports.runs import is_finished
from adv_jax.reports.tables import markdown, percent
from adv_jax.reports.timing import median_seconds

COLUMNS = ["attack", "evals", "success %", "mean RMS", "median RMS", "ex/s", "optimality"]
FORMULA = [
    "**Optimality** (AttackBench, Cina et al. 2024), per model and target mode over the same N "
    "examples: d_a(i) is attack a's RMS distortion on example i (infinite where it failed); "
    "d*(i) = min_a d_a(i), the best known distance; D = max_i d*(i); A* = mean_i d*(i); "
    "A_a = mean_i min(d_a(i), D), so a failure counts D; **optimality_a = 1 - (A_a - A*) / (D - A*)**: "
    "1 = the best known distance on every example, 0 = no better than failing everywhere. "
    "Examples no attack fooled are left out of the score.",
    "",
]


def optimality(distances: np.ndarray) -> np.ndarray:
    """AttackBench's optimality of each attack: distances (attacks, N), inf = failed -> (attacks,).
    Examples that every attack failed on are left out; 1.0 for all if D = A* (nothing to gain)."""
    distances = np.asarray(distances, np.float64)
    best = distances.min(0)
    solved = np.isfinite(best)
    if not solved.any():
        return np.full(len(distances), np.nan)
    worst = best[solved].max()
    best_mean = best[solved].mean()
    area = np.minimum(distances[:, solved], worst).mean(1)
    if worst <= best_mean:
        return np.ones(len(distances))
    return 1.0 - (area - best_mean) / (worst - best_mean)


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
    """{attack name: {"d": (N,), "seconds", "evals"}} for every attack of conf on x, y, target."""
    key, repeats = jax.random.key(conf["seed"]), conf["repeats"]
    runs = [(e.get("label", e["name"]), lambda e=e: run_ours(e, logits_fn, x, y, target, key, repeats))
            for e in conf["attacks"]]
    if with_foolbox:
        runs += [(e["name"], lambda e=e: run_foolbox(e, logits_fn, x, y, target, repeats))
                 for e in conf.get("foolbox", [])]
    measured = {}
    for name, run in runs:
        seconds, x_adv, evals = run()
        measured[name] = {"d": distances(logits_fn, x, y, target, x_adv), "seconds": seconds,
                          "evals": evals}
        print(f"  {name}: {seconds:.1f} s", flush=True)
    return measured


def table(measured: dict[str, dict]) -> tuple[str, dict[str, float]]:
    """(markdown table of COLUMNS, {attack: optimality}) of one model and target mode."""
    names = list(measured)
    scores = optimality(np.stack([measured[n]["d"] for n in names]))
    rows = []
    for name, score in zip(names, scores):
        d, evals = measured[name]["d"], measured[name]["evals"]
        fooled = d[np.isfinite(d)]
        rows.append([name, "-" if evals is None else f"{np.mean(evals):.0f}",
                     percent(float(np.isfinite(d).mean()), 1),
                     f"{fooled.mean():.4f}" if fooled.size else "-",
                     f"{np.median(fooled):.4f}" if fooled.size else "-",
                     rate(len(d) / measured[name]["seconds"]), f"{score:.3f}"])
    return markdown(COLUMNS, rows), dict(zip(names, map(float, scores)))


def rate(per_second: float) -> str:
    """Examples per second: whole numbers from 10 up, two significant digits below (0.33, 3.1)."""
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2g}"


def model_section(label: str, run: adv_jax.Run, conf: dict, with_foolbox: bool, examples: int):
    """(markdown lines, {target mode: measured}) of one model on its first `examples` correctly
    classified images of conf's `split` (default: the test set); measured as `measure` returns."""
    split = conf.get("split", "test")
    x, y = correctly_classified(run, examples, split)
    logits = batched_logits(run.logits_fn, x)
    lines, by_mode = [f"## {label}", "", f"{len(y)} correctly classified {split} images.", ""], {}
    for mode in conf["target_modes"]:
        target = choose_targets(mode, logits, y, key=jax.random.key(conf["seed"]))
        print(f"{label}, {mode}:", flush=True)
        by_mode[mode] = measure(conf, run.logits_fn, x, y, target, with_foolbox)
        lines += [f"### Targets: {mode}", "", table(by_mode[mode])[0].rstrip(), ""]
    return lines, by_mode


def summary(scores: dict[str, dict[str, dict[str, float]]]) -> str:
    """Optimality of every attack (rows) for every model and target mode (columns)."""
    columns = [(label, mode) for label, by_mode in scores.items() for mode in by_mode]
    names = list(next(iter(next(iter(scores.values())).values())))
    rows = [[name, *(f"{scores[label][mode][name]:.3f}" for label, mode in columns)] for name in names]
    return markdown(["attack", *(f"{label}, {mode}" for label, mode in columns)], rows)


def selection(measured: dict[str, dict[str, dict]], max_evals: float) -> list[str]:
    """The config's `select` rule: of the attacks whose mean evaluations per example stay within
    max_evals on every model and target mode, the one with the smallest mean distortion (over the
    fooled examples, averaged over models and modes) among those that fool every example."""
    cells = [by_attack for by_mode in measured.values() for by_attack in by_mode.values()]
    rows, eligible = [], {}
    for name in cells[0]:
        evals = [c[name]["evals"] for c in cells]
        worst = max(float(np.mean(e)) for e in evals) if all(e is not None for e in evals) else None
        d = [c[name]["d"] for c in cells]
        mean_d = float(np.mean([dist[np.isfinite(dist)].mean() for dist in d]))
        fools_all = all(bool(np.isfinite(dist).all()) for dist in d)
        if worst is not None and worst <= max_evals and fools_all:
            eligible[name] = mean_d
        rows.append([name, "-" if worst is None else f"{worst:.0f}", f"{mean_d:.5f}",
                     "yes" if name in eligible else "no"])
    chosen = min(eligible, key=eligible.get) if eligible else "none"
    return ["## Selection", "", f"Eligible: at most {max_evals:g} evaluations per example (mean, "
            "on every model and target mode) and every example fooled. Chosen: the smallest mean "
            f"distortion among them: **{chosen}**.", "",
            markdown(["attack", "evals (largest mean)", "mean RMS (average over cells)", "eligible"],
                     rows).rstrip(), ""]


def report(conf: dict, runs: Path, run_dirs: dict[str, Path], command: str) -> str:
    """The markdown of results/bench_minnorm.md; models from run_dirs[name] or runs/<name>."""
    with_foolbox = foolbox_available() and bool(conf.get("foolbox"))
    sections, measured = [], {}
    for entry in conf["models"]:
        run = model_run(entry, conf["common"], Path(run_dirs.get(entry["name"], runs / entry["name"])))
        examples = entry.get("examples", conf["examples"])
        lines, measured[entry["label"]] = model_section(entry["label"], run, conf, with_foolbox, examples)
        sections += lines
    scores = {label: {mode: table(m)[1] for mode, m in by_mode.items()} for label, by_mode in measured.items()}
    chosen = selection(measured, conf["select"]["max_evals"]) if conf.get("select") else []
    missing = [] if with_foolbox or not conf.get("foolbox") else [
        "foolbox is not installed: its rows are left out (`pip install -e '.[bench]'`).", ""]
    head = [*provenance.header(conf["title"], command), *FORMULA, *missing,
            *settings.paragraphs(conf.get("notes")), *chosen, "## Optimality", "", summary(scores).rstrip(), ""]
    return "\n".join(head + sections).rstrip() + "\n"
