"""results/transfer_benchmark.md from transfer-benchmark run directories (benchmark.json each).

    python scripts/report_transfer_benchmark.py multirun/transfer_benchmark --out results/transfer_benchmark.md

Notes and the run command come from conf/report/transfer_benchmark.yaml; every number from the
runs' benchmark.json (adv_jax.jobs.transfer_benchmark.recompute_cells recomputes those from the
saved adversarials and models).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adv_jax.reports import provenance, settings
from adv_jax.reports.transfer_benchmark import report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=Path("results/transfer_benchmark.md"))
    parser.add_argument("--config", type=Path, default=None, help="default: conf/report/transfer_benchmark.yaml")
    args = parser.parse_args(argv)
    conf = settings.load("transfer_benchmark", args.config)
    command = provenance.command("scripts/report_transfer_benchmark.py", sys.argv[1:] if argv is None else argv)
    text = report(args.paths, command, conf["command"], settings.paragraphs(conf["notes"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
