"""Conv operator norm three ways: FFT (adv_jax.lipschitz), dense SVD of the explicit matrix, and
power iteration through the conv and its transpose: the rows of results/bench_lipschitz.md (the
markdown: adv_jax/reports/bench_lipschitz.py).

Every timing is the median of `reps` calls after one warm-up call (which compiles). Kernels are
3x3, C = D channels, circular padding (so all three compute the same number); the done-when row
(28x28, 32 -> 32) is repeated with SAME padding, where the FFT gives the enlarged-grid upper bound.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from adv_jax import lipschitz as lip
from adv_jax.bench.timing import median_seconds

SIZES = (8, 16, 28)
CHANNELS = (8, 16, 32)
STRIDES = (1, 2)
KERNEL = 3


def norm_and_seconds(fn, kernel, reps: int, warm_up: bool = True) -> tuple[float, float]:
    """(value, median seconds of reps calls): compiled ahead of time, then one untimed warm-up call
    (skipped for the dense SVD, where one call is seconds to minutes and compilation is done)."""
    compiled = jax.jit(fn).lower(kernel).compile()
    seconds, value = median_seconds(lambda: compiled(kernel), reps, warm_up)
    return float(value), seconds


def fft_norm(n: int, stride: int, padding: str):
    return lambda kernel: lip.conv_operator_norm(kernel, (n, n), stride, padding)


def dense_svd_norm(n: int, stride: int):
    """Builds the (out_dim, in_dim) matrix of the circular conv with jacfwd, then a full SVD."""
    def norm(kernel):
        conv = lambda x: lip.circular_conv(x, kernel, stride)
        in_shape = (n, n, kernel.shape[2])
        matrix = jax.jacfwd(conv)(jnp.zeros(in_shape)).reshape(-1, n * n * kernel.shape[2])
        return jnp.linalg.svd(matrix, compute_uv=False)[0]
    return norm


def power_norm(n: int, stride: int, iters: int, key: jax.Array):
    def norm(kernel):
        conv = lambda x: lip.circular_conv(x, kernel, stride)
        return lip.jacobian_norm(conv, jnp.zeros((n, n, kernel.shape[2])), key, iters)
    return norm


def bench_case(n, channels, stride, padding, reps: int, dense_max_dim: int, power_iters: int, key) -> dict:
    """One kernel's norm by FFT, and for circular padding by dense SVD (up to dense_max_dim) and power."""
    kernel_key, power_key = jax.random.split(key)
    # He-scaled kernel, as a trained ReLU conv would roughly have.
    kernel = jax.random.normal(kernel_key, (KERNEL, KERNEL, channels, channels))
    kernel = kernel * jnp.sqrt(2.0 / (KERNEL * KERNEL * channels))
    row = dict(n=n, channels=channels, stride=stride, padding=padding, dim=n * n * channels)
    row["fft"], row["fft_s"] = norm_and_seconds(fft_norm(n, stride, padding), kernel, reps)
    if padding != "CIRCULAR":
        return row
    if row["dim"] <= dense_max_dim:
        row["svd"], row["svd_s"] = norm_and_seconds(dense_svd_norm(n, stride), kernel, reps, warm_up=False)
    row["power"], row["power_s"] = norm_and_seconds(power_norm(n, stride, power_iters, power_key), kernel,
                                         reps)
    return row


def run(reps: int, dense_max_dim: int, power_iters: int) -> dict:
    """Every case (SIZES x CHANNELS x STRIDES circular, and 28x28x32 SAME): {"rows", the settings,
    "kernel", "backend", "load_average" at the end}."""
    cases = [(n, c, s, "CIRCULAR") for n in SIZES for c in CHANNELS for s in STRIDES]
    cases += [(28, 32, s, "SAME") for s in STRIDES]
    rows = []
    for case_key, case in zip(jax.random.split(jax.random.key(0), len(cases)), cases):
        rows.append(bench_case(*case, reps, dense_max_dim, power_iters, case_key))
        print({k: (round(v, 6) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    return {"rows": rows, "reps": reps, "dense_max_dim": dense_max_dim, "power_iters": power_iters,
            "kernel": KERNEL, "backend": jax.default_backend(), "load_average": os.getloadavg()[0]}
