r"""BYOL on Imagenette, ResNet-18 at 128 px: DeepMind's single-GPU setup.

Run it (Imagenette prepared into data/ by `python -m byol.data.prepare
imagenette/160px-v2` on a machine with internet, see the README):

    python -m byol.main --config=configs/imagenette.py:bn \
        --workdir=workdirs/imagenette_bn

then evaluate the encoder (configs/eval.py):

    python -m byol.main --config=configs/eval.py:protocol=reference \
        --config.evaluation.pretrain_workdir=workdirs/imagenette_bn \
        --config.evaluation.batch_size=256 --workdir=workdirs/imagenette_bn_eval

Variants (the config string after the colon selects the normalisation):
`bn` (default: the reference setup), `gn_ws`, `none`, `bn_init`, as in
configs/fashion_mnist.py.

The setup of the "fast iteration" section of DeepMind's BYOL README:
`imagenette/160px-v2` at 128 px, ResNet-18, batch 256, base learning rate 2.0,
weight decay 1e-6, 1000 epochs of the 9,469 training images (10 of warm-up),
and the released code's other 1000-epoch values (τ_base 0.996, 4096/256 heads,
LARS η 1e-3). DeepMind's figure for their code: ~92.3% top-1 of the *online*
classifier on the validation set after roughly 4 h on one V100 (this code's
progress line shows the online classifier on training batches instead; compare
with the linear evaluation).

Time and accuracy with this code: not measured yet.
"""

import ml_collections

from configs import common

IMAGENETTE_TRAIN_EXAMPLES = 9469
BATCH_SIZE = 256
EPOCHS = 1000


def get_config(variant: str = "bn") -> ml_collections.ConfigDict:
    """Returns the Imagenette configuration for one normalisation variant."""
    config = common.base_config()
    config.data.dataset = "imagenette/160px-v2"
    config.data.image_size = 128

    config.model.encoder = "resnet18"
    common.set_norm_variant(config, variant)

    config.training.batch_size = BATCH_SIZE
    # The reference's step counts: epochs * examples // batch.
    config.training.max_steps = EPOCHS * IMAGENETTE_TRAIN_EXAMPLES // BATCH_SIZE
    config.training.warmup_steps = 10 * IMAGENETTE_TRAIN_EXAMPLES // BATCH_SIZE
    config.training.base_learning_rate = 2.0
    config.training.weight_decay = 1e-6
    config.training.base_target_ema = 0.996
    config.training.log_every_steps = 100
    config.training.checkpoint_every_steps = 1000

    config.evaluation.probe_every_steps = 100 * IMAGENETTE_TRAIN_EXAMPLES // BATCH_SIZE
    return config
