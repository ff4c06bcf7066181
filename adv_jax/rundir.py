"""Run directories: the one lifecycle every job goes through, and reading a finished run back.

`RunDirectory(path, cfg).execute(work)`:
  1. the directory is owned: an exclusive lock on <path>/.lock (which holds the holder's pid and
     result config) is taken before anything else is written. Another process, or another
     RunDirectory, fails at once (RunDirectoryLocked names the holder's pid and the keys that
     differ); the kernel frees the lock when its holder dies, even by kill -9;
  2. a run that finished here with the same result-affecting config (config.result_config) is
     skipped and its metrics returned; one that finished with ANOTHER config is refused
     (RunDirectoryInUse names the keys that differ), so no result is ever overwritten;
  3. a redo starts clean: the first attempt lists what the directory held before it
     (.preexisting.json: Hydra's .hydra/ and run.log, the user's files), and a redo removes
     every other entry but RESUMED (a study's finished per-model runs, a benchmark's finished families);
  4. run.log attached, config.yaml written, the logger opened (each backend on its first call);
  5. `work(run_dir, logger) -> metrics`, then checksums.json (the result config's sha256; the
     params have their own sidecar) and metrics.json, last and atomically: its presence means the
     run finished. A logger's failure is a warning, never the run's end: metrics.json marks it
     (FAILED_KEY);
  6. the logger closed, the log file detached and the lock released, whatever happened. A run
     that fails before any work leaves nothing: its start-up files are removed, and the
     directory too when this run created it.

`load_run(path)` reads a finished run, verified: .config, .metrics, .model, .params, .logits_fn.
Errors name their file, OS errors of what is written here included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
from omegaconf import DictConfig, OmegaConf

from adv_jax import checkpoint
from adv_jax.config import as_config, legacy_result_config, result_config, upgrade_recorded
from adv_jax.logger import Logger, one_line, open_logger
from adv_jax.models import Model, Params, build_model, logits_fn
from adv_jax.run_files import (ARTIFACT_FILES, CHECKSUMS_FILE, CONFIG_FILE, LOG_FILE,
                               METRICS_FILE, METRICS_LOG_FILE, MODELS_DIR, PARAMS_FILE, BENCHMARK_SETS_DIR)

log = logging.getLogger(__name__)
LOCK_FILE, MANIFEST_FILE = ".lock", ".preexisting.json"
STARTUP_FILES = (CONFIG_FILE, LOG_FILE)  # written before the work starts
# Kept by a redo: per-model run directories (each resumed or redone itself) and the transfer
# benchmark's finished families (each reused only under the config it was made with).
RESUMED = (MODELS_DIR, BENCHMARK_SETS_DIR)
FAILED_KEY = "logger/failed"  # in metrics.json: "<backend>: <why>; ..." when a logger failed


class RunDirectoryInUse(RuntimeError):
    """The directory holds a finished run with another config, or is another run's."""


class RunDirectoryLocked(RunDirectoryInUse):
    """Another process (or RunDirectory) holds the directory's lock."""


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _named(error: OSError, path: Path) -> OSError:
    """`error` as one line naming `path` (the OS may name a temporary file, or nothing: a full
    disk); as it is when it names `path` already."""
    if str(path) in str(error):
        return error
    message = f"could not write {path}: {error.strerror or error}"
    return OSError(error.errno, message) if error.errno is not None else OSError(message)


def write_file(path: Path, data: bytes | str) -> None:
    """checkpoint.write_atomic, its OS errors naming `path`."""
    try:
        checkpoint.write_atomic(path, data)
    except OSError as e:
        raise _named(e, path) from e


def _sha256(tree: dict) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()


def config_sha256(cfg: Any) -> str:
    """sha256 of a config's result_config: equal for configs that compute the same results."""
    return _sha256(result_config(cfg))


def read_metrics(path: Path) -> dict[str, Any]:
    """metrics.json of a run; a missing or unreadable one is a clear error naming the file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing, so the run did not finish; redo it")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e}); delete it to redo that run") from None


def _interpolation(node: Any, key: str = "") -> tuple[str, str] | None:
    """The first (key, value) whose string value holds an interpolation `${...}`, if any."""
    if isinstance(node, str):
        return (key, node) if "${" in node else None
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        name = f"{key}[{k}]" if isinstance(node, list) else f"{key}.{k}" if key else str(k)
        if found := _interpolation(v, name):
            return found
    return None


def read_config(path: Path) -> DictConfig:
    """A run's config.yaml as written, typed. It is written resolved, so an interpolation
    (`${...}`) means an edit: refused with a message, never resolved from the environment."""
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; not a run directory") from None
    except Exception as e:
        raise ValueError(f"{path}: unreadable ({one_line(e)})") from None
    if found := _interpolation(raw):
        raise ValueError(f"{path}: {found[0]}={found[1]!r} is an interpolation, which a run's "
                         "config.yaml never holds (it is written resolved): restore the value")
    try:
        return as_config(upgrade_recorded(raw))
    except Exception as e:
        raise ValueError(f"{path}: does not fit the config schema ({one_line(e)})") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    there = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder_record(cfg: Any) -> bytes:
    """What the lock file holds: this process and the result config it runs."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "result_config_sha256": config_sha256(cfg), "result_config": result_config(cfg)}
    return json.dumps(record, default=str).encode()


def _write_holder(fd: int, lock: Path, record: bytes) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    except OSError as e:
        os.close(fd)
        raise _named(e, lock) from e


def _read_holder(lock: Path) -> dict | None:
    """The holder's record; it writes it right after locking, so wait a moment for it."""
    for _ in range(40):
        with contextlib.suppress(OSError, ValueError):
            return json.loads(lock.read_text())
        time.sleep(0.025)
    return None


def _locked(path: Path, cfg: Any) -> RunDirectoryLocked:
    holder = _read_holder(path / LOCK_FILE)
    if holder is None:
        return RunDirectoryLocked(f"{path} is in use by another process (its lock file {path / LOCK_FILE} "
                                  "names none); wait for it to end, or choose another directory")
    differ = _differences(holder.get("result_config"), result_config(cfg))
    what = f"another config (differs in: {', '.join(differ[:8])})" if differ else "the same config"
    return RunDirectoryLocked(f"{path} is in use by process {holder.get('pid')} on {holder.get('host')} "
                              f"since {holder.get('since')}, running {what}; wait for it to end, "
                              "or choose another directory")


def _try_lock(path: Path, cfg: Any) -> int | None:
    """The descriptor of <path>/.lock, locked and holding this process's record; None when the
    file was removed while taking it (its holder removed an unused directory): try again."""
    lock, record = path / LOCK_FILE, _holder_record(cfg)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _locked(path, cfg) from None
    if not _same_file(fd, lock):
        os.close(fd)
        return None
    _write_holder(fd, lock, record)
    return fd


def _unlock(fd: int, lock: Path) -> None:
    """Removes the lock file (while still holding it), then releases it."""
    if _same_file(fd, lock):
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    os.close(fd)


def _make_dir(path: Path) -> bool:
    """Creates `path`; whether it did (False: it was there)."""
    try:
        path.mkdir(parents=True)
        return True
    except FileExistsError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@dataclasses.dataclass
class RunDirectory:
    """A run directory and the config of the run meant to happen in it."""

    path: Path
    cfg: DictConfig
    created: bool = dataclasses.field(default=False, compare=False)  # by this RunDirectory

    @classmethod
    def for_run(cls, cfg: DictConfig, path: str | Path | None, name: str) -> "RunDirectory":
        """`path`, or runs/<time>_<name> when None; created."""
        path = Path(path or Path("runs") / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{name}")
        return cls(path, cfg, _make_dir(path))

    @contextlib.contextmanager
    def owned(self) -> Iterator[None]:
        """Holds the directory's lock (step 1 of the module docstring) for the block."""
        for _ in range(10):
            self.created |= _make_dir(self.path)
            if (fd := _try_lock(self.path, self.cfg)) is not None:
                break
        else:
            raise RunDirectoryLocked(f"{self.path / LOCK_FILE}: removed each time it was locked")
        try:
            yield
        finally:
            _unlock(fd, self.path / LOCK_FILE)

    def finished(self) -> dict[str, Any] | None:
        """The metrics of a run that already finished here with this config, else None."""
        metrics, config = self.path / METRICS_FILE, self.path / CONFIG_FILE
        if not (metrics.exists() and config.exists()):
            return None
        differ = _differences(result_config(read_config(config)), result_config(self.cfg))
        if differ:
            raise RunDirectoryInUse(
                f"{self.path} holds a finished run with another config (differs in: "
                f"{', '.join(differ[:8])}); choose another directory, or delete "
                f"{metrics} to replace that run")
        log.info("%s already finished with this config; skipping (delete metrics.json to redo)", self.path)
        return read_metrics(metrics)

    def entries(self) -> set[str]:
        """The names in the directory, but the lock file and the manifest."""
        return {p.name for p in self.path.iterdir()} - {LOCK_FILE, MANIFEST_FILE}

    def preexisting(self) -> list[str]:
        """What the directory held before the first attempt (the manifest); [] before it."""
        manifest = self.path / MANIFEST_FILE
        if not manifest.exists():
            return []
        try:
            return list(json.loads(manifest.read_text()))
        except (OSError, ValueError) as e:
            raise ValueError(f"{manifest}: unreadable ({e}); delete it, and the files an earlier "
                             "attempt wrote are kept as if they were yours") from None

    def clear_attempt(self) -> None:
        """The first attempt lists what the directory holds (the manifest, kept by every redo); a
        redo removes every other entry, but RESUMED. Without a manifest (runs before it existed),
        an unfinished attempt's metrics.jsonl and wandb/ are removed first."""
        if not (self.path / MANIFEST_FILE).exists():
            records = ((self.path / METRICS_LOG_FILE, Path.is_file), (self.path / "wandb", Path.is_dir))
            for stale in [path for path, is_one in records if is_one(path)]:
                _remove(stale)
            write_file(self.path / MANIFEST_FILE, json.dumps(sorted(self.entries())))
            return
        if stale := sorted(self.entries() - set(self.preexisting()) - set(RESUMED)):
            log.info("%s: removing what an earlier attempt wrote: %s", self.path, ", ".join(stale))
        for name in stale:
            _remove(self.path / name)

    def start(self) -> None:
        """Clears an unfinished attempt's files (clear_attempt) and writes config.yaml."""
        self.clear_attempt()
        write_file(self.path / CONFIG_FILE, OmegaConf.to_yaml(self.cfg, resolve=True))

    def write_json(self, name: str, content: Any) -> Path:
        path = self.path / name
        write_file(path, json.dumps(content, indent=1, sort_keys=True, default=float))
        return path

    def checksums(self) -> dict[str, str]:
        """sha256 of the result config as config.yaml holds it (the params have their own
        sidecar, checkpoint.save_params)."""
        config = self.path / CONFIG_FILE
        return {"result_config_sha256": config_sha256(read_config(config) if config.exists() else self.cfg)}

    def finish(self, metrics: dict[str, Any], failures: dict[str, str] | None = None) -> dict[str, Any]:
        """Writes checksums.json, then metrics.json (last), marking what failed (`failures`:
        logger.failures) under FAILED_KEY; returns the metrics as written."""
        if failures:
            metrics = {**metrics, FAILED_KEY: "; ".join(f"{k}: {v}" for k, v in failures.items())}
        self.write_json(CHECKSUMS_FILE, self.checksums())
        self.write_json(METRICS_FILE, metrics)
        return metrics

    def execute(self, work: Callable[["RunDirectory", Logger], dict[str, Any]]) -> dict[str, Any]:
        """Steps 1-6 of the module docstring; returns the run's metrics."""
        with self.owned():
            if (done := self.finished()) is not None:
                return done
            self.clear_attempt()
            handler = attach_log_file(self.path)
            try:
                return self._attempt(work)
            except BaseException:
                handler = detach_log_file(handler)
                self.remove_if_unused()
                raise
            finally:
                detach_log_file(handler)

    def _attempt(self, work: Callable[["RunDirectory", Logger], dict[str, Any]]) -> dict[str, Any]:
        write_file(self.path / CONFIG_FILE, OmegaConf.to_yaml(self.cfg, resolve=True))
        with open_logger(self.cfg, self.path, name=self.path.name, artifact_files=ARTIFACT_FILES) as logger:
            metrics = work(self, logger)
            logger.summary(metrics)
            marked = dict(logger.failures)
            written = self.finish(metrics, marked)
        if logger.failures != marked:  # a failure while closing: metrics.json marks it too
            written = self.finish(metrics, logger.failures)
        return written

    def remove_if_unused(self) -> None:
        """After a failure before any work (nothing new here but STARTUP_FILES): removes those,
        and the directory when this run created it and nothing else is in it."""
        try:
            before = set(self.preexisting())
            new = self.entries() - before
            if not new <= set(STARTUP_FILES):
                return
            for name in new:
                _remove(self.path / name)
            if self.created and not before:
                shutil.rmtree(self.path)
        except (OSError, ValueError) as e:
            log.warning("could not remove the start-up files of %s: %s", self.path, e)


def attach_log_file(run_dir: Path) -> logging.Handler | None:
    """Logs to <run_dir>/run.log unless Hydra already does."""
    root = logging.getLogger()
    target = (run_dir / LOG_FILE).resolve()
    if any(getattr(h, "baseFilename", None) == str(target) for h in root.handlers):
        return None
    handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def detach_log_file(handler: logging.Handler | None) -> None:
    """Undoes attach_log_file (None: nothing to undo)."""
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


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


def _read_checksums(run_dir: Path) -> dict[str, str]:
    path = run_dir / CHECKSUMS_FILE
    if not path.exists():
        log.warning("%s: missing (a run before it was kept): %s is not verified", path, CONFIG_FILE)
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); the run's config cannot be verified") from None


def _check_config(path: Path, cfg: DictConfig, want: str | None) -> None:
    if want is not None and want not in (config_sha256(cfg), _sha256(legacy_result_config(cfg))):
        raise ValueError(f"{path}: changed since the run (its result-affecting keys no longer match "
                         f"the sha256 in {CHECKSUMS_FILE}): restore it, or redo the run")


def _read_params(path: Path, model: Model) -> Params:
    """params.msgpack, verified against its sidecar (checkpoint.load_params); a run without one
    is a warning. Every error names the file."""
    if path.exists() and not checkpoint.checksum_path(path).exists():
        log.warning("%s: no checksum (%s), so it is not verified", path, checkpoint.checksum_path(path).name)
    return checkpoint.load_params(path, model)


def load_run(run_dir: str | Path) -> Run:
    """A finished run, verified: config.yaml read as written (read_config) and unchanged since
    the run (checksums.json), params.msgpack against its sha256 sidecar (a run without these is a
    warning); a missing, truncated or corrupt file is an error naming it."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    cfg = read_config(run_dir / CONFIG_FILE)
    checksums = _read_checksums(run_dir)
    _check_config(run_dir / CONFIG_FILE, cfg, checksums.get("result_config_sha256"))
    model = build_model(cfg.model)
    params = _read_params(run_dir / PARAMS_FILE, model)
    return Run(run_dir, cfg, read_metrics(run_dir / METRICS_FILE), model, params)
