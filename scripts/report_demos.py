"""results/demos.md and results/figures/demo_*.png from demonstration run directories.

    python scripts/report_demos.py runs/<date>/<time>_demo_iris runs/<date>/<time>_demo_linear ...

Each run directory is made by `python scripts/demo.py demo=NAME`; the sections' order and titles
are in conf/report/demos.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adv_jax.reports import demos, provenance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results/demos.md"))
    args = parser.parse_args(argv)
    command = provenance.command("scripts/report_demos.py", sys.argv[1:] if argv is None else argv,
                                 provenance.MNIST_ENV)
    args.out.write_text(demos.report(args.runs, args.out, command))
    print(args.out)


if __name__ == "__main__":
    main()
