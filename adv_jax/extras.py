"""Optional dependencies (pyproject's extras): which extra brings what, and one message when it is
missing. `require(what)` raises MissingExtra naming the install command; `missing_for_overrides`
finds what a command line asks for (a sweeper, a launcher, a data source) that is not installed,
before Hydra fails with a plugin error that names no extra."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

# what -> (importable module, extra, what it is for)
EXTRAS = {
    "optuna": ("hydra_plugins.hydra_optuna_sweeper", "search", "the Optuna sweeper (search=..., hydra/sweeper=optuna_tpe)"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "sweeps", "the joblib launcher (hydra/launcher=joblib_local)"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "sweeps", "the SLURM launcher (hydra/launcher=slurm)"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "sweeps", "the Ray launcher (hydra/launcher=ray)"),
    "lipsdp": ("cvxpy", "lipschitz", "LipSDP (lipschitz.methods=[..., lipsdp])"),
    "highs": ("highspy", "lipschitz", "the exact minima of ReLU networks (HiGHS's mixed-integer programs)"),
    "tfds": ("tensorflow_datasets", "tfds", "MNIST through tensorflow-datasets (data.source=tfds)"),
    "foolbox": ("foolbox", "bench", "the foolbox comparisons of the attack benchmarks"),
    "sklearn": ("sklearn", "demos", "the Iris demonstration (demo=iris)"),
    "equinox": ("equinox", "equinox", "an equinox module as a model (model._target_=...)"),
}
# A command-line override -> what it needs
_NEEDS = {"hydra/launcher=joblib_local": "joblib",
          "hydra/launcher=slurm": "slurm", "hydra/launcher=ray": "ray", "data.source=tfds": "tfds",
          "demo=iris": "sklearn"}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the pip command."""


def install_hint(what: str) -> str:
    _, extra, purpose = EXTRAS[what]
    return f"{purpose} needs the '{extra}' extra: pip install -e '.[{extra}]'"


def installed(what: str) -> bool:
    module = EXTRAS[what][0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package (hydra_plugins)
        return False


def require(what: str) -> None:
    if not installed(what):
        raise MissingExtra(install_hint(what))


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def search_sweeper(name: str) -> str | None:
    """The sweeper conf/search/<name>.yaml picks in its defaults (None: none, or no such search)."""
    from omegaconf import OmegaConf

    from adv_jax.config import CONF_DIR

    path = CONF_DIR / "search" / f"{name}.yaml"
    defaults = OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []) if path.exists() else []
    return next((d["override /hydra/sweeper"] for d in defaults
                 if isinstance(d, dict) and "override /hydra/sweeper" in d), None)


def sweeper(overrides: Sequence[str]) -> str | None:
    """The sweeper the command runs: the last `hydra/sweeper=` it names, else the one its search
    config (`search=`) picks; None for Hydra's default."""
    named = [arg.split("=", 1)[-1] for arg in overrides if _key(arg) == "hydra/sweeper" and "=" in arg]
    searches = [arg.split("=", 1)[-1] for arg in overrides
                if _key(arg) == "search" and "=" in arg and not arg.startswith("~")]
    return named[-1] if named else search_sweeper(searches[-1]) if searches else None


def needed_by(overrides: Sequence[str]) -> list[str]:
    """What the overrides ask for (keys of EXTRAS), once each: Optuna first where the sweeper is
    one of conf/hydra/sweeper/optuna*, then each override's need in order."""
    found = ["optuna"] if (sweeper(overrides) or "").startswith("optuna") else []
    for arg in overrides:
        need = _NEEDS.get(arg) or _NEEDS.get(_key(arg))
        if _key(arg) == "lipschitz.methods" and "lipsdp" in arg:
            need = "lipsdp"
        if need and need not in found:
            found.append(need)
    return found


def check_overrides(overrides: Sequence[str]) -> None:
    """Raises MissingExtra for the first thing the overrides need that is not installed."""
    for what in needed_by(overrides):
        require(what)
