"""What every demonstration shares: its typed parameters, the models it trains (through the
model cache, so the same entries as `scripts/sweep.py model=<m> data=<split> train=<t>`), the
data, and writing figures (PNG) and numbers into the run directory and to W&B."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

from adv_jax.config import derive  # noqa: E402
from adv_jax.data import Dataset, load_splits  # noqa: E402
from adv_jax.logger import Logger  # noqa: E402
from adv_jax.models import Model, Params  # noqa: E402
from adv_jax.train import evaluate  # noqa: E402
from adv_jax.trained import train_or_load  # noqa: E402

FIGURE_DPI = 80  # small PNGs: the figures are committed under results/figures/


@dataclasses.dataclass
class DemoParams:
    """Fields every demonstration has; each adds its own (adv_jax/demos/<name>.py)."""

    test_limit: Optional[int] = None  # use the first N test images (null = all 10000)
    epochs: Optional[int] = None  # replaces train.epochs of minibatch-trained models (quick runs)
    lbfgs_steps: Optional[int] = None  # replaces train.lbfgs_steps of L-BFGS models (quick runs)


def typed_params(schema: type, raw: Any, demo: str):
    """demo.params checked against `schema`: an unknown key or a wrong type is a clear error."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw or {}))
    except Exception as e:  # omegaconf's errors name the key; say where it came from
        fields = [f.name for f in dataclasses.fields(schema)]
        raise ValueError(f"bad demo.params for demo {demo!r}: {e}\n(known: {fields})") from e


@dataclasses.dataclass
class Context:
    """One demonstration run: its config, directory and logger, and caches of data and models."""

    cfg: DictConfig
    run_dir: Path
    logger: Logger
    params: DemoParams
    figures: list[str] = dataclasses.field(default_factory=list)
    _data: dict = dataclasses.field(default_factory=dict)

    def splits(self, split: str = "full", classes=None) -> dict[str, Dataset]:
        """load_splits for `split` (data.train_limit applies) with the test set cut to test_limit."""
        key = (split, tuple(classes or ()))
        if key not in self._data:
            data_cfg = OmegaConf.merge(self.cfg.data, {"split": split})
            out = load_splits(data_cfg, classes)
            n = self.params.test_limit
            if n is not None:
                out["test"] = Dataset(out["test"].x[:n], out["test"].y[:n])
            self._data[key] = out
        return self._data[key]

    def model_config(self, model: str, split: str = "full", train: str = "lbfgs",
                     changes: dict | None = None) -> DictConfig:
        """The run config `sweep.py model=<model> data=<split> train=<train>` would build, with
        `changes` to the model (e.g. weight_decay) and the quick-run limits of DemoParams."""
        composed = derive(self.cfg, model, split, model_changes=changes, train=train)
        # Each limit only where it applies, so an L-BFGS model keeps its cache entry when a
        # demo shortens its minibatch models, and the other way round.
        limits = {}
        if self.params.epochs is not None and composed.train.optimizer != "lbfgs":
            limits["epochs"] = self.params.epochs
        if self.params.lbfgs_steps is not None and composed.train.optimizer == "lbfgs":
            limits["lbfgs_steps"] = self.params.lbfgs_steps
        return derive(self.cfg, model, split, model_changes=changes, train=train, train_changes=limits)

    def model(self, model: str, split: str = "full", train: str = "lbfgs",
              changes: dict | None = None) -> tuple[Model, Params, dict[str, Any]]:
        """Trains (or takes from the cache) a model; returns it, its params and its numbers
        (test error, training split size, whether it came from the cache)."""
        cfg_m = self.model_config(model, split, train, changes)
        splits = self.splits(split, cfg_m.model.classes)
        built, params, metrics = train_or_load(cfg_m, splits)
        numbers = {"test_error": evaluate(built, params, {"t": splits["test"]})["t"],
                   "train_error": evaluate(built, params, {"t": splits["train"]})["t"],
                   "train_size": len(splits["train"]), "split": split, "optimizer": train,
                   "cached": bool(metrics.get("train/cached", False))}
        return built, params, numbers

    def save(self, fig, name: str) -> Path:
        """Writes the figure as <run_dir>/<name>.png and logs it to W&B."""
        path = self.run_dir / f"{name}.png"
        fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
        plt.close(fig)
        return self.record(path)

    def record(self, path: Path) -> Path:
        """Logs a PNG already written into the run directory to W&B and the figure list (after
        reducing it to a 256-colour palette: a third of the bytes, no visible change here)."""
        with Image.open(path) as image:
            small = image.convert("RGB").quantize(256)
        small.save(path, optimize=True)
        self.logger.image(path.stem, path)
        self.figures.append(path.name)
        return path


def show(ax, image, title: str | None = None, signed: bool = False, fontsize: int = 8) -> None:
    """An image (28, 28[, 1]) without ticks: grey in [0, 1], or signed on a symmetric blue-red
    scale (weights, templates, effective weights)."""
    image = np.asarray(image).reshape(28, 28)
    if signed:
        bound = float(np.abs(image).max()) or 1.0
        ax.imshow(image, cmap="RdBu", vmin=-bound, vmax=bound, interpolation="nearest")
    else:
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=fontsize)


def grid(rows: int, columns: int, size: float = 1.1):
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows + 0.3),
                             squeeze=False)
    return fig, axes


def flatten(numbers: dict, prefix: str = "") -> dict[str, Any]:
    """Nested numbers -> flat {"a/b": value} with scalars only (W&B summary, metrics.json)."""
    flat = {}
    for k, v in numbers.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, name + "/"))
        elif isinstance(v, (bool, int, float, str)) or v is None:
            flat[name] = v
    return flat


def write_json(path: Path, numbers: dict) -> None:
    path.write_text(json.dumps(numbers, indent=1, default=_plain))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return float(value)
