"""Model-related transfer attacks: keep the objective, change how the source computes its gradient.

Each takes the layered model (layered.py: `layered(model, params)` as the logits_fn), because it
reruns the source layer by layer, and ascends the usual objective J (CE on the label, or -CE on
the target; gradient.attack_objective) with the steps of iterative.py:

  LinBP (Guo et al. 2020): the forward pass is the model's, but every ReLU in model.layers[layer:]
      passes its cotangent unchanged in the backward pass (a custom VJP: d relu(z)/dz := 1),
      so the gradient is that of the source with its later layers made linear. I-FGSM steps.
      A model without ReLUs there is refused (there is nothing to linearize). Only the layers'
      own activations are linearized: a residual branch's inner ReLUs keep their gating.
  SGM (Wu et al. 2020): through every residual layer act(z + f(z)) (kind "residual",
      models/layers.py) the backward pass scales the branch's gradient by gamma < 1,
      d(z + f(z))/dz := 1 + gamma df/dz (`models.layers.apply_residual`), favouring the skip
      connections; the forward pass is the model's. MI steps. A model without residual layers
      is refused (there is no skip to favour).
  Ghost (Li et al. 2020, dropout erosion): at every step a fresh "ghost" of the source, each
      hidden layer's output multiplied by an independent mask Bernoulli(keep) / keep (the output
      layer's logits untouched); masks from fold_in(step key, layer index). MI steps.

Defaults (ImageNet, epsilon 16/255; no size-dependent value, so 28x28 keeps them, epsilon is
adv_jax's 0.1): LinBP I-FGSM with 300 iterations of step 1/255 at epsilon 16/255, i.e. alpha =
epsilon / 16, linearized from layer 1 on (the papers: the later half of ResNet-50); SGM gamma
0.2 (ResNet; 0.5 for DenseNet), MI with T = 10; Ghost keep probability 0.994 (erosion 0.006),
MI-FGSM with T = 10, mu = 1. "evals" = steps for each.
"""

from __future__ import annotations

import dataclasses

import jax

from adv_jax.attacks.gradient import attack_objective
from adv_jax.attacks.iterative import IterativeBudget
from adv_jax.attacks.layered import require_layered
from adv_jax.models.layers import apply_layer, apply_residual

__all__ = ["SGM", "Ghost", "LinBP", "linear_backward_relu"]


@jax.custom_vjp
def linear_backward_relu(z: jax.Array) -> jax.Array:
    """relu(z) forward, identity backward (LinBP)."""
    return jax.nn.relu(z)


linear_backward_relu.defvjp(lambda z: (jax.nn.relu(z), None), lambda _, cotangent: (cotangent,))


def _objective_gradient(logits_fn, x_adv, label, target):
    return jax.grad(attack_objective, argnums=1)(logits_fn, x_adv, label, target)


@dataclasses.dataclass(frozen=True)
class LinBP(IterativeBudget):
    """Linear backpropagation through the later ReLUs (module docstring)."""

    steps: int = 300  # Guo et al. 2020: 300 I-FGSM iterations
    relative_step_size: float = 1 / 16  # step 1/255 at epsilon 16/255
    momentum: float = 0.0  # I-FGSM
    layer: int = 1  # ReLUs of model.layers[layer:] are linear backward

    def evals(self, logits_fn) -> int:
        return self.steps

    def perturb(self, logits_fn, x, label, target, key) -> jax.Array:
        """x (*shape) in [0, 1] -> x_adv in the epsilon ball."""
        model = require_layered(logits_fn, "linbp")
        later = [layer.activation for layer in model.model.layers[self.layer:]]
        if "relu" not in later:
            raise ValueError(f"linbp linearizes ReLU's backward pass, and this model has no ReLU "
                             f"in layers {self.layer}..{model.depth - 1} (activations: {', '.join(later)})")

        def layer_fn(index, layer, params, h):
            if index < self.layer or layer.activation != "relu":
                return apply_layer(layer, params, h)
            pre = apply_layer(dataclasses.replace(layer, activation="identity"), params, h)
            return linear_backward_relu(pre)

        linear = lambda z: model.run(z, layer_fn=layer_fn)  # noqa: E731
        return self.iterate(lambda x_adv, _: _objective_gradient(linear, x_adv, label, target),
                            x, x, key)


@dataclasses.dataclass(frozen=True)
class SGM(IterativeBudget):
    """Skip Gradient Method on the residual layers (module docstring)."""

    gamma: float = 0.2  # Wu et al. 2020, ResNet (DenseNet: 0.5)

    def evals(self, logits_fn) -> int:
        return self.steps

    def perturb(self, logits_fn, x, label, target, key) -> jax.Array:
        """x (*shape) in [0, 1] -> x_adv in the epsilon ball."""
        model = require_layered(logits_fn, "sgm")
        kinds = [layer.kind for layer in model.model.layers]
        if "residual" not in kinds:
            raise ValueError(f"sgm needs a model with skip connections (residual layers); this "
                             f"model's layers ({', '.join(kinds)}) have none")

        def layer_fn(index, layer, params, h):
            if layer.kind == "residual":
                return apply_residual(layer, params, h, self.gamma)
            return apply_layer(layer, params, h)

        skip_favoured = lambda z: model.run(z, layer_fn=layer_fn)  # noqa: E731
        return self.iterate(lambda x_adv, _: _objective_gradient(skip_favoured, x_adv, label, target),
                            x, x, key)


@dataclasses.dataclass(frozen=True)
class Ghost(IterativeBudget):
    """Ghost networks by dropout erosion (module docstring)."""

    keep_probability: float = 0.994  # Li et al. 2020: erosion 0.006

    def evals(self, logits_fn) -> int:
        return self.steps

    def perturb(self, logits_fn, x, label, target, key) -> jax.Array:
        """x (*shape) in [0, 1] -> x_adv in the epsilon ball."""
        model = require_layered(logits_fn, "ghost")
        if model.depth < 2:
            raise ValueError("ghost erodes hidden layers, and this model has none")

        def gradient(x_adv, step_key):
            def layer_fn(index, layer, params, h):
                h = apply_layer(layer, params, h)
                if index == model.depth - 1:  # the logits are not eroded
                    return h
                keep = jax.random.bernoulli(jax.random.fold_in(step_key, index),
                                            self.keep_probability, h.shape)
                return h * keep / self.keep_probability

            ghost = lambda z: model.run(z, layer_fn=layer_fn)  # noqa: E731
            return _objective_gradient(ghost, x_adv, label, target)

        return self.iterate(gradient, x, x, key)
