"""BYOL and BYOL without batch statistics, as pure JAX/Haiku functions.

Importing this package never imports TensorFlow: the input pipeline
(`byol.data`) and the training system (`byol.train`, `byol.main`) are imported
on their own.

Example:
    >>> import byol
    >>> loss = byol.byol_loss(pred_1, pred_2, target_1, target_2)  # doctest: +SKIP
"""

from byol.augmentations import (
    VIEW1,
    VIEW2,
    AugmentationConfig,
    augment,
    augment_views,
    normalize,
)
from byol.bn_init import bn_statistics_init, to_affine
from byol.losses import byol_loss, l2_normalize, nt_xent_loss, regression_loss
from byol.networks import (
    ENCODERS,
    MLP,
    NORM_PRESETS,
    NetworkNorms,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
    ResNet200,
    TinyResNet,
    make_encoder,
    norm_preset,
)
from byol.normalization import (
    NORM_NAMES,
    Affine,
    NormConfig,
    WSConv2D,
    WSLinear,
    make_norm,
    standardize_weight,
)
from byol.optimizers import exclude_bias_and_norm, lars
from byol.schedules import learning_rate_schedule, target_ema_schedule
from byol.target import update_target

__version__ = "0.1.0"

__all__ = [
    "ENCODERS",
    "MLP",
    "NORM_NAMES",
    "NORM_PRESETS",
    "VIEW1",
    "VIEW2",
    "Affine",
    "AugmentationConfig",
    "NetworkNorms",
    "NormConfig",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNet101",
    "ResNet152",
    "ResNet200",
    "TinyResNet",
    "WSConv2D",
    "WSLinear",
    "augment",
    "augment_views",
    "bn_statistics_init",
    "byol_loss",
    "exclude_bias_and_norm",
    "l2_normalize",
    "lars",
    "learning_rate_schedule",
    "make_encoder",
    "make_norm",
    "norm_preset",
    "normalize",
    "nt_xent_loss",
    "regression_loss",
    "standardize_weight",
    "target_ema_schedule",
    "to_affine",
    "update_target",
]
