"""How the cost grows: attack, training and bracket seconds against size (results/scaling.md).

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_scaling.py [--repeats 3]

Runs adv_jax/bench/scaling.py, stores its numbers in --json, then writes --out and the figure
(figures/scaling.png beside --out) from the JSON. --report-only rewrites both without measuring.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adv_jax.reports import provenance, scaling


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = lambda flag, default: parser.add_argument(flag, type=int, nargs="+", default=default)  # noqa: E731
    sizes("--examples", [1000, 2500, 5000, 10000, 20000, 60000])
    sizes("--widths", [50, 100, 200, 400, 800])
    sizes("--train-sizes", [2500, 5000, 10000, 20000, 40000, 60000])
    sizes("--bracket-examples", [1000, 2500, 5000, 10000])
    parser.add_argument("--width-examples", type=int, default=2000)
    parser.add_argument("--width-epochs", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-devices", default="auto", help="JAX CPU devices, as the config key cpu_devices")
    parser.add_argument("--json", type=Path, default=Path("results/scaling.json"))
    parser.add_argument("--out", type=Path, default=Path("results/scaling.md"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.report_only:
        from adv_jax.bench import scaling as bench

        data = bench.run(args.examples, args.widths, args.train_sizes, args.bracket_examples, args.repeats,
                         args.width_examples, args.width_epochs, args.train_epochs, args.cpu_devices)
        data.update(machine=provenance.machine(), date=provenance.today(), command=provenance.command(
            "scripts/bench_scaling.py", sys.argv[1:] if argv is None else argv, provenance.MNIST_ENV))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1))
    data = json.loads(args.json.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(scaling.report(data))
    scaling.plot(data, args.out.parent / scaling.FIGURE)
    print(f"wrote {args.out}, {args.out.parent / scaling.FIGURE} and {args.json}")


if __name__ == "__main__":
    main()
