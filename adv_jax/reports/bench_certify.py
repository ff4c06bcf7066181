"""results/bench_certify.md from results/bench_certify.json (written by adv_jax/bench/certify.py,
once per code version: "before" and "after" the local bracket lost its eigendecompositions)."""

from __future__ import annotations

from typing import Any

from adv_jax.reports import provenance
from adv_jax.reports.tables import markdown

STAGES = ("attack", "product", "eclipse_fast", "jacobian_lower_bound", "bracket_global", "bracket_local")
PER_EXAMPLE = ("attack", "bracket_global", "bracket_local")  # the rest is per model, not per example
VERSIONS = ("before", "after")
CONDITIONS = ("idle", "loaded")


def _cell(entry: dict[str, Any] | None, stage: str) -> str:
    """Seconds per 1000 examples (or per model), and the multiple of the attack's seconds."""
    if entry is None:
        return "-"
    seconds, attack = entry["seconds"][stage], entry["seconds"]["attack"]
    scale = 1000 / entry["examples"] if stage in PER_EXAMPLE else 1.0
    ratio = "" if stage == "attack" else f" ({seconds / attack:.2f}x)"
    return f"{seconds * scale:.2f}{ratio}"


def stage_table(data: dict[str, Any], model: str) -> list[str]:
    columns = [(v, c) for v in VERSIONS for c in CONDITIONS if v in data]
    rows = [[stage, *(_cell(data[v]["results"][c].get(model), stage) for v, c in columns)] for stage in STAGES]
    return markdown(["stage", *(f"{v}, {c}" for v, c in columns)], rows).splitlines()


def command_table(data: dict[str, Any]) -> list[str]:
    rows = []
    for v in VERSIONS:
        for c in CONDITIONS:
            entry = data.get(v, {}).get("results", {}).get(c, {}).get("main_command_fc100")
            if entry:
                budget = 3 * entry["attack"] + 20
                rows.append([f"{v}, {c}", f"{entry['wall']:.1f}", f"{entry['attack']:.1f}",
                             f"{entry['wall'] / budget:.2f}"])
    return markdown(["version, condition", "wall s", "attack s", "wall / (3 x attack + 20 s)"], rows).splitlines()


def _fifth(after: dict[str, Any]) -> str:
    """The idle local-bracket multiple of the last model, and a fifth of it (2000 of 10000)."""
    model = after["models"][-1]
    seconds = after["results"]["idle"][model]["seconds"]
    ratio = seconds["bracket_local"] / seconds["attack"]
    return f"{model.upper()} idle: {ratio:.2f}x becomes {ratio / 5:.2f}x"


def report(data: dict[str, Any]) -> str:
    after = data["after"]
    out = ["# Certified bounds and the bracket against the attack: seconds per 1000 examples", "",
           provenance.machine_line(after["machine"]), "",
           f"Made by: `{after['command']}` (after) and the same command on the code before (before: "
           f"`{data['before']['command']}` in a checkout of commit {data['before']['commit']} with this "
           "bench's three files copied in: adv_jax/bench/certify.py, adv_jax/reports/bench_certify.py, "
           "scripts/bench_certify.py)." if "before" in data
           else f"Made by: `{after['command']}`.", "",
           "Seconds per 1000 examples for the attack and the brackets, per model for the other bounds "
           "(the Jacobian lower bound on its 1000 images), each the median of "
           f"{after['repeats']} calls after a warm-up; in brackets, the multiple of the attack's seconds. "
           f"Loaded: {after['busy']} CPU-bound processes beside the bench (load average "
           + ", ".join(f"{data[v]['results']['loaded']['load_average']:.1f} ({v})" for v in VERSIONS if v in data)
           + "). The bracket runs on the attack's successful examples, all of them here; a run gives "
           "local constants to the first `lipschitz.local_examples` (default 2000) only, the global "
           "bound standing for the rest: on all 10000 test images the local bracket then costs a fifth "
           f"of the multiple shown ({_fifth(after)}).", ""]
    for model in after["models"]:
        sizes = ", ".join(f"{data[v]['examples']} ({v})" for v in VERSIONS if v in data)
        out += [f"## {model.upper()} (P1), L-BFGS attack on the first test images: {sizes}", "",
                *stage_table(data, model), ""]
    out += ["## The main command end to end", "",
            "`python scripts/sweep.py model=fc100 attack=lbfgs` on all 10000 test images, FC100 from the "
            "model cache: median wall seconds of the whole command (start-up, evaluation, attack, bounds, "
            "files) against the attack's own seconds; the target is at most 3x the attack plus 20 s.", "",
            *command_table(data), ""]
    return "\n".join(out)
