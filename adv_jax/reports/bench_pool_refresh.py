"""The cost of one adversarial-pool refresh per attack and pool layer, as markdown, from the
numbers of adv_jax/bench/pool_refresh.py (what each is)."""

from __future__ import annotations

from adv_jax.reports import provenance
from adv_jax.reports.tables import markdown

COLUMNS = ["attack", "layer", "seconds", "per 1000", "success", "mean RMS of the perturbation"]


def report(m: dict, command: str) -> str:
    """The table, one row per attack and pool layer, under a provenance header."""
    rows = [[r["attack"], r["layer"], f"{r['seconds']:.3f}", f"{1000 * r['seconds'] / m['size']:.3f}",
             f"{100 * r['success']:.1f}%", f"{r['rms']:.4f}"] for r in m["rows"]]
    lines = [*provenance.header("Cost of one pool refresh", command),
             f"Run `{m['run_dir']}`; {m['size']} refreshed entries; median of {m['repeats']} calls after a "
             "warm-up.", "", markdown(COLUMNS, rows)]
    return "\n".join(lines)
