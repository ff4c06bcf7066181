"""Typed configuration: the schema every file in `conf/` is checked against.

Hydra merges `conf/<group>/<name>.yaml` into these dataclasses, so a misspelled key or a value of
the wrong type fails at start-up with a message naming it. Importing this module registers the
schema as `base_config` in Hydra's ConfigStore. `compose(overrides)` builds a config without the
command line (tests, notebooks); it and `check_command_line` (scripts/sweep.py) suggest the closest
key for a misspelled one (`train.epoch=3`: did you mean 'epochs'?).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import (
    ConfigStore,  # light: hydra's config store, not its app
)
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class DataConfig:
    split: str = "p1"  # training split: full (60000) | p1 | p2 (disjoint random halves of 30000)
    split_seed: int = 0  # the P1/P2 partition; independent of the training seed
    train_limit: Optional[int] = None  # keep only the first N training images (quick runs)
    # Hold out N random images of the training split (fixed by split_seed) as "validation": the
    # model never trains on them, and hyperparameter searches select on error/validation.
    validation: int = 0
    source: str = "idx"  # idx: the four IDX files (mnist_dir, else downloaded) | tfds
    # Directory holding the four MNIST IDX .gz files; null means "download them into download_dir".
    mnist_dir: Optional[str] = "${oc.env:ADV_JAX_MNIST_DIR,null}"
    # Base URL under which the four files are found; null means the public mirrors in turn.
    mnist_url: Optional[str] = "${oc.env:ADV_JAX_MNIST_URL,null}"
    # Where downloaded files are kept and reused; oc.select so that a DataConfig alone resolves too.
    download_dir: Optional[str] = "${oc.select:cache_dir,${oc.env:ADV_JAX_CACHE_DIR,'~/.cache/adv_jax'}}/mnist"
    tfds_dir: Optional[str] = None  # tfds data_dir (default ~/tensorflow_datasets), data.source=tfds


@dataclass
class ConvBlock:
    features: int = MISSING
    kernel: int = 3
    stride: int = 1
    padding: str = "SAME"
    activation: str = "relu"
    pool: int = 1  # max-pooling window and stride after the convolution; 1 = none


@dataclass
class AutoencoderConfig:
    """Unsupervised pretraining of the first hidden layer as a sparse autoencoder, then frozen."""

    optimizer: str = "adam"  # adam (minibatch, `epochs`) | lbfgs (full batch, `lbfgs_steps` iterations)
    epochs: int = 30
    learning_rate: float = 1e-3
    lbfgs_steps: int = 400
    sparsity_target: float = 0.05  # wanted mean activation rho of each hidden unit
    sparsity_weight: float = 3.0  # beta in beta * sum_j KL(rho || rho_hat_j)
    weight_decay: float = 1e-6  # lambda on encoder and decoder weights (paper's form)


@dataclass
class ModelConfig:
    name: str = MISSING
    conv: List[ConvBlock] = field(default_factory=list)
    hidden: List[int] = field(default_factory=list)
    activation: str = "sigmoid"  # of the hidden dense layers: sigmoid | relu | tanh | identity
    # lambda of the paper's decay lambda * sum(w^2) / k: one value, or one per weighted layer.
    weight_decay: Any = 0.0
    classes: Optional[List[int]] = None  # train on these digits only (labels become 0..len-1)
    autoencoder: Optional[AutoencoderConfig] = None
    # The family (adv_jax/models/zoo.py, docs/models.md): layers (conv blocks + hidden, above) |
    # resnet | vit | mixer (+ hidden, then the output layer) | module (set by _target_).
    arch: str = "layers"
    stages: List[int] = field(default_factory=list)  # resnet: channels per stage (stride 2 between)
    blocks: int = 2  # resnet: residual blocks per stage; vit, mixer: layers
    width: int = 64  # vit, mixer: token width
    patch: int = 7  # vit, mixer: patch side in pixels (divides 28)
    heads: int = 4  # vit
    mlp_width: int = 128  # vit, mixer: hidden units of the channel MLP
    token_mlp_width: int = 32  # mixer: hidden units of the token MLP
    # Any flax.linen / flax.nnx / equinox module: its class's import path and keyword arguments
    # (adv_jax/models/external.py); the module is then the whole model.
    _target_: Optional[str] = None
    kwargs: Any = None  # a dict; null (not {}) so that `model.kwargs={...}` replaces, not merges
    # A params file (adv_jax's msgpack, e.g. a run's params.msgpack) to use instead of training.
    params_file: Optional[str] = None


@dataclass
class DropoutConfig:
    """Dropout while training only (inverted: kept units scaled by 1 / (1 - rate)), so
    `model.apply(params, x)` stays deterministic for evaluation and attacks. Dense models only."""

    input: float = 0.0  # drop rate of the input pixels
    hidden: float = 0.0  # drop rate of every hidden layer's units


@dataclass
class AdversarialConfig:
    """Adversarial training with a refreshed pool (paper section 4.2; adv_jax/adversarial_training.py).

    One pool per entry of `layers`: 0 holds perturbed images, k > 0 perturbations of the output of
    the model's k-th layer (the input of layer k), used to train layers k and above. Each pool
    holds `pool_size` (training index, perturbation) pairs; every training step mixes
    `batch_size` of them into the batch; `refreshes_per_epoch` times per epoch, `refresh_size`
    random entries are replaced by new adversarials of random training images against the
    current model. Empty `layers` = off.
    """

    layers: List[int] = field(default_factory=list)
    pool_size: int = 10000
    batch_size: int = 64  # pool examples mixed into each batch, per pool
    refreshes_per_epoch: int = 10
    refresh_size: int = 1000
    start_epoch: int = 1  # clean epochs before the pool is filled and used
    attack: str = "fgsm_min"  # a key of adv_jax.attacks.ATTACKS (minimum-norm ones: lbfgs, fgsm_min, pgd_min, deepfool)
    attack_params: Dict[str, Any] = field(default_factory=dict)
    target: str = "random"  # random | next | untargeted (see attacks.targets.choose_targets)
    # train=lbfgs: this many L-BFGS restarts of ceil(lbfgs_steps / lbfgs_restarts) iterations; the
    # pools are filled before restart start_epoch and refresh_size entries refreshed before each later one.
    lbfgs_restarts: int = 4
    # Madry et al. 2018: every minibatch replaced by its L-inf PGD adversarials (random start,
    # pgd_steps steps of 2.5 pgd_epsilon / pgd_steps) against the current model; 0 = off.
    pgd_epsilon: float = 0.0
    pgd_steps: int = 7


@dataclass
class TrainConfig:
    optimizer: str = "lbfgs"  # lbfgs (full batch, until convergence; the default train) | adam | sgd (minibatch)
    learning_rate: float = 1e-3
    schedule: str = "cosine"  # constant | cosine (decays to 0 over all steps)
    momentum: float = 0.9  # sgd only
    batch_size: int = 128
    epochs: int = 40
    lbfgs_steps: int = 2000  # lbfgs: most iterations
    lbfgs_tolerance: float = 1e-5  # lbfgs: stop when the gradient norm falls below this
    # Multiplies the paper's decay lambda * sum(w^2) / k. The paper does not say how its loss is
    # normalized; with the mean cross-entropy per example, 3.0 reproduces FC10's Table 1 errors.
    decay_scale: float = 3.0
    # Weight of log(prod_k ||W_k|| * activation slope), the network's Lipschitz upper bound
    # (paper section 4.3 suggests penalizing it); 0 = off.
    lipschitz_penalty: float = 0.0
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    cache: bool = True  # reuse a model trained before with the same config and seed


@dataclass
class AttackConfig:
    name: str = "none"  # none, or a key of adv_jax.attacks.ATTACKS (conf/attack/*.yaml)
    target: str = "random"  # random (a uniform wrong label) | next (2nd most likely) | all | untargeted
    num_examples: Optional[int] = None  # attack the first N test images; null = all 10000
    chunk_size: Optional[int] = None  # examples per jitted call; null = the attack's own default
    params: Dict[str, Any] = field(default_factory=dict)  # the attack's hyperparameters
    figure_columns: int = 10  # examples in the Figure 7 style grid (adversarials.png); 0 = none


@dataclass
class LipschitzConfig:
    """Per-layer upper bounds are always computed; these size the empirical lower bound."""

    images: int = 1000  # test images whose local Jacobian norm is measured (0 = skip)
    power_iters: int = 50
    # Gradient ascent on the Jacobian's norm over the box from the first lipschitz.ASCENT_STARTS of
    # those images, this many steps (0 = skip): a sharper lower bound than the single pass on
    # smooth networks (sigmoid, tanh); a ReLU network's Jacobian is piecewise constant, so there
    # it stays where it starts
    ascent_steps: int = 1000
    # Certified upper bounds (adv_jax/lipschitz.py METHODS): product, eclipse_fast, lipsdp.
    # lipsdp needs the `lipschitz` extra (cvxpy, SCS) and is skipped, with the reason logged and
    # stored, above lipsdp_max_size (LMI dimension: reduced input + hidden units).
    methods: List[str] = field(default_factory=lambda: ["product", "eclipse_fast"])
    lipsdp_max_size: int = 400
    lipsdp_solver: str = "SCS"  # a cvxpy solver name
    local: bool = True  # the bracket's local bound (slopes bounded on the attack's L2 ball)
    # Local constants for the first N successful examples only (null = all); the global bound
    # stands for the rest. They cost ~0.4 s per 1000 on FC100 and ~1.9 s on FC200, against
    # L-BFGS's ~1.1 and ~1.2 s (results/bench_certify.md): 2000 keeps the bracket under the attack.
    local_examples: Optional[int] = 2000


@dataclass
class WandbConfig:
    """W&B logging (adv_jax/logger.py, docs/wandb.md). mode, project and entity default to W&B's own
    WANDB_MODE, WANDB_PROJECT and WANDB_ENTITY, so those work as W&B users expect; an explicit
    `wandb=offline` or `wandb.mode=...` override still wins."""

    mode: str = "${oc.env:WANDB_MODE,offline}"  # offline (no account needed) | online | disabled
    project: str = "${oc.env:WANDB_PROJECT,adv_jax}"
    entity: Optional[str] = "${oc.env:WANDB_ENTITY,null}"
    group: Optional[str] = None  # null: a multirun job's sweep directory name
    tags: List[str] = field(default_factory=list)
    init_timeout: float = 60.0  # seconds before online mode gives up on the server
    # Log config.yaml, metrics.json, params.msgpack, adversarials.npz and lipschitz.json as one
    # artifact of the run when it finishes; null = only when online.
    log_artifacts: Optional[bool] = None
    # W&B's console lines (its run summary after the run's own last line); the run files are the same.
    quiet: bool = True


@dataclass
class ExperimentModel:
    """One model of an experiment: a `conf/model/<model>.yaml` entry, changed by the fields below.

    Everything else (train, attack, data source, cache_dir) comes from the run's own config, so a
    model here is the same cache entry as `sweep.py model=<model> data=<split> seed=<seed>`.
    """

    model: str = MISSING  # a file name in conf/model/ (fc10, fc100, fc123, fc200, ae400, ...)
    label: Optional[str] = None  # its name in tables (default: its key in experiment.models)
    split: str = "full"  # training split: full | p1 | p2
    seed_offset: int = 0  # the model's seed is cfg.seed + seed_offset
    hidden: Optional[List[int]] = None  # replaces model.hidden (width sweeps)
    weight_decay: Any = None  # replaces model.weight_decay (one lambda or one per layer)
    model_overrides: Dict[str, Any] = field(default_factory=dict)  # any other ModelConfig field
    train_overrides: Dict[str, Any] = field(default_factory=dict)  # TrainConfig fields


@dataclass
class TransferAttack:
    """One attack of a transfer-attacks study (adv_jax/jobs/transfer_attacks.py)."""

    attack: str = MISSING  # a file name in conf/attack/ (pgd, mi_fgsm, di_fgsm, ti_fgsm, mi_di_ti, lbfgs)
    label: Optional[str] = None  # its name in tables (default: its key)
    params: Dict[str, Any] = field(default_factory=dict)  # changes to that file's params
    norms: List[str] = field(default_factory=lambda: ["linf", "l2"])  # run at transfer.budgets[norm]
    # A minimum-norm attack (L-BFGS): run once per source, its perturbation then rescaled to each
    # budget, x + eps * delta / |delta|, clipped to [0, 1]; also reported at its own size.
    minimum_norm: bool = False


@dataclass
class EnsembleSource:
    """A source made of several experiment models (Liu et al. 2017): adv_jax/attacks/ensemble_source.py."""

    members: List[str] = field(default_factory=list)  # keys of experiment.models
    reduction: str = "logits"  # logits: mean logits | loss: mean of the members' losses (exact)
    label: Optional[str] = None


@dataclass
class TransferAttacksConfig:
    """job=transfer_attacks: attacks x budgets x sources x target models."""

    attacks: Dict[str, TransferAttack] = field(default_factory=dict)
    # Budgets per norm, in one batched run: linf = largest per-pixel change; l2 = Euclidean norm
    # of the whole perturbation (per-pixel RMS = l2 / 28).
    budgets: Dict[str, List[float]] = field(default_factory=lambda: {"linf": [0.1], "l2": [1.5]})
    target: str = "untargeted"  # untargeted | random | next (attack.target modes, "all" excluded)
    ensembles: Dict[str, EnsembleSource] = field(default_factory=dict)
    analysis_examples: int = 200  # images for gradient alignment and boundary distances (0: none)
    random_directions: int = 4  # random directions per image for the boundary distance
    max_distance: float = 20.0  # L2 range of the boundary line search
    direction_attack: Optional[str] = None  # key of the minimum_norm attack whose directions are followed
    reference_attack: Optional[str] = None  # key of the attack whose per-example transfer the analysis explains
    reference_norm: str = "l2"
    reference_budget: int = -1  # index into budgets[reference_norm]


# The fair protocol's attacks by family (job=transfer_benchmark; conf/attack/ names). The
# baselines are what every family is compared with; the ensemble strategies run on
# `benchmark.ensembles` only, every other family on each single-model surrogate.
BENCHMARK_FAMILIES = {
    "baselines": ["pgd", "mi_fgsm"],
    "gradient stabilization": ["ni_fgsm", "vmi_fgsm", "vni_fgsm", "emi_fgsm", "gra", "pgn"],
    "input transformation": ["di_fgsm", "ti_fgsm", "sini_fgsm", "admix", "sia", "bsr"],
    "feature level": ["ila", "fia", "naa"],
    "model related": ["linbp", "sgm", "ghost"],
    "ensemble strategies": ["mi_fgsm", "svre", "cwa", "adaea"],
}
ENSEMBLE_FAMILY = "ensemble strategies"


@dataclass
class BenchmarkConfig:
    """job=transfer_benchmark: the fair protocol (adv_jax/jobs/transfer_benchmark.py)."""

    families: Dict[str, List[str]] = field(default_factory=dict)  # label -> attacks; {} = BENCHMARK_FAMILIES
    # Same budgets and iterations for every attack: linf = largest per-pixel change, l2 =
    # Euclidean norm of the whole perturbation (per-pixel RMS = l2 / 28); alpha = budget / steps.
    budgets: Dict[str, List[float]] = field(default_factory=lambda: {"linf": [0.1, 0.2], "l2": [1.0, 2.0]})
    steps: int = 10  # T; targeted transfer (target=random): 300
    # The compute-matched table: every attack gets this many gradient evaluations per image
    # (its steps = this / its evaluations per step), at each norm's first budget; null = none.
    matched_evals: Optional[int] = 100
    round_8bit: bool = True  # adversarials rounded to 8-bit pixels before any model sees them
    confidence: float = 0.95  # bootstrap intervals over images
    target: str = "untargeted"  # untargeted | random (targeted transfer)
    surrogates: List[str] = field(default_factory=list)  # experiment.models keys that attack; [] = all
    ensembles: Dict[str, EnsembleSource] = field(default_factory=dict)  # the ensemble strategies' sources
    params: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # attack name -> changed hyperparameters


@dataclass
class ExperimentConfig:
    """A transfer study: models x their adversarials (conf/experiment/*.yaml); "none" = plain run."""

    name: str = "none"
    models: Dict[str, ExperimentModel] = field(default_factory=dict)  # key -> model (key = dir name)
    examples: str = "test"  # split the adversarials are made from: test | full | p1 | p2
    num_examples: Optional[int] = None  # its first N images; null = all
    noise_stddevs: List[float] = field(default_factory=lambda: [0.1])  # fixed-stddev noise rows
    amplify_to: Optional[float] = 0.1  # per-pixel stddev of the amplified rows; null = none
    # With a minibatch optimizer, uncached models of one architecture (differing in seed, split,
    # decay) are trained together as one vmapped program (adv_jax/ensemble.py), each then cached
    # under its own key. ensemble_seeds: these seeds' models join this run's, so that later jobs
    # with those seeds find them cached.
    train_together: bool = True
    ensemble_seeds: List[int] = field(default_factory=list)
    transfer: TransferAttacksConfig = field(default_factory=TransferAttacksConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)


@dataclass
class DemoConfig:
    """A demonstration (conf/demo/*.yaml, scripts/demo.py); "none" = not a demo run. `params` are
    checked against the demonstration's own dataclass in adv_jax/demos/<name>.py."""

    name: str = "none"
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    lipschitz: LipschitzConfig = field(default_factory=LipschitzConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    job: str = "single"  # conf/job/*.yaml: which adv_jax/jobs/<job>.py runs; an experiment sets its own
    seed: int = 0
    # CPU devices for JAX: "auto" = one per core, or a count. Attack batches and ensemble members
    # are split over them (adv_jax/devices.py). Fixed by JAX's first operation in a process.
    cpu_devices: Any = "auto"
    # Trained models are cached here, keyed by everything that determines them.
    cache_dir: str = "${oc.env:ADV_JAX_CACHE_DIR,'~/.cache/adv_jax'}"
    # Compiled XLA programs are kept here (JAX's persistent compilation cache), so a later process
    # with the same programs (another seed, a resumed sweep, the next run) skips their
    # compilation; null = compile anew in every process.
    compilation_cache: Optional[str] = "${cache_dir}/xla"
    # A metric of the run (e.g. error/validation) that scripts/sweep.py returns to Hydra, for a
    # sweeper that optimizes it (conf/hydra/sweeper/optuna_tpe.yaml); null = return nothing.
    objective: Optional[str] = None


ConfigStore.instance().store(name="base_config", node=Config)
# conf/hydra/launcher/ray.yaml shares its name with hydra-ray-launcher's schema, on purpose: the
# plugin's schema then checks our settings. Hydra 1.3 still does that, with a warning each run.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The config `scripts/sweep.py` would see with these command-line overrides. Inside a running
    Hydra app (a sweep job) it composes through that app's Hydra. An override of a key the schema
    lacks fails with a did-you-mean."""
    from hydra.errors import ConfigCompositionException

    try:
        return _hydra_compose(list(overrides or []), config_name)
    except ConfigCompositionException as e:
        hint = misspelled_key(getattr(e.__cause__, "full_key", None) or "")
        if hint is None:
            raise
        raise ConfigCompositionException(f"{e}\n{hint}") from e.__cause__


def _hydra_compose(overrides: list[str], config_name: str) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name, overrides=overrides)
    # A copy: callers may change what they get, and the cache must not see it.
    return copy.deepcopy(_compose_from_conf_dir(tuple(overrides), config_name))


@functools.lru_cache(maxsize=256)
def _compose_from_conf_dir(overrides: tuple[str, ...], config_name: str) -> DictConfig:
    """Composition from conf/ outside a Hydra app, memoized: it takes a Hydra initialization
    (about 0.2 s), and studies and tests compose the same configs many times. conf/ does not change
    while a process runs; environment interpolations stay unresolved until read."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def _is_typed(node: Any) -> bool:
    """A node whose keys the schema fixes (a dataclass), unlike a free-form dict or list."""
    return isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node))


def misspelled_key(dotted: str) -> str | None:
    """A message naming the closest keys when a dataclass node of the schema lacks `dotted`'s last
    part; None when the key exists, or lies under a free-form node (attack.params) or none at all."""
    node: Any = OmegaConf.structured(Config)
    *parents, leaf = dotted.split(".")
    # `.keys()`, not `in node`: a DictConfig hides its ??? (MISSING) keys from `in`, e.g. model.name.
    for name in parents:
        if not _is_typed(node) or name not in node.keys():
            return None
        node = OmegaConf.select(node, name)
    if not dotted or not _is_typed(node) or leaf in node.keys():
        return None
    keys = [str(k) for k in node.keys()]
    where = ".".join(parents) or "the config"
    close = difflib.get_close_matches(leaf, keys, n=3)
    if close:
        return f"unknown key {dotted!r}: did you mean {' or '.join(map(repr, close))}?"
    return f"unknown key {dotted!r}: {where} has {keys}"


def override_keys(args: Sequence[str]) -> list[str]:
    """The config keys that command-line overrides set, leaving out flags, Hydra's own keys,
    config-group choices (search=..., a conf/ directory) and `+key`/`++key`/`~key` (appends and
    deletions Hydra checks itself)."""
    keys = []
    for arg in args:
        key = arg.split("=", 1)[0]
        if arg.startswith("-") or "=" not in arg or key[:1] in ("+", "~") or "/" in key or "@" in key:
            continue
        if (CONF_DIR / key).is_dir():
            continue
        if key.split(".")[0] != "hydra":
            keys.append(key)
    return keys


def check_command_line(args: Sequence[str]) -> None:
    """Exits with a did-you-mean when an override names a key the schema lacks: Hydra's own error,
    printed before any of our code runs, names the key only."""
    hints = [hint for key in override_keys(args) if (hint := misspelled_key(key))]
    if hints:
        raise SystemExit("Error: " + "\n".join(hints))


def as_config(cfg: Any) -> DictConfig:
    """A typed, validated DictConfig from a Config dataclass, a dict or a DictConfig.

    Merging into a fresh schema also rejects keys appended with Hydra's `+key=value`.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg)  # drops Hydra's flags, which would let `+key` through
    return OmegaConf.merge(OmegaConf.structured(Config), cfg)


def derive(cfg: DictConfig, model: str, split: str, *, model_changes: Any = None, train: str | None = None,
           train_changes: Any = None, seed: int | None = None) -> DictConfig:
    """The run config `sweep.py model=<model> data=<split> [train=<train>]` builds, composed by
    Hydra, with cfg's data source, cache, attack, logging and seed, and the given changes: what a
    study or demonstration trains for one of its models (the same cache entry as that command)."""
    groups = compose([f"model={model}"] + ([f"train={train}"] if train else []))
    out = OmegaConf.to_container(cfg)
    out["model"] = OmegaConf.to_container(OmegaConf.merge(groups.model, model_changes or {}))
    if train is not None:
        out["train"] = OmegaConf.to_container(groups.train)
    out["train"] = OmegaConf.to_container(OmegaConf.merge(out["train"], train_changes or {}))
    out["data"]["split"] = split
    out.update(experiment={"name": "none"}, demo={"name": "none"}, job="single",
               seed=cfg.seed if seed is None else seed)
    return as_config(out)


# Keys that change where and how a run is recorded or computed, never its results: resuming
# ignores them, and so do Hydra's job directory names (conf/config.yaml).
RESULT_NEUTRAL = ("data.source", "data.mnist_dir", "data.mnist_url", "data.download_dir", "data.tfds_dir",
                  "cache_dir", "compilation_cache", "wandb", "cpu_devices",
                  "train.cache", "attack.chunk_size", "objective")


# Keys the schema gained after runs were recorded with it. At their default they are left out of
# the result config, so an older run (read back with the default filled in) keeps its checksum
# and is still recognized when resumed; set to anything else, they count.
LATER_KEYS = ("lipschitz.local_examples", "lipschitz.ascent_steps", "model.arch", "model.stages", "model.blocks", "model.width",
              "model.patch", "model.heads", "model.mlp_width", "model.token_mlp_width", "model._target_",
              "model.kwargs", "model.params_file", "experiment.benchmark", "train.adversarial.pgd_epsilon",
              "train.adversarial.pgd_steps")


def _pop(tree: dict, dotted: str, only_if: Any = dataclasses.MISSING) -> None:
    """Removes tree[a][b] for dotted "a.b" (only where it equals `only_if`, when given)."""
    *parents, leaf = dotted.split(".")
    for name in parents:
        tree = tree.get(name) or {}
    if leaf in tree and (only_if is dataclasses.MISSING or tree[leaf] == only_if):
        del tree[leaf]


def result_config(cfg: Any) -> dict:
    """The resolved config without RESULT_NEUTRAL keys, and LATER_KEYS at their default: two runs
    with equal result_configs compute the same results."""
    out = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for dotted in RESULT_NEUTRAL:
        _pop(out, dotted)
    defaults = OmegaConf.structured(Config)
    for dotted in LATER_KEYS:
        default = OmegaConf.select(defaults, dotted)
        _pop(out, dotted, OmegaConf.to_container(default) if isinstance(default, (ListConfig, DictConfig)) else default)
    return out


# Runs recorded before the `job` group named their job by experiment.job (matrix |
# transfer_attacks), with experiment.name and demo.name telling a study and a demo apart.
_LEGACY_JOBS = {"matrix": "study", "transfer_attacks": "transfer_attacks"}


def upgrade_recorded(raw: dict) -> dict:
    """A recorded config.yaml (a plain dict) in today's schema: `job` from the older
    experiment.job, experiment.name and demo.name."""
    if "job" in raw:
        return raw
    out = copy.deepcopy(raw)
    legacy = (out.get("experiment") or {}).pop("job", "matrix")
    if (out.get("experiment") or {}).get("name", "none") != "none":
        out["job"] = _LEGACY_JOBS.get(legacy, legacy)
    else:
        out["job"] = "demo" if (out.get("demo") or {}).get("name", "none") != "none" else "single"
    return out


def legacy_result_config(cfg: Any) -> dict:
    """result_config as runs recorded before the `job` group wrote it (for their checksums)."""
    out = result_config(cfg)
    job = out.pop("job", "single")
    out.setdefault("experiment", {})["job"] = "transfer_attacks" if job == "transfer_attacks" else "matrix"
    return out


def objective_value(cfg: Any, metrics: dict) -> float | None:
    """The run's `objective` metric (a float for an optimizing Hydra sweeper), or None when the
    config names none."""
    if cfg.objective is None:
        return None
    if cfg.objective not in metrics:
        raise KeyError(f"objective={cfg.objective!r} is not among the run's metrics: {sorted(metrics)}")
    return float(metrics[cfg.objective])


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
