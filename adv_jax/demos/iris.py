"""Essay 000 on Iris: a linear model's regions reach far from the data, and so does its confidence.

Multinomial logistic regression (L2, scikit-learn's lbfgs, fit on all 150 flowers) on petal length
and width (cm); its decision regions and maximum-probability map over a window much wider than the
data; three far-away points with their predictions and confidences; and linear against
Gaussian-kernel (RBF) SVM regions: the RBF machine's confidence falls back far from the data.
"""

from __future__ import annotations

import dataclasses
import warnings

import matplotlib.pyplot as plt
import numpy as np

from adv_jax.demos.common import Context, DemoParams

CLASS_COLORS = np.array([[0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17]])


@dataclasses.dataclass
class Params(DemoParams):
    far_points: list = dataclasses.field(
        default_factory=lambda: [[0.1, 5.0], [10.0, 10.0], [5.0, -5.0]])  # essay 000's (cm)
    window: list = dataclasses.field(default_factory=lambda: [-6.0, 12.0])  # map range, both axes
    resolution: int = 300  # grid points per axis of the maps
    regularization: float = 1.0  # C of LogisticRegression and SVC (inverse L2 strength)


def _sklearn():
    try:
        from sklearn import datasets, linear_model, svm
    except ImportError as e:
        raise ImportError("the iris demonstration needs scikit-learn: pip install -e '.[demos]'") from e
    return datasets, linear_model, svm


def load_petals() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(150, 2) petal length and width in cm, (150,) species 0-2, and the species names."""
    datasets, _, _ = _sklearn()
    iris = datasets.load_iris()
    return iris.data[:, 2:4], iris.target, [str(n) for n in iris.target_names]


def fit_models(x, y, regularization: float = 1.0, seed: int = 0) -> dict:
    """{"logistic", "svm_linear", "svm_rbf"}: fitted classifiers with predict_proba."""
    _, linear_model, svm = _sklearn()
    with warnings.catch_warnings():  # sklearn 1.9 deprecates probability=True; same numbers
        warnings.simplefilter("ignore", FutureWarning)
        return _fit(x, y, regularization, seed, linear_model, svm)


def _fit(x, y, regularization, seed, linear_model, svm) -> dict:
    return {
        "logistic": linear_model.LogisticRegression(C=regularization, max_iter=1000).fit(x, y),
        "svm_linear": svm.SVC(kernel="linear", C=regularization, probability=True,
                              random_state=seed).fit(x, y),
        "svm_rbf": svm.SVC(kernel="rbf", C=regularization, probability=True,
                           random_state=seed).fit(x, y),
    }


def _probability_image(model, window, resolution):
    axis = np.linspace(window[0], window[1], resolution)
    xx, yy = np.meshgrid(axis, axis)
    probs = model.predict_proba(np.stack([xx.ravel(), yy.ravel()], 1)).reshape(resolution, resolution, 3)
    # Class colour, faded to white where the model is unsure (max probability 1/3 -> white).
    strength = np.clip((probs.max(-1) - 1 / 3) / (2 / 3), 0, 1)[..., None]
    rgb = CLASS_COLORS[probs.argmax(-1)] * strength + (1 - strength)
    return rgb, probs, axis


def _map(ax, model, x, y, window, resolution, title, far=None, far_probs=None):
    rgb, probs, axis = _probability_image(model, window, resolution)
    extent = (window[0], window[1], window[0], window[1])
    ax.imshow(rgb, origin="lower", extent=extent, aspect="auto")
    contours = ax.contour(axis, axis, probs.max(-1), levels=[0.5, 0.9, 0.99], colors="k",
                         linewidths=0.6, alpha=0.6)
    ax.clabel(contours, fontsize=6)
    ax.scatter(x[:, 0], x[:, 1], c=CLASS_COLORS[y], s=6, edgecolors="k", linewidths=0.2)
    if far is not None:
        for (px, py), p in zip(far, far_probs):
            ax.plot(px, py, "k*", ms=9)
            ax.annotate(f"({px:g}, {py:g}): {p.max():.3f}", (px, py), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("petal length (cm)"), ax.set_ylabel("petal width (cm)")
    ax.set_title(title, fontsize=9)


def run(ctx: Context, params: Params) -> dict:
    x, y, names = load_petals()
    models = fit_models(x, y, params.regularization, ctx.cfg.seed)
    logistic = models["logistic"]
    far = np.asarray(params.far_points, np.float64)
    far_probs = {k: m.predict_proba(far) for k, m in models.items()}
    accuracy = {k: float(m.score(x, y)) for k, m in models.items()}

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    wrong = logistic.predict(x) != y
    close = [min(x[:, 0].min(), x[:, 1].min()) - 0.5, max(x[:, 0].max(), x[:, 1].max()) + 0.5]
    _map(axes[0], logistic, x, y, close, params.resolution,
         f"logistic regression near the data (accuracy {accuracy['logistic']:.3f})")
    axes[0].scatter(x[wrong, 0], x[wrong, 1], s=60, facecolors="none", edgecolors="r")
    _map(axes[1], logistic, x, y, params.window, params.resolution,
         "far from the data: max probability (contours 0.5, 0.9, 0.99)", far, far_probs["logistic"])
    for c, name in enumerate(names):
        axes[1].plot([], [], "s", color=CLASS_COLORS[c], label=name)
    axes[1].legend(fontsize=7, loc="lower left")
    ctx.save(fig, "iris_logistic")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, key, label in zip(axes, ("svm_linear", "svm_rbf"), ("linear kernel", "Gaussian (RBF) kernel")):
        _map(ax, models[key], x, y, params.window, params.resolution,
             f"SVM, {label} (accuracy {accuracy[key]:.3f})", far, far_probs[key])
    ctx.save(fig, "iris_svm")

    def points(key):
        return [{"point": list(map(float, p)), "prediction": names[int(q.argmax())],
                 "probability": float(q.max())} for p, q in zip(far, far_probs[key])]

    return {
        "accuracy": accuracy,
        "far_points": {k: points(k) for k in models},
        "far_min_probability": {k: float(far_probs[k].max(1).min()) for k in models},
        "claim_far_points_above_0.99": bool(far_probs["logistic"].max(1).min() > 0.99),
    }
