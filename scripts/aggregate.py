"""Aggregates transfer studies: mean ± std per cell over seeds and a table comparing runs.

    python scripts/aggregate.py multirun/cross_training_set            # a Hydra sweep directory
    python scripts/aggregate.py RUN_DIR [RUN_DIR ...] --out results/cross_training_set.md

Runs that differ only in their seed are averaged together; the paper's value follows each cell in
brackets (--no-paper leaves it out). Title and notes come from conf/report/transfer.yaml (by the
studies' experiment name); every number is read from the runs' matrix.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adv_jax.reports import provenance
from adv_jax.reports.aggregate import results_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, help="markdown file, with a .json summary (default: print only)")
    parser.add_argument("--no-paper", action="store_true")
    args = parser.parse_args(argv)
    command = provenance.command("scripts/aggregate.py", sys.argv[1:] if argv is None else argv)
    text, summary = results_file(args.paths, command, with_paper=not args.no_paper)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(text)


if __name__ == "__main__":
    main()
