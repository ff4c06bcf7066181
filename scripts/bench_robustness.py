"""Robust accuracy under AutoAttack (and PGD with restarts as a sanity check) of plain,
pool-trained and PGD-trained models at L-inf and L2 budgets, over seeds -> results/robustness.md.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_robustness.py
        [--runs runs/robustness] [--config FILE] [--examples N] [--seeds 0,1,2] [--models NAME,...]
        [--out FILE]

Models, budgets and settings: conf/report/robustness.yaml (run directories <runs>/<name>_seed<S>;
a run not finished there is trained first, or loaded from the model cache; each model's
measurements are saved there as they finish, so a stopped run resumes). Measured by
adv_jax/bench/robustness.py (its numbers kept in --out's .json); the markdown:
adv_jax/reports/robustness.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adv_jax.bench import robustness
from adv_jax.reports import provenance, settings
from adv_jax.reports import robustness as report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/robustness"))
    parser.add_argument("--config", type=Path, default=None, help="default: conf/report/robustness.yaml")
    parser.add_argument("--examples", type=int, default=None, help="test images per model (default: the config's)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's)")
    parser.add_argument("--models", default=None, help="comma-separated names of the config's models to run")
    parser.add_argument("--out", type=Path, default=Path("results/robustness.md"))
    args = parser.parse_args(argv)
    conf = settings.load("robustness", args.config)
    if args.examples is not None:
        conf["examples"] = args.examples
    if args.seeds is not None:
        conf["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.models is not None:
        conf = robustness.only_models(conf, args.models.split(","))
    robustness.check(conf)
    command = provenance.command("scripts/bench_robustness.py", sys.argv[1:] if argv is None else argv,
                                 provenance.MNIST_ENV)
    measured = robustness.run(conf, args.runs)
    text = report.report(conf, measured, command)
    settings.write_report(args.out, text, measured)


if __name__ == "__main__":
    main()
