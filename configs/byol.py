r"""BYOL on ImageNet (ResNet-50), the reference setup of the papers.

Run it on a TPU pod / GPU cluster (ImageNet prepared with tfds's manual download
into data/; see the README):

    python -m byol.main --config=configs/byol.py:epochs=300,norm=gn_ws \
        --workdir=workdirs/imagenet_gn_ws_300

The config string takes `epochs` (40 | 100 | 300 | 1000, the presets of the
released code) and `norm`:

    bn       vanilla BYOL, BN everywhere (paper: 72.5% at 300, 74.3% at 1000 ep.)
    gn_ws    GN (16 groups) + weight-standardised convs (paper: 73.9% at 1000 ep.)
    none     no normalisation anywhere (paper: 0.1%, collapse)
    bn_init  BN-statistics initialisation, then no BN (paper: 65.7%)
    enc_bn   BN in the encoder only, none in the heads (paper: 72.1% at 300 ep.)

Batch 4096 on 512 TPU v3 cores; ResNet-50 for 1000 epochs took ~8 h there.
Time and accuracy on other hardware: not measured yet.
"""

import ml_collections

from configs import common

# epochs -> (base learning rate, weight decay, base target EMA), released code.
PRESETS = {
    40: (0.45, 1e-6, 0.97),
    100: (0.45, 1e-6, 0.99),
    300: (0.3, 1e-6, 0.99),
    1000: (0.2, 1.5e-6, 0.996),
}
IMAGENET_TRAIN_EXAMPLES = 1281167


def get_config(arg: str = "epochs=300,norm=bn") -> ml_collections.ConfigDict:
    """Returns the ImageNet config for `epochs=N,norm=NAME`."""
    options = dict(item.split("=", 1) for item in arg.split(",") if item)
    unknown = set(options) - {"epochs", "norm"}
    if unknown:
        raise ValueError(
            f"config option(s) {sorted(unknown)} unknown; use epochs, norm"
        )
    epochs = options.get("epochs", "300")
    if not epochs.isdigit() or int(epochs) not in PRESETS:
        raise ValueError(
            f"epochs {epochs!r} has no preset; expected one of {list(PRESETS)}"
        )
    epochs = int(epochs)
    norm = options.get("norm", "bn")

    config = common.base_config()
    config.data.dataset = "imagenet2012"
    config.data.image_size = 224
    if norm == "enc_bn":
        common.set_norm_variant(config, "bn")
        config.model.projector_norm = "none"
        config.model.predictor_norm = "none"
    else:
        common.set_norm_variant(config, norm)

    lr, wd, ema = PRESETS[epochs]
    # The released code's rounding: 93,835 steps for 300 epochs (not 300 x 312).
    config.training.batch_size = 4096
    config.training.max_steps = epochs * IMAGENET_TRAIN_EXAMPLES // 4096
    config.training.warmup_steps = 10 * IMAGENET_TRAIN_EXAMPLES // 4096
    config.training.base_learning_rate = lr
    config.training.weight_decay = wd
    config.training.base_target_ema = ema
    config.training.checkpoint_every_steps = 1000
    config.evaluation.probe_every_steps = 0
    return config
