"""Scale benchmarks -> results/bench.md, results/bench.json and results/figures/bench_*.png.

Sections (adv_jax/bench/harness.py): training (K FC100s together against one after another),
training_long (K = 8 at the default epochs), attacks (L-BFGS and PGD throughput), sweeps (two
jobs sharing the device), experiment (the cross-training-set study end to end), matmul (why
members are not vmapped on a CPU). --size picks the harness's sizes (cpu; gpu and tiny are
scripts/gpu_check.sh's); the flags below change one of them. --only picks the sections to
measure; the others keep their numbers (`--only none` redraws the report from results/bench.json).

    PYTHONPATH=. ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from adv_jax import devices
from adv_jax.bench import harness

LISTS = ("ks", "counts", "widths")  # comma-separated integers; each flag sets the Size field of its name
NUMBERS = ("epochs", "repeats", "width_examples", "experiment_examples", "long_epochs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(harness.SIZES), default="cpu")
    for name in LISTS:
        parser.add_argument(f"--{name}", help="comma-separated; default: the size's")
    for name in NUMBERS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help="default: the size's")
    parser.add_argument("--experiment-seeds", help="comma-separated; default: the size's")
    parser.add_argument("--only", default=None, help="sections to run (comma-separated; default: the size's); "
                        "the others keep their numbers")
    parser.add_argument("--out", type=Path, default=Path("results/bench.md"))
    parser.add_argument("--cpu-devices", default=None,
                        help="JAX CPU devices (adv_jax config cpu_devices): auto = one per core")
    args = parser.parse_args()
    changes = {k: tuple(int(v) for v in getattr(args, k).split(",")) for k in LISTS if getattr(args, k)}
    changes |= {k: getattr(args, k) for k in NUMBERS if getattr(args, k) is not None}
    changes |= {k: getattr(args, k) for k in ("experiment_seeds", "cpu_devices") if getattr(args, k)}
    size = dataclasses.replace(harness.SIZES[args.size], **changes)
    devices.use_cpu_devices(size.cpu_devices)  # before JAX's first operation, as adv_jax.run does
    only = set(args.only.split(",")) if args.only else set(size.sections)
    harness.update(args.out, only, args.size, size, " ".join(sys.argv[1:]))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
