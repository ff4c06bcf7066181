"""Tiny user-side models for tests/test_model_zoo.py, one per framework, named by `model._target_`
(zoo_modules.LinenMLP, ...) as a user's own file outside adv_jax would be: 784-hidden-10 ReLU MLPs."""

import flax.linen as nn
import jax
from flax import nnx


class LinenMLP(nn.Module):
    """flax.linen: batched (B, 28, 28, 1) -> (B, 10)."""

    hidden: int = 16

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


class NnxMLP(nnx.Module):
    """flax.nnx: built with rngs, batched (B, 28, 28, 1) -> (B, 10)."""

    def __init__(self, hidden: int = 16, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(784, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


try:  # the equinox extra; its tests skip without it
    import equinox as eqx
except ImportError:
    eqx = None

if eqx is not None:
    class EqxMLP(eqx.Module):
        """equinox: built with key, ONE image (28, 28, 1) -> (10,) (adv_jax vmaps it)."""

        mlp: eqx.nn.MLP

        def __init__(self, hidden: int = 16, *, key):
            self.mlp = eqx.nn.MLP(784, 10, hidden, depth=1, activation=jax.nn.relu, key=key)

        def __call__(self, x):
            return self.mlp(x.reshape(-1))
