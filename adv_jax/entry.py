"""What the command-line entry points (scripts/sweep.py, scripts/demo.py) share: the start-up
checks before Hydra makes a run directory, known errors as one line instead of a traceback (with
nothing left behind), and the line a run ends with.

    preflight_or_exit(argv, config_name)   before hydra.main: exits with one line on a known error
    run_job(cfg, run_dir)                  inside hydra.main: the job, timed, its closing line
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from adv_jax import jobs
from adv_jax.config import check_command_line
from adv_jax.run_files import RESULT_FILES

log = logging.getLogger(__name__)
_given_run_dir: dict[str, bool] = {}  # hydra.run.dir from the command line -> existed before


def fail(error: BaseException) -> NoReturn:
    """Exit 1 with `Error: <message>` on stderr; HYDRA_FULL_ERROR=1 re-raises for the traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"Error: {error}", file=sys.stderr)
    raise SystemExit(1)


def preflight_or_exit(args: list[str], config_name: str) -> None:
    """Did-you-mean for unknown keys, then `jobs.preflight`: every known error ends the command
    here, before Hydra creates a run directory or W&B a run."""
    check_command_line(args)
    for arg in args:
        if arg.startswith("hydra.run.dir="):
            _given_run_dir[arg.split("=", 1)[1]] = Path(arg.split("=", 1)[1]).exists()
    try:
        jobs.preflight(args, config_name)
    except jobs.known_errors() as e:
        fail(e)


def _created_here(run_dir: Path) -> bool:
    """Hydra made run_dir for this command: not a directory named on the command line that
    existed before it."""
    return not any(existed and Path(given).resolve() == run_dir.resolve()
                   for given, existed in _given_run_dir.items())


def discard_if_empty(run_dir: str | Path, error: BaseException) -> None:
    """Removes a run directory that this command created and that holds no result (none of
    run_files.RESULT_FILES: a directory with any of them is never removed after a failure)."""
    from adv_jax.rundir import RunDirectoryInUse

    run_dir = Path(run_dir)
    if isinstance(error, RunDirectoryInUse) or not run_dir.is_dir() or not _created_here(run_dir):
        return
    if not any((run_dir / name).exists() for name in RESULT_FILES):
        logging.shutdown()  # closes Hydra's run.log inside it
        shutil.rmtree(run_dir, ignore_errors=True)


def run_job(cfg: Any, run_dir: str | Path) -> dict[str, Any]:
    """The job `cfg` describes, in run_dir; ends with one line saying how long it took and, for a
    single run, its error rates. A known error: one line, exit 1, an empty run_dir removed."""
    start = time.perf_counter()
    try:
        metrics = jobs.run(cfg, run_dir)
    except jobs.known_errors() as e:
        discard_if_empty(run_dir, e)
        fail(e)
    log.info("finished in %.0f s: %s", time.perf_counter() - start, run_dir)
    if jobs.job_name(cfg) == "single":
        from adv_jax.jobs.single import summary_line

        log.info(summary_line(cfg, metrics))
    return metrics
