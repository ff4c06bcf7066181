"""A transfer study's rows as matrix.json stores them (adv_jax/transfer.py makes them): the kinds,
their printed names, clipped or unclipped. Without JAX, so that the reports read them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

KINDS = ("adversarial", "noise", "amplified", "fixed_noise")
PERTURBED = KINDS[1:]  # the kinds that come clipped and unclipped


def row_name(kind: str, source_name: str | None, stddev: float, clipped: bool | None) -> str:
    """The printed name of a row; source_name is the model the examples were made for."""
    name = {"adversarial": f"distorted for {source_name}",
            "noise": f"Gaussian noise, same stddev as for {source_name}",
            "amplified": f"distorted for {source_name}, amplified to stddev {stddev:g}",
            "fixed_noise": f"Gaussian noise, stddev {stddev:g}"}[kind]
    return name if clipped is None else f"{name}, {'clipped' if clipped else 'unclipped'}"


def saved_clipped(row: dict) -> bool | None:
    """`Row.clipped` of a matrix.json row (a dict): None for adversarial rows; rows written before
    the unclipped twins existed were clipped."""
    return None if row["kind"] == "adversarial" else row.get("clipped", True)


def reads_as(row: dict, clipped: bool = True) -> bool:
    """Whether a matrix.json row belongs to the clipped (or unclipped) reading; adversarial rows
    belong to both."""
    return saved_clipped(row) in (None, clipped)


def saved_block(rows: Sequence[dict], kind: str, clipped: bool = True) -> np.ndarray:
    """`block` of matrix.json rows: their errors in percent, (rows of that kind, num_models)."""
    return np.array([r["errors"] for r in rows if r["kind"] == kind and reads_as(r, clipped)])
