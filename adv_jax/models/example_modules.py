"""A flax.linen module as `model._target_` expects one (conf/model/custom.yaml's default): built
with keyword arguments only, batched `__call__` from images (B, 28, 28, 1) to logits (B, 10),
variables "params" only. A template for a module of one's own (docs/models.md)."""

from __future__ import annotations

import flax.linen as nn
import jax


class LinenCNN(nn.Module):
    """conv 3x3 (features, ReLU), 2x2 average pooling, dense 10."""

    features: int = 16
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(self.features, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))
