"""One small logging interface with three backends: local files, W&B, and nothing.

Every run logs to `<run dir>/metrics.jsonl` (one JSON object per call); W&B is added unless
`wandb.mode=disabled`. Default W&B mode is offline: no account or network needed, runs land in
`<run dir>/wandb/` and upload later with `wandb sync`. `open_logger` always closes the W&B run,
marking it failed on an exception, so one failed job does not break a multirun.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from omegaconf import OmegaConf

log = logging.getLogger(__name__)
WANDB_MODES = ("offline", "online", "disabled")


class Logger:
    """The interface, and the null backend."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def summary(self, metrics: dict[str, Any]) -> None: ...
    def image(self, name: str, path: str | Path) -> None: ...
    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...
    def close(self, failed: bool = False) -> None: ...


class FileLogger(Logger):
    """Appends every call as one JSON line to `<run_dir>/metrics.jsonl`."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"time": time.time(), **record}, default=float) + "\n")

    def log(self, metrics, step=None):
        self._write({"kind": "log", "step": step, **metrics})

    def summary(self, metrics):
        self._write({"kind": "summary", **metrics})

    def image(self, name, path):
        self._write({"kind": "image", "name": name, "path": str(path)})

    def table(self, name, columns, rows):
        self._write({"kind": "table", "name": name, "columns": list(columns),
                     "rows": [list(r) for r in rows]})


class WandbLogger(Logger):
    def __init__(self, cfg: Any, run_dir: str | Path, name: str | None = None):
        import wandb

        if cfg.wandb.mode not in WANDB_MODES:
            raise ValueError(f"unknown wandb.mode {cfg.wandb.mode!r}; choose one of {list(WANDB_MODES)}")
        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.wandb.group,
            tags=list(cfg.wandb.tags), name=name, mode=cfg.wandb.mode, dir=str(run_dir),
            config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(init_timeout=cfg.wandb.init_timeout),
            reinit="finish_previous",
        )

    def log(self, metrics, step=None):
        self.run.log(metrics, step=step)

    def summary(self, metrics):
        self.run.summary.update(metrics)

    def image(self, name, path):
        self.run.log({name: self._wandb.Image(str(path))})

    def table(self, name, columns, rows):
        self.run.log({name: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def close(self, failed=False):
        self.run.finish(exit_code=1 if failed else 0)


class MultiLogger(Logger):
    def __init__(self, *backends: Logger):
        self.backends = backends

    def log(self, metrics, step=None):
        for b in self.backends:
            b.log(metrics, step)

    def summary(self, metrics):
        for b in self.backends:
            b.summary(metrics)

    def image(self, name, path):
        for b in self.backends:
            b.image(name, path)

    def table(self, name, columns, rows):
        for b in self.backends:
            b.table(name, columns, rows)

    def close(self, failed=False):
        for b in self.backends:
            try:
                b.close(failed)
            except Exception:  # closing must not hide the run's own error
                log.exception("closing %s failed", type(b).__name__)


@contextlib.contextmanager
def open_logger(cfg: Any, run_dir: str | Path, name: str | None = None) -> Iterator[Logger]:
    """File logging always, plus W&B unless cfg.wandb.mode is 'disabled'; always closed."""
    backends: list[Logger] = [FileLogger(run_dir)]
    if cfg.wandb.mode != "disabled":
        backends.append(WandbLogger(cfg, run_dir, name))
    logger = MultiLogger(*backends)
    failed = True
    try:
        yield logger
        failed = False
    finally:
        logger.close(failed)
