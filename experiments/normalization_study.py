r"""Reproduces "BYOL works even without batch statistics" (Richemond et al. 2020).

One command trains and evaluates every variant under the same budget and
seeds, then writes a table beside the paper's numbers and a figure:

    .venv/bin/python -m experiments.normalization_study \
        --scale=small --out=results/norm_study [--variants=byol_bn,byol_gn_ws] \
        [--seeds=0,1] [--max_steps=N]

    # ImageNet / ResNet-50 (TPU or GPU pod; ImageNet prepared under --data_dir):
    python -m experiments.normalization_study --scale=paper --dry_run
    python -m experiments.normalization_study --scale=paper --out=results/paper

The variants (`VARIANTS`, one entry each: name → config overrides):

* BYOL with BN or no normalisation in each of encoder, projector and
  predictor: all 8 combinations of the report's Table 1 (`byol_bn` is
  vanilla BYOL, `byol_none` has no normalisation at all);
* `byol_bn_init`: no BN, from the BN-statistics initialisation (65.7%);
* `byol_gn_ws` (GN + WS, 73.9% at 1000 epochs) and its parts: `byol_gn`
  (GN, plain convs), `byol_ws` (WS convs, no normalisation),
  `byol_gn_ws_ln_heads` (GN + WS encoder, LayerNorm in the heads);
* `simclr_bn`, `simclr_none`: SimCLR (`byol/simclr_experiment.py`) with BN
  everywhere and with no normalisation;
* paper scale only: `byol_bn_1000ep`, `byol_gn_ws_1000ep`, the 1000-epoch
  runs behind 74.3% and 73.9%.

Every variant × seed is one `byol.train.pretrain` run in its own work
directory `<out>/runs/<variant>_seed<k>/` (checkpoints, `metrics.jsonl`,
`results.json` with the final linear probe on the test split). The study
writes `<out>/runs/<variant>_seed<k>.json` per run, `<out>/table.md` and
`<out>/table.csv` (probe top-1 mean ± standard deviation over seeds, beside
the paper's ImageNet number for the row, "—" where the paper gives none) and
`<out>/study.png` (probe top-1 per variant with each seed; the collapse
indicator over training per variant). Re-running skips every run whose JSON
holds the same config, resumes interrupted ones from their checkpoints, and
refuses a run directory left by another config (say, another --max_steps).

Scales:

* `small`: Fashion-MNIST on the CPU: `TinyResNet` width 1 (channels 8-64,
  64-d embedding, GN with 8 groups), heads 512 → 128, batch 256, 200 steps
  (warm-up 20, ~0.85 epoch), the demo's optimiser (LARS, base lr 2.0, wd
  1e-5, τ_base 0.996, predictor lr ×10, min crop area 0.3), SimCLR's
  temperature 0.1; no intermediate probe; one probe at the end (L-BFGS on
  20,000 train features, L2 chosen on 10,000 held out, reported on the
  10,000 test images). Why: the 15 small-scale variants × 2 seeds must fit
  in ~90 minutes on a 2-core CPU, i.e. ~3 minutes per run; width 1 trains
  at about twice the speed of the demo's width 2, and ~15 s of compilation
  plus ~20 s of probe are paid per run. One run measured: see the README.
* `paper`: ImageNet, ResNet-50 1x, batch 4096, 300 epochs (1000 for the
  `_1000ep` variants) with the released code's presets (configs/byol.py);
  SimCLR uses the same LARS schedule (base lr 0.3 × batch / 256 at 300
  epochs, which is SimCLR's own) and temperature 0.1. `--dry_run` builds and
  validates every config and prints one line each; nothing is trained.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
from absl import app, flags, logging

SCALES = ("small", "paper")
SMALL_STEPS = 200
SMALL_WARMUP_STEPS = 20

# Every field a variant may set, at its default: a variant's overrides are
# applied on top, so no normalisation choice leaks from the base config.
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
    """One row of the study.

    Attributes:
        description: what is trained, in words.
        overrides: dotted config field → value (on top of `_VARIANT_DEFAULTS`).
        paper_top1: the paper's ImageNet linear top-1 (%) for this row, or None.
        paper_setting: where that number comes from (source, epochs).
        epochs: pre-training epochs at the paper scale.
        scales: the scales the variant belongs to.
    """

    description: str
    overrides: Mapping[str, Any]
    paper_top1: float | None = None
    paper_setting: str = ""
    epochs: int = 300
    scales: tuple[str, ...] = SCALES


def _bn_in(encoder: bool, projector: bool, predictor: bool) -> dict[str, Any]:
    """Overrides for BN in the listed components and nothing in the others."""
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
        "BYOL, BN in encoder, projector and predictor (vanilla)",
        _bn_in(True, True, True),
        72.5,
        "BYOL paper, 300 ep. (74.3 at 1000 ep.)",
    ),
    "byol_bn_enc_proj": Variant(
        "BYOL, BN in encoder and projector", _bn_in(True, True, False)
    ),
    "byol_bn_enc_pred": Variant(
        "BYOL, BN in encoder and predictor", _bn_in(True, False, True)
    ),
    "byol_bn_enc": Variant(
        "BYOL, BN in the encoder only",
        _bn_in(True, False, False),
        72.1,
        f"{_REPORT}, 300 ep.",
    ),
    "byol_bn_proj_pred": Variant(
        "BYOL, BN in projector and predictor only", _bn_in(False, True, True)
    ),
    "byol_bn_proj": Variant(
        "BYOL, BN in the projector only", _bn_in(False, True, False)
    ),
    "byol_bn_pred": Variant(
        "BYOL, BN in the predictor only", _bn_in(False, False, True)
    ),
    "byol_none": Variant(
        "BYOL, no normalisation anywhere",
        {"model.norm": "none"},
        0.1,
        f"{_REPORT}, 300 ep.",
    ),
    # Without BN, from the BN-statistics initialisation.
    "byol_bn_init": Variant(
        "BYOL, no BN: BN-statistics initialisation, then per-channel affine layers",
        {"model.norm": "bn", "model.bn_init": True},
        65.7,
        f"{_REPORT} (epochs not given)",
    ),
    # GN + WS and its parts.
    "byol_gn_ws": Variant(
        "BYOL, GroupNorm everywhere + weight-standardised encoder convs",
        {"model.norm": "gn_ws"},
        73.9,
        f"{_REPORT}, 1000 ep. (300 ep. not given)",
    ),
    "byol_gn": Variant(
        "BYOL, GroupNorm everywhere, plain convs (no WS)",
        {"model.norm": "gn_ws", "model.encoder_ws": 0},
    ),
    "byol_ws": Variant(
        "BYOL, weight-standardised encoder convs, no normalisation layer",
        {"model.norm": "none", "model.encoder_ws": 1},
    ),
    "byol_gn_ws_ln_heads": Variant(
        "BYOL, GN + WS encoder, LayerNorm in projector and predictor",
        {
            "model.norm": "gn_ws",
            "model.projector_norm": "ln",
            "model.predictor_norm": "ln",
        },
    ),
    # The contrastive baseline.
    "simclr_bn": Variant(
        "SimCLR, BN in encoder and projector",
        {"method": "simclr", "model.norm": "bn"},
        None,
        f"{_REPORT}, Table 1 (value not in our notes)",
    ),
    "simclr_none": Variant(
        "SimCLR, no normalisation anywhere",
        {"method": "simclr", "model.norm": "none"},
        None,
        f"{_REPORT}, Table 1: still learns (value not in our notes)",
    ),
    # The 1000-epoch results (ImageNet only: no small-scale counterpart).
    "byol_bn_1000ep": Variant(
        "BYOL, BN everywhere, 1000 epochs",
        _bn_in(True, True, True),
        74.3,
        "BYOL paper, 1000 ep.",
        epochs=1000,
        scales=("paper",),
    ),
    "byol_gn_ws_1000ep": Variant(
        "BYOL, GN + WS, 1000 epochs",
        {"model.norm": "gn_ws"},
        73.9,
        f"{_REPORT}, 1000 ep.",
        epochs=1000,
        scales=("paper",),
    ),
}


def variant_names(scale: str) -> list[str]:
    """The variants of a scale, in table order."""
    return [name for name, v in VARIANTS.items() if scale in v.scales]


def check_variants(names: Sequence[str], scale: str) -> None:
    """Raises ValueError (one line, naming the flag) on a name not in `scale`."""
    allowed = variant_names(scale)
    for name in names:
        if name in allowed:
            continue
        if name in VARIANTS:
            raise ValueError(
                f"--variants: {name!r} is a variant of the "
                f"{'/'.join(VARIANTS[name].scales)} scale only; --scale={scale} "
                "has: " + ", ".join(allowed)
            )
        raise ValueError(
            f"--variants: {name!r} unknown; expected one of: " + ", ".join(allowed)
        )
    if not names:
        raise ValueError(
            "--variants: empty; expected one or more of: " + ", ".join(allowed)
        )


# ------------------------------------------------------------------- configs
def small_config() -> ml_collections.ConfigDict:
    """The small-scale base config: Fashion-MNIST, width-1 TinyResNet, CPU."""
    from configs import fashion_mnist  # noqa: PLC0415

    config = fashion_mnist.get_config("bn")
    config.model.width_multiplier = 1
    config.model.num_groups = 8  # divides the width-1 net's 8-64 channels
    config.training.max_steps = SMALL_STEPS
    config.training.warmup_steps = SMALL_WARMUP_STEPS
    config.training.log_every_steps = 10
    config.training.checkpoint_every_steps = 50
    config.evaluation.probe_every_steps = 0
    return config


def paper_config(epochs: int) -> ml_collections.ConfigDict:
    """The paper-scale base config: ImageNet, ResNet-50, the epochs' preset."""
    from configs import byol as byol_configs  # noqa: PLC0415

    return byol_configs.get_config(f"epochs={epochs},norm=bn")


def variant_config(
    base: ml_collections.ConfigDict, name: str, seed: int
) -> ml_collections.ConfigDict:
    """A copy of `base` with variant `name`'s fields and `seed`."""
    config = base.copy_and_resolve_references()
    for dotted, value in {**_VARIANT_DEFAULTS, **VARIANTS[name].overrides}.items():
        section, _, field = dotted.rpartition(".")
        (config[section] if section else config)[field] = value
    config.seed = seed
    return config


@dataclasses.dataclass(frozen=True)
class Run:
    """One pre-training run of the study."""

    variant: str
    seed: int
    config: ml_collections.ConfigDict

    @property
    def name(self) -> str:
        """`<variant>_seed<seed>`: its work directory and JSON are named so."""
        return f"{self.variant}_seed{self.seed}"


def study_runs(
    scale: str,
    names: Sequence[str],
    seeds: Sequence[int],
    max_steps: int | None = None,
    data_dir: str | None = None,
) -> list[Run]:
    """The runs of a scale: every variant × seed, configs built and overridden.

    Args:
        scale: `small` or `paper`.
        names: variant names of that scale.
        seeds: the seeds of every variant.
        max_steps: shorter runs (warm-up shortened to a tenth), e.g. a smoke
            test; None keeps the scale's budget.
        data_dir: where the dataset is, if not the config's `data`.

    Returns:
        The runs, variant by variant.
    """
    if scale not in SCALES:
        raise ValueError(f"--scale {scale!r} unknown; expected one of: small, paper")
    check_variants(names, scale)
    runs = []
    for name in names:
        base = (
            small_config() if scale == "small" else paper_config(VARIANTS[name].epochs)
        )
        if max_steps is not None:
            base.training.max_steps = max_steps
            base.training.warmup_steps = min(
                base.training.warmup_steps, max_steps // 10
            )
        if data_dir:
            base.data.data_dir = data_dir
        runs.extend(Run(name, seed, variant_config(base, name, seed)) for seed in seeds)
    return runs


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
    """One line: the run's name and the fields that differ between variants."""
    c = run.config
    encoder, projector, predictor = component_norms(c)
    t = c.training
    parts = [
        f"{run.name:<28}",
        f"{c.method:<6}",
        f"enc {encoder:<13} proj {projector:<13} pred {predictor:<13}",
        f"{c.model.encoder} x{c.model.width_multiplier}",
        f"{c.data.dataset}",
        f"{t.max_steps} steps (warm-up {t.warmup_steps}) x batch {t.batch_size}",
        f"lr {t.base_learning_rate} wd {t.weight_decay}",
        f"tau {t.base_target_ema}" if c.method == "byol" else f"T {t.temperature}",
    ]
    return " | ".join(parts)


# ---------------------------------------------------------------------- runs
def _config_json(config: ml_collections.ConfigDict) -> dict:
    return json.loads(json.dumps(config.to_dict()))


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The dotted name of the first field where two config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".")


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value: Any) -> None:
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(partial, path)


def _history(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _record(run: Run, results: dict | None, error: str | None, seconds: float):
    variant = VARIANTS[run.variant]
    encoder, projector, predictor = component_norms(run.config)
    scalars = (results or {}).get("final_scalars", {})
    probe = (results or {}).get("probe", {})
    return {
        "variant": run.variant,
        "seed": run.seed,
        "method": run.config.method,
        "encoder_norm": encoder,
        "projector_norm": projector,
        "predictor_norm": predictor,
        "status": "failed" if error else "done",
        "error": error,
        "probe_top1": None if error else 100 * probe["top1"],
        "probe_top5": None if error else 100 * probe["top5"],
        "probe_val_top1": None if error else 100 * probe["val_top1"],
        "final_collapse": scalars.get("collapse"),
        "final_repr_loss": scalars.get("repr_loss"),
        "steps": run.config.training.max_steps,
        "images_per_second": (results or {}).get("images_per_second"),
        "minutes": seconds / 60,
        "paper_top1": variant.paper_top1,
        "paper_setting": variant.paper_setting,
        "config": _config_json(run.config),
    }


def _pretrain_child(config_dict: dict, workdir: str, replies) -> None:
    """In a fresh process: one `byol.train.pretrain`; its outcome to `replies`."""
    from byol import train  # noqa: PLC0415  (imports TensorFlow)

    try:
        results = train.pretrain(ml_collections.ConfigDict(config_dict), workdir)
        replies.put(("done", results))
    except FloatingPointError as failure:  # diverged: a result of the study
        replies.put(("diverged", str(failure)))
    except BaseException as error:  # noqa: BLE001  (reported by the parent)
        replies.put(("error", f"{type(error).__name__}: {error}"))


def pretrain_isolated(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """`byol.train.pretrain` in a child process, so runs share nothing.

    One process for 30 runs failed at the 30th: every run's compiled XLA
    programs stayed mapped, and LLVM ran out of memory maps. A child also
    keeps a crash to its run (the study says which, and a re-run resumes it).

    Args:
        config: the run's config.
        workdir: its work directory.

    Returns:
        ``pretrain``'s results.

    Raises:
        FloatingPointError: the run diverged (non-finite loss or gradient).
        RuntimeError: the run failed otherwise, or its process died.
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
            except queue.Empty:  # still running
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


def execute(run: Run, out: str) -> dict:
    """Trains and probes one run (in a child process), or returns its record.

    Args:
        run: the run.
        out: the study's output directory.

    Returns:
        The run's record (also in `<out>/runs/<name>.json`), with its
        metrics history under ``history`` (not written to the JSON).

    Raises:
        ValueError: the run's directory holds a run of another config.
        RuntimeError: the run failed other than by diverging.
    """
    workdir = os.path.join(out, "runs", run.name)
    record_path = os.path.join(out, "runs", f"{run.name}.json")
    config_json = _config_json(run.config)
    if os.path.exists(record_path):
        record = _read_json(record_path)
        if record.get("config") == config_json:
            print(f"[{run.name}] finished earlier: {record_path}", flush=True)
            return {**record, "history": _history(workdir)}
    saved_config = os.path.join(workdir, "config.json")
    if os.path.exists(saved_config):
        field = _first_difference(_read_json(saved_config), config_json)
        if field:
            raise ValueError(
                f"{workdir} holds a run of another config ({field} differs); "
                "use another --out or delete that directory"
            )
    print(f"\n== {describe(run)} ==", flush=True)
    started = time.perf_counter()
    results, error = None, None
    try:
        results = pretrain_isolated(run.config, workdir)
    except FloatingPointError as failure:
        error = str(failure)
        print(f"[{run.name}] failed: {error}", flush=True)
    record = _record(run, results, error, time.perf_counter() - started)
    _write_json(record_path, record)
    return {**record, "history": _history(workdir)}


def run_study(runs: Iterable[Run], out: str) -> list[dict]:
    """Executes every run (or reads it back), in order; returns their records."""
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    return [execute(run, out) for run in runs]


# -------------------------------------------------------------------- report
@dataclasses.dataclass
class Row:
    """One variant's runs, summarised."""

    variant: str
    method: str
    encoder: str
    projector: str
    predictor: str
    seeds: list[int]
    top1: list[float]
    top5: list[float]
    collapse: list[float]
    minutes: list[float]
    failed: int
    paper_top1: float | None
    paper_setting: str

    @property
    def top1_mean(self) -> float | None:
        """Mean probe top-1 (%) over the finished seeds."""
        return statistics.fmean(self.top1) if self.top1 else None

    @property
    def top1_std(self) -> float | None:
        """Sample standard deviation over seeds (None with fewer than two)."""
        return statistics.stdev(self.top1) if len(self.top1) > 1 else None


def summarise(records: Sequence[dict]) -> list[Row]:
    """Groups the runs' records by variant, in the order they first appear."""
    rows: dict[str, Row] = {}
    for r in records:
        row = rows.get(r["variant"])
        if row is None:
            row = rows[r["variant"]] = Row(
                r["variant"],
                r["method"],
                r["encoder_norm"],
                r["projector_norm"],
                r["predictor_norm"],
                [],
                [],
                [],
                [],
                [],
                0,
                r["paper_top1"],
                r["paper_setting"],
            )
        row.seeds.append(r["seed"])
        row.minutes.append(r["minutes"])
        if r["status"] != "done":
            row.failed += 1
            continue
        row.top1.append(r["probe_top1"])
        row.top5.append(r["probe_top5"])
        if r["final_collapse"] is not None:
            row.collapse.append(r["final_collapse"])
    return list(rows.values())


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _top1_cell(row: Row) -> str:
    if not row.top1:
        return "diverged" if row.failed else "—"
    text = _fmt(row.top1_mean)
    if row.top1_std is not None:
        text += f" ± {row.top1_std:.1f}"
    if row.failed:
        text += f" ({row.failed} diverged)"
    return text


def _paper_cell(row: Row) -> str:
    if row.paper_top1 is None:
        return "—"
    return f"{row.paper_top1:.1f} ({row.paper_setting})"


def format_markdown(rows: Sequence[Row], header: str = "") -> str:
    """The Markdown table (with `header` lines above it)."""
    lines = [header, ""] if header else []
    lines += [
        "| variant | method | encoder | projector | predictor | seeds "
        "| probe top-1 (%) | collapse | min/run | paper top-1 (%) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.variant} | {r.method} | {r.encoder} | {r.projector} "
            f"| {r.predictor} | {len(r.seeds)} | {_top1_cell(r)} "
            f"| {_fmt(_mean(r.collapse), 2)} | {_fmt(_mean(r.minutes))} "
            f"| {_paper_cell(r)} |"
        )
    return "\n".join(lines) + "\n"


CSV_FIELDS = (
    "variant",
    "method",
    "encoder",
    "projector",
    "predictor",
    "seeds",
    "runs_failed",
    "top1_mean",
    "top1_std",
    "top1_min",
    "top1_max",
    "top5_mean",
    "collapse_mean",
    "minutes_mean",
    "paper_top1",
    "paper_setting",
)


def write_csv(rows: Sequence[Row], path: str) -> None:
    """The table as CSV, one row per variant (empty cells where unknown)."""

    def cell(value):
        return "" if value is None else round(value, 4)

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    "variant": r.variant,
                    "method": r.method,
                    "encoder": r.encoder,
                    "projector": r.projector,
                    "predictor": r.predictor,
                    "seeds": " ".join(map(str, r.seeds)),
                    "runs_failed": r.failed,
                    "top1_mean": cell(r.top1_mean),
                    "top1_std": cell(r.top1_std),
                    "top1_min": cell(min(r.top1, default=None)),
                    "top1_max": cell(max(r.top1, default=None)),
                    "top5_mean": cell(_mean(r.top5)),
                    "collapse_mean": cell(_mean(r.collapse)),
                    "minutes_mean": cell(_mean(r.minutes)),
                    "paper_top1": cell(r.paper_top1),
                    "paper_setting": r.paper_setting,
                }
            )


def plot_study(rows: Sequence[Row], records: Sequence[dict], path: str, title: str):
    """Saves the figure: probe top-1 per variant; collapse indicator by step."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    height = max(3.5, 0.32 * len(rows) + 1.2)
    fig, (bars, curves) = plt.subplots(
        1, 2, figsize=(14, height), gridspec_kw=dict(width_ratios=(1, 1.3))
    )
    colours = plt.get_cmap("tab20")
    ys = range(len(rows))
    for y, row in zip(ys, rows, strict=True):
        colour = colours(y % 20)
        if row.top1:
            low, high = min(row.top1), max(row.top1)
            bars.barh(y, row.top1_mean, color=colour, alpha=0.6)
            bars.errorbar(
                row.top1_mean,
                y,
                xerr=[[row.top1_mean - low], [high - row.top1_mean]],
                color="black",
                capsize=3,
            )
            bars.scatter(row.top1, [y] * len(row.top1), color="black", s=10, zorder=3)
        else:
            bars.text(1, y, "diverged", va="center", fontsize=8)
    labels = [
        f"{r.variant} (paper {r.paper_top1:.1f})"
        if r.paper_top1 is not None
        else r.variant
        for r in rows
    ]
    bars.set_yticks(list(ys), labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel("linear probe top-1 on test (%): mean, seeds, min-max")
    bars.grid(axis="x", alpha=0.3)

    for y, row in enumerate(rows):
        series = [
            [(h["step"], h["collapse"]) for h in r["history"] if "collapse" in h]
            for r in records
            if r["variant"] == row.variant
        ]
        series = [s for s in series if s]
        if not series:
            continue
        # Mean over seeds at the steps every seed logged.
        steps = sorted(set.intersection(*(set(dict(s)) for s in series)))
        means = [statistics.fmean(dict(s)[step] for s in series) for step in steps]
        curves.plot(steps, means, color=colours(y % 20), label=row.variant)
    curves.set_xlabel("step")
    curves.set_ylabel("collapse indicator (1 spread, 0 collapsed)")
    curves.set_ylim(bottom=0)
    curves.grid(alpha=0.3)
    if curves.lines:
        curves.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(records: Sequence[dict], out: str, scale: str) -> dict[str, str]:
    """Writes table.md, table.csv and study.png; returns their paths."""
    rows = summarise(records)
    first = records[0]["config"]
    training = first["training"]
    header = (
        f"Scale `{scale}`: {first['data']['dataset']}, {first['model']['encoder']} "
        f"x{first['model']['width_multiplier']}, {training['max_steps']} steps x "
        f"batch {training['batch_size']}; probe top-1 on the test split, mean ± "
        "standard deviation over seeds; collapse: final collapse indicator "
        "(1 spread, 0 collapsed); paper: ImageNet linear top-1 of ResNet-50."
    )
    paths = {
        "markdown": os.path.join(out, "table.md"),
        "csv": os.path.join(out, "table.csv"),
        "figure": os.path.join(out, "study.png"),
    }
    with open(paths["markdown"], "w") as f:
        f.write(format_markdown(rows, header))
    write_csv(rows, paths["csv"])
    plot_study(
        rows,
        records,
        paths["figure"],
        f"BYOL / SimCLR normalisation study ({scale} scale, "
        f"{first['data']['dataset']}, {training['max_steps']} steps)",
    )
    return paths


# ----------------------------------------------------------------------- CLI
def _define_flags() -> dict[str, flags.FlagHolder]:
    # Defined when run as a program only (tests import this module).
    return dict(
        scale=flags.DEFINE_string("scale", "small", "Budget and data: small | paper."),
        out=flags.DEFINE_string("out", "results/norm_study", "Output directory."),
        variants=flags.DEFINE_list(
            "variants", None, "Variants to run (default: all of the scale)."
        ),
        seeds=flags.DEFINE_list("seeds", ["0", "1"], "Seeds of every variant."),
        max_steps=flags.DEFINE_integer(
            "max_steps", None, "Override the steps of every run (smoke tests)."
        ),
        data_dir=flags.DEFINE_string("data_dir", None, "Dataset directory."),
        dry_run=flags.DEFINE_bool(
            "dry_run", False, "Build, validate and print the configs; train nothing."
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


def main(argv, holders: dict[str, flags.FlagHolder]) -> None:
    """Runs (or with --dry_run, validates) the study the flags describe."""
    del argv
    logging.set_verbosity(logging.WARNING)
    from byol import main as byol_main  # noqa: PLC0415
    from byol.xla_flags import set_cpu_flags  # noqa: PLC0415

    set_cpu_flags(2)
    byol_main.quiet_orbax_leftovers()
    from byol import config_checks  # noqa: PLC0415  (after the XLA flags)

    scale, out = holders["scale"].value, holders["out"].value
    try:
        max_steps = holders["max_steps"].value
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"--max_steps must be an integer >= 1, got {max_steps}")
        runs = study_runs(
            scale,
            holders["variants"].value or variant_names(scale),
            _seeds(holders["seeds"].value),
            max_steps,
            holders["data_dir"].value,
        )
        for run in runs:
            try:
                config_checks.check_pretrain_config(run.config)
            except ValueError as error:
                raise ValueError(f"variant {run.variant}: {error}") from None
        if holders["dry_run"].value:
            for run in runs:
                print(describe(run))
            print(f"{len(runs)} configs valid; nothing trained (--dry_run)")
            return
        records = run_study(runs, out)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as error:  # a run crashed; the finished ones are kept
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    paths = write_report(records, out, scale)
    with open(paths["markdown"]) as f:
        print("\n" + f.read())
    print(f"Table: {paths['markdown']}, {paths['csv']}; figure: {paths['figure']}")


if __name__ == "__main__":
    _holders = _define_flags()
    app.run(lambda argv: main(argv, _holders))
