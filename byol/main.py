r"""Command line: pre-train BYOL or linearly evaluate a pre-trained encoder.

    python -m byol.main --config=configs/fashion_mnist.py:gn_ws \
        --workdir=workdirs/fmnist [--config.training.max_steps=200]

The config's `mode` picks the job (`pretrain` or `linear_eval`); every config
field can be overridden with `--config.<field>=<value>`. Bad input ends with a
one-line error naming the field; `--traceback` shows the full stack instead.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with ':variant'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Show the full traceback of configuration errors."
)
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> dict:
    """Runs the job `config.mode` names and returns its results."""
    if config.mode == "pretrain":
        from byol import train  # noqa: PLC0415  (imports TensorFlow)

        return train.pretrain(config, workdir)
    if config.mode == "linear_eval":
        from byol import linear_eval  # noqa: PLC0415

        return linear_eval.evaluate(config, workdir)
    raise ValueError(f"mode {config.mode!r} unknown; expected pretrain or linear_eval")


def main(argv) -> None:
    """Entry point for absl."""
    del argv
    try:
        run(_CONFIG.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError) as error:
        if _TRACEBACK.value:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
