"""The minimum-distortion bracket per example -> results/bracket.md (+ .json, figures/<its name>.png):
certified from below (CROWN; for L2 also the Lipschitz bracket), exact where computable and
attacked from above, on the minimum-norm benchmark's images.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bracket.py [--minnorm results/bench_minnorm.json]
        [--runs runs/models] [--config FILE] [--models NAME,...] [--out FILE] [--keep results/bracket.json]
    python scripts/bracket.py --measured results/bracket.json [--out FILE]   (report only)

Reads the attacked and exact distances from scripts/bench_minnorm.py's .json (run it first);
loads each model from <runs>/<name> (made there if missing). Measured by adv_jax/bench/bracket.py;
the markdown and figure: adv_jax/reports/bracket.py. Its .json records which command measured
each model: --measured reports it again, --keep reuses it for the models a call does not measure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adv_jax import devices
from adv_jax.bench import bracket as measure
from adv_jax.reports import bracket, provenance, settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minnorm", type=Path, default=Path("results/bench_minnorm.json"))
    parser.add_argument("--runs", type=Path, default=Path("runs/models"))
    parser.add_argument("--config", type=Path, default=None, help="default: conf/report/bracket.yaml")
    parser.add_argument("--out", type=Path, default=Path("results/bracket.md"))
    parser.add_argument("--models", default=None, help="comma-separated names of the config's models to run")
    parser.add_argument("--measured", type=Path, default=None, metavar="JSON",
                        help="measure nothing: report the measurements an earlier run saved (its --out .json)")
    parser.add_argument("--keep", type=Path, default=None, metavar="JSON",
                        help="measure the models asked for; take the others from an earlier run's .json")
    args = parser.parse_args(argv)
    devices.use_cpu_devices("auto")  # before JAX's first operation, as adv_jax.run does (the speed)
    conf = settings.load("bracket", args.config)
    conf["models"] = [m for m in conf["models"] if args.models is None or m in args.models.split(",")]
    command = provenance.command("scripts/bracket.py", sys.argv[1:] if argv is None else argv, provenance.MNIST_ENV)
    try:
        if args.measured is not None:
            measured, measured_by = bracket.saved(json.loads(args.measured.read_text()))
        else:
            kept = bracket.saved(json.loads(args.keep.read_text())) if args.keep is not None else ({}, {})
            measured, measured_by = bracket.kept_with(*kept, measure.from_minnorm(conf, args.minnorm, args.runs), command)
    except ValueError as e:
        parser.error(str(e))
    figure = args.out.parent / "figures" / f"{args.out.stem}.png"
    bracket.plot(measured, figure)
    text = bracket.report(conf, measured, command, figure.relative_to(args.out.parent).as_posix(), measured_by)
    args.out.with_suffix(".json").write_text(json.dumps(bracket.to_save(command, measured, measured_by)))
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
