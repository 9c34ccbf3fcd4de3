r"""BYOL on CIFAR-10, ResNet-18 with the small-image stem at 32 px.

Run it (CIFAR-10 prepared into data/: `python -m byol.data.prepare cifar10` on a
machine with internet, see the README):

    python -m byol.main --config=configs/cifar10.py:bn \
        --workdir=workdirs/cifar10_bn

Variants (the config string after the colon selects the normalisation):
`bn` (default), `gn_ws`, `none`, `bn_init`, as in configs/fashion_mnist.py.

ResNet-18 with a 3x3/1 stem and no max-pool, batch 256, 1000 epochs (10 of
warm-up), DeepMind's single-GPU learning rate (base 2.0 at batch 256, same LARS
as here), solo-learn's CIFAR weight decay 1e-5 and τ_base 0.99; not tuned
here. solo-learn report 92.58% linear top-1 for BYOL with ResNet-18 after 1000
epochs, with their own recipe (LARS η 0.02 with clipping, their augmentations),
which differs from this one.

Time and accuracy with this code: not measured yet.
"""

import ml_collections

from configs import common

CIFAR10_TRAIN_EXAMPLES = 50_000
BATCH_SIZE = 256
EPOCHS = 1000


def get_config(variant: str = "bn") -> ml_collections.ConfigDict:
    """Returns the CIFAR-10 configuration for one normalisation variant."""
    config = common.base_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32

    config.model.encoder = "resnet18"
    config.model.small_image = True
    common.set_norm_variant(config, variant)

    config.training.batch_size = BATCH_SIZE
    config.training.max_steps = EPOCHS * CIFAR10_TRAIN_EXAMPLES // BATCH_SIZE
    config.training.warmup_steps = 10 * CIFAR10_TRAIN_EXAMPLES // BATCH_SIZE
    config.training.base_learning_rate = 2.0
    config.training.weight_decay = 1e-5
    config.training.base_target_ema = 0.99
    config.training.log_every_steps = 100
    config.training.checkpoint_every_steps = 2000

    config.evaluation.probe_every_steps = 100 * CIFAR10_TRAIN_EXAMPLES // BATCH_SIZE
    return config
