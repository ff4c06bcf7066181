"""W&B conventions (docs/wandb.md): mode, project and entity from WANDB_* unless the command line
says otherwise, a sweep's runs grouped and named by Hydra, run artifacts, online mode failing
fast without a server, and a W&B failure costing the run nothing (a warning, marked in
metrics.json). W&B runs are read back from their offline `.wandb` record logs."""

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

import adv_jax
from adv_jax.config import compose
from adv_jax.config import as_config
from adv_jax.logger import WandbLogger, open_logger
from adv_jax.rundir import RunDirectory

REPO = Path(__file__).resolve().parents[1]
BLOCK, HEADER = 32768, 7  # the .wandb file's LevelDB-log framing: 32 KiB blocks, 7-byte headers
FULL, LAST = 1, 4


@pytest.fixture(autouse=True)
def wandb_env(monkeypatch, tmp_path):
    """No WANDB_* from the caller's shell; W&B's staging and settings kept inside tmp_path."""
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "WANDB_DIR",
                 "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))


@pytest.fixture
def tiny(tmp_path, mnist_dir) -> list[str]:
    """A run of a few seconds: 500 images, one Adam epoch, no attack, no Lipschitz images."""
    return ["model=fc10", f"data.mnist_dir={mnist_dir}", "data.train_limit=500", "train=adam",
            "train.epochs=1", "attack=none", "lipschitz.images=0", f"cache_dir={tmp_path / 'cache'}"]


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of the one offline W&B run under run_dir/wandb/."""
    (log_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data, pos, chunk, records = log_file.read_bytes(), HEADER, b"", []  # the file header: ':W&B', magic, version
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def eventually(read, seconds: float = 15.0):
    """read() once it returns something. W&B's service process writes the run's file on its own
    schedule, even after `finish()` returns: `wandb.teardown()` stops the service, which flushes
    it (the next run starts a new one)."""
    wandb.teardown()
    deadline = time.monotonic() + seconds
    while not (found := read()) and time.monotonic() < deadline:
        time.sleep(0.25)
    return found


def run_record(run_dir: Path):
    runs = eventually(lambda: [r.run for r in wandb_records(run_dir) if r.HasField("run")])
    assert runs, f"no run record in {run_dir / 'wandb'}"
    return runs[0]


def run_artifacts(run_dir: Path, expected: bool = True) -> list:
    """Artifacts of type "run" (W&B logs tables as artifacts of type "run_table"). expected=False:
    once the file holds its run record, whatever artifacts it has by then (none, if right)."""
    def read():
        return [r.artifact for r in wandb_records(run_dir) if r.HasField("artifact") and r.artifact.type == "run"]

    if not expected:
        run_record(run_dir)
        return read()
    return eventually(read)


def test_wandb_mode_disabled_from_the_environment_writes_no_wandb_files(monkeypatch, tmp_path, tiny):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose(tiny)
    assert cfg.wandb.mode == "disabled"
    adv_jax.run(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").exists() and (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "wandb").exists()


def test_offline_is_the_default_without_wandb_mode():
    assert compose().wandb.mode == "offline"
    assert compose().wandb.project == "adv_jax" and compose().wandb.entity is None


@pytest.mark.parametrize("override", ["wandb=offline", "wandb.mode=offline"])
def test_an_explicit_mode_beats_wandb_mode(monkeypatch, tmp_path, override):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose([override])
    assert cfg.wandb.mode == "offline"
    with open_logger(cfg, tmp_path, name="explicit") as logger:
        logger.log({"x": 1.0}, step=0)
    assert run_record(tmp_path).display_name == "explicit"


def test_wandb_project_and_entity_reach_the_wandb_run(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "someone")
    cfg = compose()
    assert (cfg.wandb.project, cfg.wandb.entity) == ("from-env", "someone")
    assert compose(["wandb.project=cli"]).wandb.project == "cli"
    with open_logger(cfg, tmp_path, name="p") as logger:
        logger.log({"x": 1.0}, step=0)
    record = run_record(tmp_path)
    assert (record.project, record.entity) == ("from-env", "someone")


def test_a_bad_mode_from_wandb_mode_names_the_key_and_the_choices(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    with pytest.raises(ValueError, match=r"wandb\.mode='dryrun' \(from the environment variable WANDB_MODE\) "
                                         r"is not allowed: one of \['offline', 'online', 'disabled'\]"):
        with open_logger(compose(), tmp_path):
            pass
    assert not (tmp_path / "wandb").exists()


def test_a_finished_run_logs_its_files_as_one_artifact(tmp_path, tiny):
    overrides = tiny + ["attack=fgsm", "attack.num_examples=20", "wandb.mode=offline", "wandb.log_artifacts=true"]
    run_dir = tmp_path / "run"
    adv_jax.run(compose(overrides), run_dir)
    (artifact,) = run_artifacts(run_dir)
    assert artifact.type == "run" and artifact.name == f"run-{run_record(run_dir).run_id}"
    staged = {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}
    assert sorted(staged) == ["adversarials.npz", "config.yaml", "lipschitz.json", "metrics.json",
                              "params.msgpack"]
    for name, copy in staged.items():
        assert copy.read_bytes() == (run_dir / name).read_bytes(), name


def test_artifacts_are_off_offline_by_default_and_after_a_failure(tmp_path):
    cfg = compose(["wandb=offline"])
    assert cfg.wandb.log_artifacts is None
    with open_logger(cfg, tmp_path / "a", artifact_files=["config.yaml"]) as logger:
        logger.log({"x": 1.0})  # the backends open on their first call
        (tmp_path / "a" / "config.yaml").write_text("seed: 0\n")
    assert run_artifacts(tmp_path / "a", expected=False) == []
    cfg.wandb.log_artifacts = True
    with pytest.raises(RuntimeError), open_logger(cfg, tmp_path / "b", artifact_files=["config.yaml"]) as logger:
        logger.log({"x": 1.0})
        (tmp_path / "b" / "config.yaml").write_text("seed: 0\n")
        raise RuntimeError("the job failed")
    assert run_artifacts(tmp_path / "b", expected=False) == []


def closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_online_without_a_reachable_server_fails_fast_naming_offline(monkeypatch, tmp_path, tiny):
    port = closed_loopback_port()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    message = (rf"W&B online: cannot reach 127\.0\.0\.1:{port} .*"
               r"use wandb=offline \(sync later with `wandb sync`\) or wandb=disabled")
    with pytest.raises(ConnectionError, match=message):
        adv_jax.run(compose(tiny + ["wandb=online"]), tmp_path / "run")
    assert time.monotonic() - start < 5
    assert wandb.run is None and not (tmp_path / "run" / "wandb").exists()


def test_a_multiruns_jobs_are_grouped_by_sweep_and_named_by_overrides(tmp_path, tiny):
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    sweep = tmp_path / "sweep-7"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sweep.py"), "-m", "seed=0,1", "wandb=offline", "cpu_devices=1",
         f"hydra.sweep.dir={sweep}"] + tiny, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    assert all((job / "run.log").read_text() for job in jobs)  # each job logs to its own directory
    records = [run_record(job) for job in jobs]
    assert [r.run_group for r in records] == ["sweep-7", "sweep-7"]
    assert [r.display_name for r in records] == [job.name.split("_", 1)[1] for job in jobs]
    assert "seed=1" in records[1].display_name and "cache_dir" not in records[1].display_name


METHODS = ("log", "image", "table", "summary", "close")


def _logs_everything(run, logger):
    logger.log({"x": 1.0}, step=0)
    logger.image("figure", run.path / "figure.png")
    logger.table("table", ["a"], [[1]])
    return {"x": 1.0}


@pytest.mark.parametrize("failing", ("init",) + METHODS)
def test_a_failing_wandb_call_is_one_warning_marked_in_metrics_json(monkeypatch, tmp_path, failing):
    calls = []

    def init(self, *args, **kwargs):
        if failing == "init":
            raise RuntimeError("boom")

    def method(name):
        def call(self, *args, **kwargs):
            calls.append(name)
            if name == failing:
                raise RuntimeError("boom")
        return call

    monkeypatch.setattr(WandbLogger, "__init__", init)
    for name in METHODS:
        monkeypatch.setattr(WandbLogger, name, method(name))
    run_dir = tmp_path / "run"
    metrics = RunDirectory(run_dir, as_config({"wandb": {"mode": "offline"}})).execute(_logs_everything)
    assert metrics == {"x": 1.0, "logger/failed": "wandb: RuntimeError: boom"}
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    warning = "wandb failed; the run goes on without it: RuntimeError: boom"
    assert (run_dir / "run.log").read_text().count(warning) == 1
    after = calls[calls.index(failing) + 1:] if failing in calls else calls
    assert after in ([], ["close"])  # closed once (marked failed), then called no more


def test_an_unwritable_wandb_directory_costs_the_run_nothing(tmp_path, tiny):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "wandb").write_text("a file where W&B's directory would go")
    metrics = adv_jax.run(compose(tiny + ["wandb.mode=offline"]), run_dir)
    assert metrics["logger/failed"].startswith("wandb: NotADirectoryError: ")
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics and "error/test" in metrics
    assert (run_dir / "params.msgpack").exists() and wandb.run is None
    assert "wandb failed; the run goes on without it: NotADirectoryError" in (run_dir / "run.log").read_text()
