"""The table of adv_jax's attacks against foolbox 3.3.4 from the rows of
adv_jax/bench/foolbox_compare.py (its docstring: the pairs and what each number is)."""

from __future__ import annotations

from typing import Sequence

from adv_jax.reports.tables import markdown

COLUMNS = ["attack", "matched settings", "ours ex/s", "foolbox ex/s", "speedup", "ours success",
           "foolbox success", "ours RMS", "foolbox RMS"]


def cells(row: dict) -> list[str]:
    """One pair's row of COLUMNS: examples per second, the speedup, success rates, RMS."""
    ours, theirs, n = row["ours"], row["foolbox"], row["examples"]
    return [row["attack"], row["settings"], f"{n / ours['seconds']:,.0f}", f"{n / theirs['seconds']:,.0f}",
            f"{theirs['seconds'] / ours['seconds']:.1f}x", f"{ours['success']:.3f}", f"{theirs['success']:.3f}",
            f"{ours['rms']:.4f}", f"{theirs['rms']:.4f}"]


def table(rows: Sequence[dict]) -> str:
    """The markdown table of every pair."""
    return markdown(COLUMNS, [cells(r) for r in rows])
