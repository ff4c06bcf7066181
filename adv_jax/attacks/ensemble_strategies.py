"""Ensemble strategies: attack several source models at once by more than averaging them.

The sources are ensemble_source's representation: the logits_fn is an `Ensemble` (its `members`,
each a logits_fn; `ensemble_of([...])`), and each strategy reads the members one by one (the
Ensemble's own reduction is not used). Any other logits_fn is an ensemble of one member. J_m is
member m's attack objective (CE on the label, or -CE on the target; gradient.attack_objective),
g_m its gradient, M the number of members, Proj onto the epsilon ball around x and [0, 1].

  SVRE (Xiong et al. 2022): per outer step, g_ens = mean_m g_m(x_t); then inner_steps =
      inner_steps_per_member * M steps from x~_0 = x_t, each with a member k drawn uniformly:
          G_{j+1} = inner_momentum G_j + u_j / |u_j|_1,  u_j = g_k(x~_j) - (g_k(x_t) - g_ens)
          x~_{j+1} = Proj(x~_j + alpha d(G_{j+1}))
      and the outer MI step takes G_M as its gradient. With one member the variance-reduction
      term is exactly 0; with one member and one inner step it is MI-FGSM (I-FGSM at momentum
      0), up to the rounding of normalizing G_1 = g / |g|_1 a second time.
  CWA (Chen et al. 2024, MI-CWA): per outer step, a sharpness (SAM) step back, x~ =
      Proj(x_t - r d(g_ens)), then one step per member in order along its L2-normalized
      gradient with a momentum m kept across outer steps (CSE):
          m <- mu m + g_i(x~) / |g_i(x~)|_2,   x~ <- Proj(x~ + beta m)
      and the outer MI step takes x~ - x_t as its gradient. It does not reduce to MI-FGSM for
      one member (the step back and the inner step stay).
  AdaEA (Chen et al. 2023): per step, each member's one-step adversarial x_m' = Proj(x_t + alpha
      d(g_m)) scores w_m = beta sum_{i != m} L_i(x_m') / L_i(x_i') (L: CE on the label; targeted:
      the inverse ratio of CE on the target), weights a = softmax(w); the gradient is that of J
      on the weighted logits sum_m a_m z_m, times the disparity-reduced filter: 1 where the
      members' gradients agree, mean pairwise cosine (per pixel, over channels; for MNIST's one
      channel, the sign agreement) >= threshold, else 0. With one member a = 1 and the filter is 1:
      exactly MI-FGSM.

Defaults (ImageNet, epsilon 16/255, T = 10, mu = 1 everywhere): SVRE alpha = epsilon / T, inner
step alpha, M = 4 x members; CWA alpha = epsilon / 5, r = epsilon / 15, beta = 250 on a
224x224x3 image: a per-pixel RMS inner step of 250 / sqrt(150528) = 10.3 epsilon, kept per pixel
at 28x28 (relative_inner_step 10.3: beta = 10.3 * epsilon * 28 for linf, 10.3 * epsilon for l2);
AdaEA alpha = epsilon / T, beta = 10, threshold -0.3. All start at x (AdaEA's reference code adds
0.001 N(0, 1) noise only to avoid a zero gradient). "evals" counts one per member gradient: an
ensemble gradient is M (SVRE steps (M + inner_steps), CWA 2 M steps, AdaEA 2 M steps).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from adv_jax.attacks.ensemble_source import Ensemble
from adv_jax.attacks.gradient import attack_objective, cross_entropy, project
from adv_jax.attacks.iterative import TINY, IterativeBudget, direction, l1_normalized

__all__ = ["CWA", "SVRE", "AdaEA", "members_of"]


def members_of(logits_fn) -> tuple:
    """The source members: an Ensemble's, or (logits_fn,) for one model."""
    return logits_fn.members if isinstance(logits_fn, Ensemble) else (logits_fn,)


def _member_gradients(members, x, label, target) -> jax.Array:
    """Each member's objective gradient at x: (M, *shape)."""
    grad = jax.grad(attack_objective, argnums=1)
    return jnp.stack([grad(member, x, label, target) for member in members])


@dataclasses.dataclass(frozen=True)
class SVRE(IterativeBudget):
    """Stochastic variance-reduced ensemble attack (module docstring)."""

    inner_steps_per_member: int = 4  # Xiong et al.: M = 4 x number of members
    inner_momentum: float = 1.0  # mu_2

    def evals(self, logits_fn) -> int:
        members = len(members_of(logits_fn))
        return self.steps * members * (1 + self.inner_steps_per_member)

    def perturb(self, logits_fn, x, label, target, key) -> jax.Array:
        """x (*shape) in [0, 1] -> x_adv in the epsilon ball."""
        members = members_of(logits_fn)
        step_size = self.relative_step_size * self.epsilon
        branches = [lambda z, m=m: jax.grad(attack_objective, argnums=1)(m, z, label, target)
                    for m in members]

        def gradient(x_t, step_key):
            at_x_t = _member_gradients(members, x_t, label, target)
            correction = at_x_t - jnp.mean(at_x_t, axis=0)  # g_k(x_t) - g_ens, per k

            def inner(j, carry):
                x_inner, accumulated = carry
                k = jax.random.randint(jax.random.fold_in(step_key, j), (), 0, len(members))
                u = jax.lax.switch(k, branches, x_inner) - correction[k]
                accumulated = self.inner_momentum * accumulated + l1_normalized(u)
                x_inner = project(x_inner + step_size * direction(accumulated, self.norm), x,
                                  self.epsilon, self.norm)
                return x_inner, accumulated

            inner_steps = self.inner_steps_per_member * len(members)
            return jax.lax.fori_loop(0, inner_steps, inner, (x_t, jnp.zeros_like(x)))[1]

        return self.iterate(gradient, x, x, key)


@dataclasses.dataclass(frozen=True)
class CWA(IterativeBudget):
    """Common weakness attack, MI-CWA (module docstring)."""

    relative_step_size: float = 0.2  # alpha = epsilon / 5 (Chen et al. 2024)
    relative_reverse_step: float = 1 / 15  # r = epsilon / 15, the sharpness step back
    relative_inner_step: float = 10.3  # beta: per-pixel RMS inner step, in epsilons

    def evals(self, logits_fn) -> int:
        return self.steps * 2 * len(members_of(logits_fn))

    def perturb(self, logits_fn, x, label, target, key) -> jax.Array:
        """x (*shape) in [0, 1] -> x_adv in the epsilon ball."""
        members = members_of(logits_fn)
        pixel_radius = self.epsilon if self.norm == "linf" else self.epsilon / math.sqrt(x.size)
        inner_step = self.relative_inner_step * pixel_radius * math.sqrt(x.size)
        reverse = self.relative_reverse_step * self.epsilon
        grad = jax.grad(attack_objective, argnums=1)

        def step(t, carry):
            x_t, outer, inner = carry
            g_ens = jnp.mean(_member_gradients(members, x_t, label, target), axis=0)
            x_inner = project(x_t - reverse * direction(g_ens, self.norm), x, self.epsilon, self.norm)
            for member in members:  # static: one inner step per member, in order
                g = grad(member, x_inner, label, target)
                inner = self.momentum * inner + g / (jnp.sqrt(jnp.sum(g ** 2)) + TINY)
                x_inner = project(x_inner + inner_step * inner, x, self.epsilon, self.norm)
            outer = self.momentum * outer + l1_normalized(x_inner - x_t)
            x_t = project(x_t + self.relative_step_size * self.epsilon * direction(outer, self.norm),
                          x, self.epsilon, self.norm)
            return x_t, outer, inner

        zeros = jnp.zeros_like(x)
        return jax.lax.fori_loop(0, self.steps, step, (x, zeros, zeros))[0]


@dataclasses.dataclass(frozen=True)
class AdaEA(IterativeBudget):
    """Adaptive ensemble attack (module docstring)."""

    weight_temperature: float = 10.0  # beta in the member weights' softmax (Chen et al. 2023)
    threshold: float = -0.3  # the disparity-reduced filter keeps pixels with agreement >= this

    def evals(self, logits_fn) -> int:
        return self.steps * 2 * len(members_of(logits_fn))

    def member_weights(self, members, x, x_t, grads, label, target) -> jax.Array:
        """a (M,): the softmax of each member's one-step adversarial's transfer score."""
        if len(members) == 1:  # softmax of one score: weight 1, whatever the score
            return jnp.ones(1)
        step = self.relative_step_size * self.epsilon
        trials = [project(x_t + step * direction(g, self.norm), x, self.epsilon, self.norm)
                  for g in grads]
        cls = jnp.where(target >= 0, target, label)
        # loss[i, j]: member i's CE at member j's trial
        loss = jnp.stack([jnp.stack([cross_entropy(m(trial), cls) for trial in trials])
                          for m in members])
        own = jnp.diag(loss)[:, None]
        # targeted: a lower CE on the target transfers better, so the ratio is inverted
        ratio = jnp.where(target >= 0, own / (loss + TINY), loss / (own + TINY))
        off_diagonal = 1.0 - jnp.eye(len(members))
        return jax.nn.softmax(self.weight_temperature * jnp.sum(ratio * off_diagonal, axis=0))

    def agreement_filter(self, grads: jax.Array) -> jax.Array:
        """(*shape): 1 where the mean pairwise per-pixel cosine (over channels) >= threshold."""
        count = len(grads)
        if count == 1:  # nothing to disagree with
            return jnp.ones_like(grads[0])
        unit = grads / (jnp.sqrt(jnp.sum(grads ** 2, axis=-1, keepdims=True)) + 1e-8)
        cosine = jnp.einsum("i...c,j...c->ij...", unit, unit)
        pairs = (jnp.sum(cosine, axis=(0, 1)) - jnp.trace(cosine)) / (count * (count - 1))
        return jnp.broadcast_to((pairs >= self.threshold)[..., None], grads[0].shape).astype(grads.dtype)

    def perturb(self, logits_fn, x, label, target, key) -> jax.Array:
        """x (*shape) in [0, 1] -> x_adv in the epsilon ball."""
        members = members_of(logits_fn)

        def gradient(x_t, _):
            grads = _member_gradients(members, x_t, label, target)
            weights = jax.lax.stop_gradient(
                self.member_weights(members, x, x_t, list(grads), label, target))
            weighted = lambda z: sum(w * m(z) for w, m in zip(weights, members))  # noqa: E731
            g = jax.grad(attack_objective, argnums=1)(weighted, x_t, label, target)
            return g * self.agreement_filter(grads)

        return self.iterate(gradient, x, x, key)
