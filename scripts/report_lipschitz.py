"""Writes results/lipschitz.md: per-layer Lipschitz bounds (paper Table 5 layout) of the paper's
models, their empirical lower bounds, and comparisons over the sweeps of conf/report/lipschitz.yaml.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/report_lipschitz.py [--run-missing]

Reads the run directories of scripts/report_models.py (runs/models/<row>) and the sweeps' run
directories; --run-missing first runs what has not run yet (sweep.py skips finished jobs). Before
the report (adv_jax/reports/lipschitz.py), adv_jax/bench/lipschitz_inputs.py measures the lower
bounds a model row's run did not log.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from adv_jax.bench import lipschitz_inputs
from adv_jax.reports import lipschitz, provenance, settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/models"))
    parser.add_argument("--out", type=Path, default=Path("results/lipschitz.md"))
    parser.add_argument("--config", type=Path, default=None, help="default: conf/report/lipschitz.yaml")
    parser.add_argument("--run-missing", action="store_true", help="run sweeps not run yet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = provenance.command("scripts/report_lipschitz.py", sys.argv[1:] if argv is None else argv,
                                 provenance.MNIST_ENV)
    conf = settings.load("lipschitz", args.config)
    if args.run_missing:
        lipschitz_inputs.run_missing(conf, args.runs)
    lipschitz_inputs.lower_bounds(conf, args.runs)
    text = lipschitz.report(conf, args.runs, args.out.parent / "figures", command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
