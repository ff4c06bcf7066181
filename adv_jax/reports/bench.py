"""results/bench.md (size cpu) or results/gpu.md (sizes gpu, tiny) and their figures
figures/<name>_*.png from the harness's sections (<name>.json, written by adv_jax/bench/harness.py).

Each section holds the command line that made it ("argv"), its repeats, its size, the machine
(`provenance.machine()` and the JAX devices, with the date) and its rows, or the error that
stopped it.
"""

from __future__ import annotations

from pathlib import Path
from statistics import median

from adv_jax.reports import provenance
from adv_jax.reports.tables import markdown

COMMAND = "PYTHONPATH=. ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench.py"
HEADS = {  # size -> (title, the command that writes the file)
    "cpu": ("Scale benchmarks", f"{COMMAND} --only none"),
    "gpu": ("GPU check", "scripts/gpu_check.sh"),
    "tiny": ("GPU check at tiny sizes on a CPU (not GPU results)", "scripts/gpu_check.sh --cpu-short OUT.md"),
}


def mode_median(rows: list[dict], k: int, mode: str, key: str = "seconds") -> float | None:
    """The median of `key` over the rows of K = k trained in `mode` (None: that mode was not run)."""
    values = [r[key] for r in rows if r["k"] == k and r["mode"] == mode]
    return median(values) if values else None


def plot_training(training: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in training})
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for mode, label in (("together", "together (vmapped)"), ("sequential", "one after another")):
        if any(r["mode"] == mode for r in training):
            ax.plot(ks, [mode_median(training, k, mode) for k in ks], "o-", label=label)
    ax.set(xlabel="models K", ylabel="seconds (compilation included)", xscale="log", yscale="log",
           title=f"FC100-100-10, Adam, {training[0]['epochs']} epochs on P1/P2")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attacks(attacks: list[dict], path: Path) -> None:
    """Left: the width attacked at every count, against the count; right (with several widths):
    every width at the count the other widths were attacked with."""
    import matplotlib.pyplot as plt

    widths = sorted({r["width"] for r in attacks})
    counted = max(widths, key=lambda w: sum(r["width"] == w for r in attacks))
    n_w = min((r["examples"] for r in attacks if r["width"] != counted), default=None)
    fig, axes = plt.subplots(1, 1 if n_w is None else 2, figsize=(4.5 if n_w is None else 9, 3.5), squeeze=False)
    for name in sorted({r["attack"] for r in attacks}):
        mine = [r for r in attacks if r["attack"] == name]
        by_n = [r for r in mine if r["width"] == counted]
        axes[0, 0].plot([r["examples"] for r in by_n], [r["examples_per_second"] for r in by_n], "o-", label=name)
        if n_w is not None:
            by_w = sorted((r for r in mine if r["examples"] == n_w), key=lambda r: r["width"])
            axes[0, 1].plot([r["width"] for r in by_w], [r["examples_per_second"] for r in by_w], "o-", label=name)
    axes[0, 0].set(xlabel="examples attacked", ylabel="examples per second", yscale="log",
                   title=f"FC{counted}-{counted}-10")
    if n_w is not None:
        axes[0, 1].set(xlabel="hidden width (784-w-w-10)", ylabel="examples per second", xscale="log",
                       yscale="log", title=f"{n_w} examples")
        axes[0, 1].set_xticks(widths, [str(w) for w in widths])
        axes[0, 1].minorticks_off()
    for ax in axes.flat:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(training: list[dict], attacks: list[dict], figures: Path, name: str = "bench") -> list[Path]:
    """<name>_training.png (seconds against K) and <name>_attacks.png (examples/s), for the
    sections that have rows; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    figures.mkdir(parents=True, exist_ok=True)
    paths = []
    for rows, kind, draw in ((training, "training", plot_training), (attacks, "attacks", plot_attacks)):
        if rows:
            paths.append(figures / f"{name}_{kind}.png")
            draw(rows, paths[-1])
    return paths


def section_command(sections: dict, name: str) -> str:
    """The section's command line, the JAX devices it ran on, and when."""
    info = sections[name]["machine"]
    devices = info["devices"]
    return (f"`{COMMAND} {sections[name]['argv']}` ({len(devices)} JAX device"
            f"{'s' * (len(devices) > 1)}: {', '.join(devices)}; {info['date']})")


def cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def training_row(training: list[dict], k: int, epochs: int) -> list[str]:
    """K, each mode's median seconds and their ratio, each mode's steady epoch (all K models), and
    the ratio extrapolated to 40 epochs; '-' where a mode was not run."""
    tt, ts = mode_median(training, k, "together"), mode_median(training, k, "sequential")
    et = mode_median(training, k, "together", "steady_epoch_seconds")
    es = mode_median(training, k, "sequential", "steady_epoch_seconds")
    es = None if es is None else k * es
    both = None not in (tt, ts, et, es)
    at40 = (tt + (40 - epochs) * et) / (ts + (40 - epochs) * es) if both else None
    return [str(k), cell(tt, 2), cell(ts, 2), cell(tt / ts if both else None, 3), cell(et, 3), cell(es, 3),
            cell(at40, 3)]


def training_section(sections: dict, name: str = "bench") -> list[str]:
    """K models together against one after another: table, figure, what it measures."""
    training = sections["training"]["rows"]
    repeats = {k: v["repeats"] for k, v in sections.items()}
    epochs = training[0]["epochs"]
    columns = ["K", "together (s)", "one after another (s)", "ratio", "steady epoch together (s)",
               "steady epoch one after another (s)", "ratio at 40 epochs (extrapolated)"]
    rows = [training_row(training, k, epochs) for k in sorted({r["k"] for r in training})]
    return ["## K models trained together vs one after another", "",
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
            "another).", "", *markdown(columns, rows).splitlines(), "",
            f"![training](figures/{name}_training.png)", "",
            "The ratio column is together / one after another in the same run. The last column "
            "extrapolates both measured times by the measured steady epochs to the default 40 "
            "epochs: compilation is paid once instead of K times, and the steady epoch shows what "
            "running the members side by side on the devices gains on its own.", ""]


def training_long_section(sections: dict, name: str = "bench") -> list[str]:
    """K = 8 at the default epochs, measured rather than extrapolated."""
    long_rows = sections["training_long"]["rows"]
    epochs = long_rows[0]["epochs"]
    t, s = (mode_median(long_rows, 8, mode) for mode in ("together", "sequential"))
    runs = sum(r["mode"] == "together" for r in long_rows)
    row = ["8", str(epochs), cell(t, 2), cell(s, 2), cell(None if None in (t, s) else t / s, 3), str(runs)]
    return [f"### K = 8 at {epochs} epochs (the default), measured", "",
            section_command(sections, "training_long"), "",
            *markdown(["K", "epochs", "together (s)", "one after another (s)", "ratio", "runs"], [row]).splitlines(),
            ""]


def matmul_section(sections: dict, name: str = "bench") -> list[str]:
    """GFLOP/s of the first layer's matmuls: why members are not vmapped on a CPU."""
    rows = [[r["what"], f"{r['gflops']:.1f}"] for r in sections["matmul"]["rows"]]
    return ["### Where the steady-epoch gain comes from on a CPU", "",
            section_command(sections, "matmul"), "",
            "A step of FC100 is dominated by its first layer: the forward x W and the weight "
            "gradient x^T delta, each 2 x 128 x 784 x 100 flops per model. Vmapping K members "
            "turns them into batched matmuls. GFLOP/s, median of "
            f"{sections['matmul']['repeats']} timings of 200 jitted calls:", "",
            *markdown(["matmul", "GFLOP/s"], rows).splitlines(),
            "", f"On {sections['matmul']['machine']['cores']} CPU cores one model's minibatch matmuls already run at a large fraction "
            "of what a large matmul reaches, and batching 8 members' matmuls into one does not "
            "raise it, so on a CPU the ensemble does not vmap members within a device "
            "(`vmap_size` 1). What a steady epoch gains comes from the devices: with one JAX "
            "device per core (`cpu_devices=auto`), each device steps through its own members "
            "while the other does, and one model's step alone does not keep both cores busy "
            "(compare the steady-epoch columns above). On an accelerator, where one MNIST MLP "
            "leaves most of the device idle, vmapping a device's members is where the gain "
            "would be.", ""]


def attacks_section(sections: dict, name: str = "bench") -> list[str]:
    """Examples per second of each attack against examples and width."""
    rows = [[r["attack"], r["width"], r["examples"], f"{r['seconds']:.2f}", f"{r['examples_per_second']:.0f}",
             f"{r['success_rate']:.3f}"] for r in sections["attacks"]["rows"]]
    return ["## Attack throughput", "",
            section_command(sections, "attacks"), "",
            "`adv_jax.attacks.generate.generate` (targets random, default hyperparameters of "
            "`conf/attack/lbfgs.yaml` and `conf/attack/pgd.yaml`) on the first N test images, "
            "against 784-w-w-10 sigmoid networks trained by Adam for 5 epochs on P1. "
            f"Compilation excluded (a warm-up call first); median of {sections['attacks']['repeats']} runs.", "",
            *markdown(["attack", "width", "examples", "seconds", "examples/s", "success rate"], rows).splitlines(),
            "", f"![attacks](figures/{name}_attacks.png)", ""]


def sweeps_section(sections: dict, name: str = "bench") -> list[str]:
    """The same 2-job sweep with each launcher: jobs one after another or sharing the device."""
    rows = [[r["launcher"], f"{r['seconds']:.1f}", r["jobs"], ", ".join(f"{e:.4f}" for e in r["test_errors"])]
            for r in sections["sweeps"]["rows"]]
    return ["## A 2-job sweep sharing the device (seeds 0 and 1)", "",
            section_command(sections, "sweeps"), "",
            "FC100 (Adam), the L-BFGS attack on the first N test images (N = `attack.num_examples`); "
            "wall time of the command. `basic`: one job after another; `joblib`: both at once "
            "(`hydra.launcher.n_jobs=2`, XLA_PYTHON_CLIENT_PREALLOCATE=false).", "",
            *markdown(["launcher", "wall seconds", "jobs", "test errors"], rows).splitlines(), "",
            "Commands (`$TMP` a fresh directory):", "",
            *(f"- `{r['command']}`" for r in sections["sweeps"]["rows"]), ""]


SEEDS = {1: "One seed", 2: "Two seeds", 3: "Three seeds"}


def experiment_section(sections: dict, name: str = "bench") -> list[str]:
    """The cross-training-set study end to end, each way."""
    experiment = sections["experiment"]["rows"]
    rows = [["yes" if r["together"] else "no", f"{r['seconds']:.0f}", r["jobs"], all(r["checks"]),
             ", ".join(map(str, r["test_errors"]))] for r in experiment]
    both = len({r["together"] for r in experiment}) == 2
    lines = ["## The cross-training-set experiment end to end", "",
             section_command(sections, "experiment"), "",
             f"{SEEDS.get(experiment[0]['jobs'], str(experiment[0]['jobs']) + ' seeds')} of "
             "`experiment=cross_training_set` (two FC100 and one FC123 per seed) "
             "in one process (Hydra's basic launcher), `train=adam`, from an empty cache, L-BFGS "
             "adversarials for the first N test images, the whole matrix; wall time of the "
             "command (Python start-up included), one run each.", "",
             *markdown(["models trained together", "seconds", "jobs", "all structure checks hold",
                        "clean test errors (%)"], rows).splitlines(), ""]
    if both:
        lines += ["Attacks, evaluation and the matrices are the same work either way, so the "
                  "difference is training: 6 FC100 and 3 FC123 models as two programs instead of "
                  "nine. Clean errors agree to the printed digits.", ""]
    return lines + ["Commands (`$TMP` a fresh directory; N = `experiment.num_examples`):", "",
                    *(f"- `{r['command']}`" for r in experiment), ""]


SECTIONS = {"training": training_section, "training_long": training_long_section,
            "matmul": matmul_section, "attacks": attacks_section, "sweeps": sweeps_section,
            "experiment": experiment_section}


def report(sections: dict, name: str = "bench") -> str:
    """The whole of results/<name>.md from <name>.json's sections (those present, in this order;
    a failed one as its error)."""
    first = next(iter(sections.values()))
    title, command = HEADS[first.get("size", "cpu")]
    lines = [f"# {title}", "",
             f"Generated by `{command}` from results/{name}.json; each section "
             "names the exact command that made its numbers, its JAX devices and its date.", "",
             provenance.machine_line(first["machine"]), ""]
    for key, section in SECTIONS.items():
        if sections.get(key, {}).get("rows"):
            lines += section(sections, name)
        elif sections.get(key, {}).get("error"):
            lines += [f"## {key}: failed", "", section_command(sections, key), "",
                      f"    {sections[key]['error']}", ""]
    return "\n".join(lines)


def write(sections: dict, out: Path) -> None:
    """`out` (its stem names the figures and the .json) and its figures beside it, in figures/."""
    plot(*(sections.get(k, {}).get("rows", []) for k in ("training", "attacks")), out.parent / "figures", out.stem)
    out.write_text(report(sections, out.stem))
