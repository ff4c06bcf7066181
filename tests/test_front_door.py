"""The front door (adv_jax/entry.py, adv_jax/extras.py, jobs.preflight): a known mistake is one
line and exit 1 before Hydra makes a run directory, a missing extra names its pip command, and a
run ends with its error rates in the README's order."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adv_jax import entry, extras, jobs
from adv_jax.config import compose
from adv_jax.extras import MissingExtra
from adv_jax.jobs.single import summary_line
from adv_jax.validate import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _sweep(tmp_path, *args, env=None):
    """scripts/sweep.py ARGS in tmp_path (its runs/ lands there); (exit code, stdout, stderr, s)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep.py"), *args, "wandb=disabled"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - start


@pytest.mark.parametrize("args, message", [
    (["model.weight_decay=abc"], "model.weight_decay='abc' is not allowed: a number >= 0, or a list"),
    (["model=conv", "attack=lbfgs"], "train='lbfgs' is not allowed: full-batch L-BFGS on a conv model"),
    (["data.mnist_dir=nowhere"], "nowhere"),
])
def test_a_known_mistake_is_one_line_in_seconds_and_leaves_nothing(tmp_path, args, message):
    code, out, err, seconds = _sweep(tmp_path, *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], err
    assert "Traceback" not in out + err and seconds < 15  # about 1.5 s; generous for a busy CI
    assert list(tmp_path.iterdir()) == []  # no runs/, no outputs/, no wandb/


def test_hydra_full_error_still_shows_the_traceback(tmp_path):
    code, _, err, _ = _sweep(tmp_path, "attack.num_examples=-5", env={"HYDRA_FULL_ERROR": "1"})
    assert code == 1 and "Traceback" in err and "attack.num_examples=-5 is not allowed" in err


@pytest.mark.parametrize("overrides, message", [
    (["model.weight_decay=abc"], "model.weight_decay='abc'"),
    (["attack.num_examples=-5"], "attack.num_examples=-5 is not allowed: an integer >= 1 or null"),
    (["attack.figure_columns=-1"], "attack.figure_columns=-1 is not allowed: an integer >= 0"),
    (["data.split_seed=-1"], "data.split_seed=-1 is not allowed: an integer >= 0"),
    (["train.epochs=abc"], "train.epochs: Value 'abc' of type 'str' could not be converted to Integer"),
    (["model=conv"], "add train=adam"),
    (["model=fc10", "attack=ila"], "attack=ila on model=fc10: ila works on a hidden layer"),
])
def test_preflight_names_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as caught:
        jobs.preflight(overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_conv_model_with_adam_and_a_multirun_pass_preflight():
    jobs.preflight(["model=conv", "train=adam", "data.train_limit=100"])
    jobs.preflight(["-m", "seed=0,1", "attack.num_examples=-5"])  # a sweep is Hydra's to compose


@pytest.mark.parametrize("overrides, extra", [
    (["-m", "search=adversarial_training"], "search"), (["-m", "hydra/sweeper=optuna_tpe_20"], "search"),
    (["-m", "hydra/launcher=joblib_local"], "sweeps"),
    (["-m", "hydra/launcher=slurm"], "sweeps"), (["-m", "hydra/launcher=ray"], "sweeps"),
    (["data.source=tfds"], "tfds"), (["lipschitz.methods=[product,lipsdp]"], "lipschitz"),
])
def test_a_missing_extra_names_its_install_command(monkeypatch, overrides, extra):
    monkeypatch.setattr(extras, "installed", lambda what: False)
    with pytest.raises(MissingExtra, match=rf"pip install -e '\.\[{extra}\]'"):
        jobs.preflight(overrides)


@pytest.mark.parametrize("overrides, needs", [
    (["-m", "search=adversarial_training"], ["optuna"]),
    (["-m", "search=adversarial_training", "hydra/sweeper=basic", "hydra.sweeper.params=null"], []),
    (["-m", "hydra/sweeper=basic", "hydra/sweeper=optuna_tpe_8"], ["optuna"]),
    (["-m", "seed=0,1", "hydra/launcher=ray"], ["ray"]),
    (["-m", "search=null", "seed=0,1"], []), (["-m", "search=no_such_search"], []),  # Hydra names the latter
])
def test_optuna_is_needed_where_the_chosen_sweeper_is_optunas(overrides, needs):
    assert extras.needed_by(overrides) == needs


def test_every_extra_names_an_extra_of_pyproject():
    text = (REPO / "pyproject.toml").read_text()
    for module, extra, _ in extras.EXTRAS.values():
        assert f"\n{extra} = [" in text, extra


def test_the_last_line_gives_the_errors_in_the_readmes_order():
    cfg = compose(["model=fc10"])
    metrics = {"error/train": 0.5, "error/test": 0.04, "error/full": 0.03, "error/p2": 0.02,
               "error/p1": 0.01, "attack/seconds": 3.0}
    assert summary_line(cfg, metrics) == ("fc10: error/p1=0.01  error/p2=0.02  error/full=0.03  "
                                          "error/test=0.04  error/train=0.5")


def test_a_failed_start_removes_only_what_it_made(tmp_path):
    made = tmp_path / "made"
    (made / ".hydra").mkdir(parents=True)
    entry.discard_if_empty(made, ConfigError("x"))
    assert not made.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "params.msgpack").write_bytes(b"0")
    entry.discard_if_empty(kept, ConfigError("x"))
    assert (kept / "params.msgpack").exists()
