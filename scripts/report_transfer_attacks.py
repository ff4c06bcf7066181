"""results/transfer_attacks.md from transfer-attacks run directories (transfer.json each).

    python scripts/report_transfer_attacks.py multirun/transfer_attacks --out results/transfer_attacks.md

Notes and the run command come from conf/report/transfer_attacks.yaml; every number from the
runs' transfer.json (adv_jax.jobs.transfer_attacks.recompute_cells recomputes those from the
saved adversarials and models). Figures go to results/figures/.
"""

from __future__ import annotations

from adv_jax.reports import settings
from adv_jax.reports.transfer_attacks import report


def main(argv: list[str] | None = None) -> None:
    settings.runs_report(__doc__, "scripts/report_transfer_attacks.py", "transfer_attacks",
                         lambda paths, command, conf, out: report(paths, command, conf["command"],
                                                                  settings.paragraphs(conf["notes"]),
                                                                  out.parent / "figures"), argv)


if __name__ == "__main__":
    main()
