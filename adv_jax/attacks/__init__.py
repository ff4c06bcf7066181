"""Attacks: the registry behind `attack=NAME`, one frozen dataclass per method.

Each attack handles ONE example, `attack(logits_fn, x, label, target, key) -> x_adv` (see
`common.py`), and is batched with `jax.vmap` by `attack_batch`. `make_attack(name, params)` builds
one from `conf/attack/NAME.yaml`'s `params`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adv_jax.attacks.carlini_wagner import CarliniWagnerL2
from adv_jax.attacks.common import (
    UNTARGETED, Attack, attack_batch, is_adversarial, rms_distortion, single_example,
)
from adv_jax.attacks.deepfool import DeepFool
from adv_jax.attacks.essays import FoolingImage, TemplateAddition
from adv_jax.attacks.gradient import FGSM, PGD, MinimalEpsilon
from adv_jax.attacks.lbfgs import LBFGSAttack, attack_all_targets, choose_targets

__all__ = [
    "ATTACKS", "UNTARGETED", "Attack", "CarliniWagnerL2", "DeepFool", "FGSM", "FoolingImage",
    "LBFGSAttack", "MinimalEpsilon", "PGD", "TemplateAddition", "attack_all_targets", "attack_batch",
    "choose_targets", "is_adversarial", "make_attack", "rms_distortion", "single_example",
]


def _minimal(inner: type) -> Callable[..., MinimalEpsilon]:
    """The minimum-norm form: the smallest epsilon that succeeds, per example."""

    def build(max_epsilon: float = 1.0, search_steps: int = 10, **inner_params) -> MinimalEpsilon:
        return MinimalEpsilon(inner(**inner_params), max_epsilon, search_steps)

    return build


ATTACKS: dict[str, Callable[..., Attack]] = {
    "lbfgs": LBFGSAttack,
    "fgsm": FGSM,
    "fgsm_min": _minimal(FGSM),
    "pgd": PGD,
    "pgd_min": _minimal(PGD),
    "cw": CarliniWagnerL2,
    "deepfool": DeepFool,
    "template": TemplateAddition,
    "fooling": FoolingImage,
}


def make_attack(name: str, params: dict[str, Any] | None = None) -> Attack:
    """The attack registered as `name` with hyperparameters `params` (unknown ones are an error)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    try:
        return ATTACKS[name](**dict(params or {}))
    except TypeError as e:
        raise ValueError(f"bad attack.params for {name!r}: {e}") from e
