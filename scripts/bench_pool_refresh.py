"""Cost of one pool refresh per attack: seconds for `--size` adversarials against a trained model,
at each pool layer, with their mean perturbation size and success rate.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_pool_refresh.py RUN_DIR [--size 1000]

RUN_DIR: any run directory of an FC100-style sigmoid model (e.g. a models/<key>/ of an
adversarial_training experiment). Each timing is the median of `--repeats` calls of the jitted
refresh (compilation excluded), the same `refresh_pool` that training runs inside its epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax import adversarial_training as at
from adv_jax.attacks import is_adversarial, make_attack
from adv_jax.config import compose
from adv_jax.data import load_splits
from adv_jax.runner import load_run

ATTACKS = {  # name -> (registered attack, params, target mode)
    "fgsm eps 0.1": ("fgsm", {"epsilon": 0.1}, "untargeted"),
    "fgsm_min": ("fgsm_min", {}, "untargeted"),
    "deepfool": ("deepfool", {}, "untargeted"),
    "pgd_min (L2)": ("pgd_min", {"norm": "l2", "steps": 20, "max_epsilon": 10.0, "search_steps": 8},
                     "untargeted"),
    "lbfgs (c_steps 5, max_evals 10)": ("lbfgs", {"c_steps": 5, "max_evals": 10}, "random"),
    "lbfgs (paper defaults)": ("lbfgs", {}, "random"),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    run = load_run(args.run_dir)
    model, params = run.model, run.params
    train = load_splits(compose(["data=full"]).data)["train"]
    x, y = jnp.asarray(train.x), jnp.asarray(train.y)
    print(f"run {args.run_dir}; {args.size} refreshed entries; median of {args.repeats}; "
          f"jax {jax.__version__}, {jax.devices()[0].platform}\n")
    print("| attack | layer | seconds | per 1000 | success | mean RMS of the perturbation |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, (name, params_, target) in ATTACKS.items():
        attack = make_attack(name, params_)
        for k in range(len(model.layers)):
            shape = at.layer_input_shape(model, k)
            pool = at.Pool(jnp.zeros(args.size, jnp.int32), jnp.zeros((args.size, *shape)))
            slots = jnp.arange(args.size)
            refresh = jax.jit(lambda p, key, k=k: at.refresh_pool(attack, model, params, k, target,
                                                                   p, x, y, slots, key))
            jax.block_until_ready(refresh(pool, jax.random.key(0)))
            times = []
            for r in range(args.repeats):
                start = time.perf_counter()
                new = jax.block_until_ready(refresh(pool, jax.random.key(r + 1)))
                times.append(time.perf_counter() - start)
            points = at.pool_points(model, params, k, new, x, slots)
            labels = y[new.index]
            success = is_adversarial(model.apply(params, points, start=k), labels,
                                     jnp.full_like(labels, -1))
            rms = jnp.sqrt(jnp.mean(new.delta.reshape(args.size, -1) ** 2, -1))
            seconds = statistics.median(times)
            print(f"| {label} | {k} | {seconds:.3f} | {1000 * seconds / args.size:.3f} | "
                  f"{100 * float(np.mean(success)):.1f}% | {float(rms.mean()):.4f} |")


if __name__ == "__main__":
    main()
