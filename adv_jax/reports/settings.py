"""What each results file reports: conf/report/<name>.yaml, read as plain dicts and lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from adv_jax.config import CONF_DIR

REPORT_DIR = CONF_DIR / "report"


def load(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """conf/report/<name>.yaml (or `path`) as a plain dict; no interpolation is left."""
    return OmegaConf.to_container(OmegaConf.load(path or REPORT_DIR / f"{name}.yaml"), resolve=True)


def paragraphs(notes: list[str] | None) -> list[str]:
    """Notes as markdown lines: each paragraph, then a blank line."""
    return [line for note in notes or [] for line in (note.strip(), "")]
