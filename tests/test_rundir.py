"""Run directories you can trust (adv_jax/rundir.py): a directory is owned while in use (a second
process is refused before it writes anything, and a killed holder frees it), a redo removes what
the killed attempt wrote and keeps what was there before, a run that fails before any work leaves
nothing behind, a failing figure or a full disk is named, and load_run verifies what it loads."""

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import adv_jax
from adv_jax import checkpoint
from adv_jax.config import LATER_KEYS, as_config, compose
from adv_jax.data import DataError
from adv_jax.rundir import RunDirectory, RunDirectoryLocked, _check_config, config_sha256, load_run, read_config

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=fc10", "train=adam", "train.epochs=1", "data.train_limit=500", "attack=none",
        "lipschitz.images=0", "wandb.mode=disabled"]
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from adv_jax.config import as_config
    from adv_jax.rundir import RunDirectory

    def work(run, logger):
        logger.log({"step": 1.0})
        (run.path / "adversarials.npz").write_bytes(b"half written")
        (run.path / "adversarials.png").write_bytes(b"half drawn")
        Path(sys.argv[3]).write_text("holding")
        time.sleep(300)

    cfg = as_config({"seed": int(sys.argv[2]), "wandb": {"mode": "disabled"}})
    RunDirectory(Path(sys.argv[1]), cfg).execute(work)
""")


def _cfg(seed: int = 1):
    return as_config({"seed": seed, "wandb": {"mode": "disabled"}})


def _work(run, logger):
    logger.log({"x": 1.0}, step=0)
    return {"x": 1.0}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def hold(tmp_path):
    """hold(run_dir, seed) -> a process inside RunDirectory(run_dir).execute, holding the lock,
    once its work has written a metrics line and two partial results; killed at teardown."""
    started = []

    def start(run_dir: Path, seed: int) -> subprocess.Popen:
        ready = tmp_path / f"ready_{len(started)}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), str(seed), str(ready)],
                                env=env, stderr=subprocess.PIPE)
        started.append(proc)
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the holder never took the directory"
            time.sleep(0.05)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_held_directory_refuses_a_second_process_before_it_writes_anything(tmp_path, hold):
    run_dir = tmp_path / "run"
    holder = hold(run_dir, seed=1)
    before = _files(run_dir)
    with pytest.raises(RunDirectoryLocked, match=rf"in use by process {holder.pid} .*differs in: seed\)"):
        RunDirectory(run_dir, _cfg(seed=2)).execute(_work)
    assert _files(run_dir) == before  # no config.yaml, metrics or results of its own mixed in


def test_a_second_run_directory_in_the_same_process_is_refused(tmp_path):
    def work(run, logger):
        with pytest.raises(RunDirectoryLocked, match=rf"process {os.getpid()} .*running the same config"):
            RunDirectory(run.path, _cfg()).execute(_work)
        return {"x": 2.0}

    assert RunDirectory(tmp_path / "run", _cfg()).execute(work) == {"x": 2.0}


def test_a_killed_holder_frees_the_lock_and_the_redo_keeps_only_what_was_there_before(tmp_path, hold):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)  # as Hydra writes them before the job starts
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run_dir / "run.log").write_text("hydra's first line\n")
    (run_dir / "notes.txt").write_text("the user's")
    hold(run_dir, seed=1).kill()  # kill -9, in the middle of its work
    time.sleep(0.2)
    assert (run_dir / "adversarials.npz").exists() and (run_dir / ".lock").exists()
    assert RunDirectory(run_dir, _cfg(seed=1)).execute(_work) == {"x": 1.0}
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".hydra", ".preexisting.json", "checksums.json", "config.yaml", "metrics.json",
        "metrics.jsonl", "notes.txt", "run.log"]
    assert (run_dir / "notes.txt").read_text() == "the user's"
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "seed: 1\n"
    assert (run_dir / "run.log").read_text().startswith("hydra's first line\n")
    assert [json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [
        "log", "summary"]  # the killed attempt's line is gone


def test_a_redo_keeps_a_studys_finished_model_runs_and_removes_the_rest(tmp_path):
    def failing(run, logger):
        (run.path / "models" / "a").mkdir(parents=True)
        (run.path / "models" / "a" / "metrics.json").write_text("{}")
        (run.path / "matrix.json").write_text("half written")
        raise RuntimeError("the study failed after its first model")

    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="first model"):
        RunDirectory(run_dir, _cfg()).execute(failing)
    assert RunDirectory(run_dir, _cfg()).execute(_work) == {"x": 1.0}
    assert (run_dir / "models" / "a" / "metrics.json").exists() and not (run_dir / "matrix.json").exists()


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    """W&B offline, its staging and settings inside tmp_path."""
    monkeypatch.delenv("WANDB_DIR", raising=False)
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    return ["wandb.mode=offline"]


def test_a_run_failing_before_any_work_leaves_no_directory_and_no_wandb_run(tmp_path, wandb_offline):
    import wandb

    no_mnist = tmp_path / "no_mnist"
    no_mnist.mkdir()
    cfg = compose(TINY + wandb_offline + [f"data.mnist_dir={no_mnist}", f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(DataError, match="missing"):
        adv_jax.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() and wandb.run is None
    hydra_dir = tmp_path / "hydra_job"
    (hydra_dir / ".hydra").mkdir(parents=True)  # a directory this run did not create stays, as it was
    with pytest.raises(DataError, match="missing"):
        adv_jax.run(cfg, hydra_dir)
    assert sorted(p.name for p in hydra_dir.iterdir()) == [".hydra", ".preexisting.json"]


def test_a_failing_figure_is_a_warning_marked_in_metrics_json(tmp_path):
    def work(run, logger):
        assert logger.figure("adversarials", lambda: 1 / 0) is None
        return {"x": 1.0}

    run_dir = tmp_path / "run"
    metrics = RunDirectory(run_dir, _cfg()).execute(work)
    assert metrics == {"x": 1.0, "logger/failed": "figure adversarials: ZeroDivisionError: division by zero"}
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert "figure adversarials failed; the run goes on without it" in (run_dir / "run.log").read_text()


def test_a_full_disk_names_the_file_that_could_not_be_written(tmp_path, monkeypatch):
    write_atomic = checkpoint.write_atomic

    def full_disk(path, data):
        if path.name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        write_atomic(path, data)

    monkeypatch.setattr(checkpoint, "write_atomic", full_disk)
    with pytest.raises(OSError, match="No space left on device") as raised:
        RunDirectory(tmp_path / "run", _cfg()).execute(_work)
    assert raised.value.errno == errno.ENOSPC and str(tmp_path / "run" / "metrics.json") in str(raised.value)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, mnist_dir, shared_cache) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    adv_jax.run(compose(TINY + [f"data.mnist_dir={mnist_dir}", f"cache_dir={shared_cache}"]), run_dir)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _edit(path: Path, pattern: str, replacement: str) -> None:
    text, count = re.subn(pattern, replacement, path.read_text(), flags=re.M)
    assert count == 1, pattern
    path.write_text(text)


def test_load_run_verifies_params_and_config_against_their_checksums(run_copy):
    checksums = json.loads((run_copy / "checksums.json").read_text())
    assert checksums == {"result_config_sha256": config_sha256(load_run(run_copy).config)}
    raw = (run_copy / "params.msgpack").read_bytes()
    assert (run_copy / "params.msgpack.sha256").read_text().split()[0] == hashlib.sha256(raw).hexdigest()
    _edit(run_copy / "config.yaml", r"^cache_dir: .*$", "cache_dir: /elsewhere")  # changes no result
    run = load_run(run_copy)
    assert run.config.cache_dir == "/elsewhere" and "error/test" in run.metrics and len(run.params) == 1


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-20:-12] = bytes(255 - b for b in raw[-20:-12])
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


DAMAGES = {
    "flipped params": (lambda d: _flip(d / "params.msgpack"), ValueError,
                       r"run/params\.msgpack: .*params\.msgpack\.sha256; the file is truncated or corrupt"),
    "truncated params": (lambda d: _truncate(d / "params.msgpack"), ValueError,
                         r"run/params\.msgpack: .*params\.msgpack\.sha256; the file is truncated or corrupt"),
    "truncated params, no checksums": (
        lambda d: (_truncate(d / "params.msgpack"), (d / "params.msgpack.sha256").unlink(),
                   (d / "checksums.json").unlink()), ValueError,
        r"run/params\.msgpack: .*; the file is truncated or corrupt"),
    "an interpolation": (lambda d: _edit(d / "config.yaml", r"^cache_dir: .*$", "cache_dir: ${oc.env:HOME}"),
                         ValueError, r"config\.yaml: cache_dir='\$\{oc\.env:HOME\}' is an interpolation"),
    "an edited config": (lambda d: _edit(d / "config.yaml", r"^seed: 0$", "seed: 7"), ValueError,
                         r"config\.yaml: changed since the run"),
    "no metrics": (lambda d: (d / "metrics.json").unlink(), FileNotFoundError,
                   r"metrics\.json: missing, so the run did not finish"),
    "corrupt checksums": (lambda d: (d / "checksums.json").write_text('{"params_sha'), ValueError,
                          r"checksums\.json: unreadable"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_load_run_refuses_a_damaged_run_naming_the_file(run_copy, damage, caplog):
    spoil, error, message = DAMAGES[damage]
    spoil(run_copy)
    with caplog.at_level(logging.WARNING), pytest.raises(error, match=message):
        load_run(run_copy)
    if "no checksums" in damage:
        warned = " ".join(r.getMessage() for r in caplog.records)
        assert "checksums.json: missing" in warned and "params.msgpack: no checksum" in warned


def test_a_run_recorded_before_a_schema_key_existed_keeps_its_checksum(tmp_path):
    """config.yaml of an older run lacks the keys added since (config.LATER_KEYS); read back, the
    schema fills in their defaults, and its result config, so its sha256, is unchanged."""
    cfg = compose(["model=fc100"])
    old = OmegaConf.to_container(cfg, resolve=True)
    for dotted in LATER_KEYS:
        *parents, leaf = dotted.split(".")
        node = old
        for name in parents:
            node = node[name]
        del node[leaf]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(old))
    recorded = config_sha256(json.loads(json.dumps(old)))  # what the older code stored
    assert config_sha256(read_config(tmp_path / "config.yaml")) == recorded == config_sha256(cfg)
    changed = compose(["model=fc100", "lipschitz.local_examples=5"])
    assert config_sha256(changed) != config_sha256(cfg)  # away from its default, a later key counts


@pytest.mark.parametrize("overrides, config_name, job, legacy", [
    (["model=fc100"], "config", "single", "matrix"),
    (["experiment=cross_training_set"], "config", "study", "matrix"),
    (["experiment=transfer_attacks"], "config", "transfer_attacks", "transfer_attacks"),
    (["demo=iris"], "demos", "demo", "matrix"),
])
def test_a_run_recorded_before_the_job_group_reads_back_with_its_job_and_checksum(
        tmp_path, overrides, config_name, job, legacy):
    """Before conf/job/, experiment.job (matrix | transfer_attacks) and the experiment and demo
    names chose the job: such a config.yaml reads back with `job` set, and its recorded sha256
    still verifies; a changed key still does not."""
    cfg = compose(overrides, config_name)
    assert cfg.job == job
    old = OmegaConf.to_container(cfg, resolve=True)
    del old["job"]
    old["experiment"]["job"] = legacy
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(old))
    recorded = config_sha256(json.loads(json.dumps(old)))  # what the older code stored
    read = read_config(tmp_path / "config.yaml")
    assert read.job == job and config_sha256(read) == config_sha256(cfg)
    _check_config(tmp_path / "config.yaml", read, recorded)
    read.seed += 1
    with pytest.raises(ValueError, match="changed since the run"):
        _check_config(tmp_path / "config.yaml", read, recorded)
