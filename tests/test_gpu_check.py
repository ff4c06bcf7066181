"""scripts/gpu_check.sh --cpu-short: the GPU check's code (adv_jax/bench/harness.py) at the size
tiny on a CPU, as on the GPU image, where wandb is not installed (a stand-in `wandb` that fails to
import shadows the real one, so a job that imports it with wandb=disabled fails). It writes its
report where told, never results/gpu.md."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cpu_short_mode_writes_every_section_without_wandb(tmp_path, mnist_dir):
    no_wandb = tmp_path / "no_wandb" / "wandb"
    no_wandb.mkdir(parents=True)
    (no_wandb / "__init__.py").write_text("raise ImportError('wandb is not installed on the GPU image')\n")
    committed = (REPO / "results" / "gpu.md").read_text()
    env = dict(os.environ, PYTHONPATH=str(no_wandb.parent), ADV_JAX_MNIST_DIR=str(mnist_dir),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))  # this python
    out = tmp_path / "gpu.md"
    done = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--cpu-short", str(out)], env=env,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    sections = json.loads(out.with_suffix(".json").read_text())["sections"]
    assert set(sections) == {"training", "attacks", "sweeps", "experiment"}
    assert all(s["size"] == "tiny" and s["machine"]["devices"] and "error" not in s for s in sections.values()), \
        {k: s.get("error") for k, s in sections.items()}
    training = sections["training"]["rows"]
    assert sorted((r["k"], r["mode"]) for r in training) == [(1, "sequential"), (1, "together"),
                                                             (2, "sequential"), (2, "together")]
    assert all(r["seconds"] > 0 and r["final_loss"] > 0 and r["images"] == 2000 for r in training)  # debug=tiny
    (attack,) = sections["attacks"]["rows"]
    assert attack["examples"] == 5 and 0 <= attack["success_rate"] <= 1
    (sweep,) = sections["sweeps"]["rows"]
    assert sweep["launcher"] == "joblib" and sweep["jobs"] == 2 and len(sweep["test_errors"]) == 2
    (study,) = sections["experiment"]["rows"]
    assert study["jobs"] == 1 and len(study["checks"]) == 1 and len(study["test_errors"]) == 3
    text = out.read_text()
    assert "gpu_check.sh --cpu-short" in text and "## A 2-job sweep sharing the device" in text
    assert (out.parent / "figures" / "gpu_training.png").exists()
    assert (REPO / "results" / "gpu.md").read_text() == committed
