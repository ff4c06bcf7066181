"""Gradient-sign and projected-gradient attacks, and their minimum-epsilon forms.

Each attack ascends the attack objective

    J(x') = CE(f(x'), label)        untargeted (target = -1): leave the true label
    J(x') = -CE(f(x'), target)      targeted: reach the target

inside an epsilon-ball around x intersected with the box [0, 1]:

  FGSM            one step  x' = clip(x + eps * sign(grad J), 0, 1)              (L-inf)
  PGD             random start in the ball, then `steps` steps of size
                  relative_step_size * eps along sign(grad J) (L-inf) or
                  grad J / |grad J|_2 (L2), each projected onto the ball and the box;
                  with `restarts`, the first of several random starts that succeeds
  MinimalEpsilon  wraps either: the smallest eps for which it succeeds, per example, by a
                  bisection over eps inside jit. Its output's per-pixel RMS distortion is
                  comparable with the paper's minimum-distortion L-BFGS examples.

Each reports {"evals": gradient evaluations} from `with_diagnostics`: FGSM 1, PGD `steps` x `restarts`,
MinimalEpsilon (1 + search_steps) times its attack's.

Units: pixels in [0, 1]. `epsilon` is the largest per-pixel change for norm="linf" and the
Euclidean norm of the whole (28, 28, 1) perturbation for norm="l2" (its per-pixel RMS is
epsilon / 28). All loops are `lax.fori_loop`s, so a batch vmapped by `attack_batch` is one
XLA program.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adv_jax.attacks.common import FixedBudget, LogitsFn, is_adversarial, smallest_success
from adv_jax.attacks.ensemble_source import member_averaged

__all__ = ["FGSM", "PGD", "MinimalEpsilon", "attack_objective", "check_norm", "cross_entropy", "project"]

NORMS = ("linf", "l2")
_TINY = 1e-12  # keeps a zero gradient's normalization finite


def cross_entropy(logits: jax.Array, cls: jax.Array) -> jax.Array:
    """-log softmax(logits)[cls] written as softplus(logsumexp_{j != cls} (Z_j - Z_cls)).

    Same value as the usual form, but a confident model's gradient survives: there, p_cls
    rounds to 1 in float32, so autodiff's p_cls - 1 on Z_cls is exactly 0 and the input
    gradient loses its "lower the true class" term; this form gives -sum_{j != cls} p_j.
    """
    others = jnp.arange(logits.shape[-1]) != cls
    return jax.nn.softplus(jax.nn.logsumexp(logits - logits[cls], where=others))


def attack_objective(logits_fn: LogitsFn, x: jax.Array, label: jax.Array,
                     target: jax.Array) -> jax.Array:
    """J(x) to maximize: CE on the label (untargeted, target = -1) or -CE on the target; for an
    ensemble with reduction "loss", the mean of its members' J (ensemble_source.py)."""
    def objective(logits):
        away = cross_entropy(logits, label)
        toward = cross_entropy(logits, jnp.maximum(target, 0))
        return jnp.where(target >= 0, -toward, away)

    return member_averaged(objective, logits_fn, x)[0]


def _l2_norm(v: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(v**2))


def project(x_adv: jax.Array, x: jax.Array, epsilon: jax.Array, norm: str) -> jax.Array:
    """The point of {x' : |x' - x|_norm <= epsilon} reached by shrinking x_adv - x, then
    clipped to [0, 1]. Clipping keeps it in the ball, because the box contains x."""
    delta = x_adv - x
    if norm == "linf":
        delta = jnp.clip(delta, -epsilon, epsilon)
    else:
        delta = delta * jnp.minimum(1.0, epsilon / (_l2_norm(delta) + _TINY))
    return jnp.clip(x + delta, 0.0, 1.0)


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")


@dataclasses.dataclass(frozen=True)
class FGSM(FixedBudget):
    """Fast gradient sign method (Goodfellow et al. 2015): one L-inf step of size epsilon."""

    epsilon: float = 0.1  # largest per-pixel change

    @property
    def gradient_evals(self) -> int:
        """Forward and backward passes of one `perturb`."""
        return 1

    def perturb(self, logits_fn, x, label, target, key, epsilon) -> jax.Array:
        """The attack at a given (possibly traced) epsilon; x (28, 28, 1) -> x_adv."""
        del key  # deterministic
        grad = jax.grad(attack_objective, argnums=1)(logits_fn, x, label, target)
        return jnp.clip(x + epsilon * jnp.sign(grad), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class PGD(FixedBudget):
    """Projected gradient ascent (Madry et al. 2018) in an L-inf or L2 ball; returns the last
    iterate. Sign steps (L-inf) or L2-normalized steps, as foolbox's LinfPGD / L2PGD."""

    epsilon: float = 0.1  # ball radius: per-pixel (linf) or whole-image Euclidean (l2)
    norm: str = "linf"  # linf | l2
    steps: int = 40
    relative_step_size: float = 2.5 / 40  # step = relative_step_size * epsilon (Madry: 2.5/steps)
    random_start: bool = True  # start uniformly inside the ball (uses the key)
    restarts: int = 1  # random starts; the first that succeeds is kept (else the last)

    def __post_init__(self):
        check_norm(self.norm)
        if self.restarts < 1 or (self.restarts > 1 and not self.random_start):
            raise ValueError(f"restarts={self.restarts} needs restarts >= 1, and random_start for more than one")

    @property
    def gradient_evals(self) -> int:
        """Forward and backward passes of one `perturb`."""
        return self.steps * self.restarts

    def perturb(self, logits_fn, x, label, target, key, epsilon) -> jax.Array:
        """The attack at a given (possibly traced) epsilon; x (28, 28, 1) -> x_adv."""
        if self.restarts == 1:
            return self._run(logits_fn, x, label, target, key, epsilon)

        def restart(carry, key):
            kept, found = carry
            x_adv = self._run(logits_fn, x, label, target, key, epsilon)
            return (jnp.where(found, kept, x_adv), found | is_adversarial(logits_fn(x_adv), label, target)), None

        (x_adv, _), _ = jax.lax.scan(restart, (x, jnp.bool_(False)), jax.random.split(key, self.restarts))
        return x_adv

    def _run(self, logits_fn, x, label, target, key, epsilon) -> jax.Array:
        grad_fn = jax.grad(attack_objective, argnums=1)
        step_size = self.relative_step_size * epsilon

        def step(_, x_adv):
            grad = grad_fn(logits_fn, x_adv, label, target)
            if self.norm == "linf":
                direction = jnp.sign(grad)
            else:
                direction = grad / (_l2_norm(grad) + _TINY)
            return project(x_adv + step_size * direction, x, epsilon, self.norm)

        start = x + self._random_offset(key, x.shape, epsilon) if self.random_start else x
        return jax.lax.fori_loop(0, self.steps, step, jnp.clip(start, 0.0, 1.0))

    def _random_offset(self, key, shape, epsilon) -> jax.Array:
        if self.norm == "linf":
            return jax.random.uniform(key, shape, minval=-epsilon, maxval=epsilon)
        # Uniform in the L2 ball: a uniform direction times radius eps * u^(1/n).
        direction_key, radius_key = jax.random.split(key)
        direction = jax.random.normal(direction_key, shape)
        radius = epsilon * jax.random.uniform(radius_key) ** (1.0 / direction.size)
        return radius * direction / _l2_norm(direction)


@dataclasses.dataclass(frozen=True)
class MinimalEpsilon:
    """The smallest epsilon for which `attack` (FGSM or PGD) succeeds, per example.

    Tries epsilon = max_epsilon, then bisects [0, max_epsilon] for `search_steps` rounds, all
    with the same key, and returns the success at the smallest epsilon tried: distortion is
    within max_epsilon / 2**search_steps of the smallest this attack can do. If nothing
    succeeds, returns the attempt at max_epsilon (check `is_adversarial`).
    """

    attack: FGSM | PGD = PGD()  # or any attack with `perturb(..., epsilon)` and `gradient_evals` (APGD)
    max_epsilon: float = 1.0  # in the wrapped attack's norm
    search_steps: int = 10

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key):
        """The attack and {"epsilon": the smallest successful epsilon found (inf: none),
        "evals": gradient evaluations, (1 + search_steps) times the attack's}."""
        def attempt(epsilon):
            x_adv = self.attack.perturb(logits_fn, x, label, target, key, epsilon)
            return x_adv, is_adversarial(logits_fn(x_adv), label, target)

        x_adv, epsilon = smallest_success(attempt, self.max_epsilon, self.search_steps)
        evals = (1 + self.search_steps) * self.attack.gradient_evals
        return x_adv, {"epsilon": epsilon, "evals": jnp.int32(evals)}
