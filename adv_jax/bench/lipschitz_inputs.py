"""What results/lipschitz.md reads but the runs do not hold yet, made before the report by
scripts/report_lipschitz.py (adv_jax/reports/lipschitz.py only reads):

  run_missing   the sweeps of conf/report/lipschitz.yaml and a model row's fallback run, where
                not run yet: scripts/sweep.py in a child process (it skips finished jobs)
  lower_bounds  the Jacobian and pair-ratio lower bounds of a model row whose run did not log
                them (a run without an attack has no pairs): `lipschitz.measure` on L-BFGS pairs
                of the first `pair_images` test images, written where the report reads them
                (`reports.lipschitz.lower_bounds_file`, keyed by a hash of the parameters, so a
                second call does not redo them)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax

import adv_jax
from adv_jax import lipschitz
from adv_jax.attacks.generate import generate
from adv_jax.reports import lipschitz as report
from adv_jax.reports.runs import is_finished, read_json
from adv_jax.run_files import METRICS_FILE, PARAMS_FILE

log = logging.getLogger(__name__)


def run_script(script: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Runs a repository script in a child process (the sweeps are Hydra jobs), `env` added."""
    subprocess.run([sys.executable, script, *argv], check=True, env={**os.environ, **(env or {})})


def run_missing(conf: dict, runs: Path) -> None:
    """Every sweep whose directory does not exist, and every fallback of a model row whose own
    run under `runs` has not finished, run now."""
    for sweep in conf["sweeps"]:
        if not Path(sweep["dir"]).exists():
            env = {"OPENBLAS_NUM_THREADS": "1"} if sweep["one_thread"] else {}
            run_script("scripts/sweep.py", report.sweep_argv(sweep, conf["sweep_common"]), env)
    for name, fallback in conf.get("fallbacks", {}).items():
        if not is_finished(runs / name) and not is_finished(Path(fallback["run_dir"])):
            run_script("scripts/sweep.py", report.fallback_argv(fallback))


def measured_lower_bounds(run: adv_jax.Run, known: dict, measure: dict) -> dict[str, Any]:
    """The lower bounds of `report.LOWER_KEYS` missing from `known`, by `lipschitz.measure`, with
    the attack's mean distortion on the pairs."""
    test = adv_jax.load_splits(run.config.data, run.config.model.classes)["test"]
    key, pair_images = jax.random.key(run.config.seed), measure["pair_images"]
    adv = generate(adv_jax.compose(["attack=lbfgs"]).attack, run.logits_fn, test.x[:pair_images],
                   test.y[:pair_images], key=jax.random.fold_in(key, 1), progress=False).adversarials
    ok = adv.success
    bounds = lipschitz.measure(run.model, run.params, test.x, (adv.x[ok], adv.x_adv[ok]),
                               key=jax.random.fold_in(key, 2),
                               images=0 if report.LOWER_KEYS[0] in known else measure["jacobian_images"],
                               power_iters=measure["power_iters"])
    return {**{k: bounds.get(k, 0.0) for k in report.LOWER_KEYS}, **known,
            "source": "Jacobian from the run, pairs measured here" if known else "measured here",
            "attack/mean_distortion": float(adv.distortion()[ok].mean())}


def lower_bounds(conf: dict, runs: Path) -> None:
    """`measured_lower_bounds` of every finished model row (fallbacks applied) whose metrics
    lack them and whose file `report.lower_bounds_file` does not exist yet."""
    measure = conf["measure"]
    for name, run_dir, _ in report.model_rows(conf, runs)[0]:
        metrics = read_json(run_dir / METRICS_FILE) or {}
        known = {k: metrics[k] for k in report.LOWER_KEYS if k in metrics}
        if len(known) == len(report.LOWER_KEYS) or not (run_dir / PARAMS_FILE).exists():
            continue
        run = adv_jax.load_run(run_dir)
        path = report.lower_bounds_file(run_dir, run.config.model.name, measure)
        if not path.exists():
            log.info("measuring the lower bounds of %s", name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(measured_lower_bounds(run, known, measure)))
