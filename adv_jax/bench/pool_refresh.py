"""Cost of one adversarial-pool refresh per attack: seconds for `size` new entries against a
trained model at each pool layer, with their mean perturbation size and success rate.

Each timing is the median of `repeats` calls of the jitted refresh (compilation excluded), the
same `adversarial_training.refresh_pool` that training runs inside its epoch. The table:
adv_jax/reports/bench_pool_refresh.py.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax import adversarial_training as at
from adv_jax.attacks import is_adversarial, make_attack
from adv_jax.bench.timing import median_seconds
from adv_jax.config import compose
from adv_jax.data import load_splits
from adv_jax.rundir import load_run

ATTACKS = {  # row name -> (registered attack, params, target mode)
    "fgsm eps 0.1": ("fgsm", {"epsilon": 0.1}, "untargeted"),
    "fgsm_min": ("fgsm_min", {}, "untargeted"),
    "deepfool": ("deepfool", {}, "untargeted"),
    "pgd_min (L2)": ("pgd_min", {"norm": "l2", "steps": 20, "max_epsilon": 10.0, "search_steps": 8},
                     "untargeted"),
    "lbfgs (c_steps 5, max_evals 10)": ("lbfgs", {"c_steps": 5, "max_evals": 10}, "random"),
    "lbfgs (paper defaults)": ("lbfgs", {}, "random"),
}


def refresh_row(run, attack, target: str, layer: int, x, y, size: int, repeats: int) -> dict:
    """Seconds, success rate and mean RMS of the perturbation of refreshing `size` entries of the
    layer's pool."""
    model, params = run.model, run.params
    pool = at.Pool(jnp.zeros((size, *model.input_shape)), jnp.zeros(size, jnp.int32),
                   jnp.zeros((size, *at.layer_input_shape(model, layer))))
    slots = jnp.arange(size)
    keys = iter(jax.random.split(jax.random.key(0), repeats + 1))
    refresh = jax.jit(lambda p, key: at.refresh_pool(attack, model, params, layer, target, p, x, y,
                                                      slots, key))
    seconds, new = median_seconds(lambda: refresh(pool, next(keys)), repeats)
    points = at.pool_points(model, params, layer, new, slots)
    labels = new.y
    success = is_adversarial(model.apply(params, points, start=layer), labels, jnp.full_like(labels, -1))
    rms = jnp.sqrt(jnp.mean(new.delta.reshape(size, -1) ** 2, -1))
    return {"seconds": seconds, "success": float(np.mean(success)), "rms": float(rms.mean())}


def measure(run_dir: str | Path, size: int, repeats: int) -> dict:
    """{"rows": one per attack of ATTACKS and pool layer, "size", "repeats", "run_dir"}."""
    run = load_run(run_dir)
    train = load_splits(compose(["data=full"]).data)["train"]
    x, y = jnp.asarray(train.x), jnp.asarray(train.y)
    rows = []
    for label, (name, params, target) in ATTACKS.items():
        attack = make_attack(name, params)
        for layer in range(len(run.model.layers)):
            rows.append({"attack": label, "layer": layer,
                         **refresh_row(run, attack, target, layer, x, y, size, repeats)})
            print(rows[-1], flush=True)
    return {"rows": rows, "size": size, "repeats": repeats, "run_dir": str(run_dir)}
