"""results/lipschitz.md: per-layer bounds (paper Table 5 layout) of the paper's models, their
empirical lower bounds, and comparisons across the sweeps of conf/report/lipschitz.yaml.

Everything is read from the run directories: the per-layer table, the product and the certified
bounds and bracket from lipschitz.json, the lower bounds from metrics.json or, for a run that did
not log them (no attack, so no pairs), from the file adv_jax/bench/lipschitz_inputs.py measured
them into (`lower_bounds_file`: under measure.cache_dir, keyed by a hash of the parameters).
What a run lacks is named as missing. The sweeps, and a model row's fallback run, are run by
scripts/report_lipschitz.py --run-missing beforehand.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from adv_jax.reports import paper, provenance, settings
from adv_jax.reports.lipschitz_compare import compare, correlation_line
from adv_jax.reports.runs import is_finished, read_config, read_json
from adv_jax.reports.tables import markdown
from adv_jax.run_files import LIPSCHITZ_FILE, METRICS_FILE, PARAMS_FILE

log = logging.getLogger(__name__)
LOWER_KEYS = ("lipschitz/jacobian_lower_bound", "lipschitz/pair_ratio_lower_bound")
ASCENT_KEY = "lipschitz/jacobian_ascent_lower_bound"  # runs since the ascent logged it; else "-"


def sweep_argv(sweep: dict, common: list[str]) -> list[str]:
    """scripts/sweep.py's arguments for one sweep of the config."""
    return ["-m", *common, sweep["sweep"], f"hydra.sweep.dir={sweep['dir']}"]


def sweep_command(sweep: dict, common: list[str]) -> str:
    env = provenance.MNIST_ENV + (" OPENBLAS_NUM_THREADS=1" if sweep["one_thread"] else "")
    return provenance.command("scripts/sweep.py", sweep_argv(sweep, common), env)


def lower_bounds_file(run_dir: Path, model_name: str, measure: dict) -> Path:
    """Where adv_jax/bench/lipschitz_inputs.py keeps a run's measured lower bounds: measure.cache_dir,
    keyed by the model, a hash of its parameters and the measurement's sizes."""
    digest = hashlib.sha256((run_dir / PARAMS_FILE).read_bytes()).hexdigest()[:16]
    images, pair_images = measure["jacobian_images"], measure["pair_images"]
    return Path(measure["cache_dir"]) / f"{model_name}-{digest}-{images}-{pair_images}.json"


def lower_bounds(run_dir: Path, metrics: dict, model_name: str, measure: dict) -> dict[str, Any] | None:
    """Jacobian and pair-ratio lower bounds: the run's own (metrics.json), else those measured
    for it (`lower_bounds_file`), else None."""
    known = {k: metrics[k] for k in LOWER_KEYS if k in metrics}
    if len(known) == len(LOWER_KEYS):
        return {**known, "source": "run"}
    path = lower_bounds_file(run_dir, model_name, measure) if (run_dir / PARAMS_FILE).exists() else None
    return read_json(path) if path is not None else None


def certified(stored: dict) -> dict[str, Any] | None:
    """{"bounds", "seconds", "skipped", "bracket" (or None)} of the run's lipschitz.json; None
    when it predates the certified bounds."""
    if "bounds" not in stored:
        return None
    return {**{k: stored[k] for k in ("bounds", "seconds", "skipped")}, "bracket": stored.get("bracket")}


def fmt4(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def bounds_table(summaries: list[dict], methods: list[str]) -> str:
    """Every certified bound by name, the tightest, its ratio to the product, the solver times,
    for the runs whose lipschitz.json has them."""
    columns = ["row", *methods, "tightest", "product / tightest", "largest lower bound",
               *(f"{m} seconds" for m in methods if m != "product")]
    body = []
    for s in summaries:
        if s["bounds"] is None:
            continue
        bounds, tight = s["bounds"], min(s["bounds"].values())
        body.append([s["name"], *(f"{bounds[m]:.4g}" if m in bounds else "- (skipped)" for m in methods),
                     f"{tight:.4g} ({min(bounds, key=bounds.get)})", f"{bounds['product'] / tight:.3g}",
                     fmt4(s["lower"]),
                     *(f"{s['seconds'][m]:.3g}" if m in s["seconds"] else "-" for m in methods if m != "product")])
    return markdown(columns, body)


def bracket_table(summaries: list[dict]) -> str:
    """Per model: certified lower bounds on the distortion beside the attack's, means in RMS."""
    columns = ["row", "attacked (successes)", "certified lower, global", "certified lower, local",
               "attack's distortion", "attack / certified (local)"]
    body = [[s["name"], b["examples"], f"{b['mean_lower_rms_global']:.4g}",
             "-" if b.get("mean_lower_rms_local") is None else f"{b['mean_lower_rms_local']:.4g}",
             f"{b['mean_attack_rms']:.4g}", "-" if b["ratio"] is None else f"{b['ratio']:.3g}"]
            for s in summaries if (b := s["bracket"])]
    return markdown(columns, body) if body else "No run with a dense network and an attack's examples.\n"


def table5(rows: list[dict]) -> str:
    """The paper's Table 5 layout, one line per layer of model.layers."""
    columns = ["layer", "kind", "shape", "input", "stride", "padding", "operator norm",
               "activation factor", "bound L_k"]
    body = [[r["index"] + 1, r["kind"], r["shape"], r["input"], r["stride"] or "-", r["padding"] or "-",
             f"{r['operator_norm']:.4g}" + ("" if r["exact"] else " (upper)"), f"{r['activation']:g}",
             f"{r['bound']:.4g}"] for r in rows]
    return markdown(columns, body)


def summarize(name: str, run_dir: Path, stored: dict, measure: dict) -> dict[str, Any]:
    """One model's summary row: config, product, lower bounds (None: missing), certified."""
    cfg, metrics = read_config(run_dir), read_json(run_dir / METRICS_FILE) or {}
    low = lower_bounds(run_dir, metrics, cfg["model.name"], measure) or {}
    jac, pairs = (low.get(k) for k in LOWER_KEYS)
    ascent = metrics.get(ASCENT_KEY)
    lower = max((v for v in (jac, pairs, ascent) if v), default=None)
    found = certified(stored) or {"bounds": None, "seconds": {}, "skipped": {}, "bracket": None}
    product = stored["lipschitz/upper_bound"]
    return dict(name=name, model=cfg["model.name"], split=cfg["data.split"], optimizer=cfg["train.optimizer"],
                product=product, jacobian=jac, pairs=pairs, ascent=ascent, lower=lower, source=low.get("source"),
                gap=product / lower if lower else None, **found, error=metrics.get("error/test"),
                distortion=low.get("attack/mean_distortion", metrics.get("attack/mean_distortion")))


def model_section(name: str, run_dir: Path, command: str, measure: dict) -> tuple[list[str], dict | None]:
    """(markdown lines, summary row) of one model's per-layer table and bounds; a run without
    lipschitz.json (made before the bounds were wired in) is one line and no summary."""
    stored = read_json(run_dir / LIPSCHITZ_FILE)
    if stored is None:
        return [f"`{run_dir}` has no {LIPSCHITZ_FILE} (made before the bounds were wired in): missing.", ""], None
    s = summarize(name, run_dir, stored, measure)
    lower = ("Lower bounds: missing (the run did not log them; `python scripts/report_lipschitz.py` "
             "measures them)" if s["source"] is None else
             f"Lower bounds ({s['source']}): Jacobian {fmt4(s['jacobian'])}, adversarial pairs {fmt4(s['pairs'])}"
             f", Jacobian ascent {fmt4(s['ascent'])}")
    certified_line = ("Certified bounds: missing (its lipschitz.json predates them)." if s["bounds"] is None else
                      "Certified bounds: " + ", ".join(f"{m} {v:.4g}" for m, v in s["bounds"].items())
                      + "".join(f"; {m} skipped ({why})" for m, why in s["skipped"].items()) + ".")
    lines = [f"### {name}: {s['model']} on {s['split']} ({s['optimizer']})", "",
             f"Run directory `{run_dir}`, made by `{command}`.", "", table5(stored["layers"]),
             f"Network product (upper bound on the logits' L2 Lipschitz constant): **{s['product']:.4g}**. "
             f"{lower}; upper / lower = {'-' if s['gap'] is None else format(s['gap'], '.3g')}.", "",
             certified_line, ""]
    return lines, s


def summary_table(summaries: list[dict], pair_images: int) -> str:
    columns = ["row", "model", "trained on", "product (upper)", "Jacobian (lower)", "pairs (lower)",
               "Jacobian ascent (lower)", "gap upper/lower", "test error %", f"mean distortion (L-BFGS, {pair_images} images)"]
    body = [[s["name"], s["model"], s["split"], f"{s['product']:.4g}", fmt4(s["jacobian"]), fmt4(s["pairs"]),
             fmt4(s["ascent"]), "-" if s["gap"] is None else f"{s['gap']:.3g}",
             "-" if s["error"] is None else f"{100 * s['error']:.2f}",
             "-" if s["distortion"] is None else f"{s['distortion']:.4f}"] for s in summaries]
    return markdown(columns, body)


def sweep_section(sweep: dict, common: list[str], figures: Path) -> list[str]:
    """A sweep's command, comparison table and plot (or 'Not run yet.')."""
    lines = [f"### {sweep['name'].replace('_', ' ')}: {sweep['what']}", "", f"    {sweep_command(sweep, common)}", ""]
    if not Path(sweep["dir"]).exists():
        return lines + ["Not run yet.", ""]
    figure = figures / f"lipschitz_{sweep['name']}.png"
    table, entries, _ = compare([sweep["dir"]], sweep["x"], figure, title=sweep["what"])
    compare_command = provenance.command(
        "scripts/compare_lipschitz.py", [sweep["dir"], "--x", sweep["x"], "--plot", str(figure)])
    return lines + [table, "", correlation_line(entries), "",
                    f"![{sweep['name']}]({figure.relative_to(figures.parent)})", "",
                    f"Table and plot: `{compare_command}`; run ids are the job numbers under "
                    f"`{sweep['dir']}/`.", ""]


def fallback_argv(fallback: dict) -> list[str]:
    """scripts/sweep.py's arguments for a model row's fallback run."""
    return [*fallback["overrides"], f"hydra.run.dir={fallback['run_dir']}"]


def model_rows(conf: dict, runs: Path) -> tuple[list[tuple[str, Path, str]], list[Path]]:
    """(name, run directory, command that made it) per finished model row, fallbacks applied;
    and the run directories that have not finished."""
    models_command = provenance.command("scripts/report_models.py", [], provenance.MNIST_ENV)
    found, missing = [], []
    for name in conf["models"]:
        run_dir = runs / name
        command = provenance.hydra_command("scripts/sweep.py", run_dir, provenance.MNIST_ENV) or models_command
        fallback = conf.get("fallbacks", {}).get(name)
        if fallback and not is_finished(run_dir):
            name, run_dir = fallback["name"], Path(fallback["run_dir"])
            command = provenance.command("scripts/sweep.py", fallback_argv(fallback), provenance.MNIST_ENV)
        if is_finished(run_dir):
            found.append((name, run_dir, command))
        else:
            log.warning("skipping %s: %s has not finished", name, run_dir)
            missing.append(run_dir)
    return found, missing


def intro() -> list[str]:
    alexnet = ", ".join(f"{layer} {bound:g}" for layer, bound in paper.TABLE5_ALEXNET.items())
    return [
        "For phi = phi_K o ... o phi_1 (image -> logits), ||phi(x) - phi(x + r)|| <= L ||r|| with "
        "L = prod_k L_k, L_k = ||W_k|| (largest singular value) x the activation's largest slope "
        "(sigmoid 1/4, ReLU 1). Dense norms are exact (SVD); a zero-padded convolution's norm is the "
        "exact FFT norm of a circular convolution on an enlarged grid, a guaranteed upper bound "
        "(marked `(upper)`); max-pooling with non-overlapping windows is 1. Inputs are images in "
        "[0, 1]^784, so L is in logits per unit L2 distance in pixel space. The lower bounds are "
        "measured slopes of the same map: the largest local Jacobian norm over test images (power "
        "iteration), the largest ||f(x') - f(x)|| / ||x' - x|| over adversarial pairs, and (runs that "
        "log it) the largest Jacobian norm found by projected gradient ascent over the box "
        "(`lipschitz.jacobian_ascent`); all must sit below the product, and the ratio of the product "
        "to the largest (gap) says how loose the product is.", "",
        "## The paper's models", "",
        f"Tables in the layout of the paper's Table 5 (which lists AlexNet on ImageNet: {alexnet}; "
        "each row there is ||W_k||, ReLU slope 1). Layer shapes are in x out for dense layers and "
        "C x k x k x D for convolutions, as there.", ""]


def certified_intro() -> list[str]:
    return [
        "", "## Certified bounds beyond the product", "",
        "Every bound below is a guaranteed upper bound on the logits' L2 Lipschitz constant (logits "
        "per unit L2 distance in pixel space). ECLipsE-Fast and LipSDP-Neuron (adv_jax/certify.py, "
        "adv_jax/lipsdp.py) relax each unit to a slope in [0, beta] (sigmoid 1/4, ReLU 1) and "
        "certify the constant through one LMI; LipSDP's solver answer is re-checked exactly in "
        "float64. They apply to dense networks; conv nets keep the product (FFT norms).", "",
        "The bracket: for each attacked test image, a certified lower bound on the L2 distortion "
        "needed to reach the attack's target is max_j (z_j - z_t) / L_jt, L_jt the certified "
        "constant of x -> z_j - z_t (the network with its last layer replaced by w_j - w_t; at most "
        "sqrt(2) x the logits' constant). Global: ECLipsE-Fast and product per pair. Local: slopes "
        "bounded on the L2 ball of radius the attack's distortion (cut by the [0, 1] box) by "
        "interval arithmetic; capped at that radius. L2 norms throughout, reported as adv_jax's "
        "per-pixel RMS = L2 / sqrt(784). The true minimum distortion lies between the certified "
        "bound and the attack's.", ""]


def report(conf: dict, runs: Path, figures: Path, command: str) -> str:
    """The whole of results/lipschitz.md."""
    sections, summaries = [], []
    found, missing = model_rows(conf, runs)
    for name, run_dir, made_by in found:
        section, summary = model_section(name, run_dir, made_by, conf["measure"])
        sections += section
        summaries += [summary] if summary else []
    lines = [*provenance.header(conf["title"], command), *intro(),
             *([f"Not finished when this report was made, so left out: "
                f"{', '.join(f'`{m}`' for m in missing)}.", ""] if missing else []),
             "Summary (one row per model; per-layer tables below):", "",
             summary_table(summaries, conf["measure"]["pair_images"]), *certified_intro(),
             bounds_table(summaries, conf["measure"]["certified"]["methods"]), "",
             "Certified distortion bracket (mean per-pixel RMS over the attack's successes):", "",
             bracket_table(summaries), *sections,
             "## Comparisons across runs", "", conf["sweeps_intro"].strip(), ""]
    for sweep in conf["sweeps"]:
        lines += sweep_section(sweep, conf["sweep_common"], figures)
    return "\n".join(lines + settings.paragraphs(conf["notes"])).rstrip() + "\n"
