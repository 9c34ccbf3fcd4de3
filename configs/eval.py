r"""Linear evaluation of a pre-trained encoder: the paper's protocol or a probe.

Run it on the work directory of a pre-training run:

    python -m byol.main --config=configs/eval.py:protocol=reference \
        --config.evaluation.pretrain_workdir=workdirs/imagenet_gn_ws_300 \
        --workdir=workdirs/imagenet_gn_ws_300_eval

The newest checkpoint there is restored; model, dataset and image size come
from that run's config.json (`data.data_dir` empty = the run's too). Results
go to `<workdir>/linear_eval_results.json` (test top-1/top-5 as fractions).

Protocols (the config string after the colon):

    protocol=probe      features extracted once; on them the suite of
                        byol.probe.evaluate: linear probe (L-BFGS, L2 chosen
                        on val), kNN (k 20/200), 1%- and 10%-label probes,
                        effective ranks (default; minutes for small datasets)
    protocol=reference  recipe.md section 5: a linear classifier on the frozen
                        encoder (BN in inference mode), random resized crop +
                        flip, SGD Nesterov 0.9, cosine decay, no weight decay,
                        80 epochs at batch 1024, base learning rates
                        {0.4, 0.3, 0.2, 0.1, 0.05} (x batch / 256) each trained
                        on train_minus_val and scored on val; the best one is
                        reported on test

DeepMind's released checkpoints (deepmind-research/byol, e.g.
`pretrain_res50x1.pkl`) are evaluated the same way, the pickle read safely
(byol/deepmind_checkpoint.py) and ImageNet at 224 px used unless `data.*`
says otherwise:

    python -m byol.main --config=configs/eval.py:protocol=reference \
        --config.evaluation.deepmind_checkpoint=pretrain_res50x1.pkl \
        --workdir=workdirs/deepmind_res50x1_eval

Small datasets: shorten with e.g. `--config.evaluation.epochs=20
--config.evaluation.batch_size=256`.

Published ImageNet figures (ResNet-50, reference protocol, their code): 74.3%
top-1 (BYOL paper, BN, 1000 epochs), 73.9% (GN+WS report). Time and accuracy
of this code's evaluation on ImageNet: not measured yet.
"""

import ml_collections

from byol.config_checks import PROTOCOLS
from configs import common


def get_config(arg: str = "protocol=probe") -> ml_collections.ConfigDict:
    """Returns the linear-evaluation config for `protocol=probe|reference`."""
    options = dict(item.split("=", 1) for item in arg.split(",") if item)
    unknown = set(options) - {"protocol"}
    if unknown:
        raise ValueError(f"config option(s) {sorted(unknown)} unknown; use protocol")
    protocol = options.get("protocol", "probe")
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"config protocol {protocol!r} unknown; expected one of: "
            + ", ".join(PROTOCOLS)
        )
    config = common.base_config()
    config.mode = "linear_eval"
    # Empty / 0: as in the pre-training run's config.json.
    config.data.dataset = ""
    config.data.image_size = 0
    config.data.data_dir = ""
    config.data.num_threads = 0
    config.evaluation.protocol = protocol
    return config
