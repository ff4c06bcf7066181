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


def cell(value, digits=3):
    """A number to `digits` decimals; '-' for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def units(n):
    rows = ["| model | test error | units: label purity | random directions: label purity | "
            "random images: label purity | units: pixel similarity | random directions: pixel "
            "similarity | random images: pixel similarity |", "|" + " --- |" * 8]
    for key, r in n.items():
        if not isinstance(r, dict) or "units" not in r:
            continue
        rows.append(f"| {key} ({r['model']['split']}, {r['model']['optimizer']}) | "
                    f"{100 * r['model']['test_error']:.2f}% | {cell(r['units']['label_purity'])} | "
                    f"{cell(r['random_directions_top']['label_purity'])} | "
                    f"{cell(r['random_images']['label_purity'])} | "
                    f"{cell(r['units']['pixel_similarity'])} | "
                    f"{cell(r['random_directions_top']['pixel_similarity'])} | "
                    f"{cell(r['random_images']['pixel_similarity'])} |")
    claim = ", ".join(f"{k} {v}" for k, v in n["claim_units_no_purer_than_random_directions"].items())
    return rows + ["", "Label purity: share of the most common label among the 8 test images "
                   "that most activate a direction, averaged over all units and as many random "
                   f"directions. Claim (units not purer than random directions by more than 0.1; random directions far purer than random images): {claim}."]


def linear(n):
    rows = ["| lambda | test error | template w_t: success | mean distortion | template "
            "w_t - w_s: success | mean distortion |", "|" + " --- |" * 6]
    for r in n["models"]:
        a, b = r.get("target_score", {}), r.get("margin", {})
        rows.append(f"| {r['weight_decay']:g} | {100 * r['test_error']:.2f}% | "
                    f"{cell(a.get('success_rate'))} | {cell(a.get('mean_distortion'))} | "
                    f"{cell(b.get('success_rate'))} | {cell(b.get('mean_distortion'))} |")
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
    rows = ["| layer | active units | corr. effective weights | corr. activity average | "
            "centered: effective | centered: average | units where average is higher |",
            "|" + " --- |" * 7]
    for r in n["layers"]:
        rows.append(f"| {r['layer'] + 1} | {r['active_units']}/{r['units']} | "
                    f"{cell(r['corr_effective_weights'])} | {cell(r['corr_activity_average'])} | "
                    f"{cell(r['corr_centered_effective_weights'])} | "
                    f"{cell(r['corr_centered_activity_average'])} | "
                    f"{100 * r['fraction_units_average_higher']:.0f}% |")
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
    rows = ["| point (cm) | logistic | linear SVM | RBF SVM |", "| --- | --- | --- | --- |"]
    for i, p in enumerate(n["far_points"]["logistic"]):
        cells = [f"{n['far_points'][k][i]['prediction']} {n['far_points'][k][i]['probability']:.3f}"
                 for k in ("logistic", "svm_linear", "svm_rbf")]
        rows.append(f"| ({p['point'][0]:g}, {p['point'][1]:g}) | " + " | ".join(cells) + " |")
    acc = n["accuracy"]
    return rows + ["", f"Training accuracy: logistic {acc['logistic']:.3f}, linear SVM "
                   f"{acc['svm_linear']:.3f}, RBF SVM {acc['svm_rbf']:.3f} (essay: "
                   f"{paper.ESSAY_IRIS_ACCURACY:g}). "
                   f"Claim (far points above 0.99): {n['claim_far_points_above_0.99']}."]


def bottleneck(n):
    m = n["model"]
    rows = ["| digit | chosen point z | predicted | probability | after clipping to [0, 1] | "
            "pixel range |", "|" + " --- |" * 6]
    for p in n["points"]:
        rows.append(f"| {p['digit']} | ({p['z'][0]:.1f}, {p['z'][1]:.1f}) | {p['predicted']} | "
                    f"{p['probability_of_region_class']:.6f} | {p['probability_clipped_to_0_1']:.6f} | "
                    f"[{p['pixel_min']:.2f}, {p['pixel_max']:.2f}] |")
    return rows + ["", f"bottleneck2d on digits 0-3 ({m['train_size']} training images, "
                   f"{m['optimizer']}): test accuracy {100 * m['test_accuracy']:.2f}% (essay: "
                   f"about {paper.ESSAY_BOTTLENECK_TEST_ACCURACY:g}%). Each point: in its class's most favoured direction, at least "
                   f"{n['distance']:g}x the 99th-percentile radius of the test points' codes "
                   f"({n['data_radius_99pct']:.1f}) out and where p >= {n['confidence']:g}. Bounded regions: "
                   f"{n['bounded_classes'] or 'none'}. Claim (all above 0.99): "
                   f"{n['claim_inverted_above_0.99']}."]


def figure7(n):
    rows = ["| model | test error | L-BFGS success | mean distortion | noise stddev for ~50% | "
            "accuracy there | RMS after clipping |", "|" + " --- |" * 7]
    for key, r in n.items():
        if not isinstance(r, dict):
            continue
        a, z = r["adversarial"], r["noise"]
        rows.append(f"| {key} ({r['model']['split']}) | {100 * r['model']['test_error']:.2f}% | "
                    f"{a['success_rate']:.2f} ({a['num_examples']} images) | "
                    f"{cell(a['mean_distortion'])} | {z['stddev']:.3f} | {z['accuracy']:.3f} "
                    f"({z['examples']} images) | {z['realized_rms_after_clipping']:.3f} |")
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
