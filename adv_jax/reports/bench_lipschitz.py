"""Conv operator norm three ways: FFT (adv_jax.lipschitz), dense SVD of the explicit matrix, and
power iteration through the conv and its transpose (results/bench_lipschitz.md).

Every timing is the median of `reps` calls after one warm-up call (which compiles). Kernels are
3x3, C = D channels, circular padding (so all three compute the same number); the done-when row
(28x28, 32 -> 32) is repeated with SAME padding, where the FFT gives the enlarged-grid upper bound.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from adv_jax import lipschitz as lip
from adv_jax.reports import provenance
from adv_jax.reports.timing import median_seconds

SIZES = (8, 16, 28)
CHANNELS = (8, 16, 32)
STRIDES = (1, 2)
KERNEL = 3
TARGET_SECONDS = 0.1  # done-when: a 28x28, 32 -> 32, 3x3 conv's norm in under 0.1 s


def timed(fn, kernel, reps: int, warm_up: bool = True) -> tuple[float, float]:
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
    row["fft"], row["fft_s"] = timed(fft_norm(n, stride, padding), kernel, reps)
    if padding != "CIRCULAR":
        return row
    if row["dim"] <= dense_max_dim:
        row["svd"], row["svd_s"] = timed(dense_svd_norm(n, stride), kernel, reps, warm_up=False)
    row["power"], row["power_s"] = timed(power_norm(n, stride, power_iters, power_key), kernel,
                                         reps)
    return row


def cell(row, name, fmt):
    return fmt.format(row[name]) if name in row else "skipped"


def markdown(rows, reps: int, dense_max_dim: int, power_iters: int, command: str) -> str:
    """results/bench_lipschitz.md from the rows of `bench_case`."""
    done = next(r for r in rows if (r["n"], r["channels"], r["stride"], r["padding"]) == (28, 32, 1, "CIRCULAR"))
    same = next(r for r in rows if (r["n"], r["channels"], r["stride"], r["padding"]) == (28, 32, 1, "SAME"))
    verdict = "meets" if max(done["fft_s"], same["fft_s"]) < TARGET_SECONDS else "MISSES"
    lines = [
        *provenance.header("Conv operator norm: FFT vs dense SVD vs power iteration", command),
        f"- JAX backend {jax.default_backend()}; load average at the end of the run "
        f"{os.getloadavg()[0]:.1f} (with other jobs on the cores, timings are upper estimates).",
        f"- Kernel {KERNEL}x{KERNEL}, C = D channels, He-scaled normal weights; float32.",
        f"- Times: seconds, median of {reps} calls of the jitted function after ahead-of-time "
        "compilation and one untimed warm-up call (no warm-up call for the dense SVD).",
        f"- FFT: `lipschitz.conv_operator_norm` (exact for CIRCULAR; for SAME the guaranteed upper bound "
        "on the enlarged grid). Dense SVD: explicit (out_dim, in_dim) matrix of `circular_conv` by "
        "`jax.jacfwd`, then `jnp.linalg.svd`, time includes building the matrix. Power: "
        f"`lipschitz.jacobian_norm` of the conv, {power_iters} iterations of J^T J via jvp/vjp "
        "(a lower bound).",
        f"- Dense SVD is skipped above dim = N*N*C = {dense_max_dim}: its cost grows as dim^3, and "
        f"at 28x28x32 the matrix is {28 * 28 * 32} x {28 * 28 * 32} "
        f"({(28 * 28 * 32) ** 2 * 4 / 1e9:.1f} GB in float32).",
        "- Relative differences: |svd - fft| / fft and (fft - power) / fft.",
        "",
        f"**Done-when target** (28x28, 32 -> 32 channels, 3x3, stride 1, < {TARGET_SECONDS} s): "
        f"{done['fft_s'] * 1e3:.1f} ms circular, {same['fft_s'] * 1e3:.1f} ms SAME -> {verdict} the target.",
        "",
        "| N | C=D | stride | padding | dim | FFT norm | FFT s | SVD norm | SVD s | power norm | power s "
        "| svd vs fft | power vs fft |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        svd_gap = f"{abs(r['svd'] - r['fft']) / r['fft']:.1e}" if "svd" in r else "-"
        power_gap = f"{(r['fft'] - r['power']) / r['fft']:.1e}" if "power" in r else "-"
        lines.append(
            f"| {r['n']} | {r['channels']} | {r['stride']} | {r['padding']} | {r['dim']} "
            f"| {r['fft']:.6f} | {r['fft_s']:.4f} | {cell(r, 'svd', '{:.6f}')} | {cell(r, 'svd_s', '{:.4f}')} "
            f"| {cell(r, 'power', '{:.6f}')} | {cell(r, 'power_s', '{:.4f}')} | {svd_gap} | {power_gap} |")
    return "\n".join(lines) + "\n"


def run(reps: int, dense_max_dim: int, power_iters: int, command: str) -> str:
    """Every case (SIZES x CHANNELS x STRIDES circular, and 28x28x32 SAME) -> the markdown."""
    cases = [(n, c, s, "CIRCULAR") for n in SIZES for c in CHANNELS for s in STRIDES]
    cases += [(28, 32, s, "SAME") for s in STRIDES]
    rows = []
    for case_key, case in zip(jax.random.split(jax.random.key(0), len(cases)), cases):
        rows.append(bench_case(*case, reps, dense_max_dim, power_iters, case_key))
        print({k: (round(v, 6) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    return markdown(rows, reps, dense_max_dim, power_iters, command)
