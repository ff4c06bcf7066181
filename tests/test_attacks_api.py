"""The attack API for any model: `generate` and `attack_batch` against a flax.linen MLP written
here (images and hidden-layer vectors), diagnostics from the batch call and in `summarize`, one
compilation for repeated batches of one shape (light imports: tests/test_architecture.py); attack
objects given to `generate` directly (`PGD(epsilon=0.1)`) as the config route, with explicit
targets, and every conf/attack/*.yaml's params the defaults of `make_attack(name)`."""

import collections
import dataclasses
import logging
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

import adv_jax.attacks as attacks
from adv_jax.attacks import PGD, LBFGSAttack, attack_batch, compile_attack_batch, make_attack, run_attack
from adv_jax import devices
from adv_jax.attacks.common import balanced_chunk
from adv_jax.attacks.generate import Generated, generate, summarize
from adv_jax.config import AttackConfig
from adv_jax.models import Model, logits_fn
from adv_jax.models.layers import Layer


class MLP(nn.Module):
    """784-32-10 sigmoid MLP on (B, 28, 28, 1), or 32-10 on hidden vectors (B, 32)."""
    hidden: int = 32

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        if self.hidden:
            x = nn.sigmoid(nn.Dense(self.hidden)(x))
        return nn.Dense(10)(x)


def flax_logits_fn(shape, hidden=32, seed=0):
    """A batched logits_fn (B, *shape) -> (B, 10) of a random flax MLP, weights scaled up so that
    its predictions vary from image to image."""
    module = MLP(hidden)
    variables = module.init(jax.random.key(seed), jnp.zeros((1, *shape)))
    variables = jax.tree_util.tree_map(lambda w: 4.0 * w, variables)
    return lambda x: module.apply(variables, x)


def attack_cfg(name, target, **params):
    return OmegaConf.structured(AttackConfig(name=name, target=target, params=params))


def test_generate_attacks_a_flax_model_inside_the_box_and_the_ball():
    fn = flax_logits_fn((28, 28, 1))
    x = jax.random.uniform(jax.random.key(1), (12, 28, 28, 1))
    y = jnp.argmax(fn(x), -1)
    lbfgs = generate(attack_cfg("lbfgs", "random", c_steps=4), fn, x, y, key=jax.random.key(2),
                     progress=False)
    assert isinstance(lbfgs, Generated)
    adv = lbfgs.adversarials
    assert adv.success.all() and np.all(adv.target != adv.y)
    assert adv.x_adv.min() >= 0.0 and adv.x_adv.max() <= 1.0
    np.testing.assert_array_equal(np.argmax(fn(jnp.asarray(adv.x_adv)), -1), adv.target)
    assert set(lbfgs.diagnostics) == {"evals", "c"} and lbfgs.diagnostics["evals"].shape == (12,)
    metrics = summarize(lbfgs)
    assert metrics["attack/success_rate"] == 1.0 and metrics["attack/mean_distortion"] > 0
    assert 0 < metrics["attack/evals_mean"] <= metrics["attack/evals_max"]
    assert metrics["attack/c_mean"] > 0

    pgd = generate(attack_cfg("pgd", "untargeted", epsilon=0.2, steps=10), fn, x, y,
                   key=jax.random.key(3), progress=False)
    adv = pgd.adversarials
    assert adv.success.mean() >= 0.9
    assert adv.x_adv.min() >= 0.0 and adv.x_adv.max() <= 1.0
    assert np.abs(adv.x_adv - adv.x).max() <= 0.2 + 1e-6  # inside the L-inf ball
    assert set(pgd.diagnostics) == {"evals"} and summarize(pgd)["attack/evals_max"] == 10


# Every registered attack at a small size, and the gradient evaluations it must report per
# example (None: it stops early; checked against its own step count or bound instead).
SMALL = {"fgsm": ({}, 1), "pgd": ({"steps": 3}, 3), "fgsm_min": ({"search_steps": 2}, 3),
         "pgd_min": ({"steps": 3, "search_steps": 2}, 9),
         "cw": ({"steps": 4, "binary_search_steps": 2}, 8), "ddn": ({"steps": 5}, 5),
         "fmn": ({"steps": 5}, 5), "template": ({}, 1), "deepfool": ({"steps": 3}, None),
         "fooling": ({"steps": 4}, None), "lbfgs": ({"c_steps": 2, "max_evals": 3}, None),
         "mi_fgsm": ({"steps": 3}, 3), "di_fgsm": ({"steps": 2}, 2), "ti_fgsm": ({"steps": 2}, 2),
         "mi_di_ti": ({"steps": 3}, 3),
         # transfer_families.py: steps * (base + relevance + variance samples) * copies
         "ni_fgsm": ({"steps": 2}, 2), "vmi_fgsm": ({"steps": 2, "variance_samples": 2}, 6),
         "vni_fgsm": ({"steps": 2, "variance_samples": 1}, 4),
         "emi_fgsm": ({"steps": 2, "enhanced_samples": 3}, 6),
         "gra": ({"steps": 2, "relevance_samples": 2}, 6), "pgn": ({"steps": 2, "penalty_samples": 2}, 8),
         "sini_fgsm": ({"steps": 2, "scales": 3}, 6), "admix": ({"steps": 2, "scales": 2, "mixes": 2}, 8),
         "sia": ({"steps": 2, "transforms": 2}, 4), "bsr": ({"steps": 2, "transforms": 2}, 4),
         "refined": ({"first_params": {"c_steps": 2, "max_evals": 3}, "refine_params": {"steps": 5}}, None)}
# ensemble_strategies.py: a bare logits_fn is one member; evals = member gradients
SMALL |= {"svre": ({"steps": 2, "inner_steps_per_member": 1}, 4), "cwa": ({"steps": 2}, 4),
          "adaea": ({"steps": 2}, 4)}
# AutoAttack and its stages; autoattack's evals are those of the stages each example reached
SMALL |= {"apgd_ce": ({"steps": 2}, 3), "apgd_dlr": ({"steps": 2, "target_classes": 2}, 6),
          "fab": ({"steps": 2, "target_classes": 2}, 4), "square": ({"queries": 5}, 0),
          "apgd_min": ({"steps": 2, "search_steps": 2}, 9), "alma": ({"steps": 5}, 5),
          "autoattack": ({"apgd_steps": 2, "target_classes": 2, "fab_steps": 2, "square_queries": 5}, None)}
# They need layered(model, params), not a bare logits_fn: their evals are checked in
# tests/test_attacks_feature_ensemble.py.
LAYERED = {"ila", "fia", "naa", "linbp", "sgm", "ghost"}


def test_every_registered_attack_is_checked_for_its_evaluations():
    from adv_jax.attacks import ATTACKS

    assert set(SMALL) | LAYERED == set(ATTACKS)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_attack_reports_its_gradient_evaluations_in_the_metrics(name):
    params, evals = SMALL[name]
    fn = flax_logits_fn((28, 28, 1))
    x = jax.random.uniform(jax.random.key(9), (4, 28, 28, 1))
    y = jnp.argmax(fn(x), -1)
    made = generate(attack_cfg(name, "untargeted", **params), fn, x, y, key=jax.random.key(0),
                    progress=False)
    got, metrics = made.diagnostics["evals"], summarize(made)
    if name == "refined":  # L-BFGS's own count, then the refinement's steps
        evals = made.diagnostics["first_evals"] + 5
    elif name == "autoattack":  # every example starts correct (y is fn's class): APGD-CE on all
        d = made.diagnostics
        evals = 3 + 6 * d["robust_after_apgd_ce"] + 4 * d["robust_after_apgd_t"]
    elif evals is None and "steps" in made.diagnostics:  # DeepFool: a Jacobian (10) per step
        evals = made.diagnostics["steps"] * (10 if name == "deepfool" else 1)
    elif evals is None:  # L-BFGS: at most c_steps * max_evals, plus its rescue solves
        assert np.all((got >= 1) & (got <= 2 * 3 + 10 * 50)), got
        evals = got
    np.testing.assert_array_equal(got, evals, err_msg=name)
    assert metrics["attack/evals_mean"] == np.mean(evals) and metrics["attack/evals_max"] == np.max(evals)


def test_target_mode_all_sums_the_evaluations_over_targets():
    fn = flax_logits_fn((28, 28, 1))
    x = jax.random.uniform(jax.random.key(9), (4, 28, 28, 1))
    y = jnp.argmax(fn(x), -1)
    every = generate(attack_cfg("pgd", "all", steps=3), fn, x[:2], y[:2], key=jax.random.key(0),
                     progress=False)
    np.testing.assert_array_equal(every.diagnostics["evals"], 9 * 3)  # summed over the 9 targets


def test_attack_batch_on_hidden_vectors_and_all_targets():
    """(B, 32) inputs, as adversarial training's hidden-layer attacks; target mode "all"."""
    fn = flax_logits_fn((32,), hidden=0)
    h = jax.random.uniform(jax.random.key(4), (6, 32))
    y = jnp.argmax(fn(h), -1)
    h_adv, diagnostics = attack_batch(LBFGSAttack(c_steps=4), fn, h, y, jnp.full(6, -1),
                                      key=jax.random.key(5), chunk_size=4, progress=False)
    assert h_adv.shape == (6, 32) and diagnostics["evals"].shape == (6,)
    assert bool(jnp.all(jnp.argmax(fn(h_adv), -1) != y))
    every = generate(attack_cfg("lbfgs", "all", c_steps=3), flax_logits_fn((28, 28, 1)),
                     jnp.full((2, 28, 28, 1), 0.5), jnp.array([0, 1]), key=jax.random.key(6),
                     progress=False)
    assert every.adversarials.success.all() and every.diagnostics["evals"].shape == (2,)


TRACES = collections.Counter()


@dataclasses.dataclass(frozen=True)
class Counted:
    """Counts how often JAX traces `inner` (Python in a traced function runs only then)."""
    inner: Any

    def __call__(self, logits_fn, x, label, target, key):
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn, x, label, target, key):
        TRACES[self] += 1
        return run_attack(self.inner, logits_fn, x, label, target, key)


def test_the_attack_loop_compiles_once_for_batches_of_one_shape():
    """Three chunks (the last padded), twice, the second time with other params of the model."""
    model = Model(layers=(Layer("dense", features=16, activation="sigmoid"), Layer("dense", features=10)))
    x = jax.random.uniform(jax.random.key(7), (10, 28, 28, 1))
    y, target = jnp.arange(10) % 10, (jnp.arange(10) + 3) % 10
    for attack in (LBFGSAttack(c_steps=2, max_evals=3), PGD(epsilon=0.1, steps=3)):
        counted = Counted(attack)
        for seed, images in enumerate((x, 1.0 - x)):
            fn = logits_fn(model, model.init(jax.random.key(seed)))
            x_adv, _ = attack_batch(counted, fn, images, y, target, key=jax.random.key(8),
                                    chunk_size=4, progress=False)
        assert TRACES[counted] == 1, (attack, TRACES[counted])
        plain, _ = attack_batch(attack, fn, images, y, target, key=jax.random.key(8), chunk_size=4,
                                progress=False)
        np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(plain))



def test_chunks_are_balanced_so_little_padding_is_computed():
    """The fewest chunks of at most chunk_size rows, of one size: 300 rows at 250 run as 2 x 152,
    not as 250 and 50 padded to 250; padding stays under 8 rows plus one per device per chunk."""
    d = devices.device_count()
    assert balanced_chunk(300, 250) == balanced_chunk(301, 250) == devices.round_up(152)
    for n in range(1, 80):
        for size in range(1, 40):
            chunk = balanced_chunk(n, size)
            chunks = -(-n // chunk)
            assert chunk % d == 0 and chunk <= devices.round_up(size) and chunks <= -(-n // size), (n, size, chunk)
            assert chunks * chunk - n < chunks * (8 + d), (n, size, chunk)
    with pytest.raises(ValueError, match="chunk_size=0"):
        balanced_chunk(10, 0)


def test_compile_attack_batch_compiles_the_call_without_running_it(caplog):
    """A benchmark's warm-up: the attack is traced and compiled once, and the call after it
    neither traces nor compiles again (every chunk, the padded last one too, has one shape)."""
    model = Model(layers=(Layer("dense", features=16, activation="sigmoid"), Layer("dense", features=10)))
    fn = logits_fn(model, model.init(jax.random.key(9)))
    x = jax.random.uniform(jax.random.key(10), (7, 28, 28, 1))
    y, target = jnp.arange(7), (jnp.arange(7) + 1) % 10
    counted = Counted(PGD(epsilon=0.1, steps=2))
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        compile_attack_batch(counted, fn, x, y, target, key=jax.random.key(11), chunk_size=4)
        compiled = sum("_attack_chunk" in r.getMessage() for r in caplog.records)
        caplog.clear()
        attack_batch(counted, fn, x, y, target, key=jax.random.key(11), chunk_size=4, progress=False)
        again = sum("_attack_chunk" in r.getMessage() for r in caplog.records)
    assert TRACES[counted] == 1 and compiled >= 1 and again == 0, (compiled, again)


CONF_ATTACK = Path(__file__).resolve().parents[1] / "conf" / "attack"
YAMLS = sorted(p.stem for p in CONF_ATTACK.glob("*.yaml") if p.stem != "none")
# Known disagreements: the YAML sets a value that make_attack(name) does not default to. Strict,
# so the test fails once the defaults agree and the entry must go.
DISAGREE: dict[str, str] = {}  # name -> why its YAML and its defaults differ (none today)


def yaml_params(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_ATTACK / f"{name}.yaml").get("params") or {})


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=DISAGREE[n], strict=True))
                                  if n in DISAGREE else n for n in YAMLS])
def test_every_yaml_only_restates_the_defaults(name):
    assert OmegaConf.load(CONF_ATTACK / f"{name}.yaml").name == name
    assert make_attack(name, yaml_params(name)) == make_attack(name)


# The direct names and the conf/attack/*.yaml they stand for, default for default.
DIRECT = {"LBFGS": "lbfgs", "LBFGSAttack": "lbfgs", "CW": "cw", "CarliniWagnerL2": "cw",
          "PGD": "pgd", "FGSM": "fgsm", "DeepFool": "deepfool", "DDN": "ddn", "FMN": "fmn",
          "MIFGSM": "mi_fgsm", "DIFGSM": "di_fgsm", "TIFGSM": "ti_fgsm",
          "TemplateAddition": "template", "FoolingImage": "fooling"}


@pytest.mark.parametrize("name", sorted(DIRECT))
def test_direct_names_have_the_yaml_defaults(name):
    assert name in attacks.__all__
    assert getattr(attacks, name)() == make_attack(DIRECT[name], yaml_params(DIRECT[name]))


def test_the_composite_attacks_constructed_directly():
    """As docs/attacks.md's table writes them."""
    a = attacks
    for name, attack in [("pgd_min", a.MinimalEpsilon(a.PGD(norm="l2"), max_epsilon=10.0)),
                         ("fgsm_min", a.MinimalEpsilon(a.FGSM())),
                         ("refined", a.Refined(a.LBFGS(), a.FMN(steps=300))),
                         ("mi_di_ti", a.MomentumIterative(momentum=1.0, diversity_probability=0.5,
                                                          kernel_size=7))]:
        assert attack == make_attack(name, yaml_params(name)), name


def test_an_attack_object_gives_what_the_config_route_gives():
    """PGD (untargeted, both routes' default) and L-BFGS (random targets) from compose(...) and
    constructed directly: the same x_adv, targets and diagnostics for the same key."""
    from adv_jax.config import compose

    fn = flax_logits_fn((28, 28, 1))
    x = jax.random.uniform(jax.random.key(12), (6, 28, 28, 1))
    y = jnp.argmax(fn(x), -1)
    routes = [(["attack=pgd", "attack.params.steps=3"], attacks.PGD(epsilon=0.1, norm="linf", steps=3), {}),
              (["attack=lbfgs", "attack.params.c_steps=2"], attacks.LBFGS(c_steps=2), {"target": "random"})]
    for overrides, attack, kwargs in routes:
        by_config = generate(compose(overrides).attack, fn, x, y, key=jax.random.key(4), progress=False)
        direct = generate(attack, fn, x, y, key=jax.random.key(4), progress=False, **kwargs)
        for got, want in zip(direct.adversarials, by_config.adversarials):
            np.testing.assert_array_equal(got, want, err_msg=str(attack))
        assert direct.diagnostics.keys() == by_config.diagnostics.keys()
    assert (by_config.adversarials.target != y).all()  # L-BFGS's: random wrong labels


def test_an_attack_object_with_explicit_targets():
    fn = flax_logits_fn((28, 28, 1))
    x = jax.random.uniform(jax.random.key(13), (5, 28, 28, 1))
    y = jnp.argmax(fn(x), -1)
    target = np.array([-1, (int(y[1]) + 1) % 10, (int(y[2]) + 2) % 10, -1, (int(y[4]) + 5) % 10])
    made = generate(PGD(epsilon=0.1, steps=5), fn, x, y, key=jax.random.key(5), target=target,
                    chunk_size=2, progress=False)
    np.testing.assert_array_equal(made.adversarials.target, target)
    assert np.abs(made.adversarials.x_adv - made.adversarials.x).max() <= 0.1 + 1e-6
    untargeted = generate(PGD(epsilon=0.1, steps=5), fn, x, y, key=jax.random.key(5), progress=False)
    np.testing.assert_array_equal(untargeted.adversarials.target, -1)  # the direct form's default
    np.testing.assert_array_equal(made.adversarials.x_adv[[0, 3]], untargeted.adversarials.x_adv[[0, 3]])
