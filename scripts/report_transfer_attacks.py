"""results/transfer_attacks.md from transfer-attacks run directories (transfer.json each).

    python scripts/report_transfer_attacks.py multirun/transfer_attacks --out results/transfer_attacks.md

Notes and the run command come from conf/report/transfer_attacks.yaml; every number from the
runs' transfer.json (adv_jax.jobs.transfer_attacks.recompute_cells recomputes those from the
saved adversarials and models). Figures go to results/figures/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adv_jax.reports import provenance, settings
from adv_jax.reports.transfer_attacks import report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=Path("results/transfer_attacks.md"))
    parser.add_argument("--config", type=Path, default=None, help="default: conf/report/transfer_attacks.yaml")
    args = parser.parse_args(argv)
    conf = settings.load("transfer_attacks", args.config)
    command = provenance.command("scripts/report_transfer_attacks.py", sys.argv[1:] if argv is None else argv)
    text = report(args.paths, command, conf["command"], settings.paragraphs(conf["notes"]),
                  args.out.parent / "figures")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
