"""Shared fixtures. Tests read the local MNIST copy at ../shared/data/mnist, found relative to
the repository (or wherever ADV_JAX_MNIST_DIR points), and never touch the network.

Hermetic: the caller's WANDB_* and ADV_JAX_* settings are removed first (but ADV_JAX_MNIST_DIR).

Speed: trained tiny models are shared through one model cache for the whole run (every xdist
worker and every subprocess), and so are compiled XLA programs (JAX's persistent compilation
cache, in a directory made for this run and removed after it)."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Tests check what the code computes, not how well XLA optimizes it, and most of a tiny test's
# time is compiling: without LLVM's optimization passes and with XLA's loop emitters instead of
# its newer fusion emitters, the suite compiles about 3x faster (docs/development.md). Set here,
# before JAX starts, so the workers and the subprocesses tests start inherit it; an XLA_FLAGS
# that names either flag is left as it is.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_flags = os.environ.get("XLA_FLAGS", "")
if not any(flag.split("=")[0] in _flags for flag in FAST_COMPILE_FLAGS):
    os.environ["XLA_FLAGS"] = " ".join((*FAST_COMPILE_FLAGS, _flags)).strip()

# Hermetic: W&B's and adv_jax's settings in the caller's shell (WANDB_MODE, WANDB_PROJECT,
# ADV_JAX_CACHE_DIR, ...) never reach a test, nor the workers and subprocesses tests start. Kept:
# ADV_JAX_MNIST_DIR (CI points it at its MNIST copy) and, where it exists, the directory of the
# run that started this one (ADV_JAX_TEST_SHARED, below).
KEPT_ENV = ("ADV_JAX_MNIST_DIR",) + (("ADV_JAX_TEST_SHARED",) if os.path.isdir(os.environ.get(
    "ADV_JAX_TEST_SHARED", "")) else ())
for _name in [n for n in os.environ if n.startswith(("WANDB_", "ADV_JAX_")) and n not in KEPT_ENV]:
    del os.environ[_name]

# Bytecode is cached (in the ignored __pycache__ folders) even where the environment says not to:
# the workers and the subprocesses tests start would otherwise each compile adv_jax and the
# tests from source again.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

from adv_jax import devices  # noqa: E402  (after XLA_FLAGS)

# One CPU device in test processes, whichever test starts JAX first (the default, one per core,
# would otherwise hold or not depending on test order); XLA_FLAGS or JAX_NUM_CPU_DEVICES still win.
devices.use_cpu_devices(1)

REPO = Path(__file__).resolve().parents[1]
# Absolute, so subprocesses started in other directories (Hydra jobs) find it too.
MNIST_DIR = Path(os.environ.get("ADV_JAX_MNIST_DIR") or REPO.parent / "shared" / "data" / "mnist").resolve()
os.environ["ADV_JAX_MNIST_DIR"] = str(MNIST_DIR)
os.environ.setdefault("WANDB_SILENT", "true")


_CREATED: list[str] = []


def pytest_configure(config):
    """Runs first in the controller, before xdist starts its workers, which inherit the directory
    (as do the subprocesses tests start)."""
    if "ADV_JAX_TEST_SHARED" not in os.environ:
        shared = tempfile.mkdtemp(prefix="adv_jax_tests_")
        _CREATED.append(shared)
        os.environ["ADV_JAX_TEST_SHARED"] = shared
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(shared) / "xla"))
        # Every program, however quick to compile: the workers and subprocesses share them all.
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# The slow tier (`-m slow`): end-to-end runs of the command-line tools (multiruns, launchers,
# searches, the GPU script, whole studies), the second and later cases of parametrized training
# tests, each 7-45 s on 2 cores, the L2 half of the newest attacks' per-attack sweeps, and every
# other test whose call took 3 s or more in a fresh clone's default tier (a list made from
# pytest --durations). Their code paths have faster tests in the default tier, which stays within
# its 5-minute budget; CI (.ci/run) runs both tiers. Node-id prefixes.
SLOW = (
    "tests/test_gpu_check.py::",
    "tests/test_search.py::test_the_search_minimizes_validation_error_and_resumes",
    "tests/test_search.py::test_one_selection_covers_the_paper_recipe_search_too",
    "tests/test_experiment.py::test_multirun_aggregates_two_seeds_and_skips_finished_runs_when_restarted",
    "tests/test_experiment.py::test_experiment_runs_in_debug_size[cross_model]",
    "tests/test_experiment.py::test_experiment_runs_in_debug_size[adversarial_training]",
    "tests/test_transfer_attacks.py::test_the_job_at_a_debug_size",
    "tests/test_transfer_benchmark.py::test_the_benchmark_at_a_debug_size",
    "tests/test_launchers.py::test_a_ray_multirun",
    "tests/test_ensemble.py::test_members_split_over_four_devices_train_as_on_one",
    "tests/test_train.py::test_autoencoder_layer_is_pretrained_then_frozen[pretraining1]",
    "tests/test_bench_minnorm.py::test_report_on_a_tiny_model",
    "tests/test_bench_robustness.py::test_a_tiny_model_is_measured_and_reported",
    "tests/test_bracket.py::test_bracket_of_a_tiny_linear_model_is_ordered",
    "tests/test_crown.py::test_at_the_certified_radius_no_sample_and_no_pgd_point_changes_the_class[sigmoid-l2]",
    "tests/test_curvature.py::test_at_the_certified_radius_no_sample_and_no_pgd_point_changes_the_class[-1]",
    "tests/test_curvature.py::test_margin_bounds_lie_below_every_sampled_margin[-1-sigmoid]",
    "tests/test_curvature.py::test_the_hessian_bound_lies_above_the_margins_curvature_at_every_sampled_point[sigmoid-widths0]",
    "tests/test_curvature.py::test_the_hessian_bound_lies_above_the_margins_curvature_at_every_sampled_point[tanh-widths1]",
    "tests/test_crown.py::test_optimized_slopes_tighten_the_margins_and_stay_sound[sigmoid-l2-0.6]",
    "tests/test_crown.py::test_at_the_certified_radius_no_sample_and_no_pgd_point_changes_the_class[relu-linf]",
    "tests/test_crown.py::test_optimized_slopes_tighten_the_margins_and_stay_sound[relu-linf-0.03]",
    "tests/test_exact.py::test_relu_program_equals_brute_force_over_activation_patterns[l1]",
    "tests/test_exact.py::test_no_attack_goes_below_the_relu_program",
    "tests/test_attacks_families.py::test_sia_and_bsr_step_along_the_gradient_averaged_over_their_copies[sia]",
    "tests/test_attacks_families.py::test_a_one_block_sia_copy_is_one_of_its_ten_transforms",
    "tests/test_wandb.py::test_a_multiruns_jobs_are_grouped_by_sweep_and_named_by_overrides",
    "tests/test_adversarial_training.py::test_pooled_lbfgs_refreshes_between_restarts_and_learns",
    "tests/test_model_zoo.py::test_zoo_model_shapes_train_step_and_attack[mixer_small]",
    "tests/test_model_zoo.py::test_zoo_model_shapes_train_step_and_attack[vit_small]",
    "tests/test_demos.py::test_unit_analysis_numbers",
    "tests/test_demos.py::test_figure7_noise_halves_accuracy",
    "tests/test_devices.py::test_sharded_attacks_predictions_and_errors_equal_one_device",
    "tests/test_runner.py::test_an_autoencoder_is_pretrained_once_for_every_way_of_training_its_head",
    "tests/test_runner.py::test_sweep_script_single_run",
    "tests/test_lipschitz_runs.py::test_product_bound_sits_above_the_empirical_lower_bounds_of_a_trained_conv_net",
    "tests/test_demos.py::test_demo_script_runs_and_requires_a_demo",
    "tests/test_ensemble.py::test_ensemble_of_seeds_splits_and_decays_matches_one_by_one_and_fills_the_cache",
    "tests/test_model_zoo.py::test_zoo_model_shapes_train_step_and_attack[resnet_small]",
    "tests/test_model_zoo.py::test_residual_bound_is_above_the_measured_slope_and_unbounded_layers_say_so",
    "tests/test_certified.py::test_a_trained_runs_lipschitz_json_and_certified_distortions",
    "tests/test_lipschitz_runs.py::test_compare_lipschitz",
    "tests/test_lipschitz_runs.py::test_measure_gives_the_bounds_a_run_logged",
    "tests/test_reports.py::test_noisy_errors_come_from_the_runs_params",
    "tests/test_reports.py::test_a_selection_report_shows_held_out_errors_only_and_the_chosen_row",
    "tests/test_demos.py::test_template_addition_flips_fc10",
    "tests/test_ensemble.py::test_lbfgs_ensemble_matches_one_by_one_on_a_convex_model",
    "tests/test_ensemble.py::test_any_vmap_size_trains_the_same_members",
    "tests/test_train.py::test_stronger_decay_gives_larger_error",
    "tests/test_adversarial_training.py::test_pool_training_runs_and_learns",
    "tests/test_docs.py::test_every_command_the_results_files_state_is_accepted",
    "tests/test_runner.py::test_second_run_hits_the_cache_with_identical_params",
    "tests/test_reliability.py::test_a_corrupt_entry_is_named_set_aside_and_retrained[truncate]",
    "tests/test_attacks_families.py::test_sia_and_bsr_step_along_the_gradient_averaged_over_their_copies[bsr]",
    # whole runs (a study, a run directory, the demos) and the slowest cases of their files, so
    # that the default tier keeps its 5 minutes; CI runs them in the slow tier
    "tests/test_experiment.py::test_experiment_runs_in_debug_size[my_study]",
    "tests/test_runner.py::test_run_writes_a_self_describing_directory_and_loads_back",
    "tests/test_runner.py::test_wandb_offline_run_closes_even_when_the_job_fails",
    "tests/test_attacks_autoattack.py::test_autoattack_is_at_least_as_strong_as_each_stage_and_staged_equals_one_by_one",
    "tests/test_attacks_families.py::test_a_run_with_admix_mixes_in_its_own_training_images",
    "tests/test_attacks_families.py::test_sia_resize_and_dct_blocks_are_the_authors_transforms_of_each_block[resize]",
    "tests/test_demos.py::test_bottleneck_inversions_are_classified_as_chosen",
    "tests/test_demos.py::test_activity_average_correlates_more_than_effective_weights",
    "tests/test_crown.py::test_bounds_contain_every_sampled_point[relu-linf-0.02]",
    "tests/test_reliability.py::test_unwritable_cache_warns_naming_the_path_and_the_run_completes",
    "tests/test_transfer.py::test_matrix_of_tiny_models_on_real_mnist",
    "tests/test_transfer_benchmark.py::test_the_debug_run_keeps_every_model_family_and_scenario_and_only_narrows_the_models",
    "tests/test_wandb.py::test_a_finished_run_logs_its_files_as_one_artifact",
    "tests/test_model_zoo.py::test_zoo_model_shapes_train_step_and_attack[conv]",
    "tests/test_attacks_square.py::test_the_key_fixes_the_output_and_each_example_gets_what_it_gets_alone[l2]",
    "tests/test_crown.py::test_bounds_contain_every_sampled_point[tanh-l2-0.3]",
    "tests/test_certified.py::test_certified_bounds_sit_between_gradient_ascent_and_the_product[sizes2-relu-2]",
    "tests/test_attack_lbfgs.py::test_attack_all_targets_keeps_the_closest_success",
    "tests/test_reliability.py::test_an_unreadable_metrics_file_is_named",
    "tests/test_transfer_protocol.py::test_a_battery_row_is_its_attack_run_alone_at_that_budget",
    "tests/test_experiment.py::test_experiment_composes_and_its_models_are_plain_run_cache_entries[transfer_benchmark]",
    # the robustness benchmark in parts (it trains its tiny model like the case above), and the
    # slowest remaining cases (7-14 s each): the default tier took 355 s from a fresh clone
    "tests/test_bench_robustness.py::test_keep_reuses_only_measurements_of_the_same_model_settings_and_attack_code",
    "tests/test_runner.py::test_attack_run_writes_adversarials_and_bounds",
    "tests/test_reliability.py::test_the_cache_keys_on_the_training_data_itself",
    "tests/test_crown.py::test_bounds_contain_every_sampled_point[sigmoid-linf-0.05]",
    "tests/test_config.py::test_config_tests_ignore_the_callers_environment",
    "tests/test_data.py::test_idx_round_trip",
    "tests/test_reliability.py::test_a_finished_run_is_never_overwritten_by_another_config",
    "tests/test_attacks_families.py::test_sia_resize_and_dct_blocks_are_the_authors_transforms_of_each_block[dct]",
    "tests/test_train.py::test_autoencoder_layer_is_pretrained_then_frozen[pretraining0]",
    "tests/test_attacks_families.py::test_sia_copies_are_linear_in_x_with_their_transpose_as_gradient",
    "tests/test_crown.py::test_any_slopes_of_every_layer_bound_every_sampled_margin[sigmoid-l2-0.6]",
    "tests/test_crown.py::test_to_a_target_the_certified_radius_is_at_least_the_untargeted_one_and_pgd_does_not_reach_it",
    "tests/test_crown.py::test_alpha_crown_radius_from_crowns_is_above_it_and_no_pgd_point_within_it_changes_the_class",
    "tests/test_exact.py::test_relu_program_equals_brute_force_over_activation_patterns[linf]",
    "tests/test_crown.py::test_bounds_contain_every_sampled_point[relu-l2-0.3]",
    "tests/test_attack_lbfgs.py::test_matches_scipy_lbfgsb_on_small_mlp",
    "tests/test_attacks_families.py::test_sia_resize_and_dct_blocks_are_the_authors_transforms_of_each_block[mixed]",
    "tests/test_reliability.py::test_a_corrupt_entry_is_named_set_aside_and_retrained[flip]",
    "tests/test_attacks_api.py::test_the_attack_loop_compiles_once_for_batches_of_one_shape",
    "tests/test_devices.py::test_held_program_equals_the_function_on_any_count_and_survives_clear_caches",
    "tests/test_certified.py::test_certified_bounds_sit_between_gradient_ascent_and_the_product[sizes0-sigmoid-0]",
    "tests/test_attacks_transfer.py::test_an_ensemble_of_one_model_is_that_model",
    "tests/test_attacks_api.py::test_generate_attacks_a_flax_model_inside_the_box_and_the_ball",
    "tests/test_bench_minnorm.py::test_the_exact_column_of_a_linear_model_is_the_qp_and_no_attack_beats_it",
    "tests/test_adversarial_training.py::test_dropout_only_in_training",
    "tests/test_adversarial_training.py::test_the_pool_refresh_bench_times_a_refresh_at_every_layer",
    "tests/test_train.py::test_lbfgs_trains_to_convergence",
    "tests/test_attacks_autoattack.py::test_stages_stay_in_the_ball_and_box_and_batch_is_one_by_one[attack1]",
    "tests/test_front_door.py::test_a_known_mistake_is_one_line_in_seconds_and_leaves_nothing[args2-nowhere]",
    "tests/test_attacks_refined.py::test_reaches_the_qp_distance_and_never_ends_farther_than_its_first_stage",
    "tests/test_attacks_api.py::test_attack_batch_on_hidden_vectors_and_all_targets",
    "tests/test_attacks_square.py::test_pseudo_gaussian_pattern_is_the_official_nested_rectangles",
    "tests/test_reliability.py::test_resume_ignores_keys_that_do_not_change_results",
    "tests/test_train.py::test_same_config_and_seed_give_identical_bits",
    "tests/test_models.py::test_patch_matmul_conv_is_lax_conv_values_and_gradients[9-4-3-SAME-2]",
    "tests/test_attacks_feature_ensemble.py::test_one_step_of_each_ensemble_strategy_is_its_formula",
    "tests/test_reliability.py::test_a_redone_job_starts_from_clean_records",
    "tests/test_attacks_square.py::test_inside_the_box_and_the_ball_within_the_budget[l2]",
    "tests/test_data.py::test_corrupted_files_are_named",
    "tests/test_front_door.py::test_a_known_mistake_is_one_line_in_seconds_and_leaves_nothing[args0-model.weight_decay='abc' is not allowed: a number >= 0, or a list]",
    "tests/test_lipschitz.py::test_jacobian_ascent_climbs_above_the_single_pass_and_stays_below_the_certified_bound",
    "tests/test_attacks_refined.py::test_where_nothing_is_found_the_first_stage_result_is_returned",
    "tests/test_attacks_transfer.py::test_the_loss_reduction_averages_the_members_losses_exactly",
    "tests/test_attacks_minnorm.py::test_multi_class_l2_distance_matches_the_qp",
    "tests/test_attack_lbfgs.py::test_lanes_take_the_next_example_with_the_same_results",
    "tests/test_attacks_gradient.py::test_pgd_restarts_keep_the_first_random_start_that_succeeds",
    "tests/test_transfer_benchmark.py::test_scenarios_name_white_box_cross_training_set_cross_architecture_and_robust",
    "tests/test_certified.py::test_certified_bounds_sit_between_gradient_ascent_and_the_product[sizes3-sigmoid-3]",
    "tests/test_model_zoo.py::test_module_by_target_trains_attacks_and_has_no_lipschitz_bound[zoo_modules.LinenMLP]",
    "tests/test_front_door.py::test_hydra_full_error_still_shows_the_traceback",
    "tests/test_rundir.py::test_a_held_directory_refuses_a_second_process_before_it_writes_anything",
    "tests/test_reliability.py::test_cache_entries_take_the_umask_permissions",
    "tests/test_model_zoo.py::test_zoo_model_shapes_train_step_and_attack[relu_mlp]",
    "tests/test_transfer_benchmark.py::test_pgd_training_trains_on_adversarials_inside_the_box_and_needs_a_minibatch_optimizer",
    "tests/test_attacks_feature_ensemble.py::test_inside_the_box_and_the_ball_same_key_same_output[adaea-linf]",
    "tests/test_certified.py::test_local_constants_hold_on_the_ball_and_never_exceed_the_global_ones",
    "tests/test_crown.py::test_any_slopes_of_every_layer_bound_every_sampled_margin[relu-linf-0.04]",
    "tests/test_wandb.py::test_an_unwritable_wandb_directory_costs_the_run_nothing",
    "tests/test_attack_lbfgs.py::test_extra_solves_rescue_examples_without_a_success",
    "tests/test_models.py::test_patch_matmul_conv_is_lax_conv_values_and_gradients[28-5-1-SAME-1]",
    "tests/test_model_zoo.py::test_nested_params_round_trip_and_flat_params_keep_their_bytes",
    "tests/test_front_door.py::test_a_known_mistake_is_one_line_in_seconds_and_leaves_nothing[args1-train='lbfgs' is not allowed: full-batch L-BFGS on a conv model]",
    "tests/test_config_errors.py::test_sweep_script_suggests_the_closest_key",
    "tests/test_adversarial_training.py::test_refresh_replaces_only_its_slots_with_adversarials[0]",
    "tests/test_rundir.py::test_a_killed_holder_frees_the_lock_and_the_redo_keeps_only_what_was_there_before",
    "tests/test_train.py::test_short_training_on_real_images_beats_stated_error",
    "tests/test_wandb.py::test_wandb_mode_disabled_from_the_environment_writes_no_wandb_files",
    "tests/test_attacks_autoattack.py::test_apgd_breaks_an_affine_model_at_a_budget_above_its_distances",
    "tests/test_model_zoo.py::test_module_by_target_trains_attacks_and_has_no_lipschitz_bound[zoo_modules.EqxMLP]",
    "tests/test_attacks_api.py::test_every_attack_reports_its_gradient_evaluations_in_the_metrics[sia]",
    "tests/test_runner.py::test_checkpoint_round_trip_gives_identical_logits",
    "tests/test_architecture.py::test_models_and_attacks_import_without_hydra_wandb_or_matplotlib",
    "tests/test_certified.py::test_schur_bound_is_the_smallest_rho_of_the_full_lmi",
    "tests/test_attack_lbfgs.py::test_ten_classes_margin_loss_matches_qp",
    "tests/test_attacks_feature_ensemble.py::test_ila_with_zero_steps_is_its_base_attack[l2]",
    "tests/test_attacks_feature_ensemble.py::test_an_ensemble_of_one_model_is_mi_fgsm[l2]",
    "tests/test_config.py::test_debug_tiny_changes_sizes_only",
    "tests/test_attacks_feature_ensemble.py::test_an_ensemble_of_one_model_is_mi_fgsm[linf]",
    "tests/test_runner.py::test_full_and_train_errors_reuse_the_halves[None]",
    "tests/test_experiment.py::test_experiment_composes_and_its_models_are_plain_run_cache_entries[cross_model]",
)
# Per-attack sweeps over both norms: the L-inf case stays in the default tier, the L2 one is slow.
SLOW_L2 = (
    "tests/test_attacks_families.py::test_each_family_with_its_ingredient_off_is_the_attack_it_builds_on",
    "tests/test_attacks_families.py::test_every_family_stays_in_the_box_and_the_ball_and_depends_only_on_the_key",
    "tests/test_attacks_feature_ensemble.py::test_inside_the_box_and_the_ball_same_key_same_output",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW) or (item.nodeid.startswith(SLOW_L2) and item.nodeid.endswith("-l2]")):
            item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
    for path in _CREATED:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    """One model cache for every test of the run: a tiny model trained by one test is loaded by
    the next (cache entries are written atomically, so workers can share it)."""
    return Path(os.environ["ADV_JAX_TEST_SHARED"]) / "models"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST IDX files not found in {MNIST_DIR}; set ADV_JAX_MNIST_DIR")
    return MNIST_DIR


@pytest.fixture(scope="module")
def affine_digits(mnist_dir):
    """Eight real test digits (many pixels exactly 0 or 1: the box binds), an affine model and
    its predictions as the labels (every digit starts correctly classified):
    (model, params, x (8, 28, 28, 1), labels (8,))."""
    import jax.numpy as jnp

    from adv_jax.config import compose
    from adv_jax.data import load_splits
    from closed_form import affine_model

    test = load_splits(compose(["data.train_limit=10"]).data)["test"]
    model, params, *_ = affine_model(10, seed=3)
    x = test.x[:8]
    return model, params, x, np.asarray(jnp.argmax(model.apply(params, x), -1), np.int32)


@pytest.fixture
def tiny_overrides(shared_cache, mnist_dir) -> list[str]:
    """Overrides for a seconds-long real run: the debug size (conf/debug/tiny.yaml: 2000 P1
    images, 3 epochs or 100 L-BFGS steps, no W&B, ...) and the run's shared model cache. MNIST
    comes from ADV_JAX_MNIST_DIR (set above; the fixture fails first when it is missing)."""
    return ["debug=tiny", f"cache_dir={shared_cache}"]


@pytest.fixture
def private_overrides(tiny_overrides, tmp_path) -> list[str]:
    """tiny_overrides with a cache of the test's own (for tests of the cache itself)."""
    return [o for o in tiny_overrides if not o.startswith("cache_dir=")] + [f"cache_dir={tmp_path / 'cache'}"]


def on_fake_cpu_devices(job_source: str, out_dir: Path, count: int = 4) -> dict[str, np.ndarray]:
    """Runs `job()` from `job_source` (it returns a dict of arrays) in a subprocess whose JAX has
    `count` CPU devices; XLA_FLAGS must be set before jax is imported, hence the subprocess."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", TQDM_DISABLE="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = out_dir / "on_fake_devices.npz"
    main = "\nimport sys\nimport numpy\nnumpy.savez(sys.argv[1], **job())\n"
    done = subprocess.run([sys.executable, "-c", job_source + main, str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}
