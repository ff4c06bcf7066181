"""Transfer matrices (paper Tables 2 and 4): adversarials made for one model, fed to every model.

Conventions: images (N, 28, 28, 1) float32 in [0, 1]; distortion = per-pixel RMS
sqrt(mean_i (x'_i - x_i)^2); errors are fractions in [0, 1] (tables print percent); rows are
example sets ("made for"), columns are models ("fed to").

For models M_1..M_m with adversarials x'_j made for M_j from clean images x (labels y), the rows
of a study are, for each j:
  adversarial  x'_j                                     paper: "distorted for M_j"
  noise        x + N(0, d_j^2), d_j = mean RMS(x'_j - x)  paper: "Gaussian noise, same stddev"
  amplified    x + s (x'_j - x) / RMS(x'_j - x)            paper: "amplified to stddev 0.1", s = 0.1
and, for each fixed s, one row x + N(0, s^2) (paper: "Gaussian noise, stddev 0.1").
The paper does not say whether it clipped noisy and amplified images to [0, 1], so every noise,
amplified and fixed-noise row comes twice, from the same draw: clipped (the images stay images;
clipping lowers the realized stddev, recorded as `realized_stddev`) and unclipped (what the model
sees, pixels outside [0, 1] included). Clipped rows are the default reading (`block`,
`structure_checks`). An example whose attack left it unchanged (RMS 0) has no direction and stays
unchanged when amplified.
"""

from __future__ import annotations

import csv
import io
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.markdown import markdown  # noqa: F401  (transfer.markdown: matrix.md's tables)
from adv_jax.transfer_rows import (  # noqa: F401  (the saved rows' schema, also transfer.*)
    KINDS,
    PERTURBED,
    reads_as,
    row_name,
    saved_block,
    saved_clipped,
)

PredictFn = Callable[[np.ndarray], np.ndarray]  # images (N, 28, 28, 1) -> labels (N,)


class Row(NamedTuple):
    name: str  # as printed, e.g. "distorted for FC100-100-10"
    kind: str  # one of KINDS
    source: int | None  # index of the model the examples were made for (None: fixed noise)
    stddev: float  # intended per-pixel stddev (adversarial rows: their mean distortion)
    realized_stddev: float  # mean per-pixel RMS of (images - clean images), as fed (clipped or not)
    errors: np.ndarray  # (num_models,) error of each model on the row's images, in [0, 1]
    clipped: bool | None = None  # PERTURBED kinds: clipped to [0, 1] or not; adversarial: None


def rms(x: np.ndarray, x_other: np.ndarray) -> np.ndarray:
    """Per-pixel RMS distance of each example: (N, ...) x2 -> (N,)."""
    diff = np.asarray(x_other, np.float64) - np.asarray(x, np.float64)
    return np.sqrt(np.mean(diff.reshape(len(diff), -1) ** 2, axis=1))


def error_rates(predict_fns: Sequence[PredictFn], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Error of each model on (x, y): (num_models,) fractions."""
    return np.array([float(np.mean(np.asarray(f(x)) != np.asarray(y))) for f in predict_fns])


def gaussian_noise(x: np.ndarray, stddev: float, *, key: jax.Array, clip: bool = True) -> np.ndarray:
    """x + N(0, stddev^2) per pixel, clipped to [0, 1] if `clip`."""
    noisy = np.asarray(x, np.float32) + np.asarray(stddev * jax.random.normal(key, np.shape(x), jnp.float32))
    return np.clip(noisy, 0.0, 1.0) if clip else noisy


def scale_perturbation(x: np.ndarray, x_adv: np.ndarray, stddev: float) -> np.ndarray:
    """x + stddev (x_adv - x) / RMS(x_adv - x), NOT clipped: each perturbation's per-pixel RMS is
    exactly `stddev`, except where x_adv == x (kept unchanged)."""
    x = np.asarray(x, np.float64)
    r = np.asarray(x_adv, np.float64) - x
    norm = rms(x, x_adv).reshape((-1,) + (1,) * (x.ndim - 1))
    scale = np.divide(stddev, norm, out=np.zeros_like(norm), where=norm > 0)
    return x + scale * r


def amplify(x: np.ndarray, x_adv: np.ndarray, stddev: float, clip: bool = True) -> np.ndarray:
    """The paper's amplified adversarials: `scale_perturbation`, then clipped to [0, 1] if `clip`."""
    scaled = scale_perturbation(x, x_adv, stddev)
    return (np.clip(scaled, 0.0, 1.0) if clip else scaled).astype(np.float32)


def transfer_rows(predict_fns: Sequence[PredictFn], names: Sequence[str], x: np.ndarray,
                  y: np.ndarray, x_adv: Sequence[np.ndarray], *, key: jax.Array,
                  noise_stddevs: Sequence[float] = (0.1,), amplify_to: float | None = 0.1) -> list[Row]:
    """Every row of a study: clean images x (N, 28, 28, 1), labels y (N,), and x_adv[j] (N, ...)
    made for model j. Matched noise for row j uses key fold_in(key, j); fixed noise s_k uses
    fold_in(key, m + k), m = number of models; a clipped row and its unclipped twin share the draw.
    Rows are ordered adversarial, noise, amplified (one per model each), then the fixed-noise rows;
    within each perturbed kind the clipped rows come first."""
    m = len(predict_fns)
    errors = lambda images: error_rates(predict_fns, images, y)  # noqa: E731

    def perturbed(kind, source, stddev, unclipped):  # the twins of one draw
        out = []
        for clip, images in ((True, np.clip(unclipped, 0.0, 1.0)), (False, unclipped)):
            out.append(Row(row_name(kind, None if source is None else names[source], stddev, clip), kind,
                           source, stddev, float(rms(x, images).mean()), errors(images), clip))
        return out

    distortion = [float(rms(x, xa).mean()) for xa in x_adv]
    rows = [Row(row_name("adversarial", name, d, None), "adversarial", j, d, d, errors(xa))
            for j, (name, xa, d) in enumerate(zip(names, x_adv, distortion))]
    by_kind = {kind: [] for kind in PERTURBED}
    for j, d in enumerate(distortion):
        by_kind["noise"] += perturbed("noise", j, d, gaussian_noise(x, d, key=jax.random.fold_in(key, j),
                                                                    clip=False))
        if amplify_to is not None:
            by_kind["amplified"] += perturbed("amplified", j, amplify_to,
                                              amplify(x, x_adv[j], amplify_to, clip=False))
    for k, s in enumerate(noise_stddevs):
        by_kind["fixed_noise"] += perturbed("fixed_noise", None, float(s), gaussian_noise(
            x, s, key=jax.random.fold_in(key, m + k), clip=False))
    for kind in PERTURBED:
        rows += sorted(by_kind[kind], key=lambda r: not r.clipped)  # stable: clipped rows first
    return rows


def block(rows: Sequence[Row], kind: str, clipped: bool = True) -> np.ndarray:
    """The (rows of that kind, num_models) error block, in [0, 1]: clipped or unclipped rows of a
    perturbed kind."""
    return np.array([r.errors for r in rows if r.kind == kind and r.clipped in (None, clipped)])


def structure_checks(rows: Sequence[Row]) -> dict[str, bool]:
    """The paper's qualitative claims, as booleans over the matrix (clipped rows).

    diagonal_100: every model errs on all of its own adversarials.
    above_noise: every off-diagonal cell exceeds the matched-noise cell of its row and column.
    amplified_above: every amplified cell exceeds (or equals, at 100%) the unamplified one.
    """
    adv, noise, amp = block(rows, "adversarial"), block(rows, "noise"), block(rows, "amplified")
    off = ~np.eye(len(adv), dtype=bool)
    out = {"diagonal_100": bool(np.all(np.diag(adv) == 1.0)),
           "above_noise": bool(np.all(adv[off] > noise[off]))}
    if amp.size:
        out["amplified_above"] = bool(np.all((amp[off] > adv[off]) | (amp[off] == 1.0)))
    return out


def pct(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}"


def matrix_table(names: Sequence[str], rows: Sequence[Row]) -> tuple[list[str], list[list[object]]]:
    """The paper's Table 2/4 layout: one line per row, errors in percent, then its stddev."""
    columns = ["examples \\ fed to", *names, "stddev", "realized stddev"]
    body = [[r.name, *(pct(e) for e in r.errors), f"{r.stddev:.3f}", f"{r.realized_stddev:.3f}"]
            for r in rows]
    return columns, body


def to_csv(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def clean_table(names: Sequence[str], splits: Sequence[str], errors: Sequence[dict[str, float]],
                trained_on: Sequence[str], distortion: Sequence[float],
                success: Sequence[float]) -> tuple[list[str], list[list[object]]]:
    """Table 3's layout: each model's clean error (percent) on each split, then its adversarials'
    attack success rate and mean per-pixel RMS distortion."""
    columns = ["model", "trained on", *(f"error on {s}" for s in splits), "attack success",
               "av. distortion"]
    body = [[n, t, *(pct(e[s], 2) for s in splits), pct(ok), f"{d:.3f}"]
            for n, t, e, d, ok in zip(names, trained_on, errors, distortion, success)]
    return columns, body


def transfer_rates(y: np.ndarray, target: np.ndarray, source_fooled: np.ndarray,
                   clean_prediction: np.ndarray, adversarial_prediction: np.ndarray) -> dict:
    """How often examples made on a source fool a target model, with each rate's denominator.

    y, target (-1 = untargeted), source_fooled (the source's own attack succeeded: it predicts
    target, or anything but y untargeted), and the TARGET model's predictions on the clean and
    the adversarial images, all (N,). Counts and percents:
      all:         target errs on x_adv (prediction != y), over all N attacked examples
      conditional: the same, over the examples the source fooled AND the target classified
                   correctly when clean (n_conditional of them; nan when there are none)
      hit_all, hit_conditional (targeted only): the target predicts the source's target label,
                   over the same two denominators
    """
    y, target = np.asarray(y), np.asarray(target)
    errs = np.asarray(adversarial_prediction) != y
    kept = np.asarray(source_fooled, bool) & (np.asarray(clean_prediction) == y)
    ratio = lambda hits, n: 100.0 * hits / n if n else float("nan")  # noqa: E731
    out = {"n": int(len(y)), "errors": int(errs.sum()), "rate_all": ratio(errs.sum(), len(y)),
           "n_conditional": int(kept.sum()), "errors_conditional": int((errs & kept).sum()),
           "rate_conditional": ratio((errs & kept).sum(), kept.sum())}
    if np.any(target >= 0):
        hits = np.asarray(adversarial_prediction) == target
        out.update(hits=int(hits.sum()), hit_all=ratio(hits.sum(), len(y)),
                   hits_conditional=int((hits & kept).sum()),
                   hit_conditional=ratio((hits & kept).sum(), kept.sum()))
    return out
