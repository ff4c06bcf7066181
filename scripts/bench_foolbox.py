"""adv_jax's PGD, C&W and DeepFool against foolbox 3.3.4 on one FC100 model; prints a table.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_foolbox.py [--run-dir DIR] [--examples 1000]

Needs `pip install foolbox==3.3.4`; the first run trains FC100 into --run-dir (from the cache
when trained before). Settings: adv_jax/bench/foolbox_compare.py; columns:
adv_jax/reports/bench_foolbox.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adv_jax.bench import foolbox_compare
from adv_jax.reports import bench_foolbox


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/models/fc100_p1"))
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cw-steps", type=int, default=100)
    parser.add_argument("--cw-search", type=int, default=5)
    parser.add_argument("--cw-lr", type=float, default=0.05)
    args = parser.parse_args(argv)
    run = foolbox_compare.load_model(args.run_dir)
    rows = foolbox_compare.compare(run, args.examples, args.repeats, args.cw_steps, args.cw_search, args.cw_lr)
    print(f"FC100 from {args.run_dir}; {rows[0]['examples']} correctly classified test images; median of "
          f"{args.repeats} runs after a warm-up\n\n{bench_foolbox.table(rows)}")


if __name__ == "__main__":
    main()
