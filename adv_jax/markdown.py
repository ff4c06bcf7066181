"""The one markdown table writer: a study's matrix.md (adv_jax.transfer, jobs/study.py) and every
results file (adv_jax/reports, through reports.tables) write their tables with `markdown`."""

from __future__ import annotations

from typing import Sequence


def markdown(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table, one line per row, ending in a newline; cells are printed with str()."""
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"
