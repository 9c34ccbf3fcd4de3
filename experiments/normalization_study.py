r"""Reproduces "BYOL works even without batch statistics" (Richemond et al. 2020).

Every run pre-trains one variant (a normalisation per network component) with
one recipe and seed, evaluates it before its first step and after its last
(linear probe, 1%- and 10%-label probes, kNN, effective ranks:
`byol.probe.evaluate`), and leaves a small result file in the tracked folder
`results/norm_study/runs/` (metrics at every probe, final numbers, the exact
config, the code version, where it ran; no checkpoints). The table and
figures are rebuilt from those files alone:

    .venv/bin/python -m experiments.normalization_study --plan=pilot
    .venv/bin/python -m experiments.normalization_study --plan=main --epochs=10
    .venv/bin/python -m experiments.normalization_study --table_only
    # a subset, e.g. on a GPU machine for a few minutes:
    .venv/bin/python -m experiments.normalization_study --variants=byol_bn \
        --recipes=paper --seeds=1 --epochs=10
    # ImageNet / ResNet-50 (TPU or GPU pod): validate the configs
    python -m experiments.normalization_study --scale=paper --dry_run

Finished runs (a result file of the same config) are skipped; interrupted ones
resume from their checkpoints in `--workdirs`; each run trains in a process
of its own. `make study` runs the main plan.

Recipes (`RECIPES`): ``paper`` (the primary one: the predictor at the same
learning rate as the rest, the released code's LARS, τ and crop rule, the
paper's GN group count) and ``pred10x`` (the same, predictor learning rate
x10: Tian et al. 2021's trick against collapse without batch statistics).

Small scale: Fashion-MNIST on a CPU; TinyResNet width 2 (channels 16-128,
GN with 16 groups in encoder and heads), heads 512 → 128, batch 256, LARS
base lr 2.0 and wd 1e-6 (DeepMind's small-scale setting), τ_base 0.99, warm-up
10% of the steps, crop area U[0.08, 1] with the reference's clamp rule,
SimCLR temperature 0.1.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import app, flags, logging

SCALES = ("small", "paper")
FASHION_MNIST_TRAIN = 60_000
SMALL_BATCH = 256
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every field a variant may set, at its default: a variant's overrides go on
# top, so no normalisation choice leaks from the base config.
_VARIANT_DEFAULTS: dict[str, Any] = {
    "method": "byol",
    "model.norm": "bn",
    "model.encoder_norm": "",
    "model.projector_norm": "",
    "model.predictor_norm": "",
    "model.encoder_ws": -1,
    "model.mlp_ws": 0,
    "model.bn_init": False,
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the study: what is normalised how, and the paper's number."""

    description: str
    overrides: Mapping[str, Any]
    paper_top1: float | None = None
    paper_setting: str = ""
    epochs: int = 300  # at the paper scale
    scales: tuple[str, ...] = SCALES


def _bn_in(encoder: bool, projector: bool, predictor: bool) -> dict[str, Any]:
    """BN in the listed components, nothing in the others."""
    return {
        "model.norm": "bn",
        "model.encoder_norm": "" if encoder else "none",
        "model.projector_norm": "" if projector else "none",
        "model.predictor_norm": "" if predictor else "none",
    }


_REPORT = "GN+WS report"
VARIANTS: dict[str, Variant] = {
    # Table 1 of the report: BN or nothing in encoder / projector / predictor.
    "byol_bn": Variant(
        "BYOL, BN everywhere (vanilla)",
        _bn_in(True, True, True),
        72.5,
        "BYOL paper, 300 ep. (74.3 at 1000 ep.)",
    ),
    "byol_bn_enc_proj": Variant("BN in encoder and projector", _bn_in(1, 1, 0)),
    "byol_bn_enc_pred": Variant("BN in encoder and predictor", _bn_in(1, 0, 1)),
    "byol_bn_enc": Variant(
        "BN in the encoder only", _bn_in(1, 0, 0), 72.1, f"{_REPORT}, 300 ep."
    ),
    "byol_bn_proj_pred": Variant("BN in projector and predictor", _bn_in(0, 1, 1)),
    "byol_bn_proj": Variant("BN in the projector only", _bn_in(0, 1, 0)),
    "byol_bn_pred": Variant("BN in the predictor only", _bn_in(0, 0, 1)),
    "byol_none": Variant(
        "no normalisation anywhere",
        {"model.norm": "none"},
        0.1,
        f"{_REPORT}, 300 ep.",
    ),
    "byol_bn_init": Variant(
        "no BN: BN-statistics initialisation, then per-channel affine layers",
        {"model.norm": "bn", "model.bn_init": True},
        65.7,
        f"{_REPORT} (epochs not given)",
    ),
    "byol_gn_ws": Variant(
        "GroupNorm everywhere + weight-standardised encoder convs",
        {"model.norm": "gn_ws"},
        73.9,
        f"{_REPORT}, 1000 ep. (300 ep. not given)",
    ),
    "byol_gn": Variant(
        "GroupNorm everywhere, plain convs",
        {"model.norm": "gn_ws", "model.encoder_ws": 0},
    ),
    "byol_ws": Variant(
        "weight-standardised encoder convs, no norm layer",
        {"model.norm": "none", "model.encoder_ws": 1},
    ),
    "byol_gn_ws_ln_heads": Variant(
        "GN + WS encoder, LayerNorm in the heads",
        {
            "model.norm": "gn_ws",
            "model.projector_norm": "ln",
            "model.predictor_norm": "ln",
        },
    ),
    "simclr_bn": Variant(
        "SimCLR, BN in encoder and projector",
        {"method": "simclr", "model.norm": "bn"},
        None,
        f"{_REPORT}, Table 1 (value not in our notes)",
    ),
    "simclr_none": Variant(
        "SimCLR, no normalisation",
        {"method": "simclr", "model.norm": "none"},
        None,
        f"{_REPORT}, Table 1: still learns (value not in our notes)",
    ),
    "byol_bn_1000ep": Variant(
        "BN everywhere, 1000 epochs",
        _bn_in(True, True, True),
        74.3,
        "BYOL paper, 1000 ep.",
        epochs=1000,
        scales=("paper",),
    ),
    "byol_gn_ws_1000ep": Variant(
        "GN + WS, 1000 epochs",
        {"model.norm": "gn_ws"},
        73.9,
        f"{_REPORT}, 1000 ep.",
        epochs=1000,
        scales=("paper",),
    ),
}

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"training.predictor_lr_multiplier": 1.0},
    "pred10x": {"training.predictor_lr_multiplier": 10.0},
}
# The rows the findings rest on (>= 3 seeds), and where the recipe matters.
KEY_VARIANTS = (
    "byol_bn",
    "byol_bn_enc",
    "byol_none",
    "byol_bn_init",
    "byol_gn_ws",
    "simclr_none",
)
PRED10X_VARIANTS = ("byol_none", "byol_gn_ws", "byol_bn")
PILOT = (("byol_bn", "byol_none"), (1, 3, 10))  # variants x epochs, paper, seed 0
# The figure's panels of curves: rows that answer one question side by side.
FIGURE_GROUPS: dict[str, tuple[str, ...]] = {
    "where BN sits (Table 1 of the report)": (
        "byol_bn",
        "byol_bn_enc_proj",
        "byol_bn_enc_pred",
        "byol_bn_enc",
        "byol_bn_proj_pred",
        "byol_bn_proj",
        "byol_bn_pred",
        "byol_bn_1000ep",
    ),
    "without batch statistics": (
        "byol_none",
        "byol_bn_init",
        "byol_gn_ws",
        "byol_gn",
        "byol_ws",
        "byol_gn_ws_ln_heads",
        "byol_gn_ws_1000ep",
    ),
    "SimCLR": ("simclr_bn", "simclr_none"),
}
PILOT_GROUP = "the budget pilot"


def variant_names(scale: str) -> list[str]:
    """The variants of a scale, in table order."""
    return [name for name, v in VARIANTS.items() if scale in v.scales]


def _check_names(names: Sequence[str], allowed: Sequence[str], flag: str, scale=""):
    if not names:
        raise ValueError(
            f"{flag}: empty; expected one or more of: {', '.join(allowed)}"
        )
    for name in names:
        if name in allowed:
            continue
        if flag == "--variants" and name in VARIANTS:
            raise ValueError(
                f"--variants: {name!r} is a variant of the "
                f"{'/'.join(VARIANTS[name].scales)} scale only; --scale={scale} "
                "has: " + ", ".join(allowed)
            )
        raise ValueError(
            f"{flag}: {name!r} unknown; expected one of: " + ", ".join(allowed)
        )


# ------------------------------------------------------------------- configs
def small_config(epochs: int) -> ml_collections.ConfigDict:
    """The small-scale base config: Fashion-MNIST, width-2 TinyResNet, CPU."""
    from configs import fashion_mnist  # noqa: PLC0415

    config = fashion_mnist.get_config("bn")
    config.model.width_multiplier = 2
    config.model.num_groups = 16
    config.data.min_crop_area = 0.08
    config.data.crop_rule = "reference"
    steps = epochs * FASHION_MNIST_TRAIN // SMALL_BATCH
    training = config.training
    training.update(
        batch_size=SMALL_BATCH,
        max_steps=steps,
        warmup_steps=max(1, steps // 10),
        base_learning_rate=2.0,
        weight_decay=1e-6,
        base_target_ema=0.99,
        temperature=0.1,
        log_every_steps=50,
        checkpoint_every_steps=max(50, steps // 10),
    )
    evaluation = config.evaluation
    evaluation.probe_every_steps = max(1, steps // 5)
    evaluation.probe_max_train_examples = 50_000
    evaluation.evaluate_at_start = True
    evaluation.final_evaluation = True
    return config


def paper_config(epochs: int) -> ml_collections.ConfigDict:
    """The paper-scale base config: ImageNet, ResNet-50, the epochs' preset."""
    from configs import byol as byol_configs  # noqa: PLC0415

    config = byol_configs.get_config(f"epochs={epochs},norm=bn")
    config.evaluation.evaluate_at_start = True
    return config


def variant_config(
    base: ml_collections.ConfigDict, name: str, seed: int, recipe: str = "paper"
) -> ml_collections.ConfigDict:
    """A copy of `base` with variant `name`'s fields, the recipe's, and `seed`."""
    config = base.copy_and_resolve_references()
    overrides = {**_VARIANT_DEFAULTS, **VARIANTS[name].overrides, **RECIPES[recipe]}
    for dotted, value in overrides.items():
        section, _, field = dotted.rpartition(".")
        (config[section] if section else config)[field] = value
    config.seed = seed
    return config


@dataclasses.dataclass(frozen=True)
class Run:
    """One pre-training run of the study."""

    variant: str
    recipe: str
    seed: int
    epochs: int
    config: ml_collections.ConfigDict

    @property
    def name(self) -> str:
        """Its result file and work directory are named so."""
        return f"{self.variant}-{self.recipe}-e{self.epochs}-s{self.seed}"


def study_runs(
    scale: str,
    names: Sequence[str],
    seeds: Sequence[int],
    recipes: Sequence[str] = ("paper",),
    epochs: int | None = None,
    data_dir: str | None = None,
) -> list[Run]:
    """Every variant x recipe x seed of a scale, configs built.

    `epochs` is the budget (small scale: Fashion-MNIST epochs; paper scale:
    default the variant's own).
    """
    if scale not in SCALES:
        raise ValueError(f"--scale {scale!r} unknown; expected one of: small, paper")
    _check_names(names, variant_names(scale), "--variants", scale)
    _check_names(recipes, list(RECIPES), "--recipes")
    runs = []
    for name in names:
        budget = epochs or (VARIANTS[name].epochs if scale == "paper" else 10)
        base = small_config(budget) if scale == "small" else paper_config(budget)
        if data_dir:
            base.data.data_dir = data_dir
        for recipe in recipes:
            runs += [
                Run(name, recipe, s, budget, variant_config(base, name, s, recipe))
                for s in seeds
            ]
    return runs


def planned_runs(plan: str, epochs: int, data_dir: str | None = None) -> list[Run]:
    """The small-scale plan: the pilot, or the main study at `epochs`.

    Main: the key rows (paper recipe) and the pred10x rows with seeds 0-2,
    seed by seed, then every other variant with seed 0.
    """
    if plan == "pilot":
        variants, budgets = PILOT
        return [
            run
            for budget in budgets
            for run in study_runs(
                "small", variants, [0], epochs=budget, data_dir=data_dir
            )
        ]
    others = [v for v in variant_names("small") if v not in KEY_VARIANTS]
    seeded = study_runs(
        "small", KEY_VARIANTS, [0, 1, 2], ["paper"], epochs, data_dir
    ) + study_runs("small", PRED10X_VARIANTS, [0, 1, 2], ["pred10x"], epochs, data_dir)
    # Seed by seed, so that a study cut short has every key row once.
    return sorted(seeded, key=lambda run: run.seed) + study_runs(
        "small", others, [0], ["paper"], epochs, data_dir
    )


def component_norms(config: ml_collections.ConfigDict) -> tuple[str, str, str]:
    """How encoder, projector and predictor are normalised, for the table."""
    from byol import model  # noqa: PLC0415  (no TensorFlow)

    if config.model.bn_init:
        return ("BN-stat. init",) * 3
    names = {"bn": "BN", "gn": "GN", "ln": "LN", "none": "none", "affine": "affine"}

    def label(norm) -> str:
        if norm.ws:
            return "WS" if norm.kind == "none" else f"{names[norm.kind]}+WS"
        return names[norm.kind]

    norms = model.network_norms(config.model)
    predictor = "—" if config.method == "simclr" else label(norms.predictor)
    return label(norms.encoder), label(norms.projector), predictor


def describe(run: Run) -> str:
    """One line: the run's name and what differs between runs."""
    c, t = run.config, run.config.training
    encoder, projector, predictor = component_norms(c)
    return " | ".join(
        [
            f"{run.name:<34}",
            f"enc {encoder:<13} proj {projector:<13} pred {predictor:<6}",
            f"{c.model.encoder} x{c.model.width_multiplier} {c.data.dataset}",
            f"{t.max_steps} steps x {t.batch_size}",
            f"lr {t.base_learning_rate} wd {t.weight_decay} pred x"
            f"{t.predictor_lr_multiplier:g}",
            f"tau {t.base_target_ema}" if c.method == "byol" else f"T {t.temperature}",
        ]
    )


# ---------------------------------------------------------------------- runs
def _config_json(config: ml_collections.ConfigDict) -> dict:
    return json.loads(json.dumps(config.to_dict()))


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".partial", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".partial", path)


def code_version() -> dict[str, str]:
    """The git commit (if any) and a hash of the code the runs execute."""
    digest = hashlib.sha256()
    files = sorted(
        glob.glob(os.path.join(REPO, "byol", "**", "*.py"), recursive=True)
        + glob.glob(os.path.join(REPO, "configs", "*.py"))
        + [os.path.abspath(__file__)]
    )
    for path in files:
        digest.update(os.path.relpath(path, REPO).encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    try:
        commit = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                REPO,
                "status",
                "--porcelain",
                "byol",
                "configs",
                "experiments",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += "+changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"commit": commit, "code_sha256": digest.hexdigest()[:16]}


def _cpu_model() -> str:
    """The host CPU's model name (Linux), else what the platform says of it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pretrain_child(config_dict: dict, workdir: str, replies) -> None:
    """In a fresh process: one `byol.train.pretrain`; its outcome to `replies`."""
    from byol import runtime  # noqa: PLC0415

    runtime.quiet_logs()
    from byol import train  # noqa: PLC0415  (imports TensorFlow)

    try:
        results = train.pretrain(ml_collections.ConfigDict(config_dict), workdir)
        import jax  # noqa: PLC0415

        device = jax.devices()[0]
        results["where"] = dict(
            platform=device.platform,
            device_kind=device.device_kind,
            devices=jax.device_count(),
            host=platform.node(),
            cpus=os.cpu_count(),
            # Another CPU model picks other kernels: the same run differs in
            # the float noise, which training then amplifies (docs/study.md).
            cpu=_cpu_model(),
        )
        replies.put(("done", results))
    except FloatingPointError as failure:  # diverged: a result of the study
        replies.put(("diverged", str(failure)))
    except BaseException as error:  # noqa: BLE001  (reported by the parent)
        replies.put(("error", f"{type(error).__name__}: {error}"))


def pretrain_isolated(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """`byol.train.pretrain` in a child process, so runs share nothing.

    One process for 30 runs failed at the 30th: every run's compiled programs
    stayed mapped until LLVM ran out of memory maps. A child also keeps a
    crash to its run (named; a rerun resumes it).

    Raises:
        FloatingPointError: the run diverged.
        RuntimeError: it failed otherwise, or its process died.
    """
    import multiprocessing  # noqa: PLC0415
    import queue  # noqa: PLC0415

    context = multiprocessing.get_context("spawn")  # no inherited JAX state
    replies = context.Queue()
    child = context.Process(
        target=_pretrain_child, args=(config.to_dict(), workdir, replies)
    )
    child.start()
    try:
        while True:
            try:
                status, value = replies.get(timeout=5)
                break
            except queue.Empty:
                if not child.is_alive():
                    raise RuntimeError(
                        f"the run in {workdir} died (exit code {child.exitcode}); "
                        "run the study again to resume it"
                    ) from None
    finally:
        child.join()
    if status == "diverged":
        raise FloatingPointError(value)
    if status == "error":
        raise RuntimeError(f"the run in {workdir} failed: {value}")
    return value


def _history(workdir: str) -> list[dict]:
    """The logged rows the table and figures use (probes, collapse, loss)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    keep = {"step", "repr_loss", "collapse", "top1"}
    rows = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "probe_top1" in row:
                rows.append(row)
            elif "collapse" in row:
                rows.append({k: v for k, v in row.items() if k in keep})
    return rows


def _record(run: Run, results: dict | None, error: str | None, seconds, cpu_seconds):
    encoder, projector, predictor = component_norms(run.config)
    results = results or {}
    return {
        "name": run.name,
        "variant": run.variant,
        "recipe": run.recipe,
        "seed": run.seed,
        "epochs": run.epochs,
        "method": run.config.method,
        "norms": [encoder, projector, predictor],
        "status": "failed" if error else "done",
        "error": error,
        "start": results.get("start_evaluation"),
        "final": results.get("evaluation"),
        "final_scalars": results.get("final_scalars", {}),
        "steps": run.config.training.max_steps,
        "minutes": seconds / 60,
        "cpu_minutes": cpu_seconds / 60,
        "images_per_second": results.get("images_per_second"),
        "where": results.get("where"),
        "code": code_version(),
        "config": _config_json(run.config),
    }


def execute(run: Run, results_dir: str, workdirs: str) -> dict:
    """Trains and evaluates one run (in a child process), or reads its record.

    Raises:
        ValueError: its work directory holds a run of another config.
        RuntimeError: the run failed other than by diverging.
    """
    path = os.path.join(results_dir, "runs", f"{run.name}.json")
    if os.path.exists(path):
        record = _read_json(path)
        if record.get("config") == _config_json(run.config):
            print(f"[{run.name}] finished earlier: {path}", flush=True)
            return record
    workdir = os.path.join(workdirs, run.name)
    saved = os.path.join(workdir, "config.json")
    if os.path.exists(saved) and _read_json(saved) != _config_json(run.config):
        raise ValueError(
            f"{workdir} holds a run of another config; use another --workdirs "
            "or delete that directory"
        )
    print(f"\n== {describe(run)} ==", flush=True)
    started, cpu = time.perf_counter(), _children_cpu_seconds()
    results, error = None, None
    try:
        results = pretrain_isolated(run.config, workdir)
    except FloatingPointError as failure:
        error = str(failure)
        print(f"[{run.name}] diverged: {error}", flush=True)
    record = _record(
        run,
        results,
        error,
        time.perf_counter() - started,
        _children_cpu_seconds() - cpu,
    )
    record["history"] = _history(workdir)
    _write_json(path, record)
    return record


def _children_cpu_seconds() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def raw_pixels(results_dir: str, data: dict) -> dict:
    """The suite on raw pixels (the bar every encoder should clear), cached.

    `data` is the runs' config ``data`` section (which dataset, where).
    """
    path = os.path.join(results_dir, "raw_pixels.json")
    if os.path.exists(path):
        return _read_json(path)
    import numpy as np  # noqa: PLC0415

    from byol import probe, run_dir  # noqa: PLC0415

    config = small_config(1)
    config.data.update(data)
    info = run_dir.dataset_info(config)

    def pixels(x):
        return np.asarray(x, np.float32).reshape(len(x), -1) / 255.0

    feats = probe.probe_features(
        config, pixels, config.evaluation.probe_max_train_examples
    )
    record = {
        "final": probe.evaluate(feats, info.num_classes, 0),
        "code": code_version(),
    }
    _write_json(path, record)
    return record


# -------------------------------------------------------------------- report
def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(
        values
    ) > 1 else None


def _pct(value, std=None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _number(value, digits=2) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _values(records, part: str, *keys) -> list[float]:
    out = []
    for r in records:
        value = r.get(part)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            out.append(float(value))
    return out


@dataclasses.dataclass
class Row:
    """One variant x recipe x budget, summarised over its seeds."""

    variant: str
    recipe: str
    epochs: int
    norms: list[str]
    records: list[dict]

    def stat(self, part: str, *keys) -> tuple[float | None, float | None]:
        """Mean and sample std over the finished seeds of one figure."""
        done = [r for r in self.records if r["status"] == "done"]
        return _mean_std(_values(done, part, *keys))

    @property
    def seeds(self) -> list[int]:
        """The seeds run."""
        return sorted(r["seed"] for r in self.records)

    @property
    def failed(self) -> int:
        """Seeds that diverged."""
        return sum(r["status"] != "done" for r in self.records)

    def gains(self) -> list[float]:
        """Linear-probe gain over the run's own start, per seed."""
        return [
            r["final"]["linear"]["top1"] - r["start"]["linear"]["top1"]
            for r in self.records
            if r["status"] == "done" and r.get("start") and r.get("final")
        ]


def summarise(records: Sequence[dict]) -> list[Row]:
    """Groups records by (variant, recipe, epochs), in the order they appear."""
    rows: dict[tuple, Row] = {}
    for r in records:
        key = (r["variant"], r["recipe"], r["epochs"])
        rows.setdefault(key, Row(*key, r["norms"], [])).records.append(r)
    return list(rows.values())


TABLE_COLUMNS = (
    "variant",
    "recipe",
    "epochs",
    "encoder",
    "projector",
    "predictor",
    "seeds",
    "start linear",
    "linear",
    "gain",
    "kNN",
    "1% labels",
    "10% labels",
    "collapse",
    "rank emb.",
    "rank proj.",
    "min/run",
    "paper (ImageNet)",
)


def row_cells(row: Row) -> list[str]:
    """One table row's cells (percentages; mean ± std over seeds)."""
    variant = VARIANTS[row.variant]
    gain = _mean_std(row.gains())
    linear = _pct(*row.stat("final", "linear", "top1"))
    if row.failed:
        linear += f" ({row.failed} diverged)"
    return [
        row.variant,
        row.recipe,
        str(row.epochs),
        *row.norms,
        ",".join(map(str, row.seeds)),
        _pct(*row.stat("start", "linear", "top1")),
        linear,
        "—" if gain[0] is None else f"{100 * gain[0]:+.1f}",
        _pct(*row.stat("final", "knn", "best_top1")),
        _pct(*row.stat("final", "few_label", "1%", "top1_mean")),
        _pct(*row.stat("final", "few_label", "10%", "top1_mean")),
        _number(row.stat("final_scalars", "collapse")[0]),
        _number(row.stat("final", "rank", "embedding")[0], 1),
        _number(row.stat("final", "rank", "projection")[0], 1),
        _number(statistics.fmean(r["minutes"] for r in row.records), 1),
        "—"
        if variant.paper_top1 is None
        else f"{variant.paper_top1:.1f} ({variant.paper_setting})",
    ]


def pixel_cells(pixels: dict | None) -> list[str] | None:
    """The raw-pixels row (no training, no encoder)."""
    if not pixels:
        return None
    final = pixels["final"]
    few = final["few_label"]
    return (
        ["raw pixels", "—", "—", "—", "—", "—", "—", "—"]
        + [_pct(final["linear"]["top1"]), "—", _pct(final["knn"]["best_top1"])]
        + [_pct(few["1%"]["top1_mean"]), _pct(few["10%"]["top1_mean"])]
        + ["—", _number(final["rank"]["embedding"], 1), "—", "—", "—"]
    )


def format_markdown(rows: Sequence[Row], pixels: dict | None = None, header="") -> str:
    """The Markdown table (with `header` above it)."""
    lines = [header, ""] if header else []
    lines += [
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    extra = pixel_cells(pixels)
    if extra:
        lines.append("| " + " | ".join(extra) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: str) -> None:
    """The table as CSV with full precision (fractions, not %)."""
    fields = (
        "variant recipe epochs encoder projector predictor seeds runs_failed "
        "start_linear_mean linear_mean linear_std gain_mean knn_mean "
        "label1_mean label1_std label10_mean label10_std collapse_mean "
        "rank_embedding_mean rank_projection_mean minutes_mean paper_top1"
    ).split()

    def cell(value):
        return "" if value is None else round(value, 5)

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            linear = r.stat("final", "linear", "top1")
            one = r.stat("final", "few_label", "1%", "top1_mean")
            ten = r.stat("final", "few_label", "10%", "top1_mean")
            writer.writerow(
                dict(
                    zip(
                        fields[:6],
                        [r.variant, r.recipe, r.epochs, *r.norms],
                        strict=True,
                    ),
                    seeds=" ".join(map(str, r.seeds)),
                    runs_failed=r.failed,
                    start_linear_mean=cell(r.stat("start", "linear", "top1")[0]),
                    linear_mean=cell(linear[0]),
                    linear_std=cell(linear[1]),
                    gain_mean=cell(_mean_std(r.gains())[0]),
                    knn_mean=cell(r.stat("final", "knn", "best_top1")[0]),
                    label1_mean=cell(one[0]),
                    label1_std=cell(one[1]),
                    label10_mean=cell(ten[0]),
                    label10_std=cell(ten[1]),
                    collapse_mean=cell(r.stat("final_scalars", "collapse")[0]),
                    rank_embedding_mean=cell(r.stat("final", "rank", "embedding")[0]),
                    rank_projection_mean=cell(r.stat("final", "rank", "projection")[0]),
                    minutes_mean=cell(
                        statistics.fmean(x["minutes"] for x in r.records)
                    ),
                    paper_top1=cell(VARIANTS[r.variant].paper_top1),
                )
            )


def figure_groups(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """The rows of each panel of curves, in `FIGURE_GROUPS` order.

    Rows off the main budget (the one most runs have) are the pilot's and get
    a panel of their own, so a 1-epoch curve is not read beside 10-epoch ones.
    """
    runs = collections.Counter(r.epochs for r in rows for _ in r.records)
    main = runs.most_common(1)[0][0] if runs else None
    group_of = {v: g for g, names in FIGURE_GROUPS.items() for v in names}
    groups: dict[str, list[Row]] = {g: [] for g in (*FIGURE_GROUPS, PILOT_GROUP)}
    for row in rows:
        groups[group_of[row.variant] if row.epochs == main else PILOT_GROUP].append(row)
    variants, recipes = list(VARIANTS), list(RECIPES)
    for members in groups.values():  # a variant's recipes side by side
        members.sort(key=lambda r: (variants.index(r.variant), recipes.index(r.recipe)))
    return {g: members for g, members in groups.items() if members}


def plot_study(rows: Sequence[Row], path: str, title: str, pixels=None) -> None:
    """Final linear probe per row (seeds, and each row's start); curves by step.

    One pair of curve panels (collapse indicator, effective rank) per figure
    group; in a panel a variant keeps one colour, solid for the paper's
    recipe and dashed for pred x10, so the two recipes of a variant read as a
    pair. The curves are each row's mean over seeds, and each seed faintly.
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    groups = figure_groups(rows)
    ordered = [row for members in groups.values() for row in members]
    fig = plt.figure(figsize=(19, max(4.5, 3.6 * len(groups))))
    grid = fig.add_gridspec(len(groups), 3, width_ratios=(1.2, 1, 1))
    bars = fig.add_subplot(grid[:, 0])
    colours = plt.get_cmap("tab10")
    several_budgets = len({r.epochs for r in rows}) > 1

    def name(row: Row) -> str:
        budget = f", {row.epochs} ep." if several_budgets else ""
        return f"{row.variant} ({row.recipe}{budget})"

    colour = {}
    for members in groups.values():
        keys = list(dict.fromkeys((r.variant, r.epochs) for r in members))
        for row in members:
            colour[id(row)] = colours(keys.index((row.variant, row.epochs)) % 10)
    # A blank slot above each group holds its name.
    slots, ys, y = {}, [], 0
    for group, members in groups.items():
        slots[group] = y
        ys += range(y + 1, y + 1 + len(members))
        y += 1 + len(members)
    for y, row in zip(ys, ordered, strict=True):
        final = _values(row.records, "final", "linear", "top1")
        start = _values(row.records, "start", "linear", "top1")
        if final:
            bars.barh(
                y,
                100 * statistics.fmean(final),
                color=colour[id(row)],
                alpha=0.6,
                hatch="" if row.recipe == "paper" else "//",
            )
            bars.scatter([100 * v for v in final], [y] * len(final), color="k", s=10)
        if start:
            bars.scatter(
                [100 * v for v in start], [y] * len(start), marker="|", color="k", s=60
            )
    for g, (group, members) in enumerate(groups.items()):
        if g:
            bars.axhline(slots[group] - 0.5, color="k", lw=0.6)
        bars.annotate(group, (1, slots[group] + 0.2), fontsize=8, style="italic")
        collapse, rank = fig.add_subplot(grid[g, 1]), fig.add_subplot(grid[g, 2])
        for row in members:
            _plot_curves(collapse, rank, row, name(row), colour[id(row)])
        collapse.set(ylabel="collapse indicator\n(1 spread, 0 collapsed)")
        rank.set(ylabel="effective rank of\nthe projection (RankMe)")
        collapse.set_title(group, fontsize=10, loc="left")
        for axis in (collapse, rank):
            axis.set_ylim(bottom=0)
            axis.grid(alpha=0.3)
            axis.set_xlabel("step" if g == len(groups) - 1 else "")
        if collapse.lines:
            rank.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if pixels:
        bars.axvline(100 * pixels["final"]["linear"]["top1"], color="grey", ls="--")
        bars.annotate(
            "raw pixels",
            (100 * pixels["final"]["linear"]["top1"] + 0.5, 0.2),
            fontsize=8,
            color="grey",
        )
    bars.set_yticks(ys, [name(r) for r in ordered], fontsize=8)
    bars.set_ylim(ys[-1] + 0.6, -0.6)
    bars.set_xlabel("linear probe top-1 on test (%): bar mean, dots seeds, | start")
    bars.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_curves(collapse, rank, row: Row, label: str, colour) -> None:
    """The row's mean over seeds of both curves, and each seed faintly."""
    for axis, key in ((collapse, "collapse"), (rank, "rank_projection")):
        curves = [
            [(h["step"], h[key]) for h in r.get("history", []) if key in h]
            for r in row.records
        ]
        curves = [c for c in curves if c]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(dict(c)) for c in curves)))
        means = [statistics.fmean(dict(c)[s] for c in curves) for s in steps]
        style = dict(color=colour, ls="-" if row.recipe == "paper" else "--")
        axis.plot(steps, means, label=label, **style)
        # A mean can hide a seed that collapsed: each seed, faint.
        for curve in curves if len(curves) > 1 else ():
            axis.plot(*zip(*curve, strict=True), lw=0.9, alpha=0.55, **style)


def write_report(records: Sequence[dict], results_dir: str) -> dict:
    """Writes table.md, table.csv and study.png from the records; their paths.

    The raw-pixels row comes from `raw_pixels.json` when the study wrote it.
    """
    pixels_path = os.path.join(results_dir, "raw_pixels.json")
    pixels = _read_json(pixels_path) if os.path.exists(pixels_path) else None
    rows = summarise(records)
    first = records[0]["config"]
    header = (
        f"{first['data']['dataset']}, {first['model']['encoder']} "
        f"x{first['model']['width_multiplier']}, batch "
        f"{first['training']['batch_size']}; top-1 on the test split (%, mean ± "
        "std over seeds); start: the same network untrained; kNN: the k chosen on "
        "val; collapse: the final indicator (1 spread, 0 collapsed); ranks: RankMe "
        "of the test embeddings and projections; paper: ImageNet linear top-1 of "
        "ResNet-50."
    )
    paths = {
        "markdown": os.path.join(results_dir, "table.md"),
        "csv": os.path.join(results_dir, "table.csv"),
        "figure": os.path.join(results_dir, "study.png"),
    }
    with open(paths["markdown"], "w") as f:
        f.write(format_markdown(rows, pixels, header))
    write_csv(rows, paths["csv"])
    plot_study(rows, paths["figure"], "BYOL / SimCLR normalisation study", pixels)
    return paths


def read_records(results_dir: str) -> list[dict]:
    """Every result file of the folder, in the study's table order."""
    records = [
        _read_json(p) for p in glob.glob(os.path.join(results_dir, "runs", "*.json"))
    ]
    order = {name: i for i, name in enumerate(VARIANTS)}
    recipes = {name: i for i, name in enumerate(RECIPES)}
    return sorted(
        records,
        key=lambda r: (
            r["epochs"],
            recipes[r["recipe"]],
            order[r["variant"]],
            r["seed"],
        ),
    )


# ----------------------------------------------------------------------- CLI
def _define_flags() -> dict[str, flags.FlagHolder]:
    # Defined when run as a program only (tests import this module).
    return dict(
        scale=flags.DEFINE_string("scale", "small", "small | paper."),
        plan=flags.DEFINE_string(
            "plan", None, "pilot | main: the small-scale plan (else the flags below)."
        ),
        variants=flags.DEFINE_list("variants", None, "Variants (default: all)."),
        recipes=flags.DEFINE_list("recipes", ["paper"], "Recipes: paper, pred10x."),
        seeds=flags.DEFINE_list("seeds", ["0"], "Seeds of every variant."),
        epochs=flags.DEFINE_integer("epochs", 10, "Budget in epochs (small scale)."),
        results=flags.DEFINE_string(
            "results", "results/norm_study", "Result files, table, figures."
        ),
        workdirs=flags.DEFINE_string(
            "workdirs", "workdirs/norm_study", "The runs' work directories."
        ),
        data_dir=flags.DEFINE_string("data_dir", None, "Dataset directory."),
        dry_run=flags.DEFINE_bool("dry_run", False, "Validate configs; train nothing."),
        table_only=flags.DEFINE_bool(
            "table_only", False, "Rebuild the table and figures from the result files."
        ),
    )


def _seeds(values: Sequence[str]) -> list[int]:
    try:
        seeds = [int(v) for v in values]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(
            f"--seeds {','.join(values)!r} invalid; expected integers >= 0, e.g. 0,1"
        )
    return seeds


def _runs(h: dict[str, flags.FlagHolder]) -> list[Run]:
    if h["epochs"].value < 1:
        raise ValueError(f"--epochs must be an integer >= 1, got {h['epochs'].value}")
    if h["plan"].value:
        _check_names([h["plan"].value], ["pilot", "main"], "--plan")
        return planned_runs(h["plan"].value, h["epochs"].value, h["data_dir"].value)
    scale = h["scale"].value
    return study_runs(
        scale,
        h["variants"].value or variant_names(scale if scale in SCALES else "small"),
        _seeds(h["seeds"].value),
        h["recipes"].value,
        h["epochs"].value if scale == "small" else None,
        h["data_dir"].value,
    )


def main(argv, holders: dict[str, flags.FlagHolder]) -> None:
    """Runs the study the flags describe (or validates it, or only reports)."""
    del argv
    logging.set_verbosity(logging.WARNING)
    from byol import runtime  # noqa: PLC0415
    from byol.runtime import set_cpu_flags  # noqa: PLC0415

    set_cpu_flags(2)
    runtime.quiet_logs()
    from byol import config_checks  # noqa: PLC0415  (after the XLA flags)

    results_dir = holders["results"].value
    try:
        if holders["table_only"].value:
            records = read_records(results_dir)
            if not records:
                raise FileNotFoundError(f"no result files in {results_dir}/runs")
        else:
            runs = _runs(holders)
            for run in runs:
                try:
                    config_checks.check_pretrain_config(run.config)
                except ValueError as error:
                    raise ValueError(f"run {run.name}: {error}") from None
            if holders["dry_run"].value:
                print("\n".join(describe(run) for run in runs))
                print(f"{len(runs)} configs valid; nothing trained (--dry_run)")
                return
            for i, run in enumerate(runs):
                print(f"[{i + 1}/{len(runs)}]", end=" ")
                execute(run, results_dir, holders["workdirs"].value)
            records = read_records(results_dir)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as error:  # a run crashed; the finished ones are kept
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    small = [r for r in records if r["config"]["data"]["dataset"] == "fashion_mnist"]
    if small and not holders["table_only"].value:
        raw_pixels(results_dir, small[0]["config"]["data"])
    paths = write_report(records, results_dir)
    with open(paths["markdown"]) as f:
        print("\n" + f.read())
    print(f"Table: {paths['markdown']}, {paths['csv']}; figure: {paths['figure']}")


if __name__ == "__main__":
    _holders = _define_flags()
    app.run(lambda argv: main(argv, _holders))
