"""The paper's Figure 7: originals, their minimum-distortion adversarials (the paper's box L-BFGS,
random targets) and the differences magnified, for FC10 and FC100-100-10; and Gaussian-noise
counterparts at the stddev where each model still classifies about half of the test images
correctly (found by bisection; noise clipped to [0, 1] like every image here), with that accuracy.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from adv_jax.attacks.generate import generate, summarize
from adv_jax.config import CONF_DIR, AttackConfig
from adv_jax.demos.common import FIGURE_DPI, Context, DemoParams
from adv_jax.figures import adversarial_grid
from adv_jax.models import logits_fn, predict


@dataclasses.dataclass
class Params(DemoParams):
    # key -> [conf/model entry, training split, conf/train entry, model changes]
    models: dict = dataclasses.field(default_factory=lambda: {
        "fc10": ["fc10", "full", "lbfgs", {"weight_decay": 1e-4}],
        "fc100": ["fc100", "p1", "lbfgs", {}]})
    attack: str = "lbfgs"  # conf/attack entry
    columns: int = 10  # test images shown (and attacked)
    noise_examples: int = 2000  # test images the noise accuracy is measured on
    accuracy: float = 0.5  # wanted accuracy under noise
    max_stddev: float = 4.0  # upper end of the stddev bisection
    search_steps: int = 20


def noisy(x: jax.Array, stddev, noise: jax.Array) -> jax.Array:
    return jnp.clip(x + stddev * noise, 0.0, 1.0)


def stddev_for_accuracy(model, weights, x, y, noise, accuracy: float, upper: float,
                        steps: int) -> tuple[float, float]:
    """Bisection for the noise stddev at which accuracy on (x, y) with this fixed standard noise
    falls to `accuracy` -> (stddev, the accuracy measured there)."""
    def measure(stddev):
        return float(jnp.mean(predict(model, weights, noisy(x, stddev, noise)) == y))

    low, high = 0.0, upper
    if measure(high) > accuracy:
        raise ValueError(f"accuracy stays above {accuracy} up to stddev {upper}; raise max_stddev")
    for _ in range(steps):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if measure(middle) > accuracy else (low, middle)
    return high, measure(high)


def run(ctx: Context, params: Params) -> dict:
    attack_cfg = OmegaConf.merge(OmegaConf.structured(AttackConfig),
                                 OmegaConf.load(CONF_DIR / "attack" / f"{params.attack}.yaml"),
                                 {"target": "random"})
    key = jax.random.key(ctx.cfg.seed)
    out = {}
    for name, (model_name, split, train, changes) in params.models.items():
        model, weights, numbers = ctx.model(model_name, split, train, changes)
        test = ctx.splits(split)["test"]
        x, y = test.x[: params.columns], test.y[: params.columns]
        generated = generate(attack_cfg, logits_fn(model, weights), x, y,
                             key=jax.random.fold_in(key, 1), progress=False)
        adv = generated.adversarials
        predicted = np.asarray(predict(model, weights, jnp.asarray(adv.x_adv)))
        ctx.record(adversarial_grid(adv.x, adv.x_adv, ctx.run_dir / f"figure7_{name}.png",
                                    labels=adv.y, predicted=predicted, columns=params.columns,
                                    dpi=FIGURE_DPI))

        n = min(params.noise_examples, len(test))
        xs, ys = jnp.asarray(test.x[:n]), jnp.asarray(test.y[:n])
        noise = jax.random.normal(jax.random.fold_in(key, 2), xs.shape)
        stddev, accuracy = stddev_for_accuracy(model, weights, xs, ys, noise, params.accuracy,
                                               params.max_stddev, params.search_steps)
        x_noisy = np.asarray(noisy(xs[: params.columns], stddev, noise[: params.columns]))
        ctx.record(adversarial_grid(
            np.asarray(xs[: params.columns]), x_noisy, ctx.run_dir / f"figure7_noise_{name}.png",
            labels=test.y[: params.columns],
            predicted=np.asarray(predict(model, weights, jnp.asarray(x_noisy))),
            columns=params.columns, row_names=("original", f"noise {stddev:.2f}"),
            dpi=FIGURE_DPI))
        realized = float(np.sqrt(np.mean((np.asarray(noisy(xs, stddev, noise)) - np.asarray(xs)) ** 2)))
        summary = summarize(generated)
        out[name] = {"model": numbers,
                     "adversarial": {k.split("/")[1]: v for k, v in summary.items()
                                     if k.split("/")[1] in ("success_rate", "mean_distortion",
                                                            "num_examples")},
                     "noise": {"stddev": stddev, "accuracy": accuracy, "examples": n,
                               "realized_rms_after_clipping": realized}}
    return out
