"""results/demos.md and results/figures/demo_*.png from demonstration run directories.

Each run directory (made by `python scripts/demo.py demo=NAME`) gives its numbers.json and PNGs;
the section for NAME (order and titles: conf/report/demos.yaml) shows its figures, its numbers
and the command that made it (from the run's .hydra/overrides.yaml).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from adv_jax.reports import paper, provenance, settings
from adv_jax.reports.tables import markdown


def cell(value, digits=3):
    """A number to `digits` decimals; '-' for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def table(columns: list[str], rows: list[list]) -> list[str]:
    """A markdown table as lines."""
    return markdown(columns, rows).splitlines()


def units(n):
    columns = ["model", "test error", "units: label purity", "random directions: label purity",
               "random images: label purity", "units: pixel similarity", "random directions: pixel similarity",
               "random images: pixel similarity"]
    kinds = ("units", "random_directions_top", "random_images")
    body = [[f"{key} ({r['model']['split']}, {r['model']['optimizer']})", f"{100 * r['model']['test_error']:.2f}%",
             *(cell(r[k]["label_purity"]) for k in kinds), *(cell(r[k]["pixel_similarity"]) for k in kinds)]
            for key, r in n.items() if isinstance(r, dict) and "units" in r]
    rows = table(columns, body)
    claim = ", ".join(f"{k} {v}" for k, v in n["claim_units_no_purer_than_random_directions"].items())
    return rows + ["", "Label purity: share of the most common label among the 8 test images "
                   "that most activate a direction, averaged over all units and as many random "
                   f"directions. Claim (units not purer than random directions by more than 0.1; random directions far purer than random images): {claim}."]


def linear(n):
    columns = ["lambda", "test error", "template w_t: success", "mean distortion", "template w_t - w_s: success",
               "mean distortion"]
    body = [[f"{r['weight_decay']:g}", f"{100 * r['test_error']:.2f}%",
             *(cell(r.get(kind, {}).get(k)) for kind in ("target_score", "margin")
               for k in ("success_rate", "mean_distortion"))] for r in n["models"]]
    rows = table(columns, body)
    toy = n["toy_example"]
    return rows + [
        "", "Distortion: per-pixel RMS of the smallest template multiple that reaches a random "
        "target, over the successes (clipped to [0, 1]).",
        f"Toy example (essay 001): score {toy['score_before']:g} -> {toy['score_after']:g}, "
        f"P(class 1) {toy['probability_before']:.4f} -> {toy['probability_after']:.4f}.",
        f"Template addition flips the shown digit and noise for every lambda: "
        f"{n['claim_template_flips_prediction']}; distortion grows with lambda: "
        f"{n['claim_distortion_grows_with_weight_decay']}."]


def effective_weights(n):
    columns = ["layer", "active units", "corr. effective weights", "corr. activity average", "centered: effective",
               "centered: average", "units where average is higher"]
    corr = ("corr_effective_weights", "corr_activity_average", "corr_centered_effective_weights",
            "corr_centered_activity_average")
    body = [[r["layer"] + 1, f"{r['active_units']}/{r['units']}", *(cell(r[k]) for k in corr),
             f"{100 * r['fraction_units_average_higher']:.0f}%"] for r in n["layers"]]
    rows = table(columns, body)
    o = n["overlay"]
    return rows + [
        "", f"Model: relu64, test error {100 * n['model']['test_error']:.2f}%. Correlation: "
        "Pearson, over pixels, with the mean test image of the neuron's preferred class (the "
        "class it is most active on); centered: both minus the mean test image. Effective "
        f"weights: the input of L2 norm {n['input_norm_bound']:.2f} (the mean test image's) that "
        "most activates the neuron.",
        f"Overlay: {o['examples']} correctly classified 7s plus output neuron 0's pattern: "
        f"{100 * o['success_rate']:.0f}% become 0 at median per-pixel RMS change "
        f"{cell(o['median_distortion'])} (mean P(0) {cell(o['mean_probability_of_target'], 2)} at "
        "the smallest multiple).",
        f"Claim (activity average correlates more, every layer): {n['claim_average_correlates_more']}."]


def iris(n):
    body = [[f"({p['point'][0]:g}, {p['point'][1]:g})",
             *(f"{n['far_points'][k][i]['prediction']} {n['far_points'][k][i]['probability']:.3f}"
               for k in ("logistic", "svm_linear", "svm_rbf"))] for i, p in enumerate(n["far_points"]["logistic"])]
    rows = table(["point (cm)", "logistic", "linear SVM", "RBF SVM"], body)
    acc = n["accuracy"]
    return rows + ["", f"Training accuracy: logistic {acc['logistic']:.3f}, linear SVM "
                   f"{acc['svm_linear']:.3f}, RBF SVM {acc['svm_rbf']:.3f} (essay: "
                   f"{paper.ESSAY_IRIS_ACCURACY:g}). "
                   f"Claim (far points above 0.99): {n['claim_far_points_above_0.99']}."]


def bottleneck(n):
    m = n["model"]
    body = [[p["digit"], f"({p['z'][0]:.1f}, {p['z'][1]:.1f})", p["predicted"], f"{p['probability_of_region_class']:.6f}",
             f"{p['probability_clipped_to_0_1']:.6f}", f"[{p['pixel_min']:.2f}, {p['pixel_max']:.2f}]"]
            for p in n["points"]]
    rows = table(["digit", "chosen point z", "predicted", "probability", "after clipping to [0, 1]", "pixel range"],
                 body)
    return rows + ["", f"bottleneck2d on digits 0-3 ({m['train_size']} training images, "
                   f"{m['optimizer']}): test accuracy {100 * m['test_accuracy']:.2f}% (essay: "
                   f"about {paper.ESSAY_BOTTLENECK_TEST_ACCURACY:g}%). Each point: in its class's most favoured direction, at least "
                   f"{n['distance']:g}x the 99th-percentile radius of the test points' codes "
                   f"({n['data_radius_99pct']:.1f}) out and where p >= {n['confidence']:g}. Bounded regions: "
                   f"{n['bounded_classes'] or 'none'}. Claim (all above 0.99): "
                   f"{n['claim_inverted_above_0.99']}."]


def figure7(n):
    columns = ["model", "test error", "L-BFGS success", "mean distortion", "noise stddev for ~50%",
               "accuracy there", "RMS after clipping"]
    body = [[f"{key} ({r['model']['split']})", f"{100 * r['model']['test_error']:.2f}%",
             f"{r['adversarial']['success_rate']:.2f} ({r['adversarial']['num_examples']} images)",
             cell(r["adversarial"]["mean_distortion"]), f"{r['noise']['stddev']:.3f}",
             f"{r['noise']['accuracy']:.3f} ({r['noise']['examples']} images)",
             f"{r['noise']['realized_rms_after_clipping']:.3f}"] for key, r in n.items() if isinstance(r, dict)]
    rows = table(columns, body)
    return rows + ["", "Noise: x + stddev * N(0, 1) per pixel, clipped to [0, 1]; the stddev "
                   "is found by bisection."]


SECTIONS = {"units": units, "linear": linear, "effective_weights": effective_weights, "iris": iris,
            "bottleneck": bottleneck, "figure7": figure7}


def section(name: str, title: str, run_dir: Path, figures_dir: Path) -> list[str]:
    """One demo's lines; copies its figures into figures_dir as demo_<figure>."""
    numbers = json.loads((run_dir / "numbers.json").read_text())
    lines = [f"## {title}", "", f"`{provenance.hydra_command('scripts/demo.py', run_dir)}`", ""]
    for figure in numbers["figures"]:
        target = figures_dir / f"demo_{figure}"
        shutil.copyfile(run_dir / figure, target)
        lines += [f"![{figure}]({figures_dir.name}/{target.name})", ""]
    return lines + SECTIONS[name](numbers) + [""]


def report(run_dirs: Sequence[Path], out: Path, command: str) -> str:
    """The markdown of results/demos.md (figures copied next to `out`), in the config's order."""
    conf = settings.load("demos")
    figures_dir = out.parent / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    found = {OmegaConf.load(r / "config.yaml").demo.name: r for r in run_dirs}
    lines = [*provenance.header(conf["title"], command), *settings.paragraphs(conf["notes"])]
    for name, title in conf["sections"].items():
        if name in found:
            lines += section(name, title, found[name], figures_dir)
    return "\n".join(lines).rstrip() + "\n"
