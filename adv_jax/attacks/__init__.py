"""Attacks: the registry behind `attack=NAME`, one frozen dataclass per method, and the batch layer.

Per example (`common.py`): `attack(logits_fn, x, label, target, key) -> x_adv`, logits_fn one
input (*shape) -> logits (K,), pixels in [0, 1], target -1 = untargeted. An attack that reports
per-example diagnostics also has `attack.with_diagnostics(same arguments) -> (x_adv, {name:
scalar})`: every registered attack reports "evals" (gradient evaluations, i.e. backward passes,
per example) and some more (LBFGSAttack: c; MinimalEpsilon: epsilon; TemplateAddition:
multiple; DeepFool, FoolingImage: steps; DDN, FMN: norm); `run_attack` calls either kind.
`make_attack(name, params)` builds one from `conf/attack/NAME.yaml`'s `params`; with no params,
the YAML's attack: each YAML restates its attack's defaults (tests/test_config.py and
tests/test_attacks_api.py check it).

Constructed directly, with the YAMLs' defaults (table: docs/attacks.md): `PGD(epsilon=0.1,
norm="linf")`, `FGSM()`, `LBFGS()` (= LBFGSAttack), `CW()` (= CarliniWagnerL2), `DeepFool()`,
`DDN()`, `FMN()`, `MIFGSM()`, `DIFGSM()`, `TIFGSM()` (MomentumIterative presets),
`MinimalEpsilon(PGD(norm="l2"), max_epsilon=10.0)` (pgd_min), `TemplateAddition()`,
`FoolingImage()`, `Refined(LBFGS(), FMN(steps=300))`.

Batched, against any JAX callable `logits_fn` (B, *shape) -> (B, K) (an adv_jax model through
`adv_jax.models.logits_fn(model, params)`, a flax or equinox model, a hidden layer's head):
  attack_batch(attack, logits_fn, x, y, target, *, key, chunk_size, progress=True)
      -> (x_adv (N, *shape), diagnostics {name: (N,)})
  compile_attack_batch(same arguments but progress): compiles that call without running it
  choose_targets(mode, logits, labels, *, key), attack_all_targets(attack, logits_fn, x, label,
      *, key, chunk_size=None) -> (x_adv, target, diagnostics)                     (targets.py)
  generate(attack, logits_fn, x, y, *, key, target=None, chunk_size=None, index=None,
      progress=True) -> Generated (adversarials, seconds, diagnostics); attack: an attack object
      (target default "untargeted") or an attack config (its target); check_inputs(x, y, target,
      num_classes) -> ValueError on bad inputs; summarize(generated) -> flat metrics (generate.py)
Transfer studies: `MomentumIterative` (MI/DI/TI-FGSM, transfer_enhancing.py), `TransferFamily`
(NI/VMI/VNI/EMI/GRA/PGN and SI-NI/Admix/SIA/BSR presets of one loop, transfer_families.py), `Ensemble`
(several models as one logits_fn, ensemble_source.py), `AcrossBudgets` (budgets.py), gradient
alignment and boundary distances (analysis.py).
Feature-level (ILA, FIA, NAA; feature_level.py) and model-related (LinBP, SGM, Ghost;
model_related.py) attacks take `layered(model, params)` (layered.py) as their logits_fn; the
ensemble strategies (SVRE, CWA, AdaEA; ensemble_strategies.py) an `Ensemble`'s members.
Robustness evaluation: `AutoAttack` (APGD-CE, APGD-T, FAB-T, Square; autoattack.py, apgd.py,
fab.py, square.py), which `attack_batch` runs stage by stage on the examples still correct.
A pytree logits_fn (`jax.tree_util.Partial`, as `adv_jax.models.logits_fn` returns) passes its
arrays as traced arguments, so one compilation serves every parameter set of a shape. Distortion
= per-pixel RMS (`rms_distortion`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from adv_jax.attacks.apgd import APGD
from adv_jax.attacks.autoattack import AutoAttack
from adv_jax.attacks.carlini_wagner import CarliniWagnerL2
from adv_jax.attacks.common import (
    UNTARGETED,
    Attack,
    LogitsFn,
    attack_batch,
    batched_logits,
    compile_attack_batch,
    is_adversarial,
    predicted_labels,
    rms_distortion,
    run_attack,
    single_example,
)
from adv_jax.attacks.deepfool import DeepFool
from adv_jax.attacks.essays import FoolingImage, TemplateAddition
from adv_jax.attacks.fab import FAB
from adv_jax.attacks.ensemble_strategies import CWA, SVRE, AdaEA
from adv_jax.attacks.feature_level import FIA, ILA, NAA
from adv_jax.attacks.gradient import FGSM, PGD, MinimalEpsilon
from adv_jax.attacks.layered import LayeredModel, layered
from adv_jax.models import logits_fn
from adv_jax.attacks.lbfgs import LBFGSAttack
from adv_jax.attacks.minnorm import DDN, FMN
from adv_jax.attacks.alma import ALMA
from adv_jax.attacks.model_related import SGM, Ghost, LinBP
from adv_jax.attacks.refined import Refined
from adv_jax.attacks.square import Square
from adv_jax.attacks.targets import TARGET_MODES, attack_all_targets, choose_targets
from adv_jax.attacks.transfer_enhancing import MomentumIterative, preset
from adv_jax.attacks.transfer_families import TransferFamily, family

__all__ = [
    "ATTACKS", "CW", "DIFGSM", "LBFGS", "MIFGSM", "TARGET_MODES", "TIFGSM", "UNTARGETED", "Attack",
    "CarliniWagnerL2", "DDN", "DeepFool", "FGSM", "FMN", "FoolingImage", "LBFGSAttack", "LogitsFn",
    "MinimalEpsilon", "MomentumIterative", "PGD", "Refined", "TemplateAddition", "TransferFamily",
    "attack_all_targets", "attack_batch", "batched_logits", "choose_targets", "compile_attack_batch", "is_adversarial",
    "predicted_labels",
    "make_attack", "rms_distortion", "run_attack", "single_example",
]
__all__ += ["AdaEA", "CWA", "FIA", "Ghost", "ILA", "LayeredModel", "LinBP", "NAA", "SGM", "SVRE",
            "layered"]
__all__ += ["LAYERED_ATTACKS", "inapplicable", "model_view"]
__all__ += ["ALMA", "APGD", "FAB", "AutoAttack", "Square"]


# The names conf/attack/*.yaml use, where they read naturally (torchattacks' names).
LBFGS = LBFGSAttack
CW = CarliniWagnerL2
MIFGSM = preset("mi_fgsm")  # MomentumIterative(momentum=1.0, ...)
DIFGSM = preset("di_fgsm")  # MomentumIterative(diversity_probability=0.5, ...)
TIFGSM = preset("ti_fgsm")  # MomentumIterative(kernel_size=7, kernel_sigma=1.0, ...)


def _minimal(inner: type, max_epsilon: float = 1.0,
             **inner_defaults: Any) -> Callable[..., MinimalEpsilon]:
    """The minimum-norm form: the smallest epsilon that succeeds, per example; inner_defaults:
    the wrapped attack's defaults here (any of them overridable)."""

    def build(max_epsilon: float = max_epsilon, search_steps: int = 10,
              **inner_params: Any) -> MinimalEpsilon:
        return MinimalEpsilon(inner(**{**inner_defaults, **inner_params}), max_epsilon, search_steps)

    return build


# The FMN refinement chosen on held-out training images (results/select_refined.md).
REFINE_FMN = {"steps": 300, "max_step": 1.0, "gamma": 0.05, "min_step": 0.01}


def _refined(first: str = "lbfgs", first_params: dict | None = None, refine: str = "fmn",
             refine_params: dict | None = None) -> Refined:
    """`first` (any registered attack), then `refine` (ddn or fmn) from its x_adv; FMN's default
    settings are the chosen REFINE_FMN, DDN's its own."""
    if refine not in ("ddn", "fmn"):
        raise ValueError(f"unknown refine {refine!r}; choose one of ['ddn', 'fmn']")
    if refine_params is None and refine == "fmn":
        refine_params = REFINE_FMN
    return Refined(make_attack(first, first_params), make_attack(refine, refine_params))


ATTACKS: dict[str, Callable[..., Attack]] = {
    "lbfgs": LBFGSAttack,
    "fgsm": FGSM,
    "fgsm_min": _minimal(FGSM),
    "pgd": PGD,
    "pgd_min": _minimal(PGD, max_epsilon=10.0, norm="l2"),  # the smallest L2 radius
    "cw": CW,
    "deepfool": DeepFool,
    "ddn": DDN,
    "fmn": FMN,
    "refined": _refined,
    "template": TemplateAddition,
    "fooling": FoolingImage,
    "mi_fgsm": MIFGSM,
    "di_fgsm": DIFGSM,
    "ti_fgsm": TIFGSM,
    "mi_di_ti": preset("mi_di_ti"),
    "ila": ILA,  # feature_level.py: take layered(model, params)
    "fia": FIA,
    "naa": NAA,
    "linbp": LinBP,  # model_related.py: take layered(model, params)
    "sgm": SGM,
    "ghost": Ghost,
    "svre": SVRE,  # ensemble_strategies.py: take an Ensemble (or one model)
    "cwa": CWA,
    "adaea": AdaEA,
    "ni_fgsm": family("ni_fgsm"),  # transfer_families.py
    "vmi_fgsm": family("vmi_fgsm"),  # transfer_families.py
    "vni_fgsm": family("vni_fgsm"),  # transfer_families.py
    "emi_fgsm": family("emi_fgsm"),  # transfer_families.py
    "gra": family("gra"),  # transfer_families.py
    "pgn": family("pgn"),  # transfer_families.py
    "sini_fgsm": family("sini_fgsm"),  # transfer_families.py
    "admix": family("admix"),  # transfer_families.py
    "sia": family("sia"),  # transfer_families.py
    "bsr": family("bsr"),  # transfer_families.py
    "apgd_ce": APGD,  # apgd.py, fab.py, square.py, autoattack.py: AutoAttack and its stages
    "apgd_dlr": functools.partial(APGD, loss="dlr", target_classes=9),
    "apgd_min": _minimal(APGD, max_epsilon=10.0, norm="l2"),  # the smallest L2 radius
    "fab": FAB,
    "alma": ALMA,  # alma.py: minimum-norm L2 by an augmented Lagrangian
    "square": Square,
    "autoattack": AutoAttack,
}

# Attacks that read the model's layers: they take `layered(model, params)` as their logits_fn.
LAYERED_ATTACKS = frozenset({"ila", "fia", "naa", "linbp", "sgm", "ghost"})


def model_view(name: str, model, params) -> LogitsFn:
    """What attack `name` runs against: the layered model for LAYERED_ATTACKS, else the plain
    batched logits_fn (both (B, 28, 28, 1) -> (B, K))."""
    return layered(model, params) if name in LAYERED_ATTACKS else logits_fn(model, params)


def inapplicable(attack: Attack, view: LogitsFn, input_shape: tuple[int, ...]) -> str | None:
    """Why `attack` cannot run on `view` (a model it does not apply to: no hidden layer at its
    layer, no ReLU, no skip connection), traced once without running; None when it can."""
    image = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    try:
        jax.eval_shape(lambda x: run_attack(attack, single_example(view), x, jnp.int32(0), jnp.int32(-1),
                                            jax.random.key(0)), image)
    except ValueError as e:
        return str(e)
    return None


def make_attack(name: str, params: dict[str, Any] | None = None) -> Attack:
    """The attack registered as `name` with hyperparameters `params` (unknown ones are an error)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    try:
        return ATTACKS[name](**dict(params or {}))
    except TypeError as e:
        raise ValueError(bad_params_message(name, dict(params or {}), e)) from e


def parameter_names(build: Callable[..., Any]) -> list[str]:
    """The keyword parameters an ATTACKS entry takes; a `**inner_params` wrapper (the `*_min`
    forms) adds those of the inner attack it forwards them to."""
    names, forwards = [], False
    for parameter in inspect.signature(build).parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            forwards = True
        else:
            names.append(parameter.name)
    if forwards and inspect.isfunction(build):
        for inner in inspect.getclosurevars(build).nonlocals.values():
            if inspect.isclass(inner):
                names += parameter_names(inner)
    return names


def bad_params_message(name: str, params: dict[str, Any], error: TypeError) -> str:
    """Names each unknown parameter with a did-you-mean, and lists the valid ones."""
    valid = parameter_names(ATTACKS[name])
    problems = []
    for key in (k for k in params if k not in valid):
        close = difflib.get_close_matches(key, valid, n=1)
        problems.append(f"unknown {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"bad attack.params for {name!r}: {'; '.join(problems) or error}; "
            f"valid parameters: {', '.join(valid)}")
