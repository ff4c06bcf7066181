"""The layout's rules, checked on the source: lower layers never import higher ones, no private
name crosses a module boundary, functions stay short, scripts stay thin, every test module says
what it tests, and the low-level packages import without Hydra, W&B or matplotlib."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "adv_jax"
# Low to high; a module may import its own layer and those below it, never one above.
LAYERS = [
    {"devices", "config", "extras", "logger", "figures", "figures_transfer", "download", "data",
     "transfer", "transfer_rows", "transfer_protocol", "markdown", "run_files"},
    {"models", "attacks", "lipschitz", "certify", "lipsdp", "crown", "curvature", "exact", "validate"},
    {"checkpoint", "train"},
    {"adversarial_training"},  # a regime on train.fit: the core never imports it
    {"ensemble", "trained"},
    {"rundir", "model_set", "demos"},
    {"jobs", "entry"},
    {"reports"},
    {"bench"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# Reports read run directories and bench JSON and write markdown and figures: these are for the
# layers that compute, train, launch and time.
NOT_IN_REPORTS = {"jax", "jaxlib", "flax", "optax", "subprocess", "multiprocessing"}
ADV_JAX_NOT_IN_REPORTS = {"train", "adversarial_training", "trained", "ensemble", "jobs", "entry", "bench", "run"}
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


def test_the_training_core_imports_no_feature():
    """train.py is the core that regimes plug into: it imports no adversarial_training, neither
    itself nor through anything it imports."""
    tree = ast.parse((PACKAGE / "train.py").read_text())
    named = [m for m, _ in _imports(tree)] + [n for m, names in _imports(tree) if m == "adv_jax" for n in names]
    assert not [m for m in named if "adversarial_training" in m], named
    code = "import sys, adv_jax.train; print('adv_jax.adversarial_training' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]


def _imported_names(tree: ast.AST):
    """Every module (or module.name) an import names, at any depth; `from adv_jax import x` as
    adv_jax.x, a bare `import adv_jax` as adv_jax (its lazy names include run)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield from ([] if node.module == "adv_jax" else [node.module])
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _not_for_reports(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in NOT_IN_REPORTS or name == "adv_jax" or (
        parts[0] == "adv_jax" and len(parts) > 1 and parts[1] in ADV_JAX_NOT_IN_REPORTS)


@pytest.mark.parametrize("path", sorted((PACKAGE / "reports").rglob("*.py")), ids=lambda p: p.name)
def test_reports_import_no_jax_subprocess_training_job_or_bench_module(path):
    bad = [name for name in _imported_names(ast.parse(path.read_text())) if _not_for_reports(name)]
    assert not bad, f"{path.name} imports {bad}: move what computes to adv_jax/bench or the job"


def test_every_report_module_loads_without_jax():
    code = ("import importlib, pkgutil, sys, adv_jax.reports as r\n"
            "for m in pkgutil.iter_modules(r.__path__): importlib.import_module(f'adv_jax.reports.{m.name}')\n"
            "print(sorted(m for m in ('jax', 'jaxlib', 'flax', 'optax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr[-2000:])


def _module_graph() -> dict[str, set[str]]:
    """adv_jax module -> the adv_jax modules it imports (at any depth)."""
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in _modules()}
    return {name: {m for m in _imported_names(ast.parse(path.read_text())) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_import_cycle():
    graph, cycles = _module_graph(), []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module == start:
                cycles.append(start)
                break
            if module not in seen:
                seen.add(module)
                todo += graph[module]
    assert not cycles, f"modules that import themselves through others: {sorted(cycles)}"


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


def _documented_layers() -> list[set[str]]:
    """docs/development.md's numbered layering list: the `names` of each item (dotted names such
    as `train.fit` are mentions, not modules)."""
    text = (REPO / "docs" / "development.md").read_text()
    body = text[text.index("## The layering rule"):text.index("then the **entry points**")]
    items = re.split(r"\n\d+\. ", "\n" + body.split("\n", 2)[2].strip())[1:]
    return [{n for n in re.findall(r"`([a-z_]+)`", item)} for item in items]


def test_the_documented_layers_are_the_checked_ones():
    assert _documented_layers() == LAYERS, "docs/development.md's layering list and LAYERS differ"
