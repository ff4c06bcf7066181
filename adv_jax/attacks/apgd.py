"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"): PGD whose step size needs no tuning, AutoAttack's first two
stages (APGD-CE; APGD-T, the targeted DLR loss over the top classes).

Per restart, from a random point on the epsilon sphere (linf: a uniform direction scaled to
|.|_inf = epsilon; l2: a Gaussian one scaled to |.|_2 = epsilon), with step size eta = 2 epsilon:

    z        = P(x_k + eta * sign(g_k))                (l2: g_k / |g_k|_2)
    x_{k+1}  = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})),   a = 1 at k = 0, else 0.75

P projects onto the ball and the box. At the checkpoints w_j = p_j * steps, p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (`checkpoint_windows`), eta halves and the iterate returns to
the highest-loss point so far if (1) the loss rose in at most rho = 0.75 of the steps since the
last checkpoint, or (2) eta did not halve at the last checkpoint and the best loss has not risen
since. One difference from the official code: its first window compares the first iterate's loss
with an unset entry (0); here with the starting point's loss, as the paper defines it.

Losses: "ce" (cross-entropy; targeted: minus the target's) and "dlr", the difference of logits
ratio -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3); targeted, -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2),
pi sorting the logits in decreasing order. With target_classes = k > 0 and no target given, the
attack runs once toward each of the k most likely wrong classes (APGD-T) and succeeds on any
misclassification, as AutoAttack counts it.

Returns the last adversarial iterate found, else the highest-loss one. Evaluations: (steps + 1)
per restart and target class. Units: pixels in [0, 1]; epsilon per pixel (linf) or the whole
perturbation's Euclidean norm (l2).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from adv_jax.attacks.common import LogitsFn, is_adversarial
from adv_jax.attacks.ensemble_source import member_averaged
from adv_jax.attacks.gradient import check_norm, cross_entropy, project

__all__ = ["APGD", "checkpoint_windows", "dlr_loss", "targeted_dlr_loss"]

MOMENTUM = 0.75  # a, the weight of the new step (the paper's alpha)
RHO = 0.75  # the share of rising steps below which a window counts as oscillating
_TINY = 1e-12


def dlr_loss(logits: jax.Array, label: jax.Array) -> jax.Array:
    """Untargeted difference of logits ratio (K,) -> scalar, to maximize (> 0: misclassified)."""
    z = jnp.sort(logits)[::-1]
    others = jnp.max(jnp.where(jnp.arange(logits.shape[-1]) == label, -jnp.inf, logits))
    return -(logits[label] - others) / (z[0] - z[2] + _TINY)


def targeted_dlr_loss(logits: jax.Array, label: jax.Array, target: jax.Array) -> jax.Array:
    """Targeted difference of logits ratio (K,) -> scalar, to maximize (> 0: the target beats y)."""
    z = jnp.sort(logits)[::-1]
    return -(logits[label] - logits[target]) / (z[0] - 0.5 * (z[2] + z[3]) + _TINY)


def checkpoint_windows(steps: int) -> np.ndarray:
    """(steps,) int: at iteration i (0-based) that ends a window, the window's length; else 0.
    Lengths 0.22, then 0.03 shorter each time down to 0.06 of `steps` (whole iterations, as the
    official code counts them: 22, 19, 16, 13, 10, 7, 6, 6, ... for 100 steps)."""
    windows, end = np.zeros(steps, np.int32), 0
    length, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    while end + length <= steps:
        end += length
        windows[end - 1] = length
        length = max(length - shrink, shortest)
    return windows


def _sphere_start(key: jax.Array, x: jax.Array, epsilon, norm: str) -> jax.Array:
    if norm == "linf":
        t = jax.random.uniform(key, x.shape, minval=-1.0, maxval=1.0)
        return jnp.clip(x + epsilon * t / jnp.max(jnp.abs(t)), 0.0, 1.0)
    t = jax.random.normal(key, x.shape)
    return jnp.clip(x + epsilon * t / jnp.sqrt(jnp.sum(t**2)), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class APGD:
    """Auto-PGD; AutoAttack runs APGD(loss="ce") and APGD(loss="dlr", target_classes=9)."""

    epsilon: float = 0.3
    norm: str = "linf"  # linf | l2
    steps: int = 100
    loss: str = "ce"  # ce | dlr
    restarts: int = 1
    target_classes: int = 0  # k > 0: targeted DLR toward each of the k most likely wrong classes
    random_start: bool = True  # off: start at x (the paper always starts at random)

    def __post_init__(self):
        check_norm(self.norm)
        if self.loss not in ("ce", "dlr"):
            raise ValueError(f"unknown loss {self.loss!r}; choose one of ['ce', 'dlr']")

    @property
    def gradient_evals(self) -> int:
        return (self.steps + 1) * self.restarts * max(self.target_classes, 1)

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key):
        """x (28, 28, 1) -> (x_adv, {"evals"}); target -1 = untargeted."""
        return self.perturb(logits_fn, x, label, target, key, self.epsilon), {"evals": jnp.int32(self.gradient_evals)}

    def perturb(self, logits_fn: LogitsFn, x, label, target, key, epsilon) -> jax.Array:
        """The attack at a given (possibly traced) epsilon."""
        if self.target_classes == 0:
            return self._restarts(logits_fn, x, label, target, target, key, epsilon)[0]
        logits = logits_fn(x)
        ranked = jnp.argsort(jnp.where(jnp.arange(logits.shape[-1]) == label, -jnp.inf, logits))[::-1]
        count = min(self.target_classes, logits.shape[-1] - 1)  # the wrong classes there are
        wanted = jnp.where(target >= 0, jnp.full(count, target), ranked[:count])

        def toward(carry, cls_and_key):
            best, found = carry
            x_adv, success = self._restarts(logits_fn, x, label, target, *cls_and_key, epsilon)
            keep = found | ~success
            return (jnp.where(keep, best, x_adv), found | success), None

        keys = jax.random.split(key, count)
        first, _ = self._restarts(logits_fn, x, label, target, wanted[0], keys[0], epsilon)
        (x_adv, _), _ = jax.lax.scan(toward, (first, is_adversarial(logits_fn(first), label, target)),
                                     (wanted[1:], keys[1:]))
        return x_adv

    def _restarts(self, logits_fn, x, label, target, aim, key, epsilon) -> tuple[jax.Array, jax.Array]:
        """The first restart's success, else the last restart's x_adv; and whether any succeeded."""
        def restart(carry, key):
            best, found = carry
            x_adv, success = self._run(logits_fn, x, label, target, aim, key, epsilon)
            return (jnp.where(found, best, x_adv), found | success), None

        (x_adv, found), _ = jax.lax.scan(restart, (x, jnp.bool_(False)), jax.random.split(key, self.restarts))
        return x_adv, found

    def _objective(self, logits_fn, x, label, aim) -> tuple[jax.Array, jax.Array]:
        """(the loss to maximize, the logits it saw); `aim` the class a targeted loss pushes toward
        (target_classes), -1 for none. One forward pass (an ensemble's loss averaged over members)."""
        def loss(logits):
            toward = jnp.maximum(aim, 0)
            if self.loss == "ce":
                return jnp.where(aim >= 0, -cross_entropy(logits, toward), cross_entropy(logits, label))
            return jnp.where(aim >= 0, targeted_dlr_loss(logits, label, toward), dlr_loss(logits, label))

        return member_averaged(loss, logits_fn, x)

    def _run(self, logits_fn, x, label, target, aim, key, epsilon) -> tuple[jax.Array, jax.Array]:
        """One restart: (the last adversarial iterate, else the highest-loss one; success)."""
        value_and_grad = jax.value_and_grad(self._objective, argnums=1, has_aux=True)
        windows = jnp.asarray(checkpoint_windows(self.steps))
        start = _sphere_start(key, x, epsilon, self.norm) if self.random_start else x
        (loss, logits), grad = value_and_grad(logits_fn, start, label, aim)
        found = is_adversarial(logits, label, target)
        state = {"x": start, "previous": start, "grad": grad, "loss": loss, "best_x": start, "best_grad": grad,
                 "best_loss": loss, "adv": start, "found": found, "eta": 2.0 * epsilon, "rises": 0,
                 "best_at_check": loss, "halved_at_check": jnp.bool_(True)}

        def step(i, s):
            direction = jnp.sign(s["grad"]) if self.norm == "linf" else s["grad"] / (jnp.linalg.norm(s["grad"]) + _TINY)
            z = project(s["x"] + s["eta"] * direction, x, epsilon, self.norm)
            a = jnp.where(i == 0, 1.0, MOMENTUM)
            new = project(s["x"] + a * (z - s["x"]) + (1.0 - a) * (s["x"] - s["previous"]), x, epsilon, self.norm)
            (loss, logits), grad = value_and_grad(logits_fn, new, label, aim)
            fooled = is_adversarial(logits, label, target)
            better = loss > s["best_loss"]
            s = {**s, "previous": s["x"], "x": new, "grad": grad, "loss": loss,
                 "rises": s["rises"] + (loss > s["loss"]), "adv": jnp.where(fooled, new, s["adv"]),
                 "found": s["found"] | fooled, "best_x": jnp.where(better, new, s["best_x"]),
                 "best_grad": jnp.where(better, grad, s["best_grad"]), "best_loss": jnp.maximum(loss, s["best_loss"])}
            return jax.lax.cond(windows[i] > 0, lambda s: _checkpoint(s, windows[i]), lambda s: s, s)

        s = jax.lax.fori_loop(0, self.steps, step, state)
        return jnp.where(s["found"], s["adv"], s["best_x"]), s["found"]


def _checkpoint(s: dict, window: jax.Array) -> dict:
    """End of a window: halve eta and return to the best point if the window oscillated or
    nothing improved since an unhalved checkpoint."""
    halve = (s["rises"] <= RHO * window) | (~s["halved_at_check"] & (s["best_at_check"] >= s["best_loss"]))
    return {**s, "eta": jnp.where(halve, 0.5 * s["eta"], s["eta"]), "x": jnp.where(halve, s["best_x"], s["x"]),
            "grad": jnp.where(halve, s["best_grad"], s["grad"]), "rises": 0, "halved_at_check": halve,
            "best_at_check": s["best_loss"]}
