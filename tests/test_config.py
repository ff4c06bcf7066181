"""Every conf/ group option composes against the typed schema; defaults (conf/config.yaml's are
the schema's, each attack YAML's its attack's, debug=tiny changes sizes only) and errors; the
config tests pass whatever W&B and adv_jax settings the caller's shell exports (tests/conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from adv_jax.attacks import ATTACKS, make_attack, parameter_names
from adv_jax.config import CONF_DIR, Config, as_config, compose
from adv_jax.models import build_model

# conf/report/ holds what the results files report (adv_jax.reports.settings), not a Hydra group.
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "report"))


def _options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_config_option_composes(group, option):
    # demonstrations compose through scripts/demo.py's primary config
    cfg = compose([f"{group}={option}"], config_name="demos" if group == "demo" else "config")
    if group == "demo":
        assert cfg.demo.name == option
    if group == "model":
        assert cfg.model.name == option
        build_model(cfg.model)


def test_defaults():
    cfg = compose()
    assert (cfg.data.split, cfg.model.name, cfg.attack.name, cfg.wandb.mode) == ("p1", "fc100", "none", "offline")


def test_unknown_model_lists_the_choices():
    with pytest.raises(MissingConfigException, match=r"(?s)model/resnet.*fc100.*fc200"):
        compose(["model=resnet"])


@pytest.mark.parametrize("override", ["train.epocs=3", "+train.epocs=3"])
def test_misspelled_key_is_rejected(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as info:
        as_config(compose([override]))  # '+' appends past Hydra; run() re-checks the schema
    assert "Key 'epocs' not in 'TrainConfig'" in str(info.value.__cause__ or info.value)


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigCompositionException) as info:
        compose(["train.epochs=abc"])
    assert isinstance(info.value.__cause__, ValidationError)


ODD_ENV = {"WANDB_MODE": "disabled", "WANDB_PROJECT": "x", "WANDB_ENTITY": "y", "WANDB_DIR": "/nonexistent/w",
           "ADV_JAX_CACHE_DIR": "/nonexistent/zz", "ADV_JAX_MNIST_URL": "http://127.0.0.1:9/"}


def test_config_tests_ignore_the_callers_environment():
    env = {**os.environ, **ODD_ENV}
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                           # the tests whose outcome an environment could change (not the
                           # per-option and per-attack sweeps, which read conf/ alone)
                           "tests/test_config.py", "-k", "not callers_environment and not every_"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def _leaves(node, prefix=""):
    """{dotted key: value} of a plain container's leaves (an empty dict or list is a leaf)."""
    if not isinstance(node, dict) or not node:
        return {prefix[:-1]: node}
    return {k: v for key, child in node.items() for k, v in _leaves(child, f"{prefix}{key}.").items()}


def test_the_default_config_is_the_schemas_defaults():
    """conf/config.yaml's choices and adv_jax/config.py's dataclass defaults are one set of values.
    The model group is the exception: the schema leaves model.name required (???), so ModelConfig's
    defaults are what a conf/model file may leave out (and what cache keys compare against)."""
    composed = _leaves(OmegaConf.to_container(compose()))
    schema = _leaves(OmegaConf.to_container(OmegaConf.structured(Config)))
    shared = [key for key in composed if key in schema and not key.startswith("model.")]
    disagree = {key: (composed[key], schema[key]) for key in shared if composed[key] != schema[key]}
    assert not disagree, f"conf/config.yaml (composed) vs adv_jax/config.py defaults: {disagree}"
    assert {"train.optimizer", "attack.name", "wandb.mode", "experiment.transfer.target"} <= set(shared)


@pytest.mark.parametrize("name", [n for n in _options("attack") if n != "none"])
def test_every_attack_yaml_restates_its_attacks_defaults(name):
    """The attack's code holds its defaults; conf/attack/NAME.yaml lists them (so a run's config.yaml
    records every hyperparameter and `attack.params.KEY=...` needs no '+'), each a parameter of
    the attack and each equal to its default."""
    params = OmegaConf.to_container(compose([f"attack={name}"]).attack.params)
    unknown = [key for key in params if key not in parameter_names(ATTACKS[name])]
    assert not unknown, f"conf/attack/{name}.yaml: not parameters of {name}: {unknown}"
    differ = [key for key, value in params.items() if make_attack(name, {key: value}) != make_attack(name)]
    assert not differ, f"conf/attack/{name}.yaml: differ from the attack's defaults: {differ}"
    assert make_attack(name, params) == make_attack(name)


def test_debug_tiny_changes_sizes_only():
    """debug=tiny composes alone and with every experiment, shrinks sizes, and leaves the model,
    the optimizer, the attack and the experiment's models as they were."""
    for base in [[], *([f"experiment={e}"] for e in _options("experiment"))]:
        full, tiny = compose(base), compose([*base, "debug=tiny"])
        assert (tiny.data.train_limit, tiny.train.lbfgs_steps, tiny.wandb.mode) == (2000, 100, "disabled"), base
        assert (tiny.experiment.num_examples, tiny.lipschitz.images) == (20, 50), base
        for key in ("model", "train.optimizer", "attack.name", "attack.params", "experiment.models",
                    "experiment.transfer.attacks"):
            assert OmegaConf.select(tiny, key) == OmegaConf.select(full, key), (base, key)
