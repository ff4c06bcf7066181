"""ALMA, the Augmented Lagrangian Method for Adversarial attacks (Rony et al., CVPR 2021), L2:
minimum-norm by treating "adversarial" as a constraint g(x + delta) <= 0 and minimizing

    |delta|_2 + P(g(x + delta), rho, mu)

with the penalty-Lagrangian P2 of the paper (Birgin et al.'s family), for y = g:

    P2(y, rho, mu) = mu y + mu rho y^2 + rho^2 y^3 / 6    (y >= 0)
                   = mu y / (1 - rho y)                    (y < 0)

g is the difference of logits ratio: (z_label - max_{j != label} z_j + tol) / (z_(1) - z_(3))
untargeted, (max_{j != t} z_j - z_t + tol) / (z_(1) - (z_(3) + z_(4)) / 2) toward t (z_(k): the
k-th largest logit; tol: a small margin so that g < 0 leaves no tie; `logit_ratio`). Each step makes one forward and one backward
pass (`steps` = evaluations):
  mu   <- clip(alpha mu + (1 - alpha) dP/dy(g, rho, mu), 1e-6, 1e12)  (from the second step on)
  rho  <- gamma rho every `check_steps` steps, unless an adversarial was found or g fell below
          tau times its value at the last check
  delta: one RMSprop step (smoothing alpha, momentum alpha, squared average started at 1) on the
          objective (the penalty alone at the first step), then x + delta clipped to [0, 1].
The learning rate is lr_init, or with `init_distance` the rate whose first plain gradient step
moves x that far in L2 (found by doubling and bisection), decayed exponentially to
lr_init * lr_reduction from the step where the first adversarial was found to the last. The
smallest adversarial iterate seen is returned (adversarial: the predicted class, as every adv_jax
attack checks it). Defaults are the paper's (alpha 0.9, gamma 1.2, tau 0.95, M = 10, mu = rho =
1, 1000 steps, lr_reduction 0.01); init_distance 1.0 (L2 of the whole perturbation, pixels in
[0, 1]) is set for 28x28 images, not tuned here.

Diagnostics: {"evals": steps (int32), "norm": L2 norm of the kept adversarial (inf: none)}.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adv_jax.attacks.common import LogitsFn, is_adversarial
from adv_jax.attacks.minnorm import finish, keep_best, lp_norm

__all__ = ["ALMA", "p2_penalty", "logit_ratio"]

_TINY = 1e-12
_EPS = 1e-8  # RMSprop's denominator guard
FINDER_BISECTIONS = 20


def p2_penalty(y: jax.Array, rho: jax.Array, mu: jax.Array) -> jax.Array:
    """P2(y, rho, mu): mu y near 0, cubic growth above, bounded by -mu / rho below."""
    above = mu * y + mu * rho * y**2 + rho**2 * y**3 / 6.0
    below = mu * y / (1.0 - rho * jnp.minimum(y, 0.0))
    return jnp.where(y >= 0, above, below)


def logit_ratio(logits: jax.Array, label: jax.Array, target: jax.Array, tolerance: float) -> jax.Array:
    """g (scalar): < 0 when the wanted class leads by more than `tolerance`; scale-free, the
    margin over the spread of the top logits as APGD's DLR: z_(1) - z_(3) untargeted, z_(1) -
    (z_(3) + z_(4)) / 2 targeted (z_(1) - z_(3) alone would make g = 1, flat, wherever the
    target is third); with fewer classes than that, the margin itself."""
    top, classes = jnp.sort(logits)[::-1], logits.shape[-1]
    untargeted_spread = top[0] - top[2] if classes > 2 else 1.0
    targeted_spread = top[0] - 0.5 * (top[2] + top[3]) if classes > 3 else untargeted_spread
    spread = jnp.where(target >= 0, targeted_spread, untargeted_spread)
    wanted = jnp.where(target >= 0, target, label)
    rival = jnp.max(jnp.where(jnp.arange(logits.shape[-1]) == wanted, -jnp.inf, logits))
    lead = jnp.where(target >= 0, rival - logits[wanted], logits[wanted] - rival)
    return (lead + tolerance) / (spread + _TINY)


def first_rate(x: jax.Array, gradient: jax.Array, distance: float) -> jax.Array:
    """The rate r at which clip(x - r g, 0, 1) lies `distance` from x in L2 (doubling, then
    bisection); the largest tried where the box never lets it get that far."""
    def moved(rate):
        return lp_norm(jnp.clip(x - rate * gradient, 0.0, 1.0) - x, "l2")

    def double(carry):
        low, high, tries = carry
        return high, 2.0 * high, tries + 1

    low, high, _ = jax.lax.while_loop(lambda c: (moved(c[1]) <= distance) & (c[2] < 60), double,
                                      (jnp.float32(0.0), jnp.float32(1.0), 0))

    def halve(_, ends):
        a, b = ends
        mid = 0.5 * (a + b)
        far = moved(mid) > distance
        return jnp.where(far, a, mid), jnp.where(far, mid, b)

    low, high = jax.lax.fori_loop(0, FINDER_BISECTIONS, halve, (low, high))
    return 0.5 * (low + high)


@dataclasses.dataclass(frozen=True)
class ALMA:
    """ALMA, L2 (Rony et al. 2021). x (28, 28, 1) -> x_adv."""

    steps: int = 1000
    lr_init: float = 0.1  # the rate where init_distance is None
    lr_reduction: float = 0.01  # the last step's rate / the first's
    init_distance: float | None = 1.0  # L2 length of the first plain gradient step (None: lr_init)
    mu_init: float = 1.0
    rho_init: float = 1.0
    check_steps: int = 10  # M: steps between checks of the constraint's progress
    tau: float = 0.95  # progress wanted at each check: g below tau times its last value
    gamma: float = 1.2  # rho's growth where there was none
    alpha: float = 0.9  # mu's moving average; RMSprop's smoothing and momentum
    tolerance: float = 1e-4  # logits: the lead g < 0 demands

    def __post_init__(self):
        if self.steps < 1 or self.check_steps < 1:
            raise ValueError(f"steps and check_steps must be >= 1, not {self.steps}, {self.check_steps}")

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key):
        """x_adv and {"evals": steps, "norm": L2 norm of the kept adversarial (inf: none)}; key:
        the direction of a first step where the gradient vanishes."""
        def objective(delta, rho, mu, first):
            logits = logits_fn(x + delta)
            g = logit_ratio(logits, label, target, self.tolerance)
            size = jnp.sqrt(jnp.sum(delta**2) + _TINY)
            return (0.0 if first else size) + p2_penalty(g, rho, mu), (logits, g)

        grad_objective = jax.grad(objective, has_aux=True)
        penalty_slope = jax.grad(p2_penalty)
        fallback = jax.random.normal(key, x.shape)

        def step(i, s, first=False):  # first: the penalty alone, and the rate found
            (gradient, (logits, g)) = grad_objective(s["delta"], s["rho"], s["mu"], first)
            adversarial = is_adversarial(logits, label, target)
            best_norm, best = keep_best(adversarial, lp_norm(s["delta"], "l2"), x + s["delta"],
                                        s["best_norm"], s["best"])
            moved_mu = jnp.clip(self.alpha * s["mu"] + (1 - self.alpha) * penalty_slope(g, s["rho"], s["mu"]), 1e-6, 1e12)
            check = (i + 1) % self.check_steps == 0
            stalled = check & ~(jnp.isfinite(best_norm) | (g < self.tau * s["last_g"]))
            found_at = jnp.where(jnp.isfinite(best_norm) & (s["found_at"] > self.steps), i, s["found_at"])
            if first:
                gradient = jnp.where(lp_norm(gradient, "l2") <= 1e-6, fallback, gradient)
            rate = self._first_rate(x, gradient) if first else s["rate"]
            decay = self.lr_reduction ** (jnp.maximum(i - found_at, 0) / jnp.maximum(self.steps - found_at, 1))
            square = self.alpha * s["square"] + (1 - self.alpha) * gradient**2
            velocity = self.alpha * s["velocity"] + gradient / (jnp.sqrt(square) + _EPS)
            delta = jnp.clip(x + s["delta"] - rate * decay * velocity, 0.0, 1.0) - x
            return dict(delta=delta, square=square, velocity=velocity, rate=rate, found_at=found_at,
                        mu=s["mu"] if first else moved_mu, rho=jnp.where(stalled, self.gamma * s["rho"], s["rho"]),
                        last_g=g if first else jnp.where(check, g, s["last_g"]),
                        best_norm=best_norm, best=best)

        start = dict(delta=jnp.zeros_like(x), square=jnp.ones_like(x), velocity=jnp.zeros_like(x),
                     mu=jnp.float32(self.mu_init), rho=jnp.float32(self.rho_init), last_g=jnp.float32(0.0),
                     found_at=jnp.int32(self.steps + 1), rate=jnp.float32(self.lr_init),
                     best_norm=jnp.float32(jnp.inf), best=x)
        s = jax.lax.fori_loop(1, self.steps, step, step(0, start, first=True))
        return finish(x + s["delta"], s["best"], s["best_norm"], self.steps)

    def _first_rate(self, x, gradient) -> jax.Array:
        if self.init_distance is None:
            return jnp.float32(self.lr_init)
        return first_rate(x, gradient, self.init_distance)
