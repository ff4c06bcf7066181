"""What each results file reports: conf/report/<name>.yaml, read as plain dicts and lists."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
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


def runs_report(doc: str, script: str, name: str, make: Callable[..., str], argv: list[str] | None = None) -> None:
    """The command line of a results file made from run directories: `paths`, --out (default
    results/<name>.md), --config (default conf/report/<name>.yaml); make(paths, command, conf, out)
    -> its markdown, written to --out and printed."""
    from adv_jax.reports import provenance

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=Path(f"results/{name}.md"))
    parser.add_argument("--config", type=Path, default=None, help=f"default: conf/report/{name}.yaml")
    args = parser.parse_args(argv)
    command = provenance.command(script, sys.argv[1:] if argv is None else argv)
    text = make(args.paths, command, load(name, args.config), args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


def write_report(out: Path, text: str, measured: dict) -> None:
    """A benchmark's results file `out` (markdown) and its numbers beside it (out with .json),
    then the markdown on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(measured))
    out.write_text(text)
    print(text)
