"""Any flax.linen, flax.nnx or equinox module as one adv_jax layer (kind "module").

`model._target_=my_models.SmallCNN model.kwargs={features:32}` names a module class by its import
path (a file outside adv_jax works through PYTHONPATH); `ModuleAdapter` builds it with the kwargs
and gives the pure pair adv_jax needs:

  init(key) -> params   a FLAT dict {"Dense_0/kernel": array, ...}: the module's own parameter
                        pytree flattened by path, so checkpoints, ensembles and optimizers see
                        plain arrays
  apply(params, x)      images (B, 28, 28, 1) -> logits (B, K)

Conventions per framework (docs/models.md has a worked example):
  flax.linen  `cls(**kwargs)`; batched `__call__(x)`; variables must be only "params" (no
              batch_stats: there is no train/eval mode here)
  flax.nnx    `cls(**kwargs, rngs=nnx.Rngs(key))`; batched `__call__(x)`; only nnx.Param state
  equinox     `cls(**kwargs, key=key)`; `__call__` takes ONE image (28, 28, 1), adv_jax vmaps it;
              the parameters are its inexact (float) arrays, the rest stays static
The frameworks are imported only when such a module is used; a missing one is one line naming
its extra (adv_jax/extras.py).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from typing import Any

import jax
import jax.numpy as jnp

from adv_jax import extras

Array = jax.Array
# -> the adv_jax.extras key of what it needs (flax is a dependency of adv_jax itself)
FRAMEWORKS = {"flax.linen": None, "flax.nnx": None, "equinox": "equinox"}


def resolve_target(target: str) -> type:
    """'package.module.Class' -> the class; errors name the path and PYTHONPATH."""
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ValueError(f"model._target_={target!r}: give module.Class, e.g. my_models.SmallCNN")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"model._target_={target!r}: cannot import {module_name!r} ({e}); "
                         "is its directory on PYTHONPATH?") from e
    if not hasattr(module, attr):
        raise ValueError(f"model._target_={target!r}: {module_name} has no {attr!r}")
    return getattr(module, attr)


def framework_of(cls: type) -> str:
    """'flax.linen', 'flax.nnx' or 'equinox', from the class's bases (no framework imported)."""
    for base in getattr(cls, "__mro__", ()):
        for name in FRAMEWORKS:
            if base.__module__ == name or base.__module__.startswith(name + "."):
                return name
    raise ValueError(f"{cls!r} is not a flax.linen, flax.nnx or equinox Module")


def _is_param(x: Any) -> bool:
    """A float array or its abstract stand-in (equinox: what is trained; ints stay static)."""
    return hasattr(x, "shape") and hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def _path_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


@dataclasses.dataclass(frozen=True)
class ModuleAdapter:
    """A user's module as adv_jax's pure init/apply. Frozen and hashable (by target, kwargs and
    input shape), so a Model holding it stays a static argument of jax.jit."""

    target: str
    kwargs_json: str = "{}"  # the module's keyword arguments, as canonical JSON (hashable)
    input_shape: tuple[int, ...] = (28, 28, 1)

    @functools.cached_property
    def framework(self) -> str:
        name = framework_of(resolve_target(self.target))
        if FRAMEWORKS[name]:
            extras.require(FRAMEWORKS[name])
        return name

    def _build(self, key: Array):
        """The module with fresh parameters from key, as its framework makes it."""
        cls, kwargs = resolve_target(self.target), json.loads(self.kwargs_json)
        if self.framework == "flax.nnx":
            from flax import nnx
            return cls(**kwargs, rngs=nnx.Rngs(key))
        if self.framework == "equinox":
            return cls(**kwargs, key=key)
        return cls(**kwargs)

    def _native_init(self, key: Array) -> tuple[Any, Any]:
        """(the module's parameter pytree, what else apply needs: static, closed over)."""
        module = self._build(key)
        if self.framework == "flax.linen":
            variables = module.init(key, jnp.zeros((1, *self.input_shape), jnp.float32))
            if set(variables) != {"params"}:
                raise ValueError(f"{self.target}: variables {sorted(variables)}; only 'params' is "
                                 "supported (no batch_stats: adv_jax has no train/eval mode)")
            return variables["params"], module
        if self.framework == "flax.nnx":
            from flax import nnx
            graphdef, params, rest = nnx.split(module, nnx.Param, ...)
            if jax.tree.leaves(rest):
                raise ValueError(f"{self.target}: holds state other than nnx.Param (batch "
                                 "statistics, RNG streams); only parameters are supported")
            return params, (graphdef, rest)
        import equinox as eqx
        return eqx.partition(module, _is_param)

    @functools.cached_property
    def _structure(self) -> tuple[tuple[str, ...], Any, Any]:
        """(parameter names, their treedef, the static part), from an abstract init."""
        holder = {}

        def params_only(key):
            params, holder["static"] = self._native_init(key)
            return params

        abstract = jax.eval_shape(params_only, jax.random.key(0))
        with_path, treedef = jax.tree_util.tree_flatten_with_path(abstract)
        return tuple(_path_name(p) for p, _ in with_path), treedef, holder["static"]

    def init(self, key: Array) -> dict[str, Array]:
        """Fresh parameters as a flat dict {path: array}."""
        names, _, _ = self._structure
        leaves = jax.tree.leaves(self._native_init(key)[0])
        return dict(zip(names, leaves))

    def native(self, params: dict[str, Array]) -> Any:
        """The flat dict back as the module's own parameter pytree."""
        names, treedef, _ = self._structure
        return jax.tree_util.tree_unflatten(treedef, [params[n] for n in names])

    def flat(self, native: Any) -> dict[str, Array]:
        """The module's own parameter pytree (e.g. a linen `variables["params"]`) as adv_jax params."""
        names, treedef, _ = self._structure
        leaves, got = jax.tree_util.tree_flatten(native)
        if got != treedef:
            raise ValueError(f"{self.target}: these parameters do not have the module's structure")
        return dict(zip(names, leaves))

    def apply(self, params: dict[str, Array], x: Array) -> Array:
        """images (B, *input_shape) -> logits (B, K)."""
        native, static = self.native(params), self._structure[2]
        if self.framework == "flax.linen":
            return static.apply({"params": native}, x)
        if self.framework == "flax.nnx":
            from flax import nnx
            graphdef, rest = static
            return nnx.merge(graphdef, native, rest)(x)
        import equinox as eqx
        return jax.vmap(eqx.combine(native, static))(x)

    @functools.cached_property
    def num_classes(self) -> int:
        """K, from the logits' shape on one abstract image."""
        abstract = jax.eval_shape(self.init, jax.random.key(0))
        out = jax.eval_shape(self.apply, abstract, jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32))
        if out.ndim != 2:
            raise ValueError(f"{self.target}: maps (1, {self.input_shape}) to {out.shape}, not (1, classes)")
        return int(out.shape[-1])


def decay_sum(params: dict[str, Array]) -> Array:
    """sum(w^2) over the module's weight arrays (ndim >= 2: kernels, embeddings), biases and
    norm scales (ndim <= 1) excluded, as the registry's models leave biases undecayed."""
    total = jnp.zeros((), jnp.float32)
    for w in params.values():
        if w.ndim >= 2:
            total += jnp.sum(w ** 2)
    return total


def adapter_for(target: str, kwargs: Any, input_shape: tuple[int, ...] = (28, 28, 1)) -> ModuleAdapter:
    """The adapter for a config's `_target_` and `kwargs` (a dict, or an OmegaConf node)."""
    if hasattr(kwargs, "_metadata"):  # an OmegaConf node: its plain container
        from omegaconf import OmegaConf
        kwargs = OmegaConf.to_container(kwargs, resolve=True)
    adapter = ModuleAdapter(target, json.dumps(dict(kwargs or {}), sort_keys=True), tuple(input_shape))
    adapter.framework  # noqa: B018 -- fail now (bad target, missing extra), not inside a trace
    return adapter
