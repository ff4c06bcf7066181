"""One small logging interface with three backends: local files, W&B, and nothing.

Every run logs to `<run dir>/metrics.jsonl` (one JSON object per call); W&B is added unless
`wandb.mode=disabled`. Default W&B mode is WANDB_MODE's, else offline: no account or network
needed, runs land in `<run dir>/wandb/` and upload later with `wandb sync`. `open_logger` always
closes the W&B run, marking it failed on an exception, so one failed job does not break a
multirun. A multirun job's W&B run is grouped by its sweep and named by its overrides; online
mode first checks the server is reachable. docs/wandb.md has the conventions.

No result is lost to a logger: each backend opens on its first call (a run that fails before any
work leaves no W&B run), and a backend's failure (opening, logging, closing) or a figure's is one
warning, kept in `Logger.failures`, never the run's end (`Guarded`, `Logger.figure`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from omegaconf import OmegaConf

log = logging.getLogger(__name__)
WANDB_MODES = ("offline", "online", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"
REACH_TIMEOUT_S = 3.0  # the online check's TCP connect; a reachable server answers in well under 1 s


def one_line(error: BaseException) -> str:
    """`Type: the message's first line`, at most 300 characters."""
    lines = str(error).strip().splitlines()
    return (f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__)[:300]


class Logger:
    """The interface, and the null backend."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def summary(self, metrics: dict[str, Any]) -> None: ...
    def image(self, name: str, path: str | Path) -> None: ...
    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...
    def close(self, failed: bool = False) -> None: ...

    @property
    def failures(self) -> dict[str, str]:
        """What failed (a backend, "figure <name>") -> why, in one line; the run went on."""
        return {}

    def record_failure(self, what: str, error: BaseException) -> None:
        log.warning("%s failed; the run goes on without it: %s", what, one_line(error))

    def figure(self, name: str, draw: Callable[[], str | Path]) -> str | Path | None:
        """draw() -> a figure's path, logged as an image. A figure that fails to draw is a
        warning (recorded in `failures`), never the run's end: None."""
        try:
            path = draw()
        except Exception as e:
            self.record_failure(f"figure {name}", e)
            return None
        self.image(name, path)
        return path


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


def wandb_mode(cfg: Any) -> str:
    """cfg.wandb.mode, checked: it may come from the environment (WANDB_MODE)."""
    mode = cfg.wandb.mode
    if mode not in WANDB_MODES:
        source = " (from the environment variable WANDB_MODE)" if os.environ.get("WANDB_MODE") == mode else ""
        raise ValueError(f"wandb.mode={mode!r}{source} is not allowed: one of {list(WANDB_MODES)}")
    return mode


def check_reachable(base_url: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Fails within `timeout` when the W&B server (or the proxy to it) takes no TCP connection:
    wandb.init would otherwise wait out init_timeout and then only advise a longer one."""
    url = urllib.parse.urlparse(base_url)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urllib.parse.urlparse(proxy)
        host, port = proxy_url.hostname or "", proxy_url.port or 80
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(
            f"W&B online: cannot reach {host}:{port} ({e}); use wandb=offline (sync later with "
            f"`wandb sync`) or wandb=disabled") from None


def hydra_job_identity(run_dir: str | Path) -> tuple[str | None, str | None]:
    """(the sweep directory's name, the job's overrides) when run_dir is the output directory of
    a Hydra multirun job, else (None, None): a sweep's W&B runs are grouped by sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN or Path(hydra.runtime.output_dir).resolve() != Path(run_dir).resolve():
        return None, None
    return Path(hydra.sweep.dir).name, hydra.job.override_dirname or None


class WandbLogger(Logger):
    """A W&B run in <run_dir>/wandb/; on a successful close, `artifact_files` of run_dir (those
    that exist) are logged as one artifact of type "run" when wandb.log_artifacts says so."""

    def __init__(self, cfg: Any, run_dir: str | Path, name: str | None = None,
                 artifact_files: Sequence[str] = ()):
        import wandb

        mode = wandb_mode(cfg)
        sweep, job_overrides = hydra_job_identity(run_dir)
        self._wandb = wandb
        self.run_dir = Path(run_dir)
        self.artifact_files = tuple(artifact_files) if _log_artifacts(cfg, mode) else ()
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.wandb.group or sweep,
            tags=list(cfg.wandb.tags), name=job_overrides or name, mode=mode, dir=str(run_dir),
            config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(init_timeout=cfg.wandb.init_timeout, quiet=cfg.wandb.quiet),
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

    def log_run_artifact(self) -> None:
        files = [self.run_dir / f for f in self.artifact_files if (self.run_dir / f).is_file()]
        if not files:
            return
        # Artifact names allow letters, digits, '-', '_' and '.'; the run id keeps them unique.
        name = re.sub(r"[^\w.-]+", "-", f"{self.run.name or 'run'}-{self.run.id}")[-128:]
        artifact = self._wandb.Artifact(name, type="run")
        for path in files:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)
        log.info("W&B artifact %s: %s", name, ", ".join(p.name for p in files))

    def close(self, failed=False):
        try:
            if not failed:
                self.log_run_artifact()
        finally:
            self.run.finish(exit_code=1 if failed else 0)


def _log_artifacts(cfg: Any, mode: str) -> bool:
    flag = cfg.wandb.log_artifacts
    return mode == "online" if flag is None else bool(flag)


class Guarded(Logger):
    """One backend, opened on its first call, whose failures are warnings: the first exception
    (opening included) is logged once and kept in `failure`, the backend is closed (marked
    failed) and called no more, and the run goes on."""

    def __init__(self, name: str, open_backend: Callable[[], Logger]):
        self.name, self.failure = name, None
        self._open, self._backend = open_backend, None

    @property
    def failures(self) -> dict[str, str]:
        return {} if self.failure is None else {self.name: self.failure}

    def _call(self, method: str, *args: Any) -> None:
        if self.failure is not None:
            return
        try:
            if self._backend is None:
                self._backend = self._open()
            getattr(self._backend, method)(*args)
        except Exception as e:
            self._disable(e, closing=method == "close")

    def _disable(self, error: Exception, closing: bool) -> None:
        self.failure = one_line(error)
        self.record_failure(self.name, error)
        backend, self._backend = self._backend, None
        if backend is not None and not closing:
            with contextlib.suppress(Exception):
                backend.close(failed=True)

    def log(self, metrics, step=None):
        self._call("log", metrics, step)

    def summary(self, metrics):
        self._call("summary", metrics)

    def image(self, name, path):
        self._call("image", name, path)

    def table(self, name, columns, rows):
        self._call("table", name, columns, rows)

    def close(self, failed=False):
        if self._backend is not None:  # never opened: nothing to close (no W&B run was made)
            self._call("close", failed)
            self._backend = None


class MultiLogger(Logger):
    """Every call to every backend, each Guarded: a backend's failure stops neither the others
    nor the run."""

    def __init__(self, *backends: Logger):
        self.backends = [b if isinstance(b, Guarded) else Guarded(type(b).__name__, lambda b=b: b)
                         for b in backends]
        self._failed: dict[str, str] = {}

    @property
    def failures(self) -> dict[str, str]:
        return {**{k: v for b in self.backends for k, v in b.failures.items()}, **self._failed}

    def record_failure(self, what, error):
        super().record_failure(what, error)
        self._failed[what] = one_line(error)

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
            b.close(failed)


@contextlib.contextmanager
def open_logger(cfg: Any, run_dir: str | Path, name: str | None = None,
                artifact_files: Sequence[str] = ()) -> Iterator[Logger]:
    """File logging always, plus W&B unless cfg.wandb.mode is 'disabled'; always closed. The mode
    (and, online, the server) is checked here; each backend opens on its first call and its
    failures are warnings (Guarded). After a successful run, W&B may log run_dir's
    `artifact_files` (see WandbLogger)."""
    mode = wandb_mode(cfg)
    if mode == "online":
        check_reachable(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    backends = [Guarded("files", lambda: FileLogger(run_dir))]
    if mode != "disabled":
        backends.append(Guarded("wandb", lambda: WandbLogger(cfg, run_dir, name, artifact_files)))
    logger = MultiLogger(*backends)
    failed = True
    try:
        yield logger
        failed = False
    finally:
        logger.close(failed)
