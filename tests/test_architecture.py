"""The layout's rules, checked on the source: lower layers never import higher ones, no private
name crosses a module boundary, functions stay short, scripts stay thin, every test module says
what it tests, and the low-level packages import without Hydra, W&B or matplotlib."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "adv_jax"
# Low to high; a module may import its own layer and those below it, never one above.
LAYERS = [
    {"devices", "config", "extras", "logger", "figures", "figures_transfer", "download", "data",
     "transfer"},
    {"models", "attacks", "lipschitz", "certify", "lipsdp", "validate"},
    {"checkpoint", "adversarial_training", "train"},
    {"ensemble", "trained"},
    {"rundir", "demos"},
    {"jobs", "entry"},
    {"reports"},
    {"bench"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}
MAX_FUNCTION_LINES, MAX_SCRIPT_LINES = 60, 60


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _top(module: str) -> str:
    """adv_jax.attacks.lbfgs -> attacks"""
    return module.split(".")[1]


def _imports(tree: ast.AST):
    """(imported adv_jax module, names) for every import, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adv_jax"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("adv_jax."):
                    yield alias.name, []


def test_every_package_module_has_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()} - {"__init__"}
    assert tops <= set(LEVEL), f"give these a layer in LAYERS: {sorted(tops - set(LEVEL))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_import_from_a_higher_layer_and_no_private_names(path):
    parts = path.relative_to(PACKAGE).parts
    if parts == ("__init__.py",):
        return  # the package's lazy public names
    level = LEVEL[parts[0].removesuffix(".py")]
    for module, names in _imports(ast.parse(path.read_text())):
        if module == "adv_jax":
            names_top = [n for n in names if n in LEVEL]
            assert all(LEVEL[n] <= level for n in names_top), (path, module, names)
            continue
        assert LEVEL[_top(module)] <= level, f"{path.name} (layer {level}) imports {module}"
        assert not [n for n in names if n.startswith("_")], f"{path.name} imports private {names} from {module}"


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_functions_are_at_most_60_lines():
    long = [(str(p.relative_to(REPO)), name, n) for p in _modules() for name, n in _functions(p)
            if n > MAX_FUNCTION_LINES]
    assert not long, long


def test_scripts_are_thin_entry_points():
    thick = [(p.name, n) for p in (REPO / "scripts").glob("*.py")
             if (n := len(p.read_text().splitlines())) > MAX_SCRIPT_LINES]
    assert not thick, thick


def test_every_test_module_has_a_docstring():
    bare = [p.name for p in (REPO / "tests").glob("test_*.py") if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not bare, bare


def test_models_and_attacks_import_without_hydra_wandb_or_matplotlib():
    code = ("import sys, adv_jax.models, adv_jax.attacks, adv_jax.attacks.generate, adv_jax.lipschitz; "
            "print(sorted(m for m in ('hydra', 'wandb', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
