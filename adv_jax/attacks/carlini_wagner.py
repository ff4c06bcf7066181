"""Carlini & Wagner's L2 attack (2017), one example at a time, entirely inside jit.

Change of variables x' = (tanh(w) + 1) / 2 keeps x' in [0, 1] without a projection. For a
constant c > 0, Adam minimizes over w

    |x' - x|_2^2 + c * max(m(x'), -kappa)

with the margin m(x') = Z_label - max_{j != label} Z_j (untargeted) or
max_{j != target} Z_j - Z_target (targeted), Z the logits. A success is an iterate with
m <= -kappa and the wanted prediction. Per example, c starts at initial_const and is multiplied
by 10 until some iterate succeeds, then bisected between the largest failing and the smallest
succeeding c (as in the original code and foolbox). Returns the success with the smallest L2
distance over all rounds; if none, the last iterate of the last round (check
`is_adversarial`). Distortion of the result: report its per-pixel RMS (`rms_distortion`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from adv_jax.attacks.common import LogitsFn, is_adversarial

__all__ = ["CarliniWagnerL2", "margin", "to_tanh_space", "from_tanh_space"]

_SHRINK = 0.999999  # arctanh(+-1) is infinite: pull pixels 0 and 1 slightly inside, as foolbox


def to_tanh_space(x: jax.Array) -> jax.Array:
    """Pixels in [0, 1] -> unconstrained w with from_tanh_space(w) ~= x (within 5e-7)."""
    return jnp.arctanh((2.0 * x - 1.0) * _SHRINK)


def from_tanh_space(w: jax.Array) -> jax.Array:
    return (jnp.tanh(w) + 1.0) / 2.0


def margin(logits: jax.Array, label: jax.Array, target: jax.Array) -> jax.Array:
    """m <= 0 iff the logits are adversarial (ties aside): how far the wanted class trails."""
    targeted = target >= 0
    wanted_gone = jnp.where(targeted, target, label)  # the class whose logit is compared
    others = logits.at[wanted_gone].set(-jnp.inf).max()
    chosen = logits[wanted_gone]
    return jnp.where(targeted, others - chosen, chosen - others)


@dataclasses.dataclass(frozen=True)
class CarliniWagnerL2:
    """C&W L2. Defaults follow foolbox's L2CarliniWagnerAttack except `steps` (10000 there)."""

    steps: int = 1000  # Adam steps per constant
    binary_search_steps: int = 9  # constants tried per example
    learning_rate: float = 0.01  # Adam step size in tanh space
    kappa: float = 0.0  # required margin ("confidence") in logits
    initial_const: float = 1e-3
    abort_early: bool = False  # stop a round once the loss stops falling (checked every steps/10)

    def __call__(self, logits_fn: LogitsFn, x, label, target, key) -> jax.Array:
        return self.with_diagnostics(logits_fn, x, label, target, key)[0]

    def with_diagnostics(self, logits_fn: LogitsFn, x, label, target, key):
        """x_adv and {"evals": Adam steps over all rounds (steps * binary_search_steps unless
        abort_early stops rounds early)}."""
        del key  # deterministic
        w_start = to_tanh_space(x)
        optimizer = optax.adam(self.learning_rate)

        def loss(w, const):
            x_adv = from_tanh_space(w)
            logits = logits_fn(x_adv)
            m = margin(logits, label, target)
            value = jnp.sum((x_adv - x) ** 2) + const * jnp.maximum(m + self.kappa, 0.0)
            success = (m <= -self.kappa) & is_adversarial(logits, label, target)
            return value, (x_adv, success)

        def one_round(search_step, carry):
            const, low, high, best, best_l2, last, evals = carry
            # In the last round of a long search, retry the smallest successful constant.
            if self.binary_search_steps >= 10:
                last_round = search_step == self.binary_search_steps - 1
                const = jnp.where(last_round, jnp.minimum(high, 1e10), const)
            found, best, best_l2, last, steps = self._minimize(loss, optimizer, w_start, const, x,
                                                               best, best_l2)
            high = jnp.where(found, jnp.minimum(high, const), high)
            low = jnp.where(found, low, jnp.maximum(low, const))
            const = jnp.where(jnp.isinf(high), const * 10.0, (low + high) / 2.0)
            return const, low, high, best, best_l2, last, evals + steps

        start = (jnp.float32(self.initial_const), jnp.float32(0.0), jnp.float32(jnp.inf),
                 x, jnp.float32(jnp.inf), x, jnp.int32(0))
        _, _, _, best, best_l2, last, evals = jax.lax.fori_loop(
            0, self.binary_search_steps, one_round, start)
        return jnp.where(jnp.isfinite(best_l2), best, last), {"evals": evals}

    def _minimize(self, loss, optimizer, w_start, const, x, best, best_l2):
        """`steps` Adam steps from w_start at one constant; keeps the closest success seen.
        Returns (found a success, best, best squared L2, last iterate, steps taken)."""
        value_and_grad = jax.value_and_grad(loss, has_aux=True)
        check_every = max(1, -(-self.steps // 10))

        def step(carry):
            i, w, opt_state, found, best, best_l2, previous, _, stalled = carry
            (value, (x_adv, success)), grad = value_and_grad(w, const)
            updates, opt_state = optimizer.update(grad, opt_state)
            l2 = jnp.sum((x_adv - x) ** 2)
            closer = success & (l2 < best_l2)
            if self.abort_early:  # checked on the pre-update loss, as foolbox does
                checkpoint = i % check_every == 0
                stalled = checkpoint & ~(value <= 0.9999 * previous)
                previous = jnp.where(checkpoint, value, previous)
            # else `stalled` stays a constant False: under vmap the loop needs no per-example test
            return (i + 1, optax.apply_updates(w, updates), opt_state, found | success,
                    jnp.where(closer, x_adv, best), jnp.where(closer, l2, best_l2), previous,
                    x_adv, stalled)

        def going(carry):
            return (carry[0] < self.steps) & ~carry[-1]

        carry = (jnp.int32(0), w_start, optimizer.init(w_start), jnp.bool_(False), best, best_l2,
                 jnp.float32(jnp.inf), x, jnp.bool_(False))
        steps, _, _, found, best, best_l2, _, last, _ = jax.lax.while_loop(going, step, carry)
        return found, best, best_l2, last, steps
