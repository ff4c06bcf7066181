"""results/bench.md and results/figures/bench_*.png from the benchmark sections (bench.json).

Each section holds the command line that made it ("argv"), its repeats, the machine
(`provenance.machine()` and the JAX devices, with the date) and its rows (adv_jax.reports.bench_runs).
"""

from __future__ import annotations

import json
from pathlib import Path

from adv_jax.reports import provenance
from adv_jax.reports.timing import median

COMMAND = "PYTHONPATH=. ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench.py"


def plot(training: list[dict], attacks: list[dict], figures: Path) -> list[Path]:
    """bench_training.png (seconds against K) and bench_attacks.png (examples/s); their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    paths = []
    if training:
        ks = sorted({r["k"] for r in training})
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for mode in ("together", "sequential"):
            ax.plot(ks, [median([r["seconds"] for r in training if r["k"] == k and r["mode"] == mode])
                         for k in ks], "o-", label={"together": "together (vmapped)",
                                                    "sequential": "one after another"}[mode])
        ax.set(xlabel="models K", ylabel="seconds (compilation included)", xscale="log", yscale="log",
               title=f"FC100-100-10, Adam, {training[0]['epochs']} epochs on P1/P2")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.legend()
        fig.tight_layout()
        paths.append(figures / "bench_training.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    if attacks:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        # Left: FC100 (width 100) against the number of examples; right: every width at the
        # number of examples the other widths were attacked with.
        n_w = min((r["examples"] for r in attacks if r["width"] != 100), default=None)
        for name in sorted({r["attack"] for r in attacks}):
            mine = [r for r in attacks if r["attack"] == name]
            by_n = [r for r in mine if r["width"] == 100]
            by_w = sorted((r for r in mine if r["examples"] == n_w), key=lambda r: r["width"])
            axes[0].plot([r["examples"] for r in by_n], [r["examples_per_second"] for r in by_n],
                         "o-", label=name)
            axes[1].plot([r["width"] for r in by_w], [r["examples_per_second"] for r in by_w],
                         "o-", label=name)
        axes[0].set(xlabel="examples attacked", ylabel="examples per second", yscale="log",
                    title="FC100-100-10")
        axes[1].set(xlabel="hidden width (784-w-w-10)", ylabel="examples per second", xscale="log",
                    yscale="log", title=f"{n_w} examples")
        widths = sorted({r["width"] for r in attacks})
        axes[1].set_xticks(widths, [str(w) for w in widths])
        axes[1].minorticks_off()
        for ax in axes:
            ax.legend()
        fig.tight_layout()
        paths.append(figures / "bench_attacks.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def section_command(sections: dict, name: str) -> str:
    """The section's command line, the JAX devices it ran on, and when."""
    info = sections[name]["machine"]
    devices = info["devices"]
    return (f"`{COMMAND} {sections[name]['argv']}` ({len(devices)} JAX device"
            f"{'s' * (len(devices) > 1)}: {', '.join(devices)}; {info['date']})")


def training_section(sections: dict) -> list[str]:
    """K models together against one after another: table, figure, what it measures."""
    training = sections["training"]["rows"]
    repeats = {k: v["repeats"] for k, v in sections.items()}
    lines: list[str] = []
    epochs = training[0]["epochs"]
    lines += ["## K models trained together vs one after another", "",
              section_command(sections, "training"), "",
              f"FC100-100-10, Adam (batch 128, cosine rate), {epochs} epochs; member k trains on P1 "
              "(even k) or P2 (odd k), seed k. Both modes run with the JAX CPU devices a run gets "
              f"(`cpu_devices={sections['training']['machine'].get('cpu_devices', 'auto')}`: "
              f"{training[0].get('devices', 1)} here). *Together*: `adv_jax.ensemble.train_models`, one "
              "jitted program for all K, the members split evenly over the devices, each device "
              "running its own (members per vmapped step: `ensemble.default_vmap_size`, 1 on CPU, "
              "all of a device's on an accelerator; see the matmul section). *One after another*: "
              "`adv_jax.train.train_model` per model, as a plain run does (each compiles its own "
              "program, on one device). Seconds are wall time of the "
              "training call, compilation included (data loading excluded), each in a fresh "
              f"process, median of {repeats['training']} runs, modes alternating. Steady epoch: median "
              "seconds of an epoch after the first, for all K models (sum over models one after "
              "another).", "",
              "| K | together (s) | one after another (s) | ratio | steady epoch together (s) | steady epoch one after another (s) | ratio at 40 epochs (extrapolated) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for k in sorted({r["k"] for r in training}):
        t = [r for r in training if r["k"] == k and r["mode"] == "together"]
        s = [r for r in training if r["k"] == k and r["mode"] == "sequential"]
        tt, ts = median([r["seconds"] for r in t]), median([r["seconds"] for r in s])
        et = median([r["steady_epoch_seconds"] for r in t])
        es = k * median([r["steady_epoch_seconds"] for r in s])
        at40 = (tt + (40 - epochs) * et) / (ts + (40 - epochs) * es)
        lines.append(f"| {k} | {tt:.2f} | {ts:.2f} | {tt / ts:.3f} | {et:.3f} | {es:.3f} | {at40:.3f} |")
    lines += ["", "![training](figures/bench_training.png)", "",
              "The ratio column is together / one after another in the same run. The last column "
              "extrapolates both measured times by the measured steady epochs to the default 40 "
              "epochs: compilation is paid once instead of K times, and the steady epoch shows what "
              "running the members side by side on the devices gains on its own.", ""]
    return lines


def training_long_section(sections: dict) -> list[str]:
    """K = 8 at the default epochs, measured rather than extrapolated."""
    long_rows = sections["training_long"]["rows"]
    lines: list[str] = []
    t = [r["seconds"] for r in long_rows if r["mode"] == "together"]
    s = [r["seconds"] for r in long_rows if r["mode"] == "sequential"]
    lines += [f"### K = 8 at {long_rows[0]['epochs']} epochs (the default), measured", "",
              section_command(sections, "training_long"), "",
              "| K | epochs | together (s) | one after another (s) | ratio | runs |",
              "| --- | --- | --- | --- | --- | --- |",
              f"| 8 | {long_rows[0]['epochs']} | {median(t):.2f} | {median(s):.2f} | "
              f"{median(t) / median(s):.3f} | {len(t)} |", ""]
    return lines


def matmul_section(sections: dict) -> list[str]:
    """GFLOP/s of the first layer's matmuls: why members are not vmapped on a CPU."""
    matmul = sections["matmul"]["rows"]
    lines: list[str] = []
    lines += ["### Where the steady-epoch gain comes from on a CPU", "",
              section_command(sections, "matmul"), "",
              "A step of FC100 is dominated by its first layer: the forward x W and the weight "
              "gradient x^T delta, each 2 x 128 x 784 x 100 flops per model. Vmapping K members "
              "turns them into batched matmuls. GFLOP/s, median of "
              f"{sections['matmul']['repeats']} timings of 200 jitted calls:", "",
              "| matmul | GFLOP/s |", "| --- | --- |"]
    lines += [f"| {r['what']} | {r['gflops']:.1f} |" for r in matmul]
    lines += ["", f"On {sections['matmul']['machine']['cores']} CPU cores one model's minibatch matmuls already run at a large fraction "
              "of what a large matmul reaches, and batching 8 members' matmuls into one does not "
              "raise it, so on a CPU the ensemble does not vmap members within a device "
              "(`vmap_size` 1). What a steady epoch gains comes from the devices: with one JAX "
              "device per core (`cpu_devices=auto`), each device steps through its own members "
              "while the other does, and one model's step alone does not keep both cores busy "
              "(compare the steady-epoch columns above). On an accelerator, where one MNIST MLP "
              "leaves most of the device idle, vmapping a device's members is where the gain "
              "would be.", ""]
    return lines


def attacks_section(sections: dict) -> list[str]:
    """Examples per second of each attack against examples and width."""
    attacks = sections["attacks"]["rows"]
    repeats = {k: v["repeats"] for k, v in sections.items()}
    lines: list[str] = []
    lines += ["## Attack throughput", "",
              section_command(sections, "attacks"), "",
              "`adv_jax.attacks.generate.generate` (targets random, default hyperparameters of "
              "`conf/attack/lbfgs.yaml` and `conf/attack/pgd.yaml`) on the first N test images, "
              "against 784-w-w-10 sigmoid networks trained by Adam for 5 epochs on P1. "
              f"Compilation excluded (a warm-up call first); median of {repeats['attacks']} runs.", "",
              "| attack | width | examples | seconds | examples/s | success rate |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in attacks:
        lines.append(f"| {r['attack']} | {r['width']} | {r['examples']} | {r['seconds']:.2f} | "
                     f"{r['examples_per_second']:.0f} | {r['success_rate']:.3f} |")
    lines += ["", "![attacks](figures/bench_attacks.png)", ""]
    return lines


def experiment_section(sections: dict) -> list[str]:
    """The cross-training-set study end to end, each way."""
    experiment = sections["experiment"]["rows"]
    lines: list[str] = []
    lines += ["## The cross-training-set experiment end to end", "",
              section_command(sections, "experiment"), "",
              "Three seeds of `experiment=cross_training_set` (two FC100 and one FC123 per seed) "
              "in one process (Hydra's basic launcher), `train=adam`, from an empty cache, L-BFGS "
              "adversarials for the first N test images, the whole matrix; wall time of the "
              "command (Python start-up included), one run each.", "",
              "| models trained together | seconds | jobs | all structure checks hold | clean test errors (%) |",
              "| --- | --- | --- | --- | --- |"]
    for r in experiment:
        lines.append(f"| {'yes' if r['together'] else 'no'} | {r['seconds']:.0f} | {r['jobs']} | "
                     f"{all(r['checks'])} | {', '.join(map(str, r['test_errors']))} |")
    lines += ["", "Attacks, evaluation and the matrices are the same work either way, so the "
              "difference is training: 6 FC100 and 3 FC123 models as two programs instead of "
              "nine. Clean errors agree to the printed digits.", "",
              "Commands (`$TMP` a fresh directory; N = `experiment.num_examples`):", ""]
    lines += [f"- `{r['command']}`" for r in experiment]
    lines.append("")
    return lines


SECTIONS = {"training": training_section, "training_long": training_long_section,
            "matmul": matmul_section, "attacks": attacks_section, "experiment": experiment_section}


def report(sections: dict) -> str:
    """The whole of results/bench.md from bench.json's sections (those present, in this order)."""
    info = next(iter(sections.values()))["machine"]
    lines = ["# Scale benchmarks", "",
             "Generated by `" + COMMAND + " --only none` from results/bench.json; each section "
             "names the exact command that made its numbers, its JAX devices and its date.", "",
             provenance.machine_line(info), ""]
    for name, section in SECTIONS.items():
        if sections.get(name, {}).get("rows"):
            lines += section(sections)
    return "\n".join(lines)


def update(out: Path, only: set[str], params: dict, argv: str) -> dict:
    """Runs the sections in `only` (bench_runs.SECTIONS) with `params`, keeps the others' numbers
    from out's .json, writes the .json, the figures and `out`; returns the sections."""
    from adv_jax.reports import bench_runs

    raw = out.with_suffix(".json")
    sections = json.loads(raw.read_text())["sections"] if raw.exists() else {}
    for name in sorted(only & bench_runs.SECTIONS.keys()):  # "none": redraw the report only
        rows = bench_runs.SECTIONS[name](params)
        sections[name] = {"argv": argv, "repeats": params["repeats"], "rows": rows,
                          "machine": {**provenance.machine(), "date": provenance.today(),
                                      "cpu_devices": params["cpu_devices"],
                                      "devices": bench_runs.device_names()}}
    plot(*(sections.get(k, {}).get("rows", []) for k in ("training", "attacks")), out.parent / "figures")
    raw.write_text(json.dumps({"sections": sections}, indent=1))
    out.write_text(report(sections))
    return sections
