"""Scale benchmarks -> results/bench.md, results/bench.json and results/figures/bench_*.png.

Sections (adv_jax/reports/bench_runs.py): training (K FC100s together against one after
another), training_long (K = 8 at the default epochs), attacks (L-BFGS and PGD throughput),
experiment (the cross-training-set study end to end), matmul (why members are not vmapped on a
CPU). --only picks the sections to measure; the others keep their numbers (`--only none`
redraws the report from results/bench.json).

    PYTHONPATH=. ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adv_jax import devices
from adv_jax.reports import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="1,4,8,16")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--counts", default="1000,2000,5000,10000")
    parser.add_argument("--widths", default="50,100,200,400,800")
    parser.add_argument("--width-examples", type=int, default=2000)
    parser.add_argument("--experiment-seeds", default="0,1,2")
    parser.add_argument("--experiment-examples", type=int, default=2000)
    parser.add_argument("--long-epochs", type=int, default=40, help="epochs of the K=8 long run")
    parser.add_argument("--only", default="training,attacks,experiment,training_long,matmul",
                        help="sections to run (comma-separated); the others keep their numbers")
    parser.add_argument("--out", type=Path, default=Path("results/bench.md"))
    parser.add_argument("--cpu-devices", default="auto",
                        help="JAX CPU devices (adv_jax config cpu_devices): auto = one per core")
    args = parser.parse_args()
    devices.use_cpu_devices(args.cpu_devices)  # before JAX's first operation, as adv_jax.run does
    bench.update(args.out, set(args.only.split(",")), vars(args), " ".join(sys.argv[1:]))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
