"""Config mistakes name what would have been right: a misspelled key gets a did-you-mean (from
`compose` and from scripts/sweep.py's command line), an unknown attack parameter the attack's
valid ones."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from adv_jax import validate
from adv_jax.config import check_command_line, compose, misspelled_key

REPO = Path(__file__).resolve().parents[1]


def test_compose_suggests_the_closest_key():
    with pytest.raises(ConfigCompositionException, match=r"unknown key 'train\.epoch': did you mean 'epochs'\?"):
        compose(["train.epoch=3"])


def test_a_key_without_close_matches_lists_its_nodes_keys():
    assert misspelled_key("wandb.xyzzy") == ("unknown key 'wandb.xyzzy': wandb has ['mode', 'project', "
                                             "'entity', 'group', 'tags', 'init_timeout', 'log_artifacts', 'quiet']")
    assert misspelled_key("sed") == "unknown key 'sed': did you mean 'seed'?"


@pytest.mark.parametrize("key", ["train.epochs", "model.name", "seed", "wandb.mode", "attack.params.anything",
                                 "experiment.models.fc10.hidden", "model.autoencoder.epochs", "demo.params.x"])
def test_known_keys_and_free_form_ones_pass(key):
    assert misspelled_key(key) is None


def test_the_command_line_check_skips_flags_appends_and_hydra_keys():
    check_command_line(["-m", "model=fc10", "seed=0,1", "+attack.params.steps=3", "~wandb.tags",
                        "hydra.sweep.dir=/tmp/x", "hydra/launcher=joblib", "--config-name", "config"])
    with pytest.raises(SystemExit, match=r"did you mean 'epochs'\?"):
        check_command_line(["model=fc10", "train.epoch=3"])


def test_sweep_script_suggests_the_closest_key():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep.py"), "train.epoch=3"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "unknown key 'train.epoch': did you mean 'epochs'?" in done.stderr


def test_an_unknown_attack_parameter_lists_the_valid_ones():
    with pytest.raises(validate.ConfigError, match=r"bad attack.params for 'fgsm': unknown 'bogus'; "
                                                   r"valid parameters: epsilon$"):
        validate.check(compose(["attack=fgsm", "+attack.params.bogus=1"]))


def test_a_min_attacks_parameters_include_its_inner_attacks():
    message = r"unknown 'stepz' \(did you mean 'steps'\?\); valid parameters: max_epsilon, search_steps, epsilon, .*steps"
    with pytest.raises(validate.ConfigError, match=message):
        validate.check(compose(["attack=pgd_min", "+attack.params.stepz=3"]))


def test_an_unknown_autoencoder_optimizer_is_refused_naming_the_key():
    with pytest.raises(validate.ConfigError, match=r"model.autoencoder.optimizer='sgd'.*adam or lbfgs"):
        validate.check(compose(["model=ae400", "model.autoencoder.optimizer=sgd"]))


@pytest.mark.parametrize("overrides, message", [
    (["experiment=cross_model", "job=single"], r"job='single' is not allowed: experiment=cross_model runs a study job"),
    (["job=study"], r"job='study' is not allowed: a study job needs experiment=NAME"),
    (["job=demo"], r"job='demo' is not allowed: demo exactly when a demonstration is named"),
])
def test_a_job_without_what_it_runs_on_is_refused_in_one_line(overrides, message):
    with pytest.raises(validate.ConfigError, match=message):
        validate.check(compose(overrides))
