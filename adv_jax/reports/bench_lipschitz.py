"""results/bench_lipschitz.md from the conv-norm benchmark's rows (adv_jax/bench/conv_norm.py):
FFT against dense SVD and power iteration, and the done-when target."""

from __future__ import annotations

from adv_jax.reports import provenance
from adv_jax.reports.tables import markdown

TARGET_SECONDS = 0.1  # done-when: a 28x28, 32 -> 32, 3x3 conv's norm in under 0.1 s
COLUMNS = ["N", "C=D", "stride", "padding", "dim", "FFT norm", "FFT s", "SVD norm", "SVD s", "power norm",
           "power s", "svd vs fft", "power vs fft"]


def cell(row: dict, name: str, fmt: str) -> str:
    return fmt.format(row[name]) if name in row else "skipped"


def cells(r: dict) -> list[str]:
    """One case's row of COLUMNS; relative gaps |svd - fft| / fft and (fft - power) / fft."""
    svd_gap = f"{abs(r['svd'] - r['fft']) / r['fft']:.1e}" if "svd" in r else "-"
    power_gap = f"{(r['fft'] - r['power']) / r['fft']:.1e}" if "power" in r else "-"
    return [r["n"], r["channels"], r["stride"], r["padding"], r["dim"], f"{r['fft']:.6f}", f"{r['fft_s']:.4f}",
            cell(r, "svd", "{:.6f}"), cell(r, "svd_s", "{:.4f}"), cell(r, "power", "{:.6f}"),
            cell(r, "power_s", "{:.4f}"), svd_gap, power_gap]


def report(m: dict, command: str) -> str:
    """results/bench_lipschitz.md from `conv_norm.run`'s numbers."""
    rows, k, dense_max_dim = m["rows"], m["kernel"], m["dense_max_dim"]
    case = lambda padding: next(r for r in rows if (r["n"], r["channels"], r["stride"], r["padding"])  # noqa: E731
                                == (28, 32, 1, padding))
    done, same = case("CIRCULAR"), case("SAME")
    verdict = "meets" if max(done["fft_s"], same["fft_s"]) < TARGET_SECONDS else "MISSES"
    lines = [
        *provenance.header("Conv operator norm: FFT vs dense SVD vs power iteration", command),
        f"- JAX backend {m['backend']}; load average at the end of the run "
        f"{m['load_average']:.1f} (with other jobs on the cores, timings are upper estimates).",
        f"- Kernel {k}x{k}, C = D channels, He-scaled normal weights; float32.",
        f"- Times: seconds, median of {m['reps']} calls of the jitted function after ahead-of-time "
        "compilation and one untimed warm-up call (no warm-up call for the dense SVD).",
        "- FFT: `lipschitz.conv_operator_norm` (exact for CIRCULAR; for SAME the guaranteed upper bound "
        "on the enlarged grid). Dense SVD: explicit (out_dim, in_dim) matrix of `circular_conv` by "
        "`jax.jacfwd`, then `jnp.linalg.svd`, time includes building the matrix. Power: "
        f"`lipschitz.jacobian_norm` of the conv, {m['power_iters']} iterations of J^T J via jvp/vjp "
        "(a lower bound).",
        f"- Dense SVD is skipped above dim = N*N*C = {dense_max_dim}: its cost grows as dim^3, and "
        f"at 28x28x32 the matrix is {28 * 28 * 32} x {28 * 28 * 32} "
        f"({(28 * 28 * 32) ** 2 * 4 / 1e9:.1f} GB in float32).",
        "- Relative differences: |svd - fft| / fft and (fft - power) / fft.",
        "",
        f"**Done-when target** (28x28, 32 -> 32 channels, 3x3, stride 1, < {TARGET_SECONDS} s): "
        f"{done['fft_s'] * 1e3:.1f} ms circular, {same['fft_s'] * 1e3:.1f} ms SAME -> {verdict} the target.",
        "", markdown(COLUMNS, [cells(r) for r in rows])]
    return "\n".join(lines)
