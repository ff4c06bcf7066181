"""results/lipschitz.md: per-layer bounds (paper Table 5 layout) of the paper's models, their
empirical lower bounds, and comparisons across the sweeps of conf/report/lipschitz.yaml.

Lower bounds come from the run's lipschitz.json when it has them; otherwise they are measured
here by `adv_jax.lipschitz.measure` on L-BFGS pairs (cached under measure.cache_dir, keyed by a
hash of the parameters, so a re-run does not redo them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax

import adv_jax
from adv_jax import lipschitz
from adv_jax.attacks.generate import Adversarials, generate
from adv_jax.reports import paper, provenance, settings
from adv_jax.reports.lipschitz_compare import compare, correlation_line
from adv_jax.reports.runs import is_finished
from adv_jax.reports.tables import markdown

log = logging.getLogger(__name__)
LOWER_KEYS = ("lipschitz/jacobian_lower_bound", "lipschitz/pair_ratio_lower_bound")


def sweep_argv(sweep: dict, common: list[str]) -> list[str]:
    """scripts/sweep.py's arguments for one sweep of the config."""
    return ["-m", *common, sweep["sweep"], f"hydra.sweep.dir={sweep['dir']}"]


def sweep_command(sweep: dict, common: list[str]) -> str:
    env = provenance.MNIST_ENV + (" OPENBLAS_NUM_THREADS=1" if sweep["one_thread"] else "")
    return provenance.command("scripts/sweep.py", sweep_argv(sweep, common), env)


def run_command(script: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Runs a repository script in a child process (the sweeps are Hydra jobs), `env` added."""
    subprocess.run([sys.executable, script, *argv], check=True, env={**os.environ, **(env or {})})


def measured_lower_bounds(run: adv_jax.Run, known: dict, measure: dict) -> dict[str, Any]:
    """The lower bounds of `LOWER_KEYS` missing from `known`, by `lipschitz.measure` (cached)."""
    digest = hashlib.sha256((run.path / "params.msgpack").read_bytes()).hexdigest()[:16]
    images, pair_images = measure["jacobian_images"], measure["pair_images"]
    cache = Path(measure["cache_dir"]) / f"{run.config.model.name}-{digest}-{images}-{pair_images}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    test = adv_jax.load_splits(run.config.data, run.config.model.classes)["test"]
    key = jax.random.key(run.config.seed)
    adv = generate(adv_jax.compose(["attack=lbfgs"]).attack, run.logits_fn, test.x[:pair_images],
                   test.y[:pair_images], key=jax.random.fold_in(key, 1), progress=False).adversarials
    ok = adv.success
    bounds = lipschitz.measure(run.model, run.params, test.x, (adv.x[ok], adv.x_adv[ok]),
                               key=jax.random.fold_in(key, 2),
                               images=0 if LOWER_KEYS[0] in known else images,
                               power_iters=measure["power_iters"])
    found = {**{k: bounds.get(k, 0.0) for k in LOWER_KEYS}, **known,
             "source": "Jacobian from the run, pairs measured here" if known else "measured here",
             "attack/mean_distortion": float(adv.distortion()[ok].mean())}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(found))
    return found


def lower_bounds(run: adv_jax.Run, measure: dict) -> dict[str, Any]:
    """Jacobian and pair-ratio lower bounds: the run's own, else measured (see module doc)."""
    known = {k: run.metrics[k] for k in LOWER_KEYS if k in run.metrics}
    if len(known) == len(LOWER_KEYS):
        return {**known, "source": "run"}
    return measured_lower_bounds(run, known, measure)


def stored_lipschitz(run_dir: Path) -> dict:
    path = run_dir / "lipschitz.json"
    return json.loads(path.read_text()) if path.exists() else {}


def certified(run: adv_jax.Run, product: float, conf: dict) -> dict[str, Any]:
    """{"bounds", "seconds", "skipped", "bracket" (or None)}: the run's lipschitz.json entries
    where it has them, else computed here with conf (certified: methods, lipsdp_max_size, local)
    from params.msgpack and, for the bracket, adversarials.npz."""
    stored = stored_lipschitz(run.path)
    if "bounds" in stored:
        found = {k: stored[k] for k in ("bounds", "seconds", "skipped")}
    else:
        found = lipschitz.certified_bounds(run.model, run.params, conf["methods"],
                                           lipsdp_max_size=conf["lipsdp_max_size"], product=product)
    bracket = stored.get("bracket")
    adversarials = run.path / "adversarials.npz"
    if bracket is None and adversarials.exists() and "eclipse_fast" in found["bounds"]:
        attacked = Adversarials.load(adversarials)._asdict()
        if attacked["success"].any():
            bracket, _ = lipschitz.bracket_summary(run.model, run.params, attacked,
                                                   min(found["bounds"].values()), conf["local"])
    return {**found, "bracket": bracket}


def bounds_table(summaries: list[dict], methods: list[str]) -> str:
    """Every certified bound by name, the tightest, its ratio to the product, the solver times."""
    columns = ["row", *methods, "tightest", "product / tightest", "largest lower bound",
               *(f"{m} seconds" for m in methods if m != "product")]
    body = []
    for s in summaries:
        bounds, tight = s["bounds"], min(s["bounds"].values())
        body.append([s["name"], *(f"{bounds[m]:.4g}" if m in bounds else "- (skipped)" for m in methods),
                     f"{tight:.4g} ({min(bounds, key=bounds.get)})", f"{bounds['product'] / tight:.3g}",
                     f"{max(s['jacobian'], s['pairs']):.4g}",
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


def model_section(name: str, run_dir: Path, command: str, measure: dict) -> tuple[list[str], dict]:
    """(markdown lines, summary row) of one model's per-layer table and bounds."""
    run = adv_jax.load_run(run_dir)
    rows = lipschitz.layer_table(run.model, run.params, run.model.input_shape)
    product = lipschitz.network_bound(rows)
    low = lower_bounds(run, measure)
    jac, pairs = (low[k] for k in LOWER_KEYS)
    cfg = run.config
    found = certified(run, product, measure["certified"])
    summary = dict(name=name, model=cfg.model.name, split=cfg.data.split, product=product,
                   jacobian=jac, pairs=pairs, gap=product / max(jac, pairs), **found,
                   error=run.metrics.get("error/test"),
                   distortion=low.get("attack/mean_distortion", run.metrics.get("attack/mean_distortion")))
    lines = [f"### {name}: {cfg.model.name} on {cfg.data.split} ({cfg.train.optimizer})", "",
             f"Run directory `{run_dir}`, made by `{command}`.", "", table5(rows),
             f"Network product (upper bound on the logits' L2 Lipschitz constant): **{product:.4g}**. "
             f"Lower bounds ({low['source']}): Jacobian {jac:.4g}, adversarial pairs {pairs:.4g}; "
             f"upper / lower = {summary['gap']:.3g}.", "",
             "Certified bounds: " + ", ".join(f"{m} {v:.4g}" for m, v in found["bounds"].items())
             + "".join(f"; {m} skipped ({why})" for m, why in found["skipped"].items()) + ".", ""]
    return lines, summary


def summary_table(summaries: list[dict], pair_images: int) -> str:
    columns = ["row", "model", "trained on", "product (upper)", "Jacobian (lower)", "pairs (lower)",
               "gap upper/lower", "test error %", f"mean distortion (L-BFGS, {pair_images} images)"]
    body = [[s["name"], s["model"], s["split"], f"{s['product']:.4g}", f"{s['jacobian']:.4g}",
             f"{s['pairs']:.4g}", f"{s['gap']:.3g}",
             "-" if s["error"] is None else f"{100 * s['error']:.2f}",
             "-" if s["distortion"] is None else f"{s['distortion']:.4f}"] for s in summaries]
    return markdown(columns, body)


def sweep_section(sweep: dict, common: list[str], figures: Path, run_missing: bool) -> list[str]:
    """A sweep's command, comparison table and plot (or 'Not run yet.')."""
    command = sweep_command(sweep, common)
    if not Path(sweep["dir"]).exists() and run_missing:
        env = {"OPENBLAS_NUM_THREADS": "1"} if sweep["one_thread"] else {}
        run_command("scripts/sweep.py", sweep_argv(sweep, common), env)
    lines = [f"### {sweep['name'].replace('_', ' ')}: {sweep['what']}", "", f"    {command}", ""]
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


def model_rows(conf: dict, runs: Path, run_missing: bool) -> tuple[list[tuple[str, Path, str]], list[Path]]:
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
            argv = [*fallback["overrides"], f"hydra.run.dir={run_dir}"]
            command = provenance.command("scripts/sweep.py", argv, provenance.MNIST_ENV)
            if not is_finished(run_dir) and run_missing:
                run_command("scripts/sweep.py", argv)
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
        "iteration) and the largest ||f(x') - f(x)|| / ||x' - x|| over adversarial pairs; both must "
        "sit below the product, and their ratio (gap) says how loose the product is.", "",
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


def report(conf: dict, runs: Path, figures: Path, command: str, run_missing: bool = False) -> str:
    """The whole of results/lipschitz.md."""
    sections, summaries = [], []
    found, missing = model_rows(conf, runs, run_missing)
    for name, run_dir, made_by in found:
        section, summary = model_section(name, run_dir, made_by, conf["measure"])
        sections += section
        summaries.append(summary)
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
        lines += sweep_section(sweep, conf["sweep_common"], figures, run_missing)
    return "\n".join(lines + settings.paragraphs(conf["notes"])).rstrip() + "\n"
