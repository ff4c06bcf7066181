"""Feature-level transfer attacks: perturb the features f_k(x') at a hidden layer k of the source,
not its logits, because mid-level features are shared across models more than decision layers.

Each takes the split model (layered.py: `layered(model, params)` as the logits_fn; k is the
attack's `layer`, 1 .. depth-1, the activations after model.layers[:k]) and ascends, with the
MI/I-FGSM steps of iterative.py, its own objective J(x'):

  ILA (Huang et al. 2019, projection loss "ILAP"): starting FROM the base attack's x_b (I-FGSM,
      or MI-FGSM with base_momentum 1), with guide d = f_k(x_b) - f_k(x),
          J(x') = <f_k(x') - f_k(x), d> / |d|^2        (I-FGSM steps: momentum 0)
      so steps = 0 returns x_b. Targeted or not through the base attack's objective.
  FIA (Wang et al. 2021): importance D = sum_n dp_c/df_k at x * M_n, N masks M_n with pixels
      dropped with probability p, normalized D / |D|_2, p_c the softmax of class c;
          J(x') = -s <D, f_k(x')>                     (MI steps)
  NAA (Zhang et al. 2022): integrated attribution over the path (m / N) x, m = 1 .. N, from the
      black image x0 = 0: G = mean_m dp_c/df_k, A = (f_k(x') - f_k(x0)) * G,
          J(x') = -s (sum max(A, 0) - gamma sum max(-A, 0))      (MI steps)

  c = the label and s = 1 (untargeted: suppress what the source finds important for the label);
  c = the target and s = -1 (targeted: amplify what is important for the target).

Defaults from the papers (ImageNet, epsilon 16/255, T = 10, alpha = epsilon / T, mu = 1 for FIA
and NAA, FIA N = 30 and p = 0.3, NAA N = 30 and gamma = 1, ILA's base I-FGSM with T = 10): none
depends on the image size, so 28x28 keeps them; epsilon is adv_jax's 0.1 and k = 1, the first
hidden layer (the papers' "middle layer" of a deep net; MNIST nets here have 2 to 6 layers).
"evals" counts gradient evaluations: ILA base_steps + steps, FIA N + steps, NAA N + steps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adv_jax.attacks.iterative import TINY, IterativeBudget
from adv_jax.attacks.layered import require_layered
from adv_jax.attacks.transfer_enhancing import MomentumIterative

__all__ = ["FIA", "ILA", "NAA", "class_importance"]


def _class_and_sign(label, target):
    """(c, s) of the module docstring: the class whose importance is used, and whether the
    objective suppresses (+1, untargeted) or amplifies (-1, targeted) it."""
    return jnp.where(target >= 0, target, label), jnp.where(target >= 0, -1.0, 1.0)


def class_importance(features, head, images: jax.Array, cls) -> jax.Array:
    """sum over images (N, *shape) of d softmax(head(f))[cls] / d f at f = features(image):
    the aggregate gradient FIA and NAA weight the features with, shape of one feature map."""
    def one(image):
        return jax.grad(lambda h: jax.nn.softmax(head(h))[cls])(features(image))

    return jnp.sum(jax.vmap(one)(images), axis=0)


@dataclasses.dataclass(frozen=True)
class ILA(IterativeBudget):
    """Intermediate Level Attack with the projection loss (module docstring)."""

    momentum: float = 0.0  # ILA's fine-tuning steps are I-FGSM
    layer: int = 1  # k: features after model.layers[:k]
    base_steps: int = 10  # the base attack's steps (Huang et al.: I-FGSM)
    base_momentum: float = 0.0  # 0: base I-FGSM; 1: base MI-FGSM

    @property
    def base(self) -> MomentumIterative:
        """The base attack whose x_adv ILA starts from and projects onto."""
        return MomentumIterative(epsilon=self.epsilon, norm=self.norm, steps=self.base_steps,
                                 relative_step_size=self.relative_step_size,
                                 momentum=self.base_momentum)

    def evals(self, logits_fn) -> int:
        return self.base_steps + self.steps

    def perturb(self, logits_fn, x, label, target, key) -> jax.Array:
        """x (*shape) in [0, 1] -> x_adv in the epsilon ball, fine-tuned from the base's."""
        model = require_layered(logits_fn, "ila", self.layer)
        features, _ = model.split(self.layer)
        x_base = self.base.perturb(model, x, label, target, key, self.epsilon)
        clean = features(x)
        guide = features(x_base) - clean
        guide = guide / (jnp.sum(guide ** 2) + TINY)  # <., d> / |d|^2: the projection's length

        def gradient(x_adv, _):
            return jax.grad(lambda z: jnp.sum((features(z) - clean) * guide))(x_adv)

        return self.iterate(gradient, x, x_base, key)


@dataclasses.dataclass(frozen=True)
class FIA(IterativeBudget):
    """Feature Importance-aware Attack (module docstring)."""

    layer: int = 1  # k: features after model.layers[:k]
    ensemble_size: int = 30  # N masked copies aggregated (Wang et al. 2021)
    drop_probability: float = 0.3  # p: a pixel is zeroed in a copy with this probability

    def evals(self, logits_fn) -> int:
        return self.ensemble_size + self.steps

    def perturb(self, logits_fn, x, label, target, key) -> jax.Array:
        """x (*shape) in [0, 1] -> x_adv in the epsilon ball."""
        model = require_layered(logits_fn, "fia", self.layer)
        features, head = model.split(self.layer)
        cls, sign = _class_and_sign(label, target)
        mask_key, loop_key = jax.random.split(key)
        keep = jax.random.bernoulli(mask_key, 1.0 - self.drop_probability,
                                    (self.ensemble_size, *x.shape))
        importance = class_importance(features, head, x * keep, cls)
        importance = importance / (jnp.sqrt(jnp.sum(importance ** 2)) + TINY)

        def gradient(x_adv, _):
            return jax.grad(lambda z: -sign * jnp.sum(importance * features(z)))(x_adv)

        return self.iterate(gradient, x, x, loop_key)


@dataclasses.dataclass(frozen=True)
class NAA(IterativeBudget):
    """Neuron Attribution-based Attack (module docstring)."""

    layer: int = 1  # k: features after model.layers[:k]
    integration_steps: int = 30  # N points on the path from the black image to x
    gamma: float = 1.0  # weight of the negative attributions

    def evals(self, logits_fn) -> int:
        return self.integration_steps + self.steps

    def perturb(self, logits_fn, x, label, target, key) -> jax.Array:
        """x (*shape) in [0, 1] -> x_adv in the epsilon ball."""
        model = require_layered(logits_fn, "naa", self.layer)
        features, head = model.split(self.layer)
        cls, sign = _class_and_sign(label, target)
        fractions = jnp.arange(1, self.integration_steps + 1) / self.integration_steps
        path = fractions.reshape(-1, *([1] * x.ndim)) * x
        weights = class_importance(features, head, path, cls) / self.integration_steps
        baseline = features(jnp.zeros_like(x))

        def attribution(z):
            a = (features(z) - baseline) * weights
            return jnp.sum(jax.nn.relu(a)) - self.gamma * jnp.sum(jax.nn.relu(-a))

        def gradient(x_adv, _):
            return jax.grad(lambda z: -sign * attribution(z))(x_adv)

        return self.iterate(gradient, x, x, key)
