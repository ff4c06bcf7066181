"""Minimum-norm attacks (adv_jax's and foolbox 3.3.4's DDN and L2 FMN) on FC10(1e-4), FC100 (P1),
FC200 and the conv net in L2, a ReLU 20-20 net in L-inf: success, distortion, speed, AttackBench
optimality, and the ratio to exact minima (FC10, the ReLU net) -> results/bench_minnorm.md.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_minnorm.py [--examples 500]
        [--runs runs/models] [--run fc100_p1=DIR ...] [--config FILE] [--models NAME,...] [--out FILE]
    python scripts/bench_minnorm.py --merge PART.json ... [--out FILE]   (parts measured apart)

Models: conf/report/bench_minnorm.yaml (run directories <runs>/<name>, or --run NAME=DIR; a run
not finished there is trained first). foolbox rows need `pip install -e '.[bench]'`. Measured by
adv_jax/bench/minnorm.py (its numbers kept in --out's .json); the markdown:
adv_jax/reports/bench_minnorm.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adv_jax import devices
from adv_jax.bench import minnorm
from adv_jax.reports import bench_minnorm, provenance, settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/models"))
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                        help="the run directory of the model NAME of the config")
    parser.add_argument("--examples", type=int, default=None,
                        help="for every model (default: the config's, 500 or the model's own)")
    parser.add_argument("--config", type=Path, default=None, help="default: conf/report/bench_minnorm.yaml")
    parser.add_argument("--models", default=None, help="comma-separated names of the config's models to run")
    parser.add_argument("--out", type=Path, default=Path("results/bench_minnorm.md"))
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="measure nothing: report the measurements these runs' .json files saved")
    args = parser.parse_args(argv)
    devices.use_cpu_devices("auto")  # before JAX's first operation, as adv_jax.run does (the speed)
    conf = settings.load("bench_minnorm", args.config)
    if args.examples is not None:
        conf["examples"] = args.examples
        conf["models"] = [{k: v for k, v in m.items() if k != "examples"} for m in conf["models"]]
    if args.models is not None:
        conf = minnorm.only_models(conf, args.models.split(","))
    run_dirs = {name: Path(path) for name, path in (item.split("=", 1) for item in args.run)}
    command = provenance.command("scripts/bench_minnorm.py", sys.argv[1:] if argv is None else argv,
                                 provenance.MNIST_ENV)
    if args.merge:
        measured = minnorm.merge(conf, [json.loads(path.read_text()) for path in args.merge])
    else:
        measured = {**minnorm.run(conf, args.runs, run_dirs), "commands": [command]}
    text = bench_minnorm.report(conf, measured, command)
    settings.write_report(args.out, text, measured)


if __name__ == "__main__":
    main()
