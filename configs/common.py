"""Defaults shared by every configuration: each config file overrides a few."""

import ml_collections

# The normalisation variants a config string can name. `bn_init` trains without
# BN from the BN-statistics initialisation (the paper's 65.7% protocol).
# `gn_ws_bn_heads` keeps BN in the projector and predictor only.
NORM_VARIANTS = ("bn", "gn_ws", "none", "bn_init", "gn_ws_bn_heads")


def base_config() -> ml_collections.ConfigDict:
    """Returns the full set of fields with the reference BYOL defaults."""
    config = ml_collections.ConfigDict()
    config.mode = "pretrain"  # pretrain | linear_eval
    # Pre-training method: byol | simclr (byol/simclr_experiment.py: encoder +
    # projector, NT-Xent with negatives from every device, no target network).
    config.method = "byol"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "imagenet2012"
    config.data.data_dir = "data"
    config.data.image_size = 224
    # Held-out examples of train for model selection; -1: the dataset's default.
    config.data.val_size = -1
    # Host threads for tf.data; 0: this process's share of the host's cores,
    # less one (`byol.data.pipeline.default_num_threads`): JPEGs need them all.
    config.data.num_threads = 0
    # Smallest random-resized-crop area, as a fraction of the image (recipe: 0.08).
    config.data.min_crop_area = 0.08
    # A box that does not fit the image: clamped as the reference does
    # (`reference`), or drawn again as torchvision does (`torchvision`).
    config.data.crop_rule = "reference"
    # Image folders: skip files that are not readable images (with a warning
    # naming each) instead of stopping with an error naming the first.
    config.data.skip_corrupt_images = False

    config.model = ml_collections.ConfigDict()
    config.model.encoder = "resnet50"
    config.model.width_multiplier = 1
    config.model.small_image = False
    # Preset of norms for encoder/projector/predictor: bn | gn_ws | none.
    config.model.norm = "bn"
    # Per-component overrides of the preset ('' keeps the preset's choice):
    # bn | gn | ln | none | affine.
    config.model.encoder_norm = ""
    config.model.projector_norm = ""
    config.model.predictor_norm = ""
    config.model.num_groups = 16
    # Weight standardisation: -1 keeps the preset's choice, 0 off, 1 on.
    config.model.encoder_ws = -1
    config.model.mlp_ws = 0
    config.model.ws_eps = 1e-4
    # Apply the BN-statistics initialisation, then train with affine layers.
    config.model.bn_init = False
    config.model.projector_hidden_size = 4096
    config.model.projection_size = 256
    config.model.predictor_hidden_size = 4096
    # float32 | bfloat16: the dtype the networks compute in; parameters,
    # optimiser state, normalisation statistics and the loss stay float32.
    config.model.compute_dtype = "float32"

    config.training = ml_collections.ConfigDict()
    config.training.batch_size = 4096
    # Micro-batches per optimiser step: each device's share of batch_size is
    # split into this many, whose gradients are averaged (one optimiser step,
    # one target update). Exact without batch statistics (GN + WS); with BN
    # each micro-batch is normalised on its own. Schedules count optimiser steps.
    config.training.accumulation_steps = 1
    config.training.max_steps = 300 * 1281167 // 4096
    config.training.warmup_steps = 10 * 1281167 // 4096
    config.training.base_learning_rate = 0.3
    config.training.weight_decay = 1e-6
    config.training.base_target_ema = 0.99
    # Learning-rate factor of the predictor's parameters (1 in the reference).
    config.training.predictor_lr_multiplier = 1.0
    # SimCLR's NT-Xent temperature (method simclr only): 0.1, SimCLR's value
    # for ImageNet (it used 0.5 on CIFAR-10).
    config.training.temperature = 0.1
    config.training.log_every_steps = 100
    config.training.checkpoint_every_steps = 1000
    config.training.max_checkpoints_to_keep = 3
    # A step with a non-finite loss, gradient or parameter norm stops the run
    # (False) or is skipped on the device, leaving the state unchanged (True);
    # skipped updates are counted (`skipped_updates`).
    config.training.skip_nonfinite_updates = False

    config.evaluation = ml_collections.ConfigDict()
    # The probe monitor during pre-training (linear probe, kNN, effective ranks;
    # byol.probe.monitor) every this many steps (0: never).
    config.evaluation.probe_every_steps = 0
    config.evaluation.probe_max_train_examples = 60000
    # The full suite (linear, few-label and kNN probes, ranks) after the last
    # step, and on the untrained network before the first.
    config.evaluation.final_evaluation = True
    config.evaluation.evaluate_at_start = False
    # Linear evaluation (mode linear_eval, byol/linear_eval.py) of the newest
    # checkpoint in this pre-training work directory.
    config.evaluation.pretrain_workdir = ""
    # Or a DeepMind BYOL .pkl (e.g. pretrain_res50x1.pkl) to evaluate instead.
    config.evaluation.deepmind_checkpoint = ""
    # probe: fast L-BFGS probe on frozen features; reference: the paper's
    # protocol (SGD Nesterov on crop+flip images, lr swept on val, recipe §5).
    config.evaluation.protocol = "probe"
    config.evaluation.batch_size = 1024
    config.evaluation.epochs = 80
    # Base learning rates (for a batch of 256; scaled by batch_size / 256).
    config.evaluation.learning_rates = (0.4, 0.3, 0.2, 0.1, 0.05)
    config.evaluation.log_every_steps = 100
    return config


def set_norm_variant(config: ml_collections.ConfigDict, variant: str) -> None:
    """Sets the model's normalisation fields for one named variant, in place."""
    if variant not in NORM_VARIANTS:
        raise ValueError(
            f"config variant {variant!r} unknown; expected one of: "
            + ", ".join(NORM_VARIANTS)
        )
    config.model.bn_init = variant == "bn_init"
    config.model.norm = {"bn_init": "bn", "gn_ws_bn_heads": "gn_ws"}.get(
        variant, variant
    )
    if variant == "gn_ws_bn_heads":
        config.model.projector_norm = "bn"
        config.model.predictor_norm = "bn"
