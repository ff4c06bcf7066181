"""docs/runs.md's reference tables are what scripts/gen_docs.py generates (config groups from
conf/, metrics keys from adv_jax/reports/reference.py, which must name every key the code
writes), and every command results/*.md states is accepted by its script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adv_jax.reports import reference

REPO = Path(__file__).resolve().parents[1]
# Stated in prose, not as a command: "`python scripts/demo.py` is the whole command" (demos.md).
NOT_COMMANDS = {"python scripts/demo.py": "demos.md names the entry point, the commands below it are whole"}
# Mismatches the check must catch: an option the script lacks (as the regularizers file once
# stated it, placeholder and all), a misspelled key, an unknown option.
WRONG = ["python scripts/report_adversarial_training.py multirun/adversarial_training "
         "--out results/adversarial_training_regularizers.md --note ... (the paragraphs below)",
         "ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/sweep.py -m model=fc10 train.epocs=3 seed=0,1",
         "python scripts/demo.py demo=nonesuch", "scripts/gpu_check.sh --cpu-shorts OUT.md"]


def test_runs_md_is_what_gen_docs_generates():
    text = reference.PAGE.read_text()
    assert reference.render(text) == text, "docs/runs.md is out of date: run python scripts/gen_docs.py"


def test_gen_docs_check_fails_on_a_stale_page_and_rewrites_it(tmp_path):
    page = tmp_path / "runs.md"
    page.write_text(reference.PAGE.read_text().replace("`ddn`", "`ddn_old`"))
    check = [sys.executable, "scripts/gen_docs.py", "--check", "--page", str(page)]
    stale = subprocess.run(check, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert stale.returncode == 1 and len(stale.stderr.strip().splitlines()) == 1, stale.stderr
    assert "out of date" in stale.stderr
    assert subprocess.run(check[:2] + check[3:], cwd=REPO, timeout=120).returncode == 0
    assert page.read_text() == reference.PAGE.read_text()


def test_config_table_lists_every_option_of_every_group():
    table = reference.config_table()
    groups = reference.config_groups()
    assert {"attack", "experiment", "wandb", "hydra/launcher", "hydra/sweeper", "demo"} <= set(groups)
    assert "report" not in groups
    for group in groups:
        for path in (reference.CONF_DIR / group).glob("*.yaml"):
            assert f"| `{path.stem}`" in table, f"{group}/{path.name}"
    assert "| `default` (default) |" in table and "Decoupled Direction and Norm" in table


def test_an_option_without_a_comment_falls_back_to_its_name(tmp_path):
    (tmp_path / "attack").mkdir()
    (tmp_path / "config.yaml").write_text("defaults:\n  - attack: plain\n")
    (tmp_path / "attack" / "plain.yaml").write_text("name: plain_attack\n")
    (tmp_path / "attack" / "noted.yaml").write_text("# @package _global_\n# Xie et al. 2019 did it. More.\nname: x\n")
    assert reference.undescribed(tmp_path) == ["attack/plain.yaml"]
    table = reference.config_table(tmp_path)
    assert "| `plain` (default) | (no description comment; name: plain_attack) |" in table
    assert "| `noted` | Xie et al. 2019 did it. |" in table


def test_every_metrics_key_the_code_writes_is_documented_and_every_documented_one_written():
    assert reference.undocumented_keys() == {}, "add these keys to METRICS in adv_jax/reports/reference.py"
    assert reference.unwritten_keys() == [], "METRICS names keys no code writes"
    for key in ("certified/ratio", "attack/c_mean", "lipschitz/bound/<method>", "lipschitz/certified"):
        assert f"| `{key}` |" in reference.metrics_table()


def test_an_undocumented_key_is_found(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text('m = {"attack/new_rate": 1, f"lipschitz/layer{i}": 2, "error/": 3}\n')
    assert reference.undocumented_keys(tmp_path / "pkg") == {"attack/new_rate": ["pkg/m.py"]}


def test_placeholders_are_found_only_where_present():
    assert reference.placeholder("python scripts/report_demos.py RUN_DIRS") == "RUN_DIRS"
    assert reference.placeholder("python scripts/x.py a --note ... (b)") == "..."
    assert reference.placeholder("python scripts/sweep.py model=fc100 attack=none OVERRIDES") == "OVERRIDES"
    assert reference.placeholder("python scripts/sweep.py model=fc100 'model.hidden=[25,25]'") is None
    assert reference.argv_of("A=1 B=. python scripts/s.py x=$TMP/c 'y=${seed}'  # note") == \
        ["scripts/s.py", "x=/tmp/TMP/c", "y=${seed}"]


def test_every_command_the_results_files_state_is_accepted():
    stated = reference.stated_commands()
    assert len(stated) > 50 and {where.split(":")[0] for where, _ in stated} >= {"bench.md", "gpu.md", "demos.md"}
    # Commands with a placeholder are checked too: an argparse script parses it as any string, a
    # Hydra script composes without it.
    checked = sorted({c for _, c in stated if c not in NOT_COMMANDS})
    code = ("import json, sys\nfrom adv_jax.reports import reference\n"
            "print(json.dumps(reference.command_errors(json.loads(sys.stdin.read()))))")
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(checked + WRONG), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(errors) == sorted(WRONG), {c: e for c, e in errors.items() if c not in WRONG}
    assert "unrecognized arguments: --note" in errors[WRONG[0]] and "did you mean 'epochs'" in errors[WRONG[1]]
