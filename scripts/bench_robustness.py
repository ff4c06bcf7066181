"""Robust accuracy under AutoAttack (and PGD with restarts as a sanity check) of plain,
pool-trained and PGD-trained models at L-inf and L2 budgets, over seeds -> results/robustness.md.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_robustness.py
        [--runs runs/robustness] [--config FILE] [--examples N] [--seeds 0,1,2] [--models NAME,...]
        [--out FILE] [--keep results/robustness.json] [--stop-after MINUTES]

Models, budgets and settings: conf/report/robustness.yaml; run directories <runs>/<name>_seed<S>
(trained there, or loaded from the model cache; each model's measurements saved as they finish:
a stopped run resumes). --stop-after and --keep run it in parts (docs/attacks.md). Measured by
adv_jax/bench/robustness.py; the markdown: adv_jax/reports/robustness.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from adv_jax import devices
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
    parser.add_argument("--keep", type=Path, default=None, metavar="JSON",
                        help="an earlier run's .json: its measurements of the same models are not made again")
    parser.add_argument("--stop-after", type=float, default=None, metavar="MINUTES",
                        help="start no new model and seed after this many minutes (the rest: a later run with --keep)")
    args = parser.parse_args(argv)
    devices.use_cpu_devices("auto")  # before JAX's first operation, as adv_jax.run does (the speed)
    try:
        conf = robustness.configured(settings.load("robustness", args.config), args.examples, args.seeds, args.models)
    except ValueError as e:
        parser.error(str(e))
    command = provenance.command("scripts/bench_robustness.py", sys.argv[1:] if argv is None else argv,
                                 provenance.MNIST_ENV)
    kept = json.loads(args.keep.read_text()) if args.keep is not None else None
    deadline = time.monotonic() + 60 * args.stop_after if args.stop_after is not None else float("inf")
    measured = robustness.run(conf, args.runs, command, kept, deadline)
    text = report.report(conf, measured, command)
    settings.write_report(args.out, text, measured)


if __name__ == "__main__":
    main()
