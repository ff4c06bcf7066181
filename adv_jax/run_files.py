"""What a run directory holds: every file's name, in one place, for the jobs that write them and
the reports and readers that read them (adv_jax/rundir.py owns the lifecycle).

Any run                   config.yaml  metrics.json (last: the run finished)  metrics.jsonl
                          run.log  checksums.json  wandb/
A single run              params.msgpack  adversarials.npz  adversarials.png  lipschitz.json
A study (`experiment=`)   matrix.json  matrix.csv  matrix.md  heatmap.png  models/<key>/ (runs)
A transfer-attacks study  transfer.json  analysis.npz  adversarials/  models/<key>/ (runs)
A transfer benchmark      benchmark.json  adversarial_sets/  models/<key>/ (runs)
"""

from __future__ import annotations

import dataclasses
from typing import Any

CONFIG_FILE = "config.yaml"  # the resolved config
METRICS_FILE = "metrics.json"  # flat final metrics, written last
METRICS_LOG_FILE = "metrics.jsonl"  # every logged value, in order
CHECKSUMS_FILE = "checksums.json"  # the result config's sha256
LOG_FILE = "run.log"
PARAMS_FILE = "params.msgpack"  # flax serialization; its sha256 beside it (checkpoint.py)
ADVERSARIALS_FILE = "adversarials.npz"  # attacks.generate.Adversarials
ADVERSARIALS_FIGURE = "adversarials.png"
LIPSCHITZ_FILE = "lipschitz.json"  # lipschitz.measure's result
MATRIX_FILE = "matrix.json"  # a study's rows, clean errors and checks (jobs/study.py)
TRANSFER_FILE = "transfer.json"  # a transfer-attacks study's cells (jobs/transfer_attacks.py)
BENCHMARK_FILE = "benchmark.json"  # the transfer benchmark's cells (jobs/transfer_benchmark.py)
BENCHMARK_SETS_DIR = "adversarial_sets"  # its adversarials, one file per surrogate, table and family
MODELS_DIR = "models"  # a study's per-model run directories, models/<key>/

# Files that hold results: a directory with none of them holds no work (a failed start).
RESULT_FILES = (METRICS_FILE, PARAMS_FILE, ADVERSARIALS_FILE, LIPSCHITZ_FILE)
ARTIFACT_FILES = (CONFIG_FILE, *RESULT_FILES)  # a finished run's W&B artifact


@dataclasses.dataclass(frozen=True)
class LipschitzResult:
    """lipschitz.json: upper and lower Lipschitz bounds of one network (lipschitz.measure), L2,
    logits per unit pixel distance.

    layers: the per-layer table rows ({"index", "layer", "shape", "bound", ...}); upper_bound:
    their product; bounds {method: certified bound} with `certified` the smallest (from
    `certified_method`), seconds {stage: s}, skipped {method: why}; lower_bounds {"jacobian",
    "jacobian_ascent", "pair_ratio": measured slope}; bracket: the certified distortion bracket's means (or None).
    """

    layers: list[dict[str, Any]]
    upper_bound: float
    bounds: dict[str, float]
    lower_bounds: dict[str, float]
    seconds: dict[str, float]
    skipped: dict[str, str]
    bracket: dict[str, Any] | None = None

    @property
    def certified_method(self) -> str | None:
        return min(self.bounds, key=self.bounds.get, default=None)

    @property
    def certified(self) -> float | None:
        return self.bounds.get(self.certified_method) if self.bounds else None

    def metrics(self) -> dict[str, float]:
        """The flat entries metrics.json holds: lipschitz/* and certified/*."""
        out = {"lipschitz/upper_bound": self.upper_bound}
        out.update({f"lipschitz/layer{row['index']}": row["bound"] for row in self.layers})
        out.update({f"lipschitz/{name}_lower_bound": v for name, v in self.lower_bounds.items()})
        out.update({f"lipschitz/bound/{m}": v for m, v in self.bounds.items()})
        if self.certified is not None:
            out["lipschitz/certified"] = self.certified
        lower = max(self.lower_bounds.values(), default=0.0)
        if lower > 0:  # the true constant lies between the two: how wide the bracket is
            upper = self.certified if self.certified is not None else self.upper_bound
            out["lipschitz/bracket_ratio"] = upper / lower
        bracket = {k: v for k, v in (self.bracket or {}).items() if k != "seconds"}
        out.update({f"certified/{k}": v for k, v in bracket.items() if v is not None})
        return out

    def to_json(self) -> dict[str, Any]:
        """lipschitz.json's content: the tables and the flat metrics side by side."""
        out = {"layers": self.layers, **self.metrics(), "bounds": self.bounds,
               "certified": self.certified, "certified_method": self.certified_method,
               "lower_bounds": self.lower_bounds, "seconds": self.seconds, "skipped": self.skipped}
        return out | ({"bracket": self.bracket} if self.bracket is not None else {})

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> "LipschitzResult":
        """From lipschitz.json (one written before certified bounds existed has none)."""
        return cls(layers=content["layers"], upper_bound=content["lipschitz/upper_bound"],
                   bounds=content.get("bounds", {}), lower_bounds=content.get("lower_bounds", {}),
                   seconds=content.get("seconds", {}), skipped=content.get("skipped", {}),
                   bracket=content.get("bracket"))
