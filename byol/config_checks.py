"""Every config field's check, in one table, plus the few cross-field rules.

Run once, at the boundary (`byol.train.pretrain`, `byol.linear_eval.evaluate`,
the study runner); constructors that only code calls trust what passed here.
Every message is one line naming the field and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections

from byol import augmentations, networks, normalization, precision
from byol.data import catalog  # pure Python: no TensorFlow

MODES = ("pretrain", "linear_eval")
METHODS = ("byol", "simclr")  # `config.method`: see `byol.run_dir.make_experiment`
PROTOCOLS = ("probe", "reference")  # `evaluation.protocol`: see `byol.linear_eval`


class Field(NamedTuple):
    """A field's test and the message naming what it allows."""

    ok: Callable[[Any], bool]
    message: str  # formatted with the field's `name` and `value`


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


POSITIVE = Field(
    lambda v: _is_int(v) and v >= 1, "{name} must be a positive integer, got {value!r}"
)
NON_NEGATIVE = Field(
    lambda v: _is_number(v) and v >= 0,
    "{name} must be a finite number >= 0, got {value!r}",
)
POSITIVE_NUMBER = Field(
    lambda v: _is_number(v) and v > 0,
    "{name} must be a finite number > 0, got {value!r}",
)
BOOLEAN = Field(
    lambda v: isinstance(v, bool), "{name} must be True or False, got {value!r}"
)
TEXT = Field(lambda v: isinstance(v, str), "{name} must be a string, got {value!r}")


def _integer(minimum: int, note: str = "") -> Field:
    return Field(
        lambda v: _is_int(v) and v >= minimum,
        f"{{name}} must be an integer >= {minimum}{note}, got {{value!r}}",
    )


def _interval(low: float, high: float, low_open: bool = False) -> Field:
    def ok(v):
        return _is_number(v) and (v > low if low_open else v >= low) and v <= high

    bracket = "(" if low_open else "["
    return Field(
        ok, f"{{name}} must be in {bracket}{low:g}, {high:g}], got {{value!r}}"
    )


def _choice(*allowed) -> Field:
    return Field(
        lambda v: not isinstance(v, bool) and v in allowed,
        f"{{name}} must be one of {', '.join(map(str, allowed))}, got {{value!r}}",
    )


def _name(allowed, preset_or: bool = False) -> Field:
    names = ", ".join(allowed)
    expected = f"'' (the preset's) or one of: {names}" if preset_or else names
    return Field(
        lambda v: isinstance(v, str) and (v in allowed or (preset_or and not v)),
        f"{{name}} {{value!r}} unknown; expected {'' if preset_or else 'one of: '}"
        f"{expected}",
    )


def _known_dataset(value) -> bool:
    if isinstance(value, str) and value.startswith(catalog.IMAGE_FOLDER_PREFIX):
        return bool(value[len(catalog.IMAGE_FOLDER_PREFIX) :].strip())
    return isinstance(value, str) and catalog.base_name(value) in catalog.SPECS


def _positive_rates(value) -> bool:
    return (
        isinstance(value, tuple | list)
        and len(value) > 0
        and all(_is_number(r) and r > 0 for r in value)
    )


FIELDS: dict[str, Field] = {
    "mode": _name(MODES),
    "method": _name(METHODS),
    "seed": _integer(0),
    "data.dataset": Field(
        _known_dataset,
        "{name} {value!r} unknown; expected one of: "
        + ", ".join(catalog.DATASETS)
        + " (a folder's path after image_folder:)",
    ),
    "data.data_dir": TEXT,
    "data.image_size": POSITIVE,
    "data.val_size": _integer(-1, " (-1: the dataset's default)"),
    "data.num_threads": _integer(0, " (0: one per core but one)"),
    "data.min_crop_area": _interval(0, 1, low_open=True),
    "data.skip_corrupt_images": BOOLEAN,
    "data.crop_rule": _name(augmentations.CROP_RULES),
    "model.encoder": _name(networks.DEPTHS),
    "model.width_multiplier": POSITIVE,
    "model.small_image": BOOLEAN,
    "model.norm": _name(networks.NORM_PRESETS),
    "model.encoder_norm": _name(normalization.NORM_NAMES, preset_or=True),
    "model.projector_norm": _name(normalization.NORM_NAMES, preset_or=True),
    "model.predictor_norm": _name(normalization.NORM_NAMES, preset_or=True),
    "model.num_groups": POSITIVE,
    "model.encoder_ws": _choice(-1, 0, 1),
    "model.mlp_ws": _choice(0, 1),
    "model.ws_eps": POSITIVE_NUMBER,
    "model.bn_init": BOOLEAN,
    "model.projector_hidden_size": POSITIVE,
    "model.projection_size": POSITIVE,
    "model.predictor_hidden_size": POSITIVE,
    "model.compute_dtype": _choice(*precision.COMPUTE_DTYPES),
    "training.batch_size": POSITIVE,
    "training.accumulation_steps": POSITIVE,
    "training.max_steps": POSITIVE,
    "training.warmup_steps": _integer(0),
    "training.base_learning_rate": NON_NEGATIVE,
    "training.weight_decay": NON_NEGATIVE,
    "training.base_target_ema": _interval(0, 1),
    "training.predictor_lr_multiplier": POSITIVE_NUMBER,
    "training.temperature": POSITIVE_NUMBER,
    "training.log_every_steps": POSITIVE,
    "training.checkpoint_every_steps": POSITIVE,
    "training.max_checkpoints_to_keep": POSITIVE,
    "training.skip_nonfinite_updates": BOOLEAN,
    "evaluation.probe_every_steps": NON_NEGATIVE,
    "evaluation.probe_max_train_examples": POSITIVE,
    "evaluation.final_evaluation": BOOLEAN,
    "evaluation.evaluate_at_start": BOOLEAN,
    "evaluation.pretrain_workdir": TEXT,
    "evaluation.deepmind_checkpoint": TEXT,
    "evaluation.protocol": _name(PROTOCOLS),
    "evaluation.batch_size": POSITIVE,
    "evaluation.epochs": POSITIVE,
    "evaluation.learning_rates": Field(
        _positive_rates,
        "{name} {value!r} invalid; expected a non-empty tuple of positive "
        "numbers, e.g. (0.4, 0.3, 0.2, 0.1, 0.05)",
    ),
    "evaluation.log_every_steps": POSITIVE,
}
# Linear evaluation takes these from the pre-training run when left unset.
_INHERITED = {"data.dataset": "", "data.image_size": 0, "data.data_dir": ""}


def get(config: ml_collections.ConfigDict, dotted: str):
    """The value at a dotted field name."""
    for key in dotted.split("."):
        config = config[key]
    return config


def _check_fields(config: ml_collections.ConfigDict) -> None:
    inherit = config.mode == "linear_eval"
    for name, field in FIELDS.items():
        value = get(config, name)
        if inherit and name in _INHERITED and value == _INHERITED[name]:
            continue
        if not field.ok(value):
            raise ValueError(field.message.format(name=name, value=value))


def check_pretrain_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field of a pre-training config."""
    _check_fields(config)
    model, training = config.model, config.training
    _check_norms(model)
    if config.method == "simclr":
        if model.bn_init:
            raise ValueError(
                "model.bn_init is implemented for method 'byol' only; use "
                "model.bn_init=False with method 'simclr'"
            )
        if training.accumulation_steps != 1:
            raise ValueError(
                "training.accumulation_steps must be 1 with method 'simclr' "
                "(NT-Xent's negatives span the whole batch), got "
                f"{training.accumulation_steps!r}"
            )
    if training.warmup_steps > training.max_steps:
        raise ValueError(
            f"training.warmup_steps ({training.warmup_steps}) must not exceed "
            f"training.max_steps ({training.max_steps})"
        )
    minimum = networks.min_image_size(model.small_image)
    if config.data.image_size < minimum:
        raise ValueError(
            f"data.image_size {config.data.image_size} is smaller than the "
            f"{'small-image' if model.small_image else 'standard'} stem takes "
            f"(min {minimum}); set model.small_image=True for 28-64 px images"
        )
    per_device = per_device_batch(training.batch_size)
    if per_device % training.accumulation_steps:
        raise ValueError(
            f"training.accumulation_steps {training.accumulation_steps} does not "
            f"divide the per-device batch {per_device} (training.batch_size "
            f"{training.batch_size} over {jax.device_count()} devices); use a "
            f"divisor of {per_device}"
        )


def check_linear_eval_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field of a linear-evaluation config.

    ``data.dataset``, ``data.image_size`` and ``data.data_dir`` left unset
    (empty, 0) are the pre-training run's.
    """
    _check_fields(config)
    evaluation = config.evaluation
    if evaluation.deepmind_checkpoint and evaluation.pretrain_workdir:
        raise ValueError(
            "evaluation.pretrain_workdir and evaluation.deepmind_checkpoint are "
            "both set; set one"
        )
    if not evaluation.pretrain_workdir and not evaluation.deepmind_checkpoint:
        raise ValueError(
            "evaluation.pretrain_workdir is empty; set it to the --workdir of a "
            "pre-training run (--config.evaluation.pretrain_workdir=DIR), or set "
            "evaluation.deepmind_checkpoint to a DeepMind BYOL .pkl"
        )
    devices = jax.device_count()
    if evaluation.protocol == "reference" and evaluation.batch_size % devices:
        raise ValueError(
            f"evaluation.batch_size {evaluation.batch_size} is not divisible by "
            f"the {devices} devices; use a multiple of {devices}"
        )


def _component_kinds(model: ml_collections.ConfigDict) -> dict[str, str]:
    preset = networks.NORM_PRESETS[model.norm]
    return {
        "encoder": model.encoder_norm or preset.encoder.kind,
        "projector": model.projector_norm or preset.projector.kind,
        "predictor": model.predictor_norm or preset.predictor.kind,
    }


def _check_norms(model: ml_collections.ConfigDict) -> None:
    """bn_init needs BN everywhere; GroupNorm's groups divide every width."""
    kinds = _component_kinds(model)
    if model.bn_init and any(kind != "bn" for kind in kinds.values()):
        raise ValueError(
            "model.bn_init needs BN in every component (model.norm='bn' and no "
            "per-component override)"
        )
    widths = {
        "encoder": networks.normalised_widths(model.encoder, model.width_multiplier),
        "projector": {model.projector_hidden_size},
        "predictor": {model.predictor_hidden_size},
    }
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


def per_device_batch(batch_size: int) -> int:
    """The per-device batch, or a ValueError if the devices cannot split it."""
    devices = jax.device_count()
    if batch_size % devices:
        raise ValueError(
            f"training.batch_size {batch_size} is not divisible by the "
            f"{devices} devices; use a multiple of {devices}"
        )
    return batch_size // devices
