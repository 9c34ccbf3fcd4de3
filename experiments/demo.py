r"""The main job (`make demo`): BYOL without batch statistics on a 2-core CPU.

Pre-trains a GN+WS BYOL encoder on Fashion-MNIST, then compares linear-probe
accuracy on the test split for:

* the BYOL (GN+WS) encoder after pre-training,
* the same encoder at random initialisation (what the architecture gives
  before any learning),
* a linear classifier on the raw pixels,

with the collapse indicator of each encoder. It writes `demo.md` (the table),
`demo.json` and the pre-training's `training.png` (loss, collapse indicator and
probe accuracy over training) into the work directory.

    .venv/bin/python -m experiments.demo --workdir=workdirs/demo [--variant=bn]
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Output directory.")
_VARIANTS = flags.DEFINE_list(
    "variants", ["gn_ws", "bn"], "Normalisation variants to pre-train (gn_ws, bn, ...)."
)
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Override training steps.")


def _probe_row(name, probe, collapse=None) -> dict:
    return {
        "encoder": name,
        "top1": 100 * probe.top1,
        "top5": 100 * probe.top5,
        "collapse": collapse,
    }


def run(workdir: str, variants, max_steps: int | None) -> list[dict]:
    """Pre-trains each variant, adds the baselines, returns the table rows."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from byol import (  # noqa: PLC0415
        augmentations,
        byol_experiment,
        data,
        eval_experiment,
        train,
    )
    from configs import fashion_mnist  # noqa: PLC0415

    rows = []
    for variant in variants:
        config = fashion_mnist.get_config(variant)
        if max_steps:
            config.training.max_steps = max_steps
        results = train.pretrain(config, os.path.join(workdir, variant))
        probe = eval_experiment.ProbeResult(**results["probe"])
        rows.append(
            _probe_row(f"BYOL ({variant})", probe, results["final_scalars"]["collapse"])
        )

    # The same encoder, untrained: its random features are the bar to clear.
    config = fashion_mnist.get_config(variants[0])
    info = data.dataset_info(config.data.dataset, config.data.data_dir)
    experiment = byol_experiment.ByolExperiment(config, info.num_classes)
    batch = next(
        data.load(
            config.data.dataset,
            "train",
            is_training=True,
            batch_dims=(jax.local_device_count(), 256 // jax.local_device_count()),
            data_dir=config.data.data_dir,
        )
    )
    state = byol_experiment.unreplicate(
        experiment.init(jax.random.key(config.seed), batch)
    )
    images = batch["images"].reshape((-1,) + batch["images"].shape[-3:])
    outputs, _ = experiment.forward.apply(
        state.online_params,
        state.online_state,
        None,
        augmentations.normalize(images),
        is_training=False,
    )

    def embed(x):
        return experiment.embed(state.online_params, state.online_state, x)

    rows.append(
        _probe_row(
            f"random init ({variants[0]})",
            train.run_probe(config, embed, info.num_classes),
            float(byol_experiment.collapse_indicator(outputs["projection"])),
        )
    )

    def pixels(x):
        return np.asarray(x, np.float32).reshape(len(x), -1) / 255.0

    feats = train.probe_features(config, pixels)
    rows.append(
        _probe_row(
            "raw pixels",
            eval_experiment.linear_probe(
                feats["train"], feats["val"], feats["test"], info.num_classes
            ),
        )
    )
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the demo's rows."""
    lines = [
        "| features | probe top-1 (%) | probe top-5 (%) | collapse indicator |",
        "|---|---|---|---|",
    ]
    for r in rows:
        collapse = "—" if r["collapse"] is None else f"{r['collapse']:.3f}"
        lines.append(
            f"| {r['encoder']} | {r['top1']:.1f} | {r['top5']:.1f} | {collapse} |"
        )
    return "\n".join(lines)


def main(argv) -> None:
    """Entry point."""
    del argv
    logging.set_verbosity(logging.WARNING)
    from byol.xla_flags import set_cpu_flags  # noqa: PLC0415

    set_cpu_flags(2)
    rows = run(_WORKDIR.value, _VARIANTS.value, _MAX_STEPS.value)
    table = format_table(rows)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, "demo.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(_WORKDIR.value, "demo.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print("\nLinear probe on Fashion-MNIST test (10,000 images):\n")
    print(table)
    plots = [os.path.join(_WORKDIR.value, v, "training.png") for v in _VARIANTS.value]
    print("\nTraining curves: " + ", ".join(plots), file=sys.stdout)


if __name__ == "__main__":
    app.run(main)
