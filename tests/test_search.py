"""The Optuna search (conf/hydra/sweeper/optuna_tpe.yaml, conf/search/adversarial_training.yaml) at
a debug size, end to end through scripts/sweep.py: trials minimize error/validation, the best is
the smallest trial's, and an interrupted search resumes by reading its finished trials back."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adv_jax import validate
from adv_jax.config import compose
from adv_jax.reports import recipe_robustness, search, settings
from adv_jax.reports.runs import read_run

REPO = Path(__file__).resolve().parents[1]
SHARED_CACHE = Path(os.environ["ADV_JAX_TEST_SHARED"]) / "models"  # tests/conftest.py
# Fixed on the command line, these leave the search space: tiny models and data, short training.
TINY = ["train.optimizer=adam", "train.adversarial.attack=fgsm", "data.train_limit=500", "data.validation=500", "model.hidden=[8,8]", "train.epochs=1",
        "train.lbfgs_steps=10", "train.adversarial.pool_size=100", "train.adversarial.refresh_size=50",
        "wandb.mode=disabled", f"cache_dir={SHARED_CACHE}"]


# The paper's recipe (conf/search/adversarial_training_paper.yaml) at the same tiny size.
TINY_PAPER = [o for o in TINY if o.split("=")[0] not in ("train.optimizer", "train.adversarial.attack")]


def _multirun(sweep: Path, args: list[str]) -> None:
    command = [sys.executable, str(REPO / "scripts" / "sweep.py"), "-m", *args]
    done = subprocess.run(command, cwd=sweep.parent, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]


def _search(sweep: Path, trials: int, name: str = "adversarial_training", tiny: list[str] = TINY) -> None:
    _multirun(sweep, [f"search={name}", *tiny, f"hydra.sweeper.n_trials={trials}", f"hydra.sweep.dir={sweep}"])


def _train_chosen(chosen: Path, search_name: str, params: dict, tiny: list[str]) -> None:
    """The chosen recipe, seed 0, by the command `search.chosen_command` prints (every training
    image), at the tiny size."""
    printed = shlex.split(search.chosen_command(search_name, params, [0], chosen))
    fixed = [o for o in tiny if not o.startswith("data.validation=")]
    _multirun(chosen, [*printed[printed.index("-m") + 1:], *fixed])


def test_the_search_minimizes_validation_error_and_resumes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    _search(sweep, 2)
    trials = sorted(sweep.glob("trial_*/metrics.json"))
    values = [json.loads(p.read_text())["error/validation"] for p in trials]
    assert len(values) == 2
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(values))
    configs = [OmegaConf.load(p.parent / "config.yaml") for p in trials]
    assert all(c.data.validation == 500 and c.objective == "error/validation" for c in configs)
    assert len({json.dumps(OmegaConf.to_container(c.train), sort_keys=True) for c in configs}) == 2
    stamps = {p: p.stat().st_mtime_ns for p in trials}
    _search(sweep, 3)  # as if the search had been interrupted before its 3rd trial
    assert {p: p.stat().st_mtime_ns for p in trials} == stamps  # replayed, not retrained
    assert len(list(sweep.glob("trial_*/metrics.json"))) == 3
    _check_report(sweep, tmp_path)


def _check_report(sweep: Path, tmp_path: Path) -> None:
    """The results file of the search, with the chosen recipe trained on every training image;
    the trials themselves (images held out) and another trial's recipe are refused."""
    values = {int(p.parent.name.split("_")[1]): json.loads(p.read_text())["error/validation"]
              for p in sweep.glob("trial_*/metrics.json")}
    best = min(values, key=values.get)
    out = tmp_path / "results" / "search.md"
    conf = {**settings.load("adversarial_training_search"), "robustness": {"file": str(tmp_path / "absent.json")}}
    rows = search.all_trials({"adversarial_training": sweep}, conf["objective"])[1]
    chosen = tmp_path / "chosen"
    _train_chosen(chosen, "adversarial_training", next(r for r in rows if r["trial"] == best)["params"], TINY)
    chosen_config = OmegaConf.load(chosen / "seed0" / "config.yaml")
    assert chosen_config.data.validation == 0 and chosen_config.objective is None
    text = search.write({"adversarial_training": sweep}, chosen, "python scripts/report_search.py ...", conf, out)
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["trials"] == 3 and result["best_trial"] == best
    assert result["validation_error"] == pytest.approx(100 * values[best])
    test = json.loads((chosen / "seed0" / "metrics.json").read_text())["error/test"]
    assert result["test_error_per_seed"] == [pytest.approx(100 * test)] and "| trial |" in text
    assert out.with_name("search_slices.png").read_bytes()[:4] == b"\x89PNG"
    for refused in (sweep / f"trial_{best}", sweep / f"trial_{next(t for t in values if t != best)}"):
        with pytest.raises(ValueError, match=f"not trial adversarial_training/{best}'s recipe"):
            search.write({"adversarial_training": sweep}, refused, "...", conf, tmp_path / "other.md")
    assert "absent.json does not exist" in text
    _check_robust_accuracy(chosen, conf, tmp_path)
    # The chosen overrides rebuild the best trial's training config.
    again = compose(["search=adversarial_training", *TINY, *result["overrides"]]).train
    trained = OmegaConf.load(sweep / f"trial_{best}" / "config.yaml").train
    assert OmegaConf.to_container(again) == OmegaConf.to_container(trained)


def _check_robust_accuracy(chosen: Path, conf: dict, tmp_path: Path) -> None:
    """The chosen recipe's robust accuracy is the robustness benchmark's measurement of its very
    models (the same model cache key at every chosen seed, and those seeds only), never another
    model's; a file that is not the benchmark's is named."""
    runs = [read_run(chosen / "seed0")]
    key = recipe_robustness.model_keys(runs)["0"]
    budgets = [{"norm": "linf", "epsilon": 0.1}, {"norm": "l2", "epsilon": 1.0}]

    def model(label: str, model_key: str, accuracy: list[float]) -> dict:
        seed = {"model_key": model_key, "clean_error": 2.0, "budgets": [{"autoattack": a} for a in accuracy]}
        return {"label": label, "kind": "plain", "seeds": {"0": seed, "1": {**seed, "model_key": "3" * 16}}}
    measured = {"stamp": {"budgets": budgets, "examples": 50, "autoattack": {"apgd_steps": 10}},
                "models": {"other": model("Other", "0" * 16, [0.9, 0.8]), "ours": model("Ours", key, [0.25, 0.5]),
                           "fc100": model("Plain", "1" * 16, [0.1, 0.2])}}
    measured["models"]["ours"]["seeds"]["1"]["budgets"] = [{"autoattack": 1.0}, {"autoattack": 1.0}]  # not chosen
    path = tmp_path / "robustness.json"
    path.write_text(json.dumps(measured))
    lines, fields = recipe_robustness.section({**conf, "robustness": {"file": str(path), "beside": ["fc100"]}}, runs)
    assert fields == {"robustness_model": "ours", "robust_accuracy": {"L-inf 0.1": 25.0, "L2 1": 50.0}}
    text = "\n".join(lines)
    assert "| Ours |" in text and "| Plain |" in text and "Other" not in text and "apgd_steps 10" in text
    measured["models"]["ours"]["seeds"]["0"]["model_key"] = "2" * 16  # an older recipe's model
    path.write_text(json.dumps(measured))
    lines, fields = recipe_robustness.section({**conf, "robustness": {"file": str(path)}}, runs)
    assert fields == {} and key in lines[0] and "bench_robustness.py" in lines[0]
    path.write_text(json.dumps({"models": {}}))
    with pytest.raises(ValueError, match="robustness.json: not a scripts/bench_robustness.py .json"):
        recipe_robustness.section({**conf, "robustness": {"file": str(path)}}, runs)


def test_one_selection_covers_the_paper_recipe_search_too(tmp_path):
    """search=adversarial_training_paper (full-batch L-BFGS, pools of L-BFGS adversarials) trains,
    and the report chooses the best trial of both searches, naming the search it came from."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    ours, theirs = tmp_path / "search", tmp_path / "paper"
    _search(ours, 1)
    _search(theirs, 1, "adversarial_training_paper", TINY_PAPER)
    paper_config = OmegaConf.load(theirs / "trial_0" / "config.yaml")
    assert paper_config.train.optimizer == "lbfgs" and paper_config.train.adversarial.attack == "lbfgs"
    searches = {"adversarial_training": ours, "adversarial_training_paper": theirs}
    values = {name: json.loads((path / "trial_0" / "metrics.json").read_text())["error/validation"]
              for name, path in searches.items()}
    winner = min(values, key=values.get)
    conf = {**settings.load("adversarial_training_search"), "robustness": None}  # hermetic: no results file
    command = search.next_command(searches, conf, [0], tmp_path / "chosen")
    assert f"search={winner} " in command
    rows = search.all_trials(searches, conf["objective"])[1]
    _train_chosen(tmp_path / "chosen", winner, next(r for r in rows if r["search"] == winner)["params"],
                  TINY if winner == "adversarial_training" else TINY_PAPER)
    text = search.write(searches, tmp_path / "chosen", "...", conf, tmp_path / "both.md")
    result = json.loads((tmp_path / "both.json").read_text())
    assert result["trials"] == 2 and result["best_search"] == winner
    assert f"trial {winner}/0" in text and "Search `adversarial_training_paper`" in text
    assert "| search | trials | best % | median % |" in text and "| adversarial_training_paper | 1 |" in text
    paper_row = next(line for line in text.splitlines() if line.startswith("| adversarial_training_paper/0 |"))
    assert "| lbfgs |" not in paper_row  # optimizer and attack: the other search's keys, so "-" here
    with pytest.raises(ValueError, match="made by search=adversarial_training_paper"):
        search.all_trials({"adversarial_training": theirs}, conf["objective"])


@pytest.mark.parametrize("overrides, message", [
    (["objective=error/test"], "objective='error/test' is not allowed"),
    (["objective=error/validation"], r"needs held-out images \(data.validation > 0\)"),
    (["data.validation=30000"], "fewer than the 30000 images"),
])
def test_a_search_never_selects_on_the_test_set(overrides, message):
    with pytest.raises(validate.ConfigError, match=message):
        validate.check(compose(overrides))
