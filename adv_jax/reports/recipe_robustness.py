"""A searched recipe's robust accuracy, for its results file (adv_jax/reports/search.py): the
robustness benchmark's measurements (scripts/bench_robustness.py's .json) of the very models the
chosen recipe's seeds trained, found by model cache key, seed by seed (a measurement of an older
recipe, or of another seed's model, never stands in for it).

    conf: robustness: {file: results/robustness.json, beside: [names of models shown with it]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adv_jax.config import CONF_DIR
from adv_jax.reports import provenance
from adv_jax.reports.robustness import accuracy_table, budget_name, per_seed

BENCH_COMMAND = provenance.command("scripts/bench_robustness.py", ["--keep", "results/robustness.json"],
                                   provenance.MNIST_ENV)


def model_keys(chosen: list[dict]) -> dict[str, str]:
    """{seed: the model cache key of that chosen run's model (its config and its training images,
    which the MNIST directory must hold)}."""
    from adv_jax import checkpoint  # jax: only where a key is computed, so reports load without it
    from adv_jax.data import load_splits
    from adv_jax.rundir import read_config

    keys = {}
    for run in chosen:
        cfg = read_config(Path(run["path"]) / "config.yaml")
        keys[str(cfg.seed)] = checkpoint.cache_key(cfg, load_splits(cfg.data, cfg.model.classes)["train"])
    return keys


def matching_model(measured: dict, keys: dict[str, str]) -> str | None:
    """The name of the measured model whose seeds are the models of `keys` ({seed: model cache
    key}), every one of them; None where no model is."""
    for name, model in measured["models"].items():
        if keys and all(model["seeds"].get(seed, {}).get("model_key") == key for seed, key in keys.items()):
            return name
    return None


def robust_accuracy(model: dict, budgets: list[dict]) -> dict[str, float]:
    """{budget name: AutoAttack's robust accuracy (%), mean over the model's seeds}."""
    return {budget_name(b): sum(per_seed(model, lambda m, i=i: 100 * m["budgets"][i]["autoattack"]))
            / len(model["seeds"]) for i, b in enumerate(budgets)}


def section(conf: dict, chosen: list[dict]) -> tuple[list[str], dict[str, Any]]:
    """(markdown lines, summary fields) on the chosen recipe's robust accuracy under conf's
    `robustness` settings; none where conf has none."""
    if not conf.get("robustness") or not chosen:
        return [], {}
    path, keys = Path(conf["robustness"]["file"]), model_keys(chosen)
    measured = json.loads((CONF_DIR.parent / path).read_text()) if (CONF_DIR.parent / path).exists() else None
    name = matching_model(measured, keys) if measured else None
    if name is None:
        return [f"**Robust accuracy**: {path} has no measurement of the chosen recipe's models (model cache "
                f"keys {', '.join(keys.values())}); `{BENCH_COMMAND}` makes it (conf/report/robustness.yaml "
                "trains the recipe of this file's .json), then run this report again.", ""], {}
    budgets, model = measured["stamp"]["budgets"], measured["models"][name]
    shown = {k: measured["models"][k] for k in [name, *conf["robustness"].get("beside", [])]
             if k in measured["models"]}
    table = accuracy_table({"budgets": budgets, "seeds": list(keys)}, {"models": shown}, "autoattack")
    lines = [f"**The chosen recipe's robust accuracy**: AutoAttack's (the standard version, untargeted) on "
             f"the first {measured['stamp']['examples']} test images, % of them classified correctly and "
             f"not fooled, mean +- std over the seeds, from {path} (results/robustness.md). Its model "
             f"\"{model['label']}\" is this recipe's: the same model cache key at every seed "
             f"({', '.join(keys.values())})."
             + (f" Beside it, from the same file: {', '.join(m['label'] for m in list(shown.values())[1:])}."
                if len(shown) > 1 else ""), "",
             table.strip(), ""]
    return lines, {"robustness_model": name, "robust_accuracy": robust_accuracy(model, budgets)}


__all__ = ["matching_model", "model_keys", "robust_accuracy", "section"]
