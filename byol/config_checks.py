"""Checks of a config and a work directory, each failing with a one-line error.

Every message names the field (or file) and what is allowed, so a wrong flag
is fixed from the message alone.
"""

from __future__ import annotations

import json
import math
import os

import jax
import ml_collections

from byol import networks, normalization, precision
from byol.data import catalog  # pure Python: no TensorFlow

MODES = ("pretrain", "linear_eval")
# Pre-training methods (`config.method`), see `byol.train.make_experiment`.
METHODS = ("byol", "simclr")
# Fields that fix the shapes of the checkpointed state: a work directory whose
# checkpoints were written under other values cannot be resumed.
_ARCHITECTURE_FIELDS = (
    "method",
    "data.dataset",
    "data.image_size",
    "model.encoder",
    "model.width_multiplier",
    "model.small_image",
    "model.norm",
    "model.encoder_norm",
    "model.projector_norm",
    "model.predictor_norm",
    "model.bn_init",
    "model.projector_hidden_size",
    "model.projection_size",
    "model.predictor_hidden_size",
)
# Architecture fields added after the first release, with the value that a
# config.json written before them meant.
_LATER_FIELD_DEFAULTS = {"method": "byol"}


def _get(config: ml_collections.ConfigDict, dotted: str):
    value = config
    for key in dotted.split("."):
        value = value[key]
    return value


def _has(config, dotted: str) -> bool:
    section, _, name = dotted.rpartition(".")
    return name in (_get(config, section) if section else config)


def _positive(config, dotted: str) -> None:
    value = _get(config, dotted)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{dotted} must be a positive integer, got {value!r}")


def _non_negative(config, dotted: str) -> None:
    value = _get(config, dotted)
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{dotted} must be a finite number >= 0, got {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _boolean(config, dotted: str) -> None:
    value = _get(config, dotted)
    if not isinstance(value, bool):
        raise ValueError(f"{dotted} must be True or False, got {value!r}")


def _one_of(config, dotted: str, allowed: tuple) -> None:
    value = _get(config, dotted)
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(
            f"{dotted} must be one of {', '.join(map(str, allowed))}, got {value!r}"
        )


def _component_kinds(model: ml_collections.ConfigDict) -> dict[str, str]:
    """The normalisation kind of each network component (preset + overrides)."""
    preset = networks.NORM_PRESETS[model.norm]
    return {
        "encoder": model.encoder_norm or preset.encoder.kind,
        "projector": model.projector_norm or preset.projector.kind,
        "predictor": model.predictor_norm or preset.predictor.kind,
    }


def _normalised_widths(model: ml_collections.ConfigDict) -> dict[str, set[int]]:
    """Channel counts each component normalises (what GroupNorm must divide)."""
    encoder = networks.ENCODERS[model.encoder]
    width = model.width_multiplier
    stages = [c * width for c in encoder.CONFIG["channels_per_group"]]
    encoder_widths = {encoder.STEM_CHANNELS * width, *stages}
    if encoder.CONFIG["bottleneck"]:
        encoder_widths |= {c // 4 for c in stages}
    return {
        "encoder": encoder_widths,
        "projector": {model.projector_hidden_size},
        "predictor": {model.predictor_hidden_size},
    }


def _check_norms(model: ml_collections.ConfigDict) -> None:
    """GroupNorm's group count divides every width; bn_init needs BN."""
    kinds = _component_kinds(model)
    if model.bn_init and any(kind != "bn" for kind in kinds.values()):
        raise ValueError(
            "model.bn_init needs BN in every component (model.norm='bn' and no "
            "per-component override)"
        )
    widths = _normalised_widths(model)
    grouped = sorted(
        c for part, kind in kinds.items() if kind == "gn" for c in widths[part]
    )
    bad = [c for c in grouped if c % model.num_groups]
    if bad:
        raise ValueError(
            f"model.num_groups {model.num_groups} does not divide the {bad[0]} "
            f"channels that GroupNorm normalises; use a divisor of "
            f"{math.gcd(*grouped)}"
        )


def _integer(config, dotted: str, minimum: int, meaning: str = "") -> None:
    value = _get(config, dotted)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"{dotted} must be an integer >= {minimum}{meaning}, got {value!r}"
        )


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    """The fields with ranges of their own (beyond positive / non-negative)."""
    model, training = config.model, config.training
    _integer(config, "seed", 0)
    _integer(config, "data.num_threads", 0, " (0: one per core but one)")
    _integer(config, "data.val_size", -1, " (-1: the dataset's default)")
    area = config.data.get("min_crop_area", 0.08)
    if not _is_number(area) or not 0 < area <= 1:
        raise ValueError(f"data.min_crop_area must be in (0, 1], got {area!r}")
    multiplier = training.get("predictor_lr_multiplier", 1.0)
    if not _is_number(multiplier) or not 0 < multiplier < math.inf:
        raise ValueError(
            "training.predictor_lr_multiplier must be a finite number > 0, got "
            f"{multiplier!r}"
        )
    if not _is_number(model.ws_eps) or not 0 < model.ws_eps < math.inf:
        raise ValueError(
            f"model.ws_eps must be a finite number > 0, got {model.ws_eps!r}"
        )
    _one_of(config, "model.encoder_ws", (-1, 0, 1))
    _one_of(config, "model.mlp_ws", (0, 1))
    if _has(config, "model.compute_dtype"):
        _one_of(config, "model.compute_dtype", precision.COMPUTE_DTYPES)
    for field in (
        "model.small_image",
        "model.bn_init",
        "data.skip_corrupt_images",
        "training.skip_nonfinite_updates",
    ):
        if _has(config, field):
            _boolean(config, field)


def check_pretrain_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field of a pre-training config."""
    if config.mode not in MODES:
        raise ValueError(
            f"mode {config.mode!r} unknown; expected one of: " + ", ".join(MODES)
        )
    method = config.get("method", "byol")
    if isinstance(method, bool) or method not in METHODS:
        raise ValueError(
            f"method {method!r} unknown; expected one of: " + ", ".join(METHODS)
        )
    if method == "simclr":
        check_simclr_fields(config)
    model, training = config.model, config.training
    dataset = config.data.dataset
    if not (
        dataset.startswith(catalog.IMAGE_FOLDER_PREFIX)
        or catalog.base_name(dataset) in catalog.SPECS
    ):
        raise ValueError(
            f"data.dataset {dataset!r} unknown; expected one of: "
            + ", ".join(catalog.DATASETS)
        )
    if model.encoder not in networks.ENCODERS:
        raise ValueError(
            f"model.encoder {model.encoder!r} unknown; expected one of: "
            + ", ".join(networks.ENCODERS)
        )
    if model.norm not in networks.NORM_PRESETS:
        raise ValueError(
            f"model.norm {model.norm!r} unknown; expected one of: "
            + ", ".join(networks.NORM_PRESETS)
        )
    for field in ("encoder_norm", "projector_norm", "predictor_norm"):
        kind = model[field]
        if kind and kind not in normalization.NORM_NAMES:
            raise ValueError(
                f"model.{field} {kind!r} unknown; expected '' (the preset's) or "
                "one of: " + ", ".join(normalization.NORM_NAMES)
            )
    for field in (
        "data.image_size",
        "model.width_multiplier",
        "model.num_groups",
        "model.projector_hidden_size",
        "model.projection_size",
        "model.predictor_hidden_size",
        "training.batch_size",
        "training.max_steps",
        "training.log_every_steps",
        "training.checkpoint_every_steps",
        "training.max_checkpoints_to_keep",
        "evaluation.probe_max_train_examples",
    ):
        _positive(config, field)
    for field in (
        "training.base_learning_rate",
        "training.weight_decay",
        "training.warmup_steps",
        "evaluation.probe_every_steps",
    ):
        _non_negative(config, field)
    _check_ranges(config)
    _check_norms(model)
    if training.warmup_steps > training.max_steps:
        raise ValueError(
            f"training.warmup_steps ({training.warmup_steps}) must not exceed "
            f"training.max_steps ({training.max_steps})"
        )
    if not 0.0 <= training.base_target_ema <= 1.0:
        raise ValueError(
            "training.base_target_ema must be in [0, 1], got "
            f"{training.base_target_ema}"
        )
    minimum = networks.min_image_size(model.small_image)
    if config.data.image_size < minimum:
        raise ValueError(
            f"data.image_size {config.data.image_size} is smaller than the "
            f"{'small-image' if model.small_image else 'standard'} stem takes "
            f"(min {minimum}); set model.small_image=True for 28-64 px images"
        )
    _check_accumulation(training, per_device_batch(training.batch_size))


def check_simclr_fields(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError for a field that method 'simclr' cannot honour.

    The temperature must be a finite number > 0; `model.bn_init` is BYOL's
    only; gradient accumulation would shrink NT-Xent's negatives, which span
    the whole batch.
    """
    temperature = config.training.get("temperature", 0.1)
    if not _is_number(temperature) or not 0 < temperature < math.inf:
        raise ValueError(
            f"training.temperature must be a finite number > 0, got {temperature!r}"
        )
    if config.model.bn_init:
        raise ValueError(
            "model.bn_init is implemented for method 'byol' only; use "
            "model.bn_init=False with method 'simclr'"
        )
    if config.training.get("accumulation_steps", 1) != 1:
        raise ValueError(
            "training.accumulation_steps must be 1 with method 'simclr' "
            "(NT-Xent's negatives span the whole batch), got "
            f"{config.training.accumulation_steps!r}"
        )


def _check_accumulation(training: ml_collections.ConfigDict, per_device: int) -> None:
    """The micro-batch count is a positive divisor of the per-device batch."""
    steps = training.get("accumulation_steps", 1)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(
            f"training.accumulation_steps must be a positive integer, got {steps!r}"
        )
    if per_device % steps:
        raise ValueError(
            f"training.accumulation_steps {steps} does not divide the per-device "
            f"batch {per_device} (training.batch_size {training.batch_size} over "
            f"{jax.device_count()} devices); use a divisor of {per_device}"
        )


def per_device_batch(batch_size: int) -> int:
    """The per-device batch, or a ValueError if the devices cannot split it."""
    devices = jax.device_count()
    if batch_size % devices:
        raise ValueError(
            f"training.batch_size {batch_size} is not divisible by the "
            f"{devices} devices; use a multiple of {devices}"
        )
    return batch_size // devices


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Records the config in `workdir`, refusing one written by another model.

    Raises:
        ValueError: the work directory holds a run whose architecture fields
            differ from `config` (its checkpoints could not be restored).
    """
    path = os.path.join(workdir, "config.json")
    config_dict = config.to_dict()
    current = {f: _get_dict(config_dict, f) for f in _ARCHITECTURE_FIELDS}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        saved_fields = {f: _get_dict(saved, f) for f in _ARCHITECTURE_FIELDS}
        diff = [f for f in _ARCHITECTURE_FIELDS if saved_fields[f] != current[f]]
        if diff and os.path.isdir(os.path.join(workdir, "checkpoints")):
            field = diff[0]
            raise ValueError(
                f"workdir {workdir} holds checkpoints of another config: {field} "
                f"was {saved_fields[field]!r}, now {current[field]!r}; use a new "
                "--workdir or the same config"
            )
    if jax.process_index() == 0:
        # Written aside and renamed: the other processes of a multi-process
        # run may be reading it.
        with open(path + ".tmp", "w") as f:
            json.dump(config_dict, f, indent=2)
        os.replace(path + ".tmp", path)


def _get_dict(tree: dict, dotted: str):
    """`tree`'s value at `dotted`, or the default of a field added later."""
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return _LATER_FIELD_DEFAULTS.get(dotted) if tree is None else tree
