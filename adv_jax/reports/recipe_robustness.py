"""A searched recipe's robust accuracy, for its results file (adv_jax/reports/search.py): the
robustness benchmark's measurements (scripts/bench_robustness.py's .json) of the very models the
chosen recipe's seeds trained, found by model cache key, seed by seed (a measurement of an older
recipe, or of another seed's model, never stands in for it).

    conf: robustness: {file: results/robustness.json, beside: [names of models shown with it]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adv_jax.config import CONF_DIR
from adv_jax.reports import provenance
from adv_jax.reports.robustness import accuracy_table, budget_name, per_seed
from adv_jax.reports.runs import read_json

BENCH_COMMAND = provenance.command("scripts/bench_robustness.py", ["--keep", "results/robustness.json"],
                                   provenance.MNIST_ENV)


def model_keys(chosen: list[dict]) -> dict[str, str]:
    """{seed: the model cache key of that chosen run's model (its config and its training images,
    read from the data.mnist_dir its config records)}; ValueError where the images are missing."""
    from adv_jax import checkpoint  # jax: only where a key is computed, so reports load without it
    from adv_jax.data import DataError
    from adv_jax.rundir import read_config

    keys = {}
    for run in chosen:
        cfg = read_config(Path(run["path"]) / "config.yaml")
        try:
            keys[str(cfg.seed)] = checkpoint.config_key(cfg)
        except DataError as e:
            raise ValueError(f"{run['path']}: its training images, for its model cache key: {e}") from None
    return keys


def measurements(path: Path) -> dict | None:
    """scripts/bench_robustness.py's .json at `path` (None where it does not exist); ValueError
    naming the file where it is not one."""
    measured = read_json(path)
    if measured is not None and not ({"stamp", "models"} <= measured.keys()
                                     and {"budgets", "examples", "autoattack"} <= measured["stamp"].keys()):
        raise ValueError(f"{path}: not a scripts/bench_robustness.py .json (needs stamp and models)")
    return measured


def matching_model(measured: dict, keys: dict[str, str]) -> str | None:
    """The name of the measured model whose seeds are the models of `keys` ({seed: model cache
    key}), every one of them; None where no model is."""
    for name, model in measured["models"].items():
        if keys and all(model["seeds"].get(seed, {}).get("model_key") == key for seed, key in keys.items()):
            return name
    return None


def at_seeds(model: dict, seeds: list[str]) -> dict:
    """The model's measurements at `seeds` only (those it has)."""
    return {**model, "seeds": {s: model["seeds"][s] for s in seeds if s in model["seeds"]}}


def robust_accuracy(model: dict, budgets: list[dict]) -> dict[str, float]:
    """{budget name: AutoAttack's robust accuracy (%), mean over the model's seeds}."""
    return {budget_name(b): sum(per_seed(model, lambda m, i=i: 100 * m["budgets"][i]["autoattack"]))
            / len(model["seeds"]) for i, b in enumerate(budgets)}


def section(conf: dict, chosen: list[dict]) -> tuple[list[str], dict[str, Any]]:
    """(markdown lines, summary fields) on the chosen recipe's robust accuracy under conf's
    `robustness` settings; none where conf has none."""
    if not conf.get("robustness") or not chosen:
        return [], {}
    path = Path(conf["robustness"]["file"])
    if (measured := measurements(CONF_DIR.parent / path)) is None:
        return [f"**Robust accuracy**: {path} does not exist; `{BENCH_COMMAND}` makes it.", ""], {}
    keys = model_keys(chosen)
    if (name := matching_model(measured, keys)) is None:
        return [f"**Robust accuracy**: {path} has no measurement of the chosen recipe's models (model cache "
                f"keys {', '.join(keys.values())}); `{BENCH_COMMAND}` makes it (conf/report/robustness.yaml "
                "names the recipe file each model trains), then run this report again.", ""], {}
    stamp, seeds = measured["stamp"], list(keys)
    shown = {k: at_seeds(measured["models"][k], seeds) for k in [name, *conf["robustness"].get("beside", [])]
             if k in measured["models"]}
    table = accuracy_table({"budgets": stamp["budgets"], "seeds": seeds}, {"models": shown}, "autoattack")
    attack = ", ".join(f"{k} {v}" for k, v in stamp["autoattack"].items())
    others = [m["label"] for m in list(shown.values())[1:]]
    lines = [f"**The chosen recipe's robust accuracy**: AutoAttack's ({attack}) on the first {stamp['examples']} "
             "test images: % of them classified correctly and not fooled, mean +- std over the seeds, from "
             f"{path} (results/robustness.md). Its model \"{shown[name]['label']}\" is this recipe's: the same "
             f"model cache key at every seed ({', '.join(keys.values())})."
             + (f" Beside it, from the same file: {', '.join(others)}." if others else ""), "", table.strip(), ""]
    return lines, {"robustness_model": name, "robust_accuracy": robust_accuracy(shown[name], stamp["budgets"])}


__all__ = ["at_seeds", "matching_model", "measurements", "model_keys", "robust_accuracy", "section"]
