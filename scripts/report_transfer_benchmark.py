"""results/transfer_benchmark.md from transfer-benchmark run directories (benchmark.json each).

    python scripts/report_transfer_benchmark.py multirun/transfer_benchmark --out results/transfer_benchmark.md

Notes and the run command come from conf/report/transfer_benchmark.yaml; every number from the
runs' benchmark.json (adv_jax.jobs.transfer_benchmark.recompute_cells recomputes those from the
saved adversarials and models).
"""

from __future__ import annotations

from adv_jax.reports import settings
from adv_jax.reports.transfer_benchmark import report


def main(argv: list[str] | None = None) -> None:
    settings.runs_report(__doc__, "scripts/report_transfer_benchmark.py", "transfer_benchmark",
                         lambda paths, command, conf, out: report(paths, command, conf["command"],
                                                                  settings.paragraphs(conf["notes"])), argv)


if __name__ == "__main__":
    main()
