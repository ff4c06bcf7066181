"""docs/runs.md's reference tables, generated from the source: the config groups (conf/*/*.yaml,
each option's first comment sentence) and the metrics keys (METRICS, checked against the keys
adv_jax's code writes, `metric_keys_in_source`). Also the commands results/*.md state, and a
check that each one's arguments parse (`command_errors`). Imports neither JAX nor the scripts
until a command is checked."""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import OmegaConf

from adv_jax.config import CONF_DIR
from adv_jax.reports.tables import markdown

REPO = CONF_DIR.parent
PACKAGE = REPO / "adv_jax"
PAGE = REPO / "docs" / "runs.md"
RESULTS = REPO / "results"

# ----------------------------------------------------------------------------- config groups

# Group -> where it is explained; groups on disk but not here are listed too, after these.
GROUPS = {
    "data": "[data.md](data.md)", "model": "[models.md](models.md)",
    "train": "[training.md](training.md)", "attack": "[attacks.md](attacks.md)",
    "wandb": "[above](#wb)", "job": "what runs; an experiment or scripts/demo.py sets it",
    "experiment": "[transfer.md](transfer.md)",
    "search": "with `-m`; [below](#searches)",
    "demo": "with `scripts/demo.py`; [demonstrations.md](demonstrations.md)",
    "hydra/launcher": "with `-m`; Hydra's `basic` when unset; [scale.md](scale.md)",
    "hydra/sweeper": "set by a `search`; [below](#searches)",
}
NOT_GROUPS = ("hydra", "report")  # hydra's groups are its subfolders; report: adv_jax.reports.settings
ABBREVIATIONS = r"(?<!\bal\.)(?<!e\.g\.)(?<!i\.e\.)(?<!\bvs\.)(?<!\betc\.)"  # these periods end no sentence


def config_groups(conf: Path = CONF_DIR) -> list[str]:
    """Every config group folder: GROUPS' order, then any others alphabetically."""
    on_disk = {p.relative_to(conf).as_posix() for p in conf.glob("*/") if p.name not in NOT_GROUPS}
    on_disk |= {p.relative_to(conf).as_posix() for p in (conf / "hydra").glob("*/")}
    return [g for g in GROUPS if g in on_disk] + sorted(on_disk - set(GROUPS))


def first_comment(path: Path) -> str | None:
    """The first paragraph of a YAML's leading comment (Hydra's `# @package` line skipped)."""
    lines = []
    for line in path.read_text().splitlines():
        text = line.strip()
        if text.startswith("# @package"):
            continue
        if not text.startswith("#") or (lines and text == "#"):
            break
        lines.append(text.lstrip("#").strip())
    return " ".join(lines).strip() or None


def description(path: Path) -> str | None:
    """An option's one-line description: the first sentence of its first comment."""
    text = first_comment(path)
    if text is None:
        return None
    return re.split(ABBREVIATIONS + r"(?<=\.)\s", text, maxsplit=1)[0]


def defaults(conf: Path = CONF_DIR) -> dict[str, str]:
    """group -> default option, from conf/config.yaml's defaults list."""
    entries = OmegaConf.to_container(OmegaConf.load(conf / "config.yaml"))["defaults"]
    return {k: v for e in entries if isinstance(e, dict) for k, v in e.items() if v is not None}


def undescribed(conf: Path = CONF_DIR) -> list[str]:
    """conf/<group>/<option>.yaml files without a leading comment to describe them."""
    return [f"{g}/{p.name}" for g in config_groups(conf) for p in sorted((conf / g).glob("*.yaml"))
            if description(p) is None]


def cell(text: str) -> str:
    """Text safe inside a markdown table cell: pipes escaped, angle brackets outside code spans."""
    parts = re.split(r"(`[^`]*`)", text.replace("|", "\\|"))
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in parts)


def option_row(group: str, path: Path, default: str | None, first: bool) -> list[str]:
    name = OmegaConf.load(path).get("name", path.stem) if description(path) is None else None
    text = description(path) or f"(no description comment; name: {name})"
    option = f"`{path.stem}`" + (" (default)" if path.stem == default else "")
    where = f"`{group}` ({GROUPS[group]})" if first and group in GROUPS else f"`{group}`" if first else ""
    return [where, option, cell(text)]


def config_table(conf: Path = CONF_DIR) -> str:
    """The group / option / description table of every conf/ group."""
    chosen = defaults(conf)
    rows = []
    for group in config_groups(conf):
        for i, path in enumerate(sorted((conf / group).glob("*.yaml"),
                                        key=lambda p: (p.stem != chosen.get(group), p.stem))):
            rows.append(option_row(group, path, chosen.get(group), i == 0))
    return markdown(["group", "option", "what it is"], rows).rstrip("\n")

# ----------------------------------------------------------------------------- metrics keys

# Every metrics key adv_jax writes, with its meaning: `<name>` stands for a part that varies.
# tests/test_docs.py fails when the code writes a key that is not here, or one here is not written.
METRICS = {
    "error/p1": "error rate (fraction) on P1, the first random half of the training set",
    "error/p2": "error rate on P2, the second half",
    "error/full": "error rate on all 60000 training images",
    "error/test": "error rate on the 10000 test images",
    "error/train": ("error rate on the images the model trained on (after `data.validation` and "
                    "`data.train_limit`)"),
    "error/validation": "error rate on the held-out training images (only with `data.validation > 0`)",
    "train/seconds": "training wall time, compilation included",
    "train/steps": "optimizer updates (L-BFGS iterations or minibatch steps)",
    "train/final_loss": "last loss (mean of the last epoch, or the last L-BFGS value)",
    "train/cached": "true when the model came from the cache",
    "train/ensemble_size": "models trained together in one program (`experiment.train_together`)",
    "train/autoencoder_steps": "`model=ae400`: the autoencoder pretraining's updates",
    "train/autoencoder_loss": "`model=ae400`: the pretraining's last loss",
    "train/autoencoder_cached": ("`model=ae400`: true when the pretrained autoencoder came from its own "
                                 "cache entry"),
    "train/loss": "`metrics.jsonl` only: the loss after each epoch (L-BFGS: each iteration)",
    "train/epoch": "`metrics.jsonl` only: that epoch's (iteration's) index",
    "model/num_params": "number of parameters",
    "data/train_size": "number of training images",
    "attack/num_examples": "test images attacked (`attack.num_examples`)",
    "attack/success_rate": "fraction of the attacked images fooled (on the target, when targeted)",
    "attack/mean_distortion": ("mean per-pixel RMS distortion, |x_adv - x|_2 / sqrt(784), over the "
                               "successes"),
    "attack/median_distortion": "median per-pixel RMS distortion over the successes",
    "attack/mean_distortion_all": "a study's model: mean per-pixel RMS distortion over every attacked image",
    "attack/max_pixel_change": "largest |x_adv - x| of any pixel",
    "attack/seconds": "attack wall time",
    "attack/examples_per_second": "attacked images per second",
    "attack/evals_mean": ("gradient evaluations (backward passes) per example, mean: FGSM 1, PGD `steps`, "
                          "`*_min` (1 + `search_steps`) times that, C&W the Adam steps of all its rounds, "
                          "DeepFool K per step, L-BFGS its function evaluations, DDN and FMN `steps`, "
                          "`refined` its first stage's plus its refinement's `steps`; with "
                          "`attack.target=all`, summed over the targets"),
    "attack/evals_max": "gradient evaluations of the example that used the most",
    "attack/c_mean": "L-BFGS: mean final constant c over the examples where some c succeeded",
    "attack/queries_mean": "score-based attacks (Square, AutoAttack's last stage): forward passes per example, mean",
    "attack/robust_accuracy": ("AutoAttack: the share of attacked images still correctly classified after every "
                               "stage (a misclassified clean image counts as broken)"),
    "attack/robust_accuracy/<stage>": "AutoAttack: the share still correctly classified after that stage",
    "lipschitz/upper_bound": "product of the per-layer bounds ([lipschitz.md](lipschitz.md))",
    "lipschitz/layer<i>": "layer i's bound",
    "lipschitz/jacobian_lower_bound": ("largest local Jacobian norm over `lipschitz.images` test images "
                                       "(a lower bound)"),
    "lipschitz/jacobian_ascent_lower_bound": ("largest Jacobian norm found by gradient ascent over the box from "
                                              "the first 32 of those images, `lipschitz.ascent_steps` steps (a lower bound)"),
    "lipschitz/bracket_ratio": ("the smallest certified upper bound (else the product) over the largest lower "
                                "bound: how far apart the two sides that hold the true constant are"),
    "lipschitz/pair_ratio_lower_bound": ("largest |f(x')-f(x)|/|x'-x| over the run's adversarial pairs "
                                         "(a lower bound)"),
    "lipschitz/bound/<method>": ("the certified upper bound of each of `lipschitz.methods` that ran "
                                 "(`product`, `eclipse_fast`, `lipsdp`)"),
    "lipschitz/certified": "the smallest of those",
    "certified/examples": ("with an attack, dense networks: the successful examples the certified "
                           "distortion bracket covers ([lipschitz.md](lipschitz.md))"),
    "certified/mean_attack_rms": "their mean attack distortion (per-pixel RMS)",
    "certified/mean_lower_rms_global": ("their mean certified lower bound on the distortion, from the "
                                        "global constant"),
    "certified/mean_lower_rms_local": ("the same with local constants on the first "
                                       "`lipschitz.local_examples` (the global bound for the rest)"),
    "certified/local_examples": "how many examples got local constants (`lipschitz.local`)",
    "certified/local_certified": "the fraction of those whose local constants were certified",
    "certified/ratio": "mean attack distortion / mean certified lower bound (the local one where computed)",
    "experiment/seconds": "a study (`experiment=...`): its wall time",
    "transfer/<kind>/diagonal": ("cross-training-set and cross-model studies: mean error (%) of the "
                                 "matrix's diagonal, per row kind (`adversarial`, `noise`, `amplified`, "
                                 "`noise_unclipped`, `amplified_unclipped`)"),
    "transfer/<kind>/off_diagonal": "the same, off the diagonal (the transfer cells)",
    "check/<name>": ("those studies: the paper's qualitative claims as booleans (`diagonal_100`, "
                     "`above_noise`, `amplified_above`)"),
    "clean/<model>/test": "those studies: each model's test error (%)",
    "benchmark/<table>/<attack>/<norm>/<budget>/<scenario>": (
        "`experiment=transfer_benchmark`: mean success (%) over all attacked images of the (surrogate, "
        "victim) cells of one scenario (white-box, cross-training-set, cross-architecture, robust_victim); "
        "table fixed (T iterations) or matched (equal gradient evaluations)"),
    "transfer/<attack>/<norm>/<budget>/rate_all": (
        "`experiment=transfer_attacks`: mean transfer rate over the cross cells, all attacked images "
        "the denominator ([transfer.md](transfer.md))"),
    "transfer/<attack>/<norm>/<budget>/rate_conditional": (
        "the same, over the images the source fooled and the target classified correctly"),
}
# What a metrics key starts with: the source's strings that start so are checked against METRICS.
PREFIXES = ("error", "attack", "train", "lipschitz", "certified", "model", "data", "experiment",
            "transfer", "check", "clean", "benchmark")
KEY = re.compile(rf"({'|'.join(PREFIXES)})/[\w<>{{}}./-]+")


def key_pattern(key: str) -> re.Pattern:
    """A documented key as a regex: each `<name>` one path part or more."""
    parts = re.split(r"(<\w+>)", key)
    return re.compile("".join(".+" if p.startswith("<") else re.escape(p) for p in parts))


def source_keys(tree: ast.AST) -> Iterable[tuple[str, bool]]:
    """(string, is_template) for each key-like string literal; f-strings with `{}` for fields."""
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
            text = node.value
        else:
            continue
        if KEY.fullmatch(text) and not text.endswith("/"):
            yield text, isinstance(node, ast.JoinedStr)


def metric_keys_in_source(package: Path = PACKAGE) -> dict[str, list[str]]:
    """key (or f-string template) -> files naming it, over adv_jax/'s source."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in package.rglob("*.py") if p.resolve() != Path(__file__).resolve()):
        for text, template in source_keys(ast.parse(path.read_text())):
            where = str(path.relative_to(package.parent))
            found.setdefault(("f:" if template else "") + text, []).append(where)
    return found


def matches(found: str, key: str) -> bool:
    """Whether a literal (or "f:" template) from the source names the documented key."""
    if found.startswith("f:"):
        template = "".join(".+" if p == "{}" else re.escape(p) for p in re.split(r"({})", found[2:]))
        return re.fullmatch(template, key) is not None
    return key_pattern(key).fullmatch(found) is not None


def undocumented_keys(package: Path = PACKAGE) -> dict[str, list[str]]:
    """Keys the source names that METRICS lacks -> where."""
    return {k: where for k, where in metric_keys_in_source(package).items()
            if not any(matches(k, key) for key in METRICS)}


def unwritten_keys(package: Path = PACKAGE) -> list[str]:
    """METRICS keys no literal or f-string of the source names (stale entries)."""
    found = metric_keys_in_source(package)
    return [key for key in METRICS if not any(matches(k, key) for k in found)]


def metrics_table() -> str:
    return markdown(["key", "meaning"], [[f"`{key}`", cell(text)] for key, text in METRICS.items()]).rstrip("\n")

# ----------------------------------------------------------------------------- the page

BLOCKS = {"config-groups": config_table, "metrics": metrics_table}
BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n).*?(<!-- end generated -->)", re.S)


def render(text: str) -> str:
    """The page with every generated block (between its markers) made anew."""
    names = [m.group(2) for m in BLOCK.finditer(text)]
    if unknown := set(names) - set(BLOCKS):
        raise ValueError(f"unknown generated blocks {sorted(unknown)}; known: {sorted(BLOCKS)}")
    if missing := set(BLOCKS) - set(names):
        raise ValueError(f"no '<!-- generated: NAME -->' ... '<!-- end generated -->' markers "
                         f"for {sorted(missing)}")
    return BLOCK.sub(lambda m: f"{m.group(1)}{BLOCKS[m.group(2)]()}\n{m.group(3)}", text)


def update_page(page: Path = PAGE, check: bool = False) -> str | None:
    """Rewrites the page's generated blocks; with `check`, writes nothing and returns a one-line
    message when the page differs from what would be generated (None when it is current)."""
    text = page.read_text()
    fresh = render(text)
    if check:
        stale = fresh != text
        name = page.relative_to(REPO) if page.resolve().is_relative_to(REPO) else page
        return f"{name} is out of date: run python scripts/gen_docs.py" if stale else None
    page.write_text(fresh)
    return None


# ----------------------------------------------------------------------------- results commands

COMMAND = re.compile(r"(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:python scripts/\w+\.py|scripts/gpu_check\.sh)(?=\s|$)")
# Words that stand for something the reader fills in: left out of a Hydra command's overrides,
# passed as plain strings to an argparse script (which still rejects an unknown option).
PLACEHOLDERS = ("MODEL", "DATA", "ROW", "RUN_DIRS", "RUN_DIR", "RUN_OR_SWEEP_DIR", "OVERRIDES", "...")


def stated_commands(results: Path = RESULTS) -> list[tuple[str, str]]:
    """(file:line, command) for every command results/*.md states: backticked spans, and lines
    (code blocks), that start with `python scripts/` (after VAR=value settings) or gpu_check.sh."""
    out = []
    for path in sorted(results.glob("*.md")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            spans = re.findall(r"`([^`]+)`", line) + [line.strip()]
            out += [(f"{path.name}:{number}", s.strip()) for s in spans if COMMAND.match(s.strip())]
    return out


def is_placeholder(token: str) -> bool:
    """Whether a command-line token (or its value after `=`) is one of PLACEHOLDERS."""
    return any(w in PLACEHOLDERS or "..." in w for w in (token, token.split("=", 1)[-1]))


def placeholder(command: str) -> str | None:
    """The first placeholder token the command names, if any."""
    return next((t for t in shlex.split(command, comments=True) if is_placeholder(t)), None)


def argv_of(command: str) -> list[str]:
    """[script, *args] of a stated command: settings and `python` dropped, shell variables
    ($TMP) replaced by a path, quotes and a trailing # comment removed as the shell would."""
    command = re.sub(r"\$([A-Z][A-Z0-9_]*)\b", r"/tmp/\1", command)
    tokens = shlex.split(command, comments=True)
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        tokens.pop(0)
    return tokens[1:] if tokens[:1] == ["python"] else tokens


class ArgumentsParsed(Exception):
    """Raised in place of a checked script's work, once its parser has accepted the arguments."""


def first_values(args: Sequence[str]) -> list[str]:
    """Hydra overrides with each sweep (`seed=0,1,2`) cut to its first value; flags kept."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, out = OverridesParser.create(), []
    for arg in args:
        if arg.startswith("-"):
            out.append(arg)
            continue
        override = parser.parse_override(arg)
        first = next(iter(override.sweep_string_iterator())) if override.is_sweep_override() else None
        out.append(arg if first is None else f"{override.get_key_element()}={first}")
    return out


def run_script(argv: Sequence[str], parse_only: bool) -> tuple[str, str]:
    """Runs scripts/NAME as __main__ in this process, its output captured. parse_only: its
    argparse parser's acceptance ends the run. Returns (outcome, stderr): outcome is "parsed",
    "finished" or "exit N"."""
    original, err = argparse.ArgumentParser.parse_args, io.StringIO()

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise ArgumentsParsed

    saved, sys.argv = sys.argv, [str(REPO / argv[0]), *argv[1:]]
    if parse_only:
        argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            runpy.run_path(sys.argv[0], run_name="__main__")
        return "finished", err.getvalue()
    except ArgumentsParsed:
        return "parsed", err.getvalue()
    except SystemExit as e:  # an int, None (0) or a message (1)
        message = e.code if isinstance(e.code, str) else ""
        return f"exit {1 if message else e.code or 0}", err.getvalue() + message
    finally:
        sys.argv, argparse.ArgumentParser.parse_args = saved, original


def shell_options(script: Path) -> list[str]:
    """The options a bash script's `case "${1:-}"` accepts ("" for none)."""
    return [""] + re.findall(r"^\s*(--[\w-]+)\)", script.read_text(), re.M)


def command_error(argv: Sequence[str]) -> str | None:
    """Why a stated command's arguments would not be accepted, or None. Hydra scripts compose
    their config (`--cfg job`, sweeps cut to their first value, placeholders left out); argparse
    scripts parse their arguments (a placeholder is a string like any other) and stop; bash
    scripts: the first argument is one of their options."""
    script = REPO / argv[0]
    if not script.exists():
        return f"no such script: {argv[0]}"
    if script.suffix == ".sh":
        option = argv[1] if len(argv) > 1 else ""
        return None if option in shell_options(script) else f"{option!r} is not an option of {argv[0]}"
    if "@hydra.main" in script.read_text():
        args = [a for a in argv[1:] if a not in ("-m", "--multirun") and not is_placeholder(a)]
        outcome, err = run_script([argv[0], *first_values(args), "--cfg", "job"], parse_only=False)
        ok = outcome in ("finished", "exit 0")
    else:
        outcome, err = run_script(argv, parse_only=True)
        ok = outcome in ("parsed", "exit 0")
    return None if ok else f"{outcome}: {err.strip()[-1500:] or 'no message'}"


def command_errors(commands: Iterable[str]) -> dict[str, str]:
    """command -> why its arguments are not accepted, for those that fail."""
    errors = {}
    for command in commands:
        try:
            error = command_error(argv_of(command))
        except Exception as e:  # a malformed override, say: reported, not raised
            error = f"{type(e).__name__}: {e}"
        if error:
            errors[command] = error
    return errors
