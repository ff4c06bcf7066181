"""Layer lists of the architecture families beyond conv blocks and dense layers: `model.arch`
resnet, vit and mixer (conf/model/resnet_small.yaml, vit_small.yaml, mixer_small.yaml), and
module (any flax.linen / flax.nnx / equinox module by `model._target_`). Each is made of the one
layer enumeration (adv_jax/models/layers.py); `adv_jax.models.build_model` adds the hidden dense
layers (`model.hidden`) and the output layer after them.

  resnet  conv 3x3 (stages[0], ReLU), 2x2 max-pool; per stage a stride-2 conv 3x3 (all but the
          first stage), then `blocks` residual blocks relu(x + conv3x3(relu(conv3x3(x)))); global
          average pooling
  vit     patch embedding (conv, kernel = stride = patch), tokens + position embedding; `blocks`
          pre-norm transformer layers x + attn(LN(x)), x + MLP(LN(x)); LN; mean over tokens
  mixer   patch embedding, tokens; `blocks` mixer layers x + token-MLP(LN(x)),
          x + channel-MLP(LN(x)); LN; mean over tokens
The MLPs' hidden units are ReLU (slope in [0, 1]: the Lipschitz table's factor stays exact).
"""

from __future__ import annotations

from typing import Any

from adv_jax.models.external import adapter_for
from adv_jax.models.layers import Layer

INPUT_SIDE = 28  # MNIST images are (28, 28, 1)


def _residual(*branch: Layer, activation: str = "identity") -> Layer:
    return Layer("residual", activation=activation, branch=tuple(branch))


def resnet_layers(cfg: Any) -> list[Layer]:
    """conv stem, stages of residual blocks, global average pooling (see the module docstring)."""
    if not cfg.stages:
        raise ValueError("model.arch=resnet needs model.stages, e.g. [16, 32]")
    layers = [Layer("conv", features=cfg.stages[0], kernel=3, padding="SAME", activation="relu"),
              Layer("maxpool", kernel=2, stride=2)]
    for i, width in enumerate(cfg.stages):
        if i:
            layers.append(Layer("conv", features=width, kernel=3, stride=2, padding="SAME", activation="relu"))
        for _ in range(cfg.blocks):
            layers.append(_residual(
                Layer("conv", features=width, kernel=3, padding="SAME", activation="relu"),
                Layer("conv", features=width, kernel=3, padding="SAME"), activation="relu"))
    return layers + [Layer("global_avgpool")]


def _patch_embedding(cfg: Any) -> tuple[list[Layer], int]:
    """(patch conv and tokens layers, number of tokens T)."""
    if cfg.patch < 1 or INPUT_SIDE % cfg.patch:
        raise ValueError(f"model.patch={cfg.patch} must divide the {INPUT_SIDE}-pixel side")
    side = INPUT_SIDE // cfg.patch
    return [Layer("conv", features=cfg.width, kernel=cfg.patch, stride=cfg.patch),
            Layer("tokens")], side * side


def _channel_mlp(cfg: Any) -> Layer:
    return _residual(Layer("layernorm"), Layer("linear", features=cfg.mlp_width, activation="relu"),
                     Layer("linear", features=cfg.width))


def vit_layers(cfg: Any) -> list[Layer]:
    """A pre-norm vision transformer on patch tokens (see the module docstring)."""
    layers, _ = _patch_embedding(cfg)
    for _ in range(cfg.blocks):
        layers += [_residual(Layer("layernorm"), Layer("self_attention", features=cfg.width, heads=cfg.heads)),
                   _channel_mlp(cfg)]
    return layers + [Layer("layernorm"), Layer("global_avgpool")]


def mixer_layers(cfg: Any) -> list[Layer]:
    """An MLP-Mixer on patch tokens (see the module docstring)."""
    layers, count = _patch_embedding(cfg)
    for _ in range(cfg.blocks):
        layers += [_residual(Layer("layernorm"),
                             Layer("token_linear", features=cfg.token_mlp_width, activation="relu"),
                             Layer("token_linear", features=count)),
                   _channel_mlp(cfg)]
    return layers + [Layer("layernorm"), Layer("global_avgpool")]


def module_layers(cfg: Any) -> list[Layer]:
    """One layer of kind "module": the class `cfg._target_` built with `cfg.kwargs`."""
    if not cfg.get("_target_"):
        raise ValueError("model.arch=module needs model._target_=package.module.Class")
    adapter = adapter_for(cfg["_target_"], cfg.kwargs)
    return [Layer("module", features=adapter.num_classes, module=adapter)]


ARCHITECTURES = {"resnet": resnet_layers, "vit": vit_layers, "mixer": mixer_layers, "module": module_layers}
