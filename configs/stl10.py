r"""BYOL on STL-10, ResNet-18 at 96 px, pre-trained on unlabelled + train.

Run it (STL-10 prepared into data/: `python -m byol.data.prepare stl10` on a
machine with internet, see the README):

    python -m byol.main --config=configs/stl10.py:bn \
        --workdir=workdirs/stl10_bn

Variants (the config string after the colon selects the normalisation):
`bn` (default), `gn_ws`, `none`, `bn_init`, as in configs/fashion_mnist.py.

Pre-training sees the 100,000 unlabelled and the 5,000 labelled training
images (our ``train`` split; labels are only used by the online classifier);
linear evaluation uses the labelled ones (4,000 to train, 1,000 held out as
``val``) and reports on the 8,000 test images. ResNet-18 with the standard
stem at the native 96 px, batch 256, 300 epochs (10 of warm-up), DeepMind's
single-GPU learning rate and weight decay (base 2.0 at batch 256, 1e-6) and
the released code's 300-epoch τ_base 0.99; chosen by analogy, not tuned.

Time and accuracy with this code: not measured yet.
"""

import ml_collections

from configs import common

STL10_TRAIN_EXAMPLES = 105_000  # 100,000 unlabelled + 5,000 labelled
BATCH_SIZE = 256
EPOCHS = 300


def get_config(variant: str = "bn") -> ml_collections.ConfigDict:
    """Returns the STL-10 configuration for one normalisation variant."""
    config = common.base_config()
    config.data.dataset = "stl10"
    config.data.image_size = 96

    config.model.encoder = "resnet18"
    common.set_norm_variant(config, variant)

    config.training.batch_size = BATCH_SIZE
    config.training.max_steps = EPOCHS * STL10_TRAIN_EXAMPLES // BATCH_SIZE
    config.training.warmup_steps = 10 * STL10_TRAIN_EXAMPLES // BATCH_SIZE
    config.training.base_learning_rate = 2.0
    config.training.weight_decay = 1e-6
    config.training.base_target_ema = 0.99
    config.training.log_every_steps = 100
    config.training.checkpoint_every_steps = 2000

    # The periodic probe reads train_minus_val, whose first 100,000 examples
    # are unlabelled here; linear evaluation (configs/eval.py) skips them.
    config.evaluation.probe_every_steps = 0
    return config
