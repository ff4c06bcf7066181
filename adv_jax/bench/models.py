"""The runs of conf/report/models.yaml (and select_ae400.yaml) and what results/models.md shows
that no run stores: `build` runs (or reads back) each row's run directory <runs>/<row>, and
`noisy` computes each finished row's error on its images plus Gaussian noise from its params
(one draw, key 0). scripts/report_models.py keeps these in --out's .json; adv_jax/reports/models.py
writes the markdown.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np

import adv_jax
from adv_jax import transfer
from adv_jax.data import load_splits
from adv_jax.models import predict
from adv_jax.reports.models import NOISE_STDDEV
from adv_jax.reports.runs import is_finished, read_json
from adv_jax.run_files import PARAMS_FILE

log = logging.getLogger(__name__)


def run_row(row: dict, common: list[str], runs: Path, cache: bool = True) -> dict:
    """The row's metrics: read back from <runs>/<name> when finished, else trained there now."""
    run_dir = runs / row["name"]
    if is_finished(run_dir):
        return read_json(run_dir / "metrics.json")
    overrides = [*row["overrides"], *common, *([] if cache else ["train.cache=false"])]
    return adv_jax.run(adv_jax.compose(overrides), run_dir)


def build(conf: dict, runs: Path, only: list[str] | None, cache: bool) -> None:
    """Runs (or reads back) the rows named in `only` (default: all)."""
    for row in conf["rows"]:
        if only is None or row["name"] in only:
            log.info("== %s", row["name"])
            run_row(row, conf["common"], runs, cache)


def noisy_errors(run_dir: Path, stddev: float, split: str = "test") -> tuple[float, float]:
    """The run's error (fraction) on `split`'s x + N(0, stddev^2) per pixel, clipped to [0, 1] and
    unclipped, from one draw (key 0, `transfer.gaussian_noise`)."""
    run = adv_jax.load_run(run_dir)
    data = load_splits(run.config.data, run.config.model.classes)[split]
    noisy = transfer.gaussian_noise(data.x, stddev, key=jax.random.key(0), clip=False)
    return tuple(float(np.mean(np.asarray(predict(run.model, run.params, images)) != data.y))
                 for images in (np.clip(noisy, 0.0, 1.0), noisy))


def noisy(conf: dict, runs: Path, stddev: float = NOISE_STDDEV) -> dict:
    """{"stddev", "split" (conf's evaluate_on, default test), "errors": {row: [clipped, unclipped]}}
    for every finished row with params."""
    split = conf.get("evaluate_on", "test")
    dirs = {r["name"]: runs / r["name"] for r in conf["rows"]}
    errors = {name: list(noisy_errors(d, stddev, split)) for name, d in dirs.items()
              if is_finished(d) and (d / PARAMS_FILE).exists()}
    return {"stddev": stddev, "split": split, "errors": errors}
