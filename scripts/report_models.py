"""Trains the paper's MNIST models (conf/report/models.yaml) and writes results/models.md.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/report_models.py [--runs runs/models] [--only fc100_p1 ...]

A row whose run directory <runs>/<row> already holds metrics.json is read back instead of run
again, so an interrupted report resumes. Models come from the shared cache when trained before;
--no-cache retrains (for fresh timings). The runs and the noisy errors (kept in --out's .json):
adv_jax/bench/models.py; the markdown: adv_jax/reports/models.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from adv_jax.bench import models as model_runs
from adv_jax.reports import models, provenance, settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/models"))
    parser.add_argument("--out", type=Path, default=Path("results/models.md"))
    parser.add_argument("--config", type=Path, default=None, help="default: conf/report/models.yaml")
    parser.add_argument("--only", nargs="*", default=None, help="rows to run (default: all)")
    parser.add_argument("--no-cache", action="store_true", help="retrain even if cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    conf = settings.load("models", args.config)
    model_runs.build(conf, args.runs, args.only, cache=not args.no_cache)
    noisy = model_runs.noisy(conf, args.runs)
    command = provenance.command("scripts/report_models.py", sys.argv[1:] if argv is None else argv,
                                 provenance.MNIST_ENV)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(noisy, indent=1))
    args.out.write_text(models.report(conf, args.runs, command, noisy))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
