"""Times LBFGSAttack on FC100-100-10 (trained on P1, from the runner's cache) over the MNIST
test set with random targets, and a per-example scipy L-BFGS-B run on a few examples.

    python scripts/bench_lbfgs_quick.py [--num 10000] [--scipy 20] [--chunk 500] [field=value ...]

e.g. `python scripts/bench_lbfgs_quick.py c_steps=10 max_evals=80`. The first run trains FC100
(about 2-3 minutes) and caches it in ~/.cache/adv_jax.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adv_jax
from adv_jax.attacks.common import attack_batch, is_adversarial, rms_distortion
from adv_jax.attacks.lbfgs import LBFGSAttack
from adv_jax.attacks.targets import choose_targets
from adv_jax.attacks.scipy_reference import scipy_lbfgs_attack

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ADV_JAX_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist"))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10000, help="test images to attack")
    parser.add_argument("--scipy", type=int, default=20, help="examples for the scipy reference")
    parser.add_argument("--chunk", type=int, default=LBFGSAttack.chunk_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("fields", nargs="*", help="LBFGSAttack overrides, field=value")
    return parser.parse_args()


def build_attack(fields: list[str]) -> LBFGSAttack:
    types = {f.name: f.type for f in dataclasses.fields(LBFGSAttack)}
    cast = {"float": float, "int": int, "str": str, "bool": lambda v: v.lower() in ("1", "true")}
    kwargs = {}
    for item in fields:
        name, value = item.split("=", 1)
        kwargs[name] = cast[types[name]](value)
    return LBFGSAttack(**kwargs)


def main():
    args = parse_args()
    attack = build_attack(args.fields)
    cfg = adv_jax.compose(["model=fc100", "attack=none", "wandb.mode=disabled"])
    with tempfile.TemporaryDirectory() as run_dir:
        adv_jax.run(cfg, run_dir)  # trains once, then loads from the cache
        trained = adv_jax.load_run(run_dir)
    model, params = trained.model, trained.params
    test = adv_jax.load_splits(trained.config.data)["test"]
    x, label = jnp.asarray(test.x[: args.num]), jnp.asarray(test.y[: args.num])
    target_key, attack_key = jax.random.split(jax.random.key(args.seed))
    target = choose_targets("random", model.apply(params, x), label, key=target_key)
    print(f"{attack}\nchunk_size={args.chunk}, {len(x)} test images, random targets")

    start, cpu = time.perf_counter(), time.process_time()  # includes compilation
    x_adv, _ = attack_batch(attack, trained.logits_fn, x, label, target, key=attack_key,
                            chunk_size=args.chunk)
    x_adv.block_until_ready()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    success = np.asarray(is_adversarial(model.apply(params, x_adv), label, target))
    dist = np.asarray(rms_distortion(x, x_adv))
    print(f"jax:   {seconds:.1f} s wall, {cpu:.1f} s CPU over all threads "
          f"({len(x) / seconds:.0f} examples/s), success {success.mean():.2%}, "
          f"distortion of successes mean {dist[success].mean():.4f} median {np.median(dist[success]):.4f}, "
          f"in [0,1]: {bool((x_adv >= 0).all() & (x_adv <= 1).all())}")

    if args.scipy:
        logits_fn = lambda image: model.apply(params, image[None])[0]  # noqa: E731
        n = min(args.scipy, len(x))
        start, cpu_start, ref = time.perf_counter(), time.process_time(), []
        for i in range(n):
            x_ref, _ = scipy_lbfgs_attack(logits_fn, x[i], int(label[i]), int(target[i]),
                                          c_init=attack.c_init, c_steps=attack.c_steps,
                                          loss=attack.loss, confidence=attack.confidence)
            ref.append(float(rms_distortion(x[i], jnp.asarray(x_ref))))
        per_example = (time.perf_counter() - start) / n
        cpu_per_example = (time.process_time() - cpu_start) / n
        ref = np.array(ref)
        print(f"scipy: {per_example:.2f} s wall, {cpu_per_example:.2f} s CPU per example (x"
              f"{per_example * len(x) / seconds:.0f} the jax wall time per example, x"
              f"{cpu_per_example * len(x) / cpu:.0f} its CPU time); first {n}: scipy mean "
              f"{ref.mean():.4f}, jax mean {dist[:n].mean():.4f}, ratio {dist[:n].mean() / ref.mean():.4f}")


if __name__ == "__main__":
    main()
