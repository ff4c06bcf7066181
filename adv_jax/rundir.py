"""Run directories: the one lifecycle every job goes through, and reading a finished run back.

`RunDirectory(path, cfg).execute(work)`:
  1. a run that finished here with the same result-affecting config (config.result_config) is
     skipped and its metrics returned; one that finished with ANOTHER config is refused
     (RunDirectoryInUse names the keys that differ), so no result is ever overwritten;
  2. an unfinished attempt's records (metrics.jsonl, wandb/) are cleared;
  3. run.log attached, config.yaml written, the logger (files + W&B) opened;
  4. `work(run_dir, logger) -> metrics`, then metrics.json written last, atomically: its presence
     means the run finished, which is what lets an interrupted multirun resume;
  5. the logger closed and the log file detached, whatever happened.

`load_run(path)` reads a finished run: .config, .metrics, .model, .params, .logits_fn.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import jax
from omegaconf import DictConfig, OmegaConf

from adv_jax import checkpoint
from adv_jax.config import as_config, result_config
from adv_jax.logger import Logger, open_logger
from adv_jax.models import Model, Params, build_model, logits_fn

log = logging.getLogger(__name__)
CONFIG_FILE, METRICS_FILE = "config.yaml", "metrics.json"
ATTEMPT_RECORDS = ("metrics.jsonl", "wandb")  # cleared when an unfinished run is redone
RUN_FILES = (CONFIG_FILE, METRICS_FILE, checkpoint.PARAMS_FILE, "adversarials.npz", "lipschitz.json")


class RunDirectoryInUse(RuntimeError):
    """The directory holds a finished run with another config."""


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def read_metrics(path: Path) -> dict[str, Any]:
    """metrics.json of a run; an unreadable one is a clear error naming the file."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e}); delete it to redo that run") from None


@dataclasses.dataclass
class RunDirectory:
    """A run directory and the config of the run meant to happen in it."""

    path: Path
    cfg: DictConfig

    @classmethod
    def for_run(cls, cfg: DictConfig, path: str | Path | None, name: str) -> "RunDirectory":
        """`path`, or runs/<time>_<name> when None; created."""
        path = Path(path or Path("runs") / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{name}")
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, cfg)

    def finished(self) -> dict[str, Any] | None:
        """The metrics of a run that already finished here with this config, else None."""
        metrics, config = self.path / METRICS_FILE, self.path / CONFIG_FILE
        if not (metrics.exists() and config.exists()):
            return None
        done = result_config(as_config(OmegaConf.load(config)))
        differ = _differences(done, result_config(self.cfg))
        if differ:
            raise RunDirectoryInUse(
                f"{self.path} holds a finished run with another config (differs in: "
                f"{', '.join(differ[:8])}); choose another directory, or delete "
                f"{metrics} to replace that run")
        log.info("%s already finished with this config; skipping (delete metrics.json to redo)", self.path)
        return read_metrics(metrics)

    def start(self) -> None:
        """Clears an unfinished attempt's records and writes config.yaml."""
        for name in ATTEMPT_RECORDS:
            stale = self.path / name
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        checkpoint.write_atomic(self.path / CONFIG_FILE, OmegaConf.to_yaml(self.cfg, resolve=True))

    def write_json(self, name: str, content: Any) -> Path:
        path = self.path / name
        checkpoint.write_atomic(path, json.dumps(content, indent=1, sort_keys=True, default=float))
        return path

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        self.write_json(METRICS_FILE, metrics)
        return metrics

    def execute(self, work: Callable[["RunDirectory", Logger], dict[str, Any]]) -> dict[str, Any]:
        """Steps 1-5 of the module docstring; returns the run's metrics."""
        if (done := self.finished()) is not None:
            return done
        handler = attach_log_file(self.path)
        try:
            self.start()
            with open_logger(self.cfg, self.path, name=self.path.name, artifact_files=RUN_FILES) as logger:
                metrics = work(self, logger)
                logger.summary(metrics)
                return self.finish(metrics)
        finally:
            if handler:
                logging.getLogger().removeHandler(handler)
                handler.close()


def attach_log_file(run_dir: Path) -> logging.Handler | None:
    """Logs to <run_dir>/run.log unless Hydra already does."""
    root = logging.getLogger()
    target = (run_dir / "run.log").resolve()
    if any(getattr(h, "baseFilename", None) == str(target) for h in root.handlers):
        return None
    handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run read back from its directory."""

    path: Path
    config: DictConfig
    metrics: dict[str, Any]
    model: Model
    params: Params

    @property
    def logits_fn(self) -> Callable[[jax.Array], jax.Array]:
        """Jittable: float32 images (B, 28, 28, 1) in [0, 1] -> logits (B, num_classes)."""
        return logits_fn(self.model, self.params)


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    cfg = as_config(OmegaConf.load(run_dir / CONFIG_FILE))
    model = build_model(cfg.model)
    params = checkpoint.load_params(run_dir / checkpoint.PARAMS_FILE, model)
    metrics_path = run_dir / METRICS_FILE
    metrics = read_metrics(metrics_path) if metrics_path.exists() else {}
    return Run(run_dir, cfg, metrics, model, params)
