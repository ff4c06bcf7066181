"""A hyperparameter search's results file: the trials of an Optuna search (conf/search/*.yaml,
each trial a run directory trial_<n>), the best by validation error, a slice figure, and the
chosen recipe's test errors over seeds (a second sweep; the trials record a test error too, as
every run does, but only the objective chooses).

    search:  <sweep dir>/trial_<n>/{config.yaml, metrics.json}   minimized metric: `objective`
    chosen:  <sweep dir>/<job>/{config.yaml, metrics.json}       the best trial's overrides, seeds,
                                                                 on every training image
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import OmegaConf

from adv_jax.config import CONF_DIR
from adv_jax.reports import paper, provenance, recipe_robustness, settings
from adv_jax.reports.runs import find_runs, flatten, read_run
from adv_jax.reports.tables import fmt, markdown, mean_std

# The chosen recipe trains on every training image: the held-out ones served the choice only.
ALL_TRAINING = ["data.validation=0", "objective=null"]


def all_training_values() -> dict[str, Any]:
    """`ALL_TRAINING` as the dotted values a run's config holds (e.g. {"data.validation": 0})."""
    return flatten(OmegaConf.to_container(OmegaConf.from_dotlist(ALL_TRAINING)))


def search_space(name: str) -> dict[str, str]:
    """conf/search/<name>.yaml's hydra.sweeper.params: dotted key -> Optuna distribution."""
    return dict(OmegaConf.load(CONF_DIR / "search" / f"{name}.yaml").hydra.sweeper.params)


def trials(search_dir: Path, space: dict[str, str], objective: str, search: str) -> list[dict[str, Any]]:
    """Finished trials of conf/search/<search>.yaml in trial order: number, the values of the
    space's keys (None where a run's config has none), `shown` (the search's name, and the values
    in its own space that applied to the trial: `relevant`), the objective and the run. A trial
    that Hydra recorded as another search's is refused."""
    own, out = search_space(search), []
    for run_dir in sorted(find_runs([search_dir]), key=lambda p: int(p.name.split("_")[-1])):
        if (made_by := recorded_search(run_dir)) not in (None, search):
            raise ValueError(f"{run_dir} was made by search={made_by}, not search={search}")
        run = read_run(run_dir)
        params = {k: run["config"].get(k) for k in space}
        out.append({"trial": int(run_dir.name.split("_")[-1]), "run": run, "search": search, "params": params,
                    "shown": {"search": search, **{k: v for k, v in relevant(params).items() if k in own}},
                    "value": run["metrics"][objective]})
    return out


def recorded_search(run_dir: Path) -> str | None:
    """The search config Hydra composed the run with (.hydra/hydra.yaml), None where unrecorded."""
    path = run_dir / ".hydra" / "hydra.yaml"
    return OmegaConf.load(path).hydra.runtime.choices.get("search") if path.exists() else None


def all_trials(searches: dict[str, Path], objective: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(the union of the searches' spaces, every finished trial of each search) for searches
    {conf/search name: its sweep directory}: one selection over several searched spaces. Every
    search must have a finished trial."""
    space = {k: v for name in searches for k, v in search_space(name).items()}
    rows = []
    for name, path in searches.items():
        mine = trials(path, space, objective, name)
        if not mine:
            raise FileNotFoundError(f"no finished trial of search={name} under {path}")
        rows += mine
    return space, rows


def trial_label(row: dict, searches: dict[str, Path]) -> str:
    """The trial's number, prefixed by its search's name when there are several searches."""
    return f"{row['search']}/{row['trial']}" if len(searches) > 1 else str(row["trial"])


def best_trial(rows: list[dict]) -> dict:
    """The trial with the smallest objective (the first of equals)."""
    return min(rows, key=lambda r: r["value"])


def relevant(params: dict[str, Any]) -> dict[str, Any]:
    """The searched values that shaped the model: no pool settings without pools, no minibatch
    settings under L-BFGS and no L-BFGS settings under a minibatch optimizer."""
    lbfgs, pools = params.get("train.optimizer") == "lbfgs", bool(params.get("train.adversarial.layers"))
    minibatch_only = ("train.learning_rate", "train.schedule", "train.epochs", "train.adversarial.batch_size",
                      "train.adversarial.refreshes_per_epoch")
    keep = {}
    for key, value in params.items():
        if (key.startswith("train.adversarial.") and key != "train.adversarial.layers" and not pools
                or lbfgs and key in minibatch_only
                or not lbfgs and key in ("train.lbfgs_steps", "train.adversarial.lbfgs_restarts")):
            continue
        keep[key] = value
    return keep


def overrides(params: dict[str, Any]) -> list[str]:
    """Command-line overrides that set every searched value of `params` (lists without spaces,
    as Hydra reads them): with them, a run's config is the trial's, whatever did not apply."""
    return [f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, list) else v}"
            for k, v in params.items() if v is not None]


def recipe_overrides(search: str, recipe: list[str]) -> list[str]:
    """The overrides that train a recipe of `search` (its `overrides`) outside the search: the
    basic sweeper (the search config's space switched off; no Optuna needed) on every training
    image (`ALL_TRAINING`)."""
    return [f"search={search}", "hydra/sweeper=basic", "hydra.sweeper.params=null", *recipe, *ALL_TRAINING]


def chosen_recipe(path: Path) -> list[str]:
    """`recipe_overrides` of the recipe chosen in a results file's .json (scripts/report_search.py's:
    "best_search", "overrides"); ValueError naming the file where it has none."""
    if not path.exists():
        raise ValueError(f"recipe: {path} does not exist; make it with scripts/report_search.py")
    chosen = json.loads(path.read_text())
    if not {"best_search", "overrides"} <= chosen.keys():
        raise ValueError(f"recipe: {path} has no chosen recipe (best_search, overrides); "
                         "it is not a scripts/report_search.py .json")
    return recipe_overrides(chosen["best_search"], chosen["overrides"])


def chosen_command(search: str, params: dict[str, Any], seeds: Sequence[int], sweep_dir: Path) -> str:
    """The multirun that trains the chosen recipe over `seeds` (`recipe_overrides`): what
    `chosen_dir` must hold."""
    args = ["-m", *recipe_overrides(search, overrides(params)), f"seed={','.join(map(str, seeds))}",
            f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=seed${seed}", "wandb=disabled"]
    return provenance.command("scripts/sweep.py", args, provenance.MNIST_ENV)


def search_command(search: str, search_dir: Path) -> str:
    """The multirun that made the trials (the sweeper, its budget and space: conf/search/<search>.yaml)."""
    return provenance.command("scripts/sweep.py", ["-m", f"search={search}", f"hydra.sweep.dir={search_dir}",
                                                   "wandb=disabled"], provenance.MNIST_ENV)


def next_command(searches: dict[str, Path], conf: dict, seeds: Sequence[int], chosen_dir: Path) -> str:
    """chosen_command for the best finished trial of `searches` ({search name: sweep dir})."""
    best = best_trial(all_trials(searches, conf["objective"])[1])
    return chosen_command(best["search"], best["params"], seeds, chosen_dir)


def trial_table(rows: list[dict], objective: str, top: int, searches: dict[str, Path]) -> str:
    """The `top` trials by objective, with every searched value that applied to them."""
    keys = list(rows[0]["params"]) if rows else []
    best = sorted(rows, key=lambda r: r["value"])[:top]
    cells = [[trial_label(r, searches), f"{100 * r['value']:.2f}", f"{100 * r['run']['metrics']['error/train']:.2f}",
              *[fmt(r["shown"].get(k)) for k in keys],
              f"{r['run']['metrics']['train/seconds']:.0f}", r["run"]["metrics"]["train/steps"]] for r in best]
    short = [k.removeprefix("train.").removeprefix("adversarial.") for k in keys]
    return markdown(["trial", f"{objective} %", "train error %", *short, "train s", "train steps"], cells)


def best_by(rows: list[dict], key: str) -> str:
    """The best objective among the trials of each value of `key` (what the search rules out;
    "search": the search each trial belongs to); '-' gathers the trials the key did not apply to."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(fmt(r["shown"].get(key)), []).append(r["value"])
    return markdown([key, "trials", "best %", "median %"],
                    [[v, len(g), f"{100 * min(g):.2f}", f"{100 * float(np.median(g)):.2f}"]
                     for v, g in sorted(groups.items(), key=lambda kv: min(kv[1]))])


def slice_figure(rows: list[dict], objective: str, path: Path) -> None:
    """One panel per searched key: each trial's objective against that key's value, where it
    applied to the trial (`shown`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(rows[0]["params"])
    cols = 4
    fig, axes = plt.subplots(-(-len(keys) // cols), cols, figsize=(3.2 * cols, 2.6 * -(-len(keys) // cols)),
                             squeeze=False)
    all_values = np.array([100 * r["value"] for r in rows])
    for ax, key in zip(axes.flat, keys):
        applied = [r for r in rows if r["shown"].get(key) is not None]
        raw = [r["shown"][key] for r in applied]
        values, order = np.array([100 * r["value"] for r in applied]), np.array([r["trial"] for r in applied])
        ax.set_title(key.removeprefix("train."), fontsize=8)
        if not applied:
            ax.axis("off")
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
            x = np.array(raw, float)
            ax.set_xscale("log" if x.min() > 0 and x.max() / x.min() > 20 else "linear")
        else:
            labels = sorted({fmt(v) for v in raw})
            x = np.array([labels.index(fmt(v)) for v in raw], float)
            ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.scatter(x, values, c=order, cmap="viridis", s=12)
        ax.set_ylim(all_values.min() - 0.1, min(all_values.max(), np.percentile(all_values, 90)) + 0.2)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    axes[0][0].set_ylabel(f"{objective} (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chosen_runs(chosen_dir: Path, best: dict) -> list[dict]:
    """The finished runs under `chosen_dir`, by seed; each must have the best trial's searched
    values and train on every training image, else the test errors would belong to another recipe."""
    runs = sorted((read_run(p) for p in find_runs([chosen_dir])), key=lambda r: r["config"]["seed"])
    expected = {**best["params"], **all_training_values()}
    for run in runs:
        differ = [k for k, v in expected.items() if run["config"].get(k) != v]
        if differ:
            raise ValueError(f"{run['path']} is not trial {best['search']}/{best['trial']}'s recipe (differs in "
                             f"{', '.join(differ)}); train it with `scripts/report_search.py "
                             "SEARCH_DIR`'s command")
    return runs


def summary(rows: list[dict], best: dict, chosen: list[dict], objective: str, target: float) -> dict[str, Any]:
    """results/<name>.json: the chosen (`best`) recipe, its validation error and per-seed test errors (%)."""
    test = [100 * r["metrics"]["error/test"] for r in chosen]
    return {"trials": len(rows), "objective": objective, "best_search": best["search"], "best_trial": best["trial"],
            "overrides": overrides(best["params"]), "validation_error": 100 * best["value"],
            "seeds": [r["config"]["seed"] for r in chosen], "test_error_per_seed": test,
            "test_error_mean": float(np.mean(test)) if test else None,
            "paper_target": target, "below_target": bool(test) and float(np.mean(test)) < target}


def searched(searches: dict[str, Path], rows: list[dict]) -> list[str]:
    """Per search: the command that made its trials, their count and training time, its space."""
    parts = []
    for name, path in searches.items():
        mine = [r for r in rows if r["search"] == name]
        space = markdown(["key", "searched over"], [[f"`{k}`", f"`{v}`"] for k, v in search_space(name).items()])
        parts += [f"Search `{name}`: `{search_command(name, path)}`: {len(mine)} finished trials, "
                  f"{sum(r['run']['metrics']['train/seconds'] for r in mine) / 60:.0f} min of training in all. "
                  "Searched:", "", space.strip(), ""]
    return parts


def report(searches: dict[str, Path], chosen_dir: Path, command: str, conf: dict, figure: Path) -> tuple[str, dict]:
    """The markdown and the JSON summary of one selection over `searches` ({conf/search name:
    sweep dir}); writes the slice figure to `figure`."""
    objective = conf["objective"]
    space, rows = all_trials(searches, objective)
    best = best_trial(rows)
    chosen, target = chosen_runs(chosen_dir, best), paper.ADVERSARIAL_TRAINING_TEST_ERROR[conf["paper"]]
    result = summary(rows, best, chosen, objective, target)
    slice_figure(rows, objective, figure)
    seeds = markdown(["seed", "test error %", "train error %"],
                     [[r["config"]["seed"], f"{100 * r['metrics']['error/test']:.2f}",
                       f"{100 * r['metrics']['error/train']:.2f}"] for r in chosen])
    robust_lines, robust_fields = recipe_robustness.section(conf, chosen)
    result.update(robust_fields)
    verdict = ("below" if result["below_target"] else "not below")
    rules_out = (["search"] if len(searches) > 1 else []) + list(conf["rules_out"])
    parts = [*provenance.header(conf["title"], command), *settings.paragraphs(conf.get("notes")),
             *searched(searches, rows),
             f"**Best by validation error**: trial {trial_label(best, searches)}, {objective} "
             f"{result['validation_error']:.2f}%; recipe: `{' '.join(result['overrides'])}`.", "",
             f"The {conf['top']} best trials (a value '-': not searched by that trial's search, or not "
             "applying to it; train steps: L-BFGS iterations, or Adam's minibatch steps):", "",
             trial_table(rows, objective, conf["top"], searches).strip(), "",
             f"Best and median {objective} of the trials by "
             + ", ".join(f"`{k}`" for k in rules_out) + " (what the search rules out):", "",
             *[line for key in rules_out for line in (best_by(rows, key).strip(), "")],
             f"Each trial's {objective} against each searched value (colour: trial number, dark "
             "first; the worst tenth of the trials lies above the panels):", "",
             f"![validation error against each searched value]({figure.name})", "",
             f"**The chosen recipe on the test set**, trained on every training image (the held-out ones "
             f"included), {len(chosen)} seeds: `"
             + chosen_command(best["search"], best["params"], result["seeds"], chosen_dir) + "`: "
             f"test error {mean_std(result['test_error_per_seed'], digits=2)}%, {verdict} the paper's "
             f"{target:g}%.", "", seeds.strip(), "", *robust_lines]
    return "\n".join(parts).rstrip() + "\n", result


def write(searches: dict[str, Path], chosen_dir: Path, command: str, conf: dict, out: Path) -> str:
    """Writes `out` (markdown), its .json and its _slices.png beside it; returns the markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text, result = report(searches, chosen_dir, command, conf, out.with_name(out.stem + "_slices.png"))
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({**result, "command": command}, indent=2) + "\n")
    return text


__all__ = ["all_trials", "chosen_command", "next_command", "report", "search_command", "search_space", "summary",
           "trials", "write"]
