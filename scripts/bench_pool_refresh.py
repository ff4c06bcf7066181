"""Cost of one pool refresh per attack and pool layer (adv_jax/bench/pool_refresh.py measures,
adv_jax/reports/bench_pool_refresh.py writes the table).

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_pool_refresh.py RUN_DIR [--size 1000] [--out FILE]

RUN_DIR: any run directory of an FC100-style sigmoid model (e.g. a models/<key>/ of an
adversarial_training experiment).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adv_jax.bench import pool_refresh
from adv_jax.reports import bench_pool_refresh, provenance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: print only)")
    args = parser.parse_args(argv)
    command = provenance.command("scripts/bench_pool_refresh.py", sys.argv[1:] if argv is None else argv,
                                 provenance.MNIST_ENV)
    text = bench_pool_refresh.report(pool_refresh.measure(args.run_dir, args.size, args.repeats), command)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
