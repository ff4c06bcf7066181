"""Compares Lipschitz bounds across runs: a markdown table and a plot against the varied setting.

    python scripts/compare_lipschitz.py RUN_OR_SWEEP_DIR [...] [--x model.weight_decay]
        [--out table.md] [--plot figure.png] [--title TEXT]

Each argument is a run directory or a directory holding finished runs (a Hydra sweep). The
columns are described in adv_jax/reports/lipschitz_compare.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adv_jax.reports.lipschitz_compare import compare_text


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run directories or sweep directories")
    parser.add_argument("--x", default=None, help="config key for the plot's x axis")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG plot here")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    text = compare_text(args.paths, args.x, args.plot, args.title)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
