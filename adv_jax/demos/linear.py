"""Essays 001 and 003 on FC10 (softmax regression on pixels) at the paper's three weight decays.

For a linear model the input gradient of a class score is that class's weight vector (its
"template"), so adding a multiple of the target's template fools it, from a real digit or from
noise. Stronger regularization gives smoother templates and needs larger changes to fool (essay
001). Also: the weight images (essay 003), its misclassified test digits, and essay 001's
10-dimensional toy example (score -3 -> 2 by adding 0.5 w).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.attacks import (
    TemplateAddition,
    attack_batch,
    choose_targets,
    rms_distortion,
)
from adv_jax.attacks.essays import toy_logistic_example
from adv_jax.demos.common import Context, DemoParams, grid, show
from adv_jax.models import logits_fn


@dataclasses.dataclass
class Params(DemoParams):
    model: str = "fc10"
    weight_decays: list = dataclasses.field(default_factory=lambda: [1e-4, 1e-2, 1.0])
    num_examples: int = 1000  # test images attacked for the distortion table (random targets)
    templates: list = dataclasses.field(default_factory=lambda: ["target_score", "margin"])
    max_rms: float = 1.0  # largest template multiple tried, per-pixel RMS (before clipping)
    example: int = 0  # the test image shown being fooled...
    target: int = 0  # ...into this class
    noise_target: int = 1  # the class uniform noise is pushed to
    misclassified: int = 10  # misclassified test digits drawn (of the first weight decay's model)


def _attack(model, weights, x, label, target, template, max_rms, key):
    attack = TemplateAddition(template=template, max_rms=max_rms)
    return attack_batch(attack, logits_fn(model, weights), jnp.asarray(x), label, target, key=key,
                        chunk_size=1000, progress=False)[0]


def _distortion_table(model, weights, x, y, targets, params: Params, key) -> dict:
    """Per template: success rate and mean/median RMS distortion of the successes, attacking
    x (N, 28, 28, 1) with labels y (N,) towards targets (N,)."""
    table = {}
    for template in params.templates:
        x_adv = _attack(model, weights, x, y, targets, template, params.max_rms, key)
        success = np.asarray(jnp.argmax(model.apply(weights, x_adv), -1) == targets)
        distortion = np.asarray(rms_distortion(x, x_adv))
        table[template] = {"success_rate": float(success.mean()),
                           "mean_distortion": float(distortion[success].mean()),
                           "median_distortion": float(np.median(distortion[success]))}
    return table


def _push_shown(model, weights, x, noise, params: Params, key):
    """The shown examples: x[example] and noise (1, 28, 28, 1), pushed to target / noise_target ->
    (starts (2, 28, 28, 1), pushed (2, ...), before (2, 10), after (2, 10), shown rows)."""
    starts = jnp.concatenate([x[params.example:params.example + 1], noise])
    sources = jnp.argmax(model.apply(weights, starts), -1)
    target = jnp.array([params.target, params.noise_target], jnp.int32)
    pushed = _attack(model, weights, starts, sources, target, "target_score", params.max_rms, key)
    before = np.asarray(jax.nn.softmax(model.apply(weights, starts), -1))
    after = np.asarray(jax.nn.softmax(model.apply(weights, pushed), -1))
    shown = [{"start": s, "predicted_before": int(before[i].argmax()),
              "predicted_after": int(after[i].argmax()),
              "target": int(target[i]),
              "probability_of_target_after": float(after[i, target[i]]),
              "distortion": float(rms_distortion(starts[i], pushed[i]))}
             for i, s in enumerate(("digit", "noise"))]
    return np.asarray(starts), np.asarray(pushed), before, after, shown


def _plot_templates(ctx: Context, params: Params, models: dict) -> None:
    """Figure linear_templates: one row per weight decay of the 10 weight images (784,) each."""
    fig, axes = grid(len(params.weight_decays), 10)
    for r, lam in enumerate(params.weight_decays):
        w = np.asarray(models[lam][1][-1]["w"])  # (784, 10)
        for c in range(10):
            show(axes[r, c], w[:, c], f"{c}" if r == 0 else None, signed=True)
        axes[r, 0].set_ylabel(f"lambda {lam:g}", fontsize=8)
    fig.suptitle("FC10 weight images (blue +, red -): smoother as lambda grows", fontsize=9)
    ctx.save(fig, "linear_templates")


def _plot_fooling(ctx: Context, params: Params, models: dict, fooled: list) -> None:
    """Figure linear_fooling: per weight decay, digit / template / pushed and the same for noise,
    from fooled entries (lam, starts (2, 28, 28, 1), pushed (2, ...), before (2, 10), after)."""
    fig, axes = grid(len(params.weight_decays), 6, size=1.4)
    for r, (lam, starts, pushed, before, after) in enumerate(fooled):
        w = np.asarray(models[lam][1][-1]["w"])
        t, u = params.target, params.noise_target
        cells = [(starts[0], f"{before[0].argmax()} ({before[0].max():.2f})", False),
                 (w[:, t], f"template {t}", True),
                 (pushed[0], f"-> {after[0].argmax()} ({after[0, t]:.2f})", False),
                 (starts[1], f"noise: {before[1].argmax()} ({before[1].max():.2f})", False),
                 (w[:, u], f"template {u}", True),
                 (pushed[1], f"-> {after[1].argmax()} ({after[1, u]:.2f})", False)]
        for c, (image, title, signed) in enumerate(cells):
            show(axes[r, c], image, title, signed=signed, fontsize=7)
        axes[r, 0].set_ylabel(f"lambda {lam:g}", fontsize=8)
    fig.suptitle("adding the smallest multiple of the target's template that fools FC10 "
                 "(titles: class, probability)", fontsize=9)
    ctx.save(fig, "linear_fooling")


def _plot_misclassified(ctx: Context, params: Params, models: dict, test) -> None:
    """Figure linear_misclassified: the first `misclassified` wrong test digits (28, 28, 1) of the
    first weight decay's model."""
    model, weights = models[params.weight_decays[0]]
    predicted = np.asarray(jnp.argmax(model.apply(weights, jnp.asarray(test.x)), -1))
    wrong = np.where(predicted != test.y)[0][: params.misclassified]
    fig, axes = grid(1, max(len(wrong), 1), size=1.2)
    for c, i in enumerate(wrong):
        show(axes[0, c], test.x[i], f"{test.y[i]} -> {predicted[i]}")
    fig.suptitle(f"FC10(lambda {params.weight_decays[0]:g}): misclassified test digits "
                 "(true -> predicted)", fontsize=9)
    ctx.save(fig, "linear_misclassified")


def _summary(rows: list) -> dict:
    """The returned numbers: per-model rows, essay 001's toy example, and the two claims."""
    toy = toy_logistic_example()
    distortions = [row["target_score"]["mean_distortion"] for row in rows
                   if "target_score" in row]
    return {
        "models": rows,
        "toy_example": {"score_before": toy.score_before, "score_after": toy.score_after,
                        "probability_before": toy.probability_before,
                        "probability_after": toy.probability_after},
        "claim_template_flips_prediction": bool(all(
            s["predicted_after"] == s["target"] for row in rows for s in row["shown"])),
        "claim_distortion_grows_with_weight_decay": bool(np.all(np.diff(distortions) > 0)),
    }


def run(ctx: Context, params: Params) -> dict:
    """Per weight decay: train FC10, attack the first num_examples test images (N, 28, 28, 1)
    and push the shown examples; then the three figures and the summary."""
    test = ctx.splits("full")["test"]
    key = jax.random.key(ctx.cfg.seed)
    noise = jax.random.uniform(jax.random.fold_in(key, 1), (1, 28, 28, 1))
    n = min(params.num_examples, len(test))
    x, y = jnp.asarray(test.x[:n]), jnp.asarray(test.y[:n])
    models, rows, fooled = {}, [], []
    for lam in params.weight_decays:
        model, weights, numbers = ctx.model(params.model, "full", "lbfgs", {"weight_decay": lam})
        models[lam] = (model, weights)
        targets = choose_targets("random", model.apply(weights, x), y, key=jax.random.fold_in(key, 2))
        row = {"weight_decay": lam, **numbers,
               **_distortion_table(model, weights, x, y, targets, params, key)}
        starts, pushed, before, after, row["shown"] = _push_shown(model, weights, x, noise, params, key)
        fooled.append((lam, starts, pushed, before, after))
        rows.append(row)

    _plot_templates(ctx, params, models)
    _plot_fooling(ctx, params, models, fooled)
    _plot_misclassified(ctx, params, models, test)
    return _summary(rows)
