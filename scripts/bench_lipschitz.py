"""Conv operator norm three ways (FFT, dense SVD, power iteration): writes results/bench_lipschitz.md.

    python scripts/bench_lipschitz.py [--reps 5] [--dense-max-dim 2048] [--power-iters 100]

The cases and how each is timed: adv_jax/bench/conv_norm.py (its numbers kept in --out's .json);
the markdown: adv_jax/reports/bench_lipschitz.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adv_jax.bench import conv_norm
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
    measured = conv_norm.run(args.reps, args.dense_max_dim, args.power_iters)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(measured, indent=1))
    args.out.write_text(bench_lipschitz.report(measured, command))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
