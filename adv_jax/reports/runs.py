"""Run discovery: the finished run directories under a path, and what they hold.

A run directory holds config.yaml (the resolved config) and, once finished, metrics.json;
`adv_jax.run` also writes lipschitz.json (the per-layer table and bounds). A transfer study
(`experiment=...`) holds matrix.json instead, with its models under models/<key>/.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def is_run(path: Path) -> bool:
    return (path / "config.yaml").exists()


def is_finished(path: Path) -> bool:
    return is_run(path) and (path / "metrics.json").exists()


def job_order(path: Path) -> tuple[int, str]:
    """Sort key: Hydra's job number (the '3' of '3_model.hidden=...') first, then the name."""
    head = path.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.name)


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Finished run directories at or below `paths`, in job order per path. A run's own
    subdirectories are not searched; an unfinished run (no metrics.json) is skipped with a warning."""
    found = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such directory")
        found += _runs_below(path)
    return found


def _runs_below(path: Path) -> list[Path]:
    if is_run(path):
        if is_finished(path):
            return [path]
        log.warning("skipping %s: unfinished (no metrics.json)", path)
        return []
    subdirs = sorted((p for p in path.iterdir() if p.is_dir()), key=job_order)
    return [run for sub in subdirs for run in _runs_below(sub)]


def find_results(paths: Sequence[str | Path], filename: str) -> list[Path]:
    """Directories holding `filename` at or below `paths`; a study's models/ excluded."""
    found = []
    for p in map(Path, paths):
        hits = [p / filename] if (p / filename).exists() else sorted(p.rglob(filename))
        found += [h.parent for h in hits if "models" not in h.relative_to(p).parts[:-1]]
    return found


def find_studies(paths: Sequence[str | Path]) -> list[Path]:
    """Transfer-study directories (with matrix.json) at or below `paths`; models/ excluded."""
    return find_results(paths, "matrix.json")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {'a.b.c': value}, in the dict's order; lists stay values."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml as flat dotted keys; a malformed one names the file."""
    path = run_dir / "config.yaml"
    try:
        return flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    except Exception as e:  # OmegaConf and YAML raise many types; all mean "unreadable"
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def read_json(path: Path, required: bool = False) -> Any:
    """A run file's JSON (None when it is missing and not `required`); a missing required or a
    malformed file is an error naming it."""
    if not path.exists():
        if required:
            raise FileNotFoundError(f"{path}: missing")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """{'path', 'config' (flat), 'metrics' (metrics.json), 'lipschitz' (lipschitz.json or None)}."""
    run_dir = Path(run_dir)
    if not is_finished(run_dir):
        raise FileNotFoundError(f"{run_dir}: not a finished run (config.yaml and metrics.json)")
    metrics = read_json(run_dir / "metrics.json")
    if not metrics:
        log.warning("%s: metrics.json holds no metrics; its cells show '-'", run_dir)
    return {"path": run_dir, "config": read_config(run_dir), "metrics": metrics,
            "lipschitz": read_json(run_dir / "lipschitz.json")}

