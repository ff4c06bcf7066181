"""Conv operator norm three ways (FFT, dense SVD, power iteration): writes results/bench_lipschitz.md.

    python scripts/bench_lipschitz.py [--reps 5] [--dense-max-dim 2048] [--power-iters 100]

The cases and how each is timed: adv_jax/reports/bench_lipschitz.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adv_jax.reports import bench_lipschitz, provenance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dense-max-dim", type=int, default=2048)
    parser.add_argument("--power-iters", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("results/bench_lipschitz.md"))
    args = parser.parse_args(argv)
    if args.reps < 3:
        parser.error("--reps must be at least 3")
    command = provenance.command("scripts/bench_lipschitz.py", sys.argv[1:] if argv is None else argv)
    text = bench_lipschitz.run(args.reps, args.dense_max_dim, args.power_iters, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
