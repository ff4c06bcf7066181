"""How the cost grows (results/scaling.md): four measured curves, each point the median of
`repeats` timed calls (`median_seconds`).

  attack_examples   the L-BFGS attack on FC100 (P1, the model cache) against the number of images,
                    the first N of the 10000 test images followed by the 60000 training images
  attack_width      the same attack on the first `width_examples` test images against the width w
                    of 784-w-w-10 sigmoid networks (Adam, `width_epochs` epochs on P1, cached)
  train_size        `train.train_model` of FC100 (Adam, `train_epochs` epochs) against the number of
                    training images (the first N of all 60000), never cached
  bracket_examples  the local certified bracket (`lipschitz.bracket_summary`) on FC100's L-BFGS
                    adversarials of the first N pool images (curve 1's adversarials, sliced)

Each attack or bracket point has one untimed warm-up call at its own size first (every size is a
program of its own). `train_model` builds and jits its epoch program afresh on every call, so each
training call compiles; the training point is the median of `repeats` calls after a first one
(`cold_seconds`, kept beside it), and both include that compilation.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from adv_jax import devices
from adv_jax.attacks.generate import generate
from adv_jax.certify import LOCAL_CHUNK
from adv_jax.config import compose
from adv_jax.data import load_splits
from adv_jax.lipschitz import bracket_summary
from adv_jax.models import build_model, logits_fn, num_params
from adv_jax.bench.timing import median_seconds
from adv_jax.train import train_model
from adv_jax.trained import train_or_load

FC100 = ["model=fc100", "attack=lbfgs"]  # FC100 on P1, L-BFGS-trained: the main command's model


def say(message: str) -> None:
    print(f"[scaling] {message}", flush=True)


def pool(splits: dict, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images (and labels) of the test images followed by the training images."""
    test, train = splits["test"], splits["full"]
    rest = max(0, count - len(test))
    return (np.concatenate([test.x[:count], train.x[:rest]]), np.concatenate([test.y[:count], train.y[:rest]]))


def attack_call(cfg, model, params, x, y) -> Callable[[], Any]:
    return lambda: generate(cfg.attack, logits_fn(model, params), x, y, key=jax.random.key(1), progress=False)


def timed_attack(cfg, model, params, x, y, repeats: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """({size, seconds, successes}, the last call's adversarials as a dict)."""
    seconds, out = median_seconds(attack_call(cfg, model, params, x, y), repeats)
    attacked = out.adversarials._asdict()
    return {"size": len(x), "seconds": seconds, "successes": int(attacked["success"].sum())}, attacked


def fc100() -> tuple[Any, dict, Any, Any]:
    """(config, splits, model, params) of FC100 on P1, from the model cache."""
    cfg = compose(FC100)
    splits = load_splits(cfg.data, cfg.model.classes)
    model, params, _ = train_or_load(cfg, splits)
    return cfg, splits, model, params


def attack_examples(net, sizes: Sequence[int], repeats: int, keep: int) -> tuple[list[dict], dict | None]:
    """Curve 1's points, and the adversarials of its smallest size >= keep (None if none is)."""
    cfg, splits, model, params = net
    x, y = pool(splits, max(sizes))
    points, kept = [], None
    for n in sorted(sizes):
        point, attacked = timed_attack(cfg, model, params, x[:n], y[:n], repeats)
        say(f"attack, {n} examples: {point['seconds']:.3f} s")
        points.append(point)
        if kept is None and n >= keep:
            kept = attacked
    return points, kept


def time_bracket(model, params, attacked: dict, repeats: int) -> float:
    return median_seconds(lambda: bracket_summary(model, params, attacked, None, True)[0], repeats)[0]


def bracket_examples(net, sizes: Sequence[int], repeats: int, attacked: dict | None) -> list[dict]:
    """Curve 4: the local bracket on the first N adversarials (attacked anew, untimed, when curve 1
    kept none large enough)."""
    cfg, splits, model, params = net
    if attacked is None or len(attacked["x"]) < max(sizes):
        attacked = attack_call(cfg, model, params, *pool(splits, max(sizes)))().adversarials._asdict()
    points = []
    for n in sorted(sizes):
        part = {k: v[:n] for k, v in attacked.items()}
        points.append({"size": n, "seconds": time_bracket(model, params, part, repeats),
                       "successes": int(part["success"].sum())})
        say(f"bracket, {n} examples: {points[-1]['seconds']:.3f} s")
    return points


def width_config(width: int, epochs: int):
    return compose([*FC100, f"model.hidden=[{width},{width}]", f"model.name=fc{width}x2", "train=adam",
                    f"train.epochs={epochs}"])


def attack_width(widths: Sequence[int], examples: int, epochs: int, repeats: int) -> list[dict]:
    """Curve 2: the attack on the first `examples` test images, one 784-w-w-10 network per width."""
    points = []
    for w in sorted(widths):
        cfg = width_config(w, epochs)
        splits = load_splits(cfg.data, cfg.model.classes)
        model, params, _ = train_or_load(cfg, splits)
        test = splits["test"]
        point, _ = timed_attack(cfg, model, params, test.x[:examples], test.y[:examples], repeats)
        points.append({**point, "size": w, "examples": examples, "weights": num_params(params)})
        say(f"attack, width {w}: {point['seconds']:.3f} s")
    return points


def train_size(sizes: Sequence[int], epochs: int, repeats: int) -> list[dict]:
    """Curve 3: `train_model` seconds against the training-set size (see the module docstring)."""
    points = []
    for n in sorted(sizes):
        cfg = compose(["model=fc100", "train=adam", f"train.epochs={epochs}", "data=full",
                       f"data.train_limit={n}", "train.cache=false"])
        data, model = load_splits(cfg.data, cfg.model.classes)["train"], build_model(cfg.model)
        fit = lambda: train_model(model, cfg.model, cfg.train, data, jax.random.key(cfg.seed))[0]  # noqa: E731, B023
        cold = median_seconds(fit, 1, warm_up=False)[0]
        points.append({"size": len(data), "seconds": median_seconds(fit, repeats, warm_up=False)[0],
                       "cold_seconds": cold})
        say(f"training, {n} images: {points[-1]['seconds']:.3f} s (first call {cold:.3f} s)")
    return points


def run(examples: Sequence[int], widths: Sequence[int], train_sizes: Sequence[int],
        bracket_sizes: Sequence[int], repeats: int, width_examples: int = 2000, width_epochs: int = 2,
        train_epochs: int = 3, cpu_devices: str = "auto") -> dict[str, Any]:
    """All four curves, and what they were measured with."""
    count = devices.use_cpu_devices(cpu_devices)  # as the main command does, before JAX's first operation
    start, net = time.perf_counter(), fc100()
    attack_points, attacked = attack_examples(net, examples, repeats, max(bracket_sizes))
    curves = {"attack_examples": {"points": attack_points},
              "attack_width": {"points": attack_width(widths, width_examples, width_epochs, repeats),
                               "examples": width_examples, "epochs": width_epochs},
              "train_size": {"points": train_size(train_sizes, train_epochs, repeats), "epochs": train_epochs},
              "bracket_examples": {"points": bracket_examples(net, bracket_sizes, repeats, attacked),
                                   "chunk": LOCAL_CHUNK}}
    return {"curves": curves, "devices": count, "repeats": repeats, "wall_seconds": time.perf_counter() - start}
