"""Per-layer Lipschitz upper bounds of the models of finished studies, for
adv_jax/reports/adversarial_training.py (scripts/report_adversarial_training.py keeps them in
--out's .json): read from each models/<key>/lipschitz.json, or, for a study made before its model
runs stored one, `lipschitz.layer_table` from the model's params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from adv_jax import lipschitz
from adv_jax.reports.runs import find_studies, read_json
from adv_jax.run_files import LIPSCHITZ_FILE, MATRIX_FILE, MODELS_DIR, LipschitzResult
from adv_jax.rundir import load_run


def layer_bounds(model_dir: Path) -> dict:
    """{"layers": [L_k per layer], "product"}: ||W_k|| x activation slope, and their product."""
    if (model_dir / LIPSCHITZ_FILE).exists():
        stored = LipschitzResult.from_json(read_json(model_dir / LIPSCHITZ_FILE, required=True))
        return {"layers": [row["bound"] for row in stored.layers], "product": stored.upper_bound}
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
