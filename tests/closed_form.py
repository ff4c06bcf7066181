"""Closed-form answers the attack tests compare against, and the affine models they are known
for (imported by the test modules)."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize

from adv_jax.attacks.common import attack_batch
from adv_jax.models import Model, logits_fn
from adv_jax.models.layers import Layer

N = 6  # examples per affine case


def affine_model(num_classes: int, seed: int):
    """A hand-built linear classifier and N images around 0.5, far enough from 0 and 1 that the
    box stays inactive for the closest adversarial example: (model, params, w, b, x, label)."""
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(784, num_classes)) * 0.05).astype(np.float32)
    b = (rng.normal(size=num_classes) * 0.1).astype(np.float32)
    x = (0.5 + 0.1 * rng.uniform(-1, 1, size=(N, 28, 28, 1))).astype(np.float32)
    label = np.argmax(x.reshape(N, -1) @ w + b, 1).astype(np.int32)
    model = Model(layers=(Layer("dense", features=num_classes),))
    return model, ({"w": jnp.asarray(w), "b": jnp.asarray(b)},), w, b, x, label


def run_batch(attack, model, params, x, label, target, seed=0):
    """(x_adv (N, 28, 28, 1) as numpy, diagnostics {name: (N,)}) of the batched attack."""
    x_adv, diagnostics = attack_batch(attack, logits_fn(model, params), jnp.asarray(x),
                                      jnp.asarray(label), jnp.asarray(target, jnp.int32),
                                      key=jax.random.key(seed), chunk_size=1000, progress=False)
    return np.asarray(x_adv), diagnostics


def qp_step(w, b, x, k, kappa: float = 0.0) -> np.ndarray:
    """The smallest r (L2) with logit_k >= logit_j + kappa at x + r for every j != k, for the
    linear classifier logits = x w + b (box ignored). With A r >= c (rows w_k - w_j), the optimum
    is r = A^T mu: a QP in K - 1 variables."""
    others = [j for j in range(w.shape[1]) if j != k]
    a = (w[:, [k]] - w[:, others]).T.astype(np.float64)
    c = kappa - (a @ x.reshape(-1).astype(np.float64) + (b[k] - b[others]))
    gram = a @ a.T
    result = minimize(lambda m: m @ gram @ m, np.zeros(len(others)), jac=lambda m: 2 * gram @ m,
                      method="SLSQP", options={"ftol": 1e-14, "maxiter": 500},
                      constraints=[{"type": "ineq", "fun": lambda m: gram @ m - c,
                                    "jac": lambda m: gram}])
    return a.T @ result.x


def qp_distance(w, b, x, k, kappa: float = 0.0) -> float:
    """|qp_step|: the L2 distance from x to where class k wins by kappa."""
    return float(np.linalg.norm(qp_step(w, b, x, k, kappa)))


def assert_batch_is_one_by_one(attack, model, params, x, y, target, batch, seed):
    """The batched attack's x_adv (N, ...) equals the attack run on one image at a time, each with
    the key fold_in(key(seed), i) the batch gives example i."""
    key = jax.random.key(seed)
    one_image = lambda image: model.apply(params, image[None])[0]  # noqa: E731
    single = jax.jit(lambda *args: attack(one_image, *args))
    for i in range(len(y)):
        one = single(jnp.asarray(x[i]), jnp.int32(y[i]), jnp.int32(target[i]), jax.random.fold_in(key, i))
        np.testing.assert_allclose(batch[i], one, atol=1e-5)
