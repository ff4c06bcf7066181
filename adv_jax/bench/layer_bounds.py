"""Per-layer Lipschitz upper bounds of the models of finished studies, whose jobs do not store
them (a study's models/<key>/ has params but no lipschitz.json): `lipschitz.layer_table` from each
model's params, for adv_jax/reports/adversarial_training.py (scripts/report_adversarial_training.py
keeps them in --out's .json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from adv_jax import lipschitz
from adv_jax.reports.runs import find_studies, read_json
from adv_jax.run_files import MATRIX_FILE, MODELS_DIR
from adv_jax.rundir import load_run


def layer_bounds(model_dir: Path) -> dict:
    """{"layers": [L_k per layer], "product"}: ||W_k|| x activation slope, and their product."""
    run = load_run(model_dir)
    table = lipschitz.layer_table(run.model, run.params, run.model.input_shape)
    return {"layers": [row["bound"] for row in table], "product": lipschitz.network_bound(table)}


def of_studies(paths: Sequence[Path]) -> dict[str, dict]:
    """{str(model directory): `layer_bounds`} for every model of every study at or below `paths`."""
    out = {}
    for study in find_studies(paths):
        for key in read_json(study / MATRIX_FILE, required=True)["keys"]:
            out[str(study / MODELS_DIR / key)] = layer_bounds(study / MODELS_DIR / key)
    return out
