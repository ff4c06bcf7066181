"""results/models.md: the paper's MNIST models (Tables 1 and 3), one run per row of
conf/report/models.yaml, every number read from the rows' metrics.json, except the noisy test
errors, computed from the rows' params (one noise draw, key 0)."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np

import adv_jax
from adv_jax import checkpoint, transfer
from adv_jax.data import load_splits
from adv_jax.models import predict
from adv_jax.reports import paper, provenance, settings
from adv_jax.reports.runs import is_finished, read_config, read_json
from adv_jax.reports.tables import markdown, percent

log = logging.getLogger(__name__)
NOISE_STDDEV = 0.1
COLUMNS = ["row", "model", "trained on", "error P1", "error P2", "error train", "error test",
           f"error test + noise {NOISE_STDDEV:g} (clipped / unclipped)", "paper train / test",
           "train time (s)", "optimizer steps"]


def run_row(row: dict, common: list[str], runs: Path, cache: bool = True) -> dict:
    """The row's metrics: read back from <runs>/<name> when finished, else trained there now."""
    run_dir = runs / row["name"]
    if is_finished(run_dir):
        return read_json(run_dir / "metrics.json")
    overrides = [*row["overrides"], *common, *([] if cache else ["train.cache=false"])]
    return adv_jax.run(adv_jax.compose(overrides), run_dir)


def paper_cell(row: dict) -> str:
    if row.get("paper") is None:
        return row.get("source", "-")
    train, test = paper.clean_errors(row["paper"])
    return f"{train:g} / {test:g} ({paper.table_name(row['paper'])})"


def noisy_test_errors(run_dir: Path, stddev: float) -> tuple[float, float]:
    """The run's test error (fraction) on x + N(0, stddev^2) per pixel, clipped to [0, 1] and
    unclipped, from one draw (key 0, `transfer.gaussian_noise`)."""
    run = adv_jax.load_run(run_dir)
    test = load_splits(run.config.data, run.config.model.classes)["test"]
    noisy = transfer.gaussian_noise(test.x, stddev, key=jax.random.key(0), clip=False)
    return tuple(float(np.mean(np.asarray(predict(run.model, run.params, images)) != test.y))
                 for images in (np.clip(noisy, 0.0, 1.0), noisy))


def table_row(row: dict, run_dir: Path) -> list[str]:
    cfg, m = read_config(run_dir), read_json(run_dir / "metrics.json")
    label = cfg["model.name"] + (f"({cfg['model.weight_decay']:g})" if cfg["model.name"] == "fc10" else "")
    return [row["name"], label, cfg["data.split"], percent(m["error/p1"]), percent(m["error/p2"]),
            percent(m["error/full"]), percent(m["error/test"]),
            " / ".join(map(percent, noisy_test_errors(run_dir, NOISE_STDDEV)))
            if (run_dir / checkpoint.PARAMS_FILE).exists() else "-", paper_cell(row),
            f"{m['train/seconds']:.0f}", f"{m.get('train/steps', '-')} ({cfg['train.optimizer']})"]


def report(conf: dict, runs: Path, command: str) -> str:
    """The markdown of every row of `conf` whose run under `runs` has finished."""
    finished = [r for r in conf["rows"] if is_finished(runs / r["name"])]
    missing = [f"`{runs / r['name']}`" for r in conf["rows"] if r not in finished]
    lines = [*provenance.header(conf["title"], command),
             f"Run directories: `{runs}/<row>`; every number below is read from their "
             "`metrics.json`, except the noisy test errors, computed from their params.", "",
             *settings.paragraphs(conf["notes"][:1]),
             markdown(COLUMNS, [table_row(r, runs / r["name"]) for r in finished]),
             *settings.paragraphs(conf["notes"][1:])]
    if missing:
        lines += [f"Not finished, so left out: {', '.join(missing)}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def build(conf: dict, runs: Path, only: list[str] | None, cache: bool) -> None:
    """Runs (or reads back) the rows named in `only` (default: all)."""
    for row in conf["rows"]:
        if only is None or row["name"] in only:
            log.info("== %s", row["name"])
            run_row(row, conf["common"], runs, cache)
