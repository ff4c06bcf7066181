"""results/models.md: the paper's MNIST models (Tables 1 and 3), one run per row of
conf/report/models.yaml, every number read from the rows' metrics.json, except the noisy test
errors, read from what adv_jax/bench/models.py computed from the rows' params (`noisy`: one noise
draw, key 0). With `evaluate_on: validation` (conf/report/select_ae400.yaml) the same on held-out
training images, and the chosen row."""

from __future__ import annotations

from pathlib import Path

from adv_jax.reports import paper, provenance, settings
from adv_jax.reports.runs import is_finished, read_config, read_json
from adv_jax.reports.tables import markdown, percent

NOISE_STDDEV = 0.1  # adv_jax/bench/models.py's, named in the columns
COLUMNS = ["row", "model", "trained on", "error P1", "error P2", "error train", "error test",
           f"error test + noise {NOISE_STDDEV:g} (clipped / unclipped)", "paper train / test",
           "train time (s)", "optimizer steps"]
# A selection report (conf/report/select_ae400.yaml): held-out images only, never the test set.
VALIDATION_COLUMNS = ["row", "model", "trained on", "error train", "error validation",
                      f"error validation + noise {NOISE_STDDEV:g} (clipped / unclipped)",
                      "train time (s)", "optimizer steps"]


def paper_cell(row: dict) -> str:
    if row.get("paper") is None:
        return row.get("source", "-")
    train, test = paper.clean_errors(row["paper"])
    return f"{train:g} / {test:g} ({paper.table_name(row['paper'])})"


def table_row(row: dict, run_dir: Path, noisy: list[float] | None,
              split: str = "test") -> list[str]:
    """The row's cells: COLUMNS, or VALIDATION_COLUMNS for split "validation". noisy: its
    (clipped, unclipped) errors on that split (None: not measured, so none)."""
    cfg, m = read_config(run_dir), read_json(run_dir / "metrics.json")
    label = cfg["model.name"] + (f"({cfg['model.weight_decay']:g})" if cfg["model.name"] == "fc10" else "")
    noisy_cell = "-" if noisy is None else " / ".join(map(percent, noisy))
    cost = [f"{m['train/seconds']:.0f}", f"{m.get('train/steps', '-')} ({cfg['train.optimizer']})"]
    if split == "validation":
        return [row["name"], label, cfg["data.split"], percent(m["error/train"]),
                percent(m["error/validation"]), noisy_cell, *cost]
    return [row["name"], label, cfg["data.split"], percent(m["error/p1"]), percent(m["error/p2"]),
            percent(m["error/full"]), percent(m["error/test"]), noisy_cell, paper_cell(row), *cost]


def chosen_row(names: list[str], clean: list[float], noisy: list) -> list[str]:
    """A selection report's rule: the row with the smallest sum of its clean and clipped-noise
    validation errors, in percent rounded as shown (the first such row on a tie; a row without
    params, so without a noisy error, is never chosen)."""
    totals = [round(100 * c, 2) + (float("inf") if n is None else round(100 * n[0], 2))
              for c, n in zip(clean, noisy)]
    best = min(range(len(names)), key=totals.__getitem__)
    return [f"Chosen by the smallest sum of clean and clipped-noise validation errors: "
            f"**{names[best]}** ({totals[best]:.2f}).", ""]


def report(conf: dict, runs: Path, command: str, noisy: dict | None = None) -> str:
    """The markdown of every row of `conf` whose run under `runs` has finished; noisy:
    adv_jax/bench/models.py's `noisy` (None: not measured). conf `evaluate_on: validation`
    reports held-out errors only, and the chosen row."""
    split = conf.get("evaluate_on", "test")
    finished = [r for r in conf["rows"] if is_finished(runs / r["name"])]
    missing = [f"`{runs / r['name']}`" for r in conf["rows"] if r not in finished]
    errors = (noisy or {}).get("errors", {})
    rows = [table_row(r, runs / r["name"], errors.get(r["name"]), split) for r in finished]
    chosen = chosen_row([r["name"] for r in finished],
                        [read_json(runs / r["name"] / "metrics.json")["error/validation"] for r in finished],
                        [errors.get(r["name"]) for r in finished]) if split == "validation" and finished else []
    unmeasured = [r["name"] for r in finished if r["name"] not in errors]
    lines = [*provenance.header(conf["title"], command),
             f"Run directories: `{runs}/<row>`; every number below is read from their "
             f"`metrics.json`, except the noisy {split} errors, computed from their params.", "",
             *settings.paragraphs(conf["notes"][:1]),
             markdown(VALIDATION_COLUMNS if split == "validation" else COLUMNS, rows),
             *chosen,
             *settings.paragraphs(conf["notes"][1:])]
    if unmeasured:
        lines += [f"Noisy errors missing (no params, or not measured): {', '.join(unmeasured)}.", ""]
    if missing:
        lines += [f"Not finished, so left out: {', '.join(missing)}.", ""]
    return "\n".join(lines).rstrip() + "\n"
