"""Checks of a config and a work directory, each failing with a one-line error.

Every message names the field (or file) and what is allowed, so a wrong flag
is fixed from the message alone.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from byol import networks, normalization
from byol.data import catalog  # pure Python: no TensorFlow

MODES = ("pretrain", "linear_eval")
# Fields that fix the shapes of the checkpointed state: a work directory whose
# checkpoints were written under other values cannot be resumed.
_ARCHITECTURE_FIELDS = (
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


def _get(config: ml_collections.ConfigDict, dotted: str):
    value = config
    for key in dotted.split("."):
        value = value[key]
    return value


def _positive(config, dotted: str) -> None:
    value = _get(config, dotted)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{dotted} must be a positive integer, got {value!r}")


def _non_negative(config, dotted: str) -> None:
    value = _get(config, dotted)
    if not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{dotted} must be a number >= 0, got {value!r}")


def check_pretrain_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field of a pre-training config."""
    if config.mode not in MODES:
        raise ValueError(
            f"mode {config.mode!r} unknown; expected one of: " + ", ".join(MODES)
        )
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
    ):
        _positive(config, field)
    for field in (
        "training.base_learning_rate",
        "training.weight_decay",
        "training.warmup_steps",
        "evaluation.probe_every_steps",
    ):
        _non_negative(config, field)
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
    per_device_batch(training.batch_size)


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
    current = {field: _get(config, field) for field in _ARCHITECTURE_FIELDS}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        saved_fields = {
            field: _get_dict(saved, field) for field in _ARCHITECTURE_FIELDS
        }
        diff = [f for f in _ARCHITECTURE_FIELDS if saved_fields[f] != current[f]]
        if diff and os.path.isdir(os.path.join(workdir, "checkpoints")):
            field = diff[0]
            raise ValueError(
                f"workdir {workdir} holds checkpoints of another config: {field} "
                f"was {saved_fields[field]!r}, now {current[field]!r}; use a new "
                "--workdir or the same config"
            )
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(config.to_dict(), f, indent=2)


def _get_dict(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree
