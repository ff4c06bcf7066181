"""The transfer attack families as parts of ONE momentum loop: gradient stabilization (NI, VMI,
VNI, EMI, GRA, PGN) and input transformation (SI, Admix, SIA, BSR), each a preset of
`TransferFamily` whose hyperparameters switch its ingredients on (every one off: MI-FGSM).

Per iteration t = 0 .. steps-1 from x_0 = x, with J the objective of gradient.py, alpha =
relative_step_size * epsilon, g_0 = v_0 = 0, M_0 = 1 / eta and G(p) = grad_p mean_k J(copy_k(p)) the
gradient through the input copies of input_copies.py (`copies`; none: G = grad J):

  p       = x_t + lookahead alpha mu u(g_t)                     NI (Lin et al. 2020): 1
  g_hat   = G(p)                                                plain, or
          = (1/N) sum_i G(p + c_i alpha u(gbar_{t-1})),         EMI (Wang et al. 2021): N points
            c_i = linspace(-eta, eta, N), gbar the previous g_hat  along the previous direction
          = (1/N) sum_i (1-delta) G(p_i) + delta G(p_i - alpha u(G(p_i))),
            p_i = p + r_i, r_i ~ U(zeta eps ball)               PGN (Ge et al. 2023)
  g_hat   = s g_hat + (1-s) gbar_N, gbar_N = (1/N) sum G(p + r_i), r_i ~ U(beta eps ball),
            s = cos(g_hat, gbar_N)                              GRA (Zhu et al. 2023)
  g_{t+1} = mu g_t + (g_hat + v_t) / |g_hat + v_t|_1            MI; VMI/VNI (Wang & He 2021):
  v_{t+1} = (1/N) sum_i G(x_t + r_i) - g_hat, r_i ~ U(beta eps ball)   (v lags one iteration)
  M_{t+1} = M_t * (1 where sign g_{t+1} = sign g_t, else eta)   GRA's decay indicator (eta = 1: off)
  x_{t+1} = Proj(x_t + alpha M_{t+1} d(g_{t+1}))                d = sign (linf), g/|g|_2 (l2)

u(v) = v / |v|_1 times n (linf: the papers' v / mean|v|, per pixel about 1 like a sign step) or
sqrt(n) (l2: a dense unit-L1 vector becomes about unit-L2, like an L2 step); n = pixels. The
"U(r ball)" samples are uniform in the linf cube or the L2 ball of radius r (`ball_samples`).
Units: pixels in [0, 1]; epsilon per pixel (linf) or of the whole image (l2). The loop is a
`lax.fori_loop`; iteration t draws from fold_in(key, t), each ingredient from its own fold_in.
Evaluations per example: steps * (its base count + relevance + variance samples) * copies.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from adv_jax.attacks.common import FixedBudget, LogitsFn
from adv_jax.attacks.gradient import NORMS, attack_objective, project
from adv_jax.attacks.input_copies import (ImagePool, admix_copies, mnist_pool, scale_copies,
                                          shuffle_rotate, structure_invariant)

__all__ = ["PRESETS", "TransferFamily", "ball_samples", "family", "ingredient_key", "pixel_units"]

TINY = 1e-12  # keeps a zero gradient's normalization finite
COPIES = ("none", "scale", "admix", "sia", "bsr")
# Each ingredient's key in an iteration: fold_in(fold_in(key, t), INGREDIENT[name]).
INGREDIENT = {"copies": 0, "base": 1, "relevance": 2, "variance": 3}


def ingredient_key(key: jax.Array, t, name: str) -> jax.Array:
    """The key of ingredient `name` in iteration t."""
    return jax.random.fold_in(jax.random.fold_in(key, t), INGREDIENT[name])


def pixel_units(v: jax.Array, norm: str) -> jax.Array:
    """u(v) of the module docstring: v / |v|_1 times n (linf) or sqrt(n) (l2)."""
    scale = v.size if norm == "linf" else v.size ** 0.5
    return v * (scale / (jnp.sum(jnp.abs(v)) + TINY))


def ball_samples(key: jax.Array, shape: tuple, count: int, radius, norm: str) -> jax.Array:
    """count points (count, *shape) uniform in the linf cube [-radius, radius]^n or in the L2
    ball of that radius (a Gaussian direction, radius * U^(1/n))."""
    if norm == "linf":
        return jax.random.uniform(key, (count, *shape), minval=-1.0, maxval=1.0) * radius
    direction_key, radius_key = jax.random.split(key)
    direction = jax.random.normal(direction_key, (count, *shape))
    flat = direction.reshape(count, -1)
    lengths = radius * jax.random.uniform(radius_key, (count,)) ** (1.0 / flat.shape[1])
    unit = flat / (jnp.linalg.norm(flat, axis=1, keepdims=True) + TINY)
    return (unit * lengths[:, None]).reshape(count, *shape)


def mean_gradient(gradient, points: jax.Array, key: jax.Array) -> jax.Array:
    """(1/K) sum_k gradient(points[k], key_k) for points (K, *shape); one point: that gradient
    itself, unbatched (so that a one-sample ingredient equals the plain gradient bit for bit)."""
    keys = jax.random.split(key, len(points))
    if len(points) == 1:
        return gradient(points[0], keys[0])
    return jnp.mean(jax.vmap(gradient)(points, keys), axis=0)


@dataclasses.dataclass(frozen=True)
class TransferFamily(FixedBudget):
    """MI-FGSM with the families' ingredients (module docstring); L-inf or L2, targeted or not."""

    epsilon: float = 0.1  # ball radius: per-pixel (linf) or whole-image Euclidean (l2)
    norm: str = "linf"  # linf | l2
    steps: int = 10  # T = 10 in every paper here
    relative_step_size: float = 0.1  # alpha = epsilon / T
    momentum: float = 1.0  # mu = 1.0 in every paper here
    lookahead: float = 0.0  # NI: 1.0
    enhanced_samples: int = 0  # EMI: N (0 = off)
    enhanced_radius: float = 7.0  # EMI: eta, in steps of alpha
    penalty_samples: int = 0  # PGN: N (0 = off)
    penalty_radius: float = 3.0  # PGN: zeta, relative to epsilon
    penalty_balance: float = 0.5  # PGN: delta (0: no second gradient)
    relevance_samples: int = 0  # GRA: N (0 = off)
    relevance_radius: float = 3.5  # GRA: beta, relative to epsilon
    relevance_decay: float = 1.0  # GRA: eta of the decay indicator (1 = off)
    variance_samples: int = 0  # VMI / VNI: N (0 = off)
    variance_radius: float = 1.5  # VMI / VNI: beta, relative to epsilon
    copies: str = "none"  # input transformation: none | scale | admix | sia | bsr
    scales: int = 5  # SI / Admix: m1 copies x / 2^i
    mixes: int = 3  # Admix: m2 pool images per iteration
    mix_strength: float = 0.2  # Admix: eta
    admix_pool: ImagePool | None = None  # Admix: the images mixed in (input_copies.py)
    transforms: int = 20  # SIA / BSR: N transformed copies
    blocks: int = 3  # SIA: s x s random blocks; BSR: n x n equal blocks
    max_degrees: float = 24.0  # BSR: tau

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {list(NORMS)}")
        if self.copies not in COPIES:
            raise ValueError(f"unknown copies {self.copies!r}; choose one of {list(COPIES)}")
        if self.copies == "admix" and self.admix_pool is None:
            raise ValueError("copies='admix' needs an admix_pool (input_copies.ImagePool)")
        if self.enhanced_samples and self.penalty_samples:
            raise ValueError("EMI and PGN are alternative samplers of g_hat: switch on one")

    @property
    def copies_per_gradient(self) -> int:
        """K, the input copies each G(p) averages over."""
        return {"none": 1, "scale": self.scales, "admix": self.scales * self.mixes,
                "sia": self.transforms, "bsr": self.transforms}[self.copies]

    @property
    def gradient_evals(self) -> int:
        """Backward passes of one `perturb` (module docstring)."""
        if self.penalty_samples:
            base = self.penalty_samples * (2 if self.penalty_balance else 1)
        else:
            base = self.enhanced_samples or 1
        per_step = base + self.relevance_samples + self.variance_samples
        return self.steps * per_step * self.copies_per_gradient

    def input_copies(self, p: jax.Array, label, key) -> jax.Array:
        """p's input copies (K, *shape)."""
        if self.copies == "scale":
            return scale_copies(p[None], self.scales)
        if self.copies == "admix":
            return admix_copies(p, key, label, self.admix_pool, self.mixes, self.mix_strength,
                                self.scales)
        keys = jax.random.split(key, self.transforms)
        if self.copies == "sia":
            return jax.vmap(lambda k: structure_invariant(p, k, self.blocks))(keys)
        return jax.vmap(lambda k: shuffle_rotate(p, k, self.blocks, self.max_degrees))(keys)

    def gradient(self, logits_fn: LogitsFn, p, label, target, key) -> jax.Array:
        """G(p): grad_p of J averaged over the input copies (one copy: unbatched)."""
        if self.copies == "none":
            return jax.grad(attack_objective, argnums=1)(logits_fn, p, label, target)

        def objective(point):
            copies = self.input_copies(point, label, key)
            if len(copies) == 1:
                return attack_objective(logits_fn, copies[0], label, target)
            return jnp.mean(jax.vmap(lambda c: attack_objective(logits_fn, c, label, target))(copies))

        return jax.grad(objective)(p)

    def base_gradient(self, grad, p, previous, alpha, epsilon, key) -> jax.Array:
        """g_hat before GRA: plain G(p), EMI's average along the previous g_hat, or PGN's."""
        if self.enhanced_samples:
            factors = jnp.linspace(-self.enhanced_radius, self.enhanced_radius, self.enhanced_samples)
            offsets = factors.reshape(-1, *(1,) * p.ndim) * alpha * pixel_units(previous, self.norm)
            return mean_gradient(grad, p[None] + offsets, key)
        if self.penalty_samples:
            radius = self.penalty_radius * epsilon
            near = p[None] + ball_samples(key, p.shape, self.penalty_samples, radius, self.norm)

            def penalized(point, point_key):
                first = grad(point, point_key)
                if not self.penalty_balance:  # static: delta = 0 needs no second gradient
                    return first
                ahead = point - alpha * pixel_units(first, self.norm)
                second = grad(ahead, jax.random.fold_in(point_key, 1))
                return (1 - self.penalty_balance) * first + self.penalty_balance * second

            return mean_gradient(penalized, near, jax.random.fold_in(key, 1))
        return grad(p, key)

    def relevance(self, grad, g_hat, p, epsilon, key) -> jax.Array:
        """GRA's s g_hat + (1 - s) gbar_N, s the cosine of g_hat and the neighbours' mean gbar_N."""
        radius = self.relevance_radius * epsilon
        near = p[None] + ball_samples(key, p.shape, self.relevance_samples, radius, self.norm)
        mean = mean_gradient(grad, near, jax.random.fold_in(key, 1))
        cosine = jnp.sum(g_hat * mean) / (jnp.linalg.norm(g_hat) * jnp.linalg.norm(mean) + TINY)
        return cosine * g_hat + (1 - cosine) * mean

    def variance(self, grad, g_hat, x_adv, epsilon, key) -> jax.Array:
        """VMI's v_{t+1}: the neighbours' mean gradient around x_t minus g_hat."""
        radius = self.variance_radius * epsilon
        near = x_adv[None] + ball_samples(key, x_adv.shape, self.variance_samples, radius, self.norm)
        return mean_gradient(grad, near, jax.random.fold_in(key, 1)) - g_hat

    def step_gradient(self, logits_fn, x, label, target, key, epsilon, t, carry):
        """One iteration's (g_hat + v_t, g_hat, v_{t+1}) from carry (x_t, g_t, v_t, gbar, M)."""
        x_adv, velocity, variance, previous, _ = carry
        alpha = self.relative_step_size * epsilon
        grad = lambda p, k: self.gradient(logits_fn, p, label, target, k)  # noqa: E731
        p = x_adv
        if self.lookahead:  # static: NI's look-ahead point
            p = x_adv + self.lookahead * alpha * self.momentum * pixel_units(velocity, self.norm)
        g_hat = self.base_gradient(grad, p, previous, alpha, epsilon, ingredient_key(key, t, "base"))
        if self.relevance_samples:
            g_hat = self.relevance(grad, g_hat, p, epsilon, ingredient_key(key, t, "relevance"))
        if not self.variance_samples:
            return g_hat, g_hat, variance
        new_variance = self.variance(grad, g_hat, x_adv, epsilon, ingredient_key(key, t, "variance"))
        return g_hat + variance, g_hat, new_variance

    def perturb(self, logits_fn: LogitsFn, x, label, target, key, epsilon) -> jax.Array:
        """The attack at a given (possibly traced) epsilon; x (28, 28, 1) -> x_adv."""
        step_size = self.relative_step_size * epsilon

        def step(t, carry):
            x_adv, velocity, _, _, decay = carry
            total, g_hat, variance = self.step_gradient(logits_fn, x, label, target, key, epsilon,
                                                        t, carry)
            new_velocity = self.momentum * velocity + total / (jnp.sum(jnp.abs(total)) + TINY)
            size = step_size
            if self.relevance_decay != 1.0:  # static: GRA's per-pixel step decay
                same = jnp.sign(new_velocity) == jnp.sign(velocity)
                decay = decay * jnp.where(same, 1.0, self.relevance_decay)
                size = step_size * decay
            if self.norm == "linf":
                direction = jnp.sign(new_velocity)
            else:
                direction = new_velocity / (jnp.sqrt(jnp.sum(new_velocity ** 2)) + TINY)
            x_new = project(x_adv + size * direction, x, epsilon, self.norm)
            return x_new, new_velocity, variance, g_hat, decay

        zeros = jnp.zeros_like(x)
        carry = (x, zeros, zeros, zeros, jnp.full_like(x, 1 / self.relevance_decay))
        return jax.lax.fori_loop(0, self.steps, step, carry)[0]


# Each paper's defaults (ImageNet, 299 or 224 px): every one is a count or relative to epsilon or
# alpha, so each carries over to 28x28 unchanged but SIA's and BSR's blocks (3x3 -> blocks of
# about 9 px; 2x2 -> 14 px) and SIA's noise (16/255 in intensity). mu = 1, T = 10, alpha = eps / T.
PRESETS = {
    "ni_fgsm": {"lookahead": 1.0},  # Lin et al. 2020
    "vmi_fgsm": {"variance_samples": 20, "variance_radius": 1.5},  # Wang & He 2021: N 20, beta 1.5
    "vni_fgsm": {"lookahead": 1.0, "variance_samples": 20, "variance_radius": 1.5},
    "emi_fgsm": {"enhanced_samples": 11, "enhanced_radius": 7.0},  # Wang et al. 2021: N 11, eta 7
    "gra": {"relevance_samples": 20, "relevance_radius": 3.5, "relevance_decay": 0.94},  # Zhu 2023
    "pgn": {"penalty_samples": 20, "penalty_radius": 3.0, "penalty_balance": 0.5},  # Ge et al. 2023
    "sini_fgsm": {"lookahead": 1.0, "copies": "scale", "scales": 5},  # Lin et al. 2020: m 5
    "admix": {"copies": "admix", "scales": 5, "mixes": 3, "mix_strength": 0.2},  # Wang et al. 2021
    "sia": {"copies": "sia", "transforms": 20, "blocks": 3},  # Wang et al. 2023: N 20, s 3
    "bsr": {"copies": "bsr", "transforms": 20, "blocks": 2, "max_degrees": 24.0},  # Wang 2024
}


def family(name: str):
    """The ATTACKS builder of a preset: TransferFamily with the preset's values as defaults, any
    field overridable; admix's takes `pool_per_class` (mnist_pool) unless given an admix_pool."""
    if name != "admix":
        return functools.partial(TransferFamily, **PRESETS[name])
    inner = TransferFamily

    def build(pool_per_class: int = 2, **params) -> TransferFamily:
        if "admix_pool" not in params:
            params["admix_pool"] = mnist_pool(pool_per_class)
        return inner(**{**PRESETS["admix"], **params})

    return build
