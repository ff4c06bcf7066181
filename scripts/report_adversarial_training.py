"""Writes results/adversarial_training_regularizers.md from finished `experiment=adversarial_training` runs.

    python scripts/sweep.py -m experiment=adversarial_training seed=0,1,2 hydra.sweep.dir=multirun/adversarial_training
    python scripts/report_adversarial_training.py multirun/adversarial_training [--out results/adversarial_training_regularizers.md]

Title, notes and the paper's comparisons: conf/report/adversarial_training.yaml; the tables are
described in adv_jax/reports/adversarial_training.py. The models' per-layer bounds, which the
study does not store, come from adv_jax/bench/layer_bounds.py (kept in --out's .json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adv_jax.bench import layer_bounds
from adv_jax.reports import adversarial_training, provenance, settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="experiment run or sweep directories")
    parser.add_argument("--out", type=Path, help="markdown file (default: print only)")
    parser.add_argument("--config", type=Path, default=None,
                        help="default: conf/report/adversarial_training.yaml")
    args = parser.parse_args(argv)
    command = provenance.command("scripts/report_adversarial_training.py",
                                 sys.argv[1:] if argv is None else argv)
    bounds = layer_bounds.of_studies(args.paths)
    text = adversarial_training.report(args.paths, command, settings.load("adversarial_training", args.config),
                                       bounds)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(bounds, indent=1))
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
