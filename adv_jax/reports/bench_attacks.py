"""results/bench_attacks.md from the attack benchmark's numbers (adv_jax/bench/attacks.py: what
each section measures): (a) L-BFGS batched against per-example scipy and the full test set, (b)
against foolbox, (c) the full-test-set run's arithmetic against a fused forward+backward pass."""

from __future__ import annotations

from adv_jax.reports import bench_foolbox, paper, provenance
from adv_jax.reports.tables import markdown


def lbfgs_lines(m: dict) -> list[str]:
    """(a) without the full test set: ours against scipy on the same images."""
    a, attack, n = m["lbfgs"], m["attack"], m["lbfgs"]["scipy_examples"]
    per_scipy = a["scipy_seconds"] / n
    rows = [["ours, batched", a["examples"], f"{a['examples'] / a['seconds']:,.1f}", f"{a['distortion_first']:.4f}",
             f"{a['success']:.1%}"],
            ["scipy, per example", n, f"{1 / per_scipy:.2f}", f"{a['scipy_distortion']:.4f}", "-"]]
    return [
        "## (a) L-BFGS: batched in JAX against per-example scipy", "",
        f"Same objective (c * |r|^2 + cross-entropy of the target, box [0, 1]), same c search "
        f"({attack['c_steps']} solves from c = {attack['c_init']:g}), same random targets. Both: total "
        f"time of a pass over the examples, median of {m['repeats']} passes. Ours: `{attack['text']}`. scipy: "
        "`fmin_l_bfgs_b` per example, its default tolerances, memory 10.", "",
        *markdown(["", "examples", "examples/s", f"mean distortion (first {n})", "success"], rows).splitlines(), "",
        f"Speed ratio: **{a['examples'] / a['seconds'] * per_scipy:,.0f}x** the examples per second; distortion "
        f"ratio ours/scipy on the same {n} examples: **{a['distortion_first'] / a['scipy_distortion']:.4f}**. "
        f"Mean distortion of all {a['examples']}: {a['distortion_successes']:.4f}.", ""]


def full_test_set_lines(full: dict) -> list[str]:
    """The full-test-set run's speed, success and distortion."""
    return [f"**Full test set** ({full['examples']} images, random targets, median of {full['repeats']}): "
            f"{full['seconds']:.1f} s, {full['examples'] / full['seconds']:,.0f} examples/s, success "
            f"{full['success']:.2%}, mean distortion {full['mean_distortion']:.4f} (paper: "
            f"{paper.TABLE3['distortion'][0]:g} on its {paper.TABLE3_MODELS[0]}, Table 3), median "
            f"{full['median_distortion']:.4f}, every pixel in [0, 1]: {full['in_box']}. Evaluations per "
            f"example: mean {full['evals_mean']:.1f}, max {full['evals_max']}.", ""]


def roofline_lines(m: dict) -> list[str]:
    """(c): the full-test-set run's network arithmetic per second against the fused pass's."""
    full, attack, per_eval, calls = m["full"], m["attack"], m["flops_per_evaluation"], m["fused_calls"]
    fused_rate = calls * full["examples"] * per_eval / full["fused_seconds"]
    passes = [("fused forward+backward pass", calls * full["examples"], full["fused_seconds"]),
              ("L-BFGS, every trip", full["trips"], full["seconds"]),
              ("L-BFGS, evaluations used", full["evals_used"], full["seconds"])]
    rows = [[name, f"{n:,}", f"{per_eval / 1e3:,.0f}", f"{sec:.2f}", f"{n * per_eval / sec / 1e9:.1f}",
             f"{n * per_eval / sec / fused_rate:.1%}"] for name, n, sec in passes]
    return ["## (c) Roofline: achieved arithmetic", "",
            f"The full-test-set run of (a)'s attack (chunks of {attack['chunk_size']}, each split over "
            f"{m['devices']} device(s), one loop per device with {attack['lanes']} examples in "
            "flight, a lane taking the next example when its own is done) against a fused "
            f"forward+backward pass over the same {full['examples']} images ({calls} calls in one "
            "`lax.scan`, split the same way); each timed repeat of one right after the other's, "
            "medians. FLOPs per evaluation: 6 x weights per example (neither needs the weights' "
            "gradient, so both do about 2/3 of that; the fractions do not change). \"every trip\": "
            "one evaluation per lane and trip, idle lanes and the rest of a round of "
            f"{attack['trips_per_round']} trips after an example ends included (`trips`); \"used\": the "
            "evaluations the examples report, plus each one's start at z = x.", "",
            *markdown(["pass", "evaluations", "kFLOP per evaluation", "seconds", "GFLOP/s", "fraction of fused"],
                      rows).splitlines(), "",
            "The rest of the loop's time is L-BFGS bookkeeping (two-loop recursion over "
            f"{attack['memory']} pairs of 784-vectors per example, line search, masks); the gap between "
            "the two L-BFGS rows is the trips of lanes whose example is done before the round ends "
            "and of idle lanes at the end of a device's loop.", ""]


def foolbox_lines(rows: list[dict]) -> list[str]:
    return [f"## (b) Against foolbox 3.3.4 (untargeted, first {rows[0]['examples']} correctly classified "
            "test images)", "", bench_foolbox.table(rows),
            "RMS: mean per-pixel RMS distortion over the images both attacks fool. foolbox's "
            "C&W returns an all-zero image where it fails; those do not count as successes. "
            "foolbox runs on `fb.JAXModel` around the jitted forward pass."]


def report(m: dict, command: str) -> str:
    """The markdown of results/bench_attacks.md from `measure`'s numbers (sections present)."""
    error = "-" if m["test_error"] is None else f"{m['test_error']:.2%}"
    lines = [*provenance.header("Attack benchmark: FC100-100-10 trained on P1", command),
             f"Model: `{m['run_dir']}` (test error {error}). Times: median of {m['repeats']} runs after a "
             f"warm-up run. JAX devices: {m['devices']} ({m['platform']}), every batch split over them.", "",
             *lbfgs_lines(m)]
    if "full" in m:
        lines += full_test_set_lines(m["full"]) + roofline_lines(m)
    if m.get("foolbox"):
        lines += foolbox_lines(m["foolbox"])
    return "\n".join(lines + [f"Load average at the end: {m['load_average']:.1f}."]) + "\n"
