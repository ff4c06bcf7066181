"""Regenerates docs/runs.md's reference tables (config groups, metrics keys) from the source:
conf/*/*.yaml and adv_jax/reports/reference.py's METRICS.

    python scripts/gen_docs.py            # rewrites the blocks between the page's markers
    python scripts/gen_docs.py --check    # exits 1 when the committed page differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adv_jax.reports import reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the page is stale")
    parser.add_argument("--page", type=Path, default=reference.PAGE, help="default: docs/runs.md")
    args = parser.parse_args(argv)
    message = reference.update_page(args.page, check=args.check)
    if message:
        print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
