r"""The main job (`make demo`): BYOL without batch statistics on a 2-core CPU.

Pre-trains a GN+WS BYOL encoder on Fashion-MNIST, then compares linear-probe
accuracy on the test split for:

* the BYOL (GN+WS) encoder after pre-training,
* the same encoder at random initialisation (what the architecture gives
  before any learning),
* a linear classifier on the raw pixels,

with the collapse indicator of each encoder, and checks the demo's targets: the
GN+WS encoder at least 10 points above its random initialisation, within 5
points of the BN variant trained with the same budget, not collapsed. It writes
`demo.md` (the table), `demo.json` and `demo.png` (loss, collapse indicator and
probe accuracy over training, one line per variant) into the work directory.

    .venv/bin/python -m experiments.demo --workdir=workdirs/demo [--variants=gn_ws,bn]
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging


def _define_flags() -> dict[str, flags.FlagHolder]:
    # Defined when run as a program only, so importing this module (tests do)
    # adds no flags that could clash with byol.main's.
    return dict(
        workdir=flags.DEFINE_string("workdir", "workdirs/demo", "Output directory."),
        variants=flags.DEFINE_list(
            "variants",
            ["gn_ws", "bn"],
            "Normalisation variants to pre-train (gn_ws, bn, ...).",
        ),
        max_steps=flags.DEFINE_integer("max_steps", None, "Override training steps."),
    )


def _probe_row(name, probe, collapse=None, minutes=None) -> dict:
    return {
        "encoder": name,
        "top1": 100 * probe.top1,
        "top5": 100 * probe.top5,
        "collapse": collapse,
        "minutes": minutes,
    }


def _history(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def run(workdir: str, variants, max_steps: int | None) -> list[dict]:
    """Pre-trains each variant, adds the baselines, returns the table rows."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from byol import (  # noqa: PLC0415
        augmentations,
        byol_experiment,
        metrics,
        parallel,
        probe,
        reporting,
        train,
    )
    from byol.data import pipeline  # noqa: PLC0415
    from configs import fashion_mnist  # noqa: PLC0415

    rows, histories = [], {}
    for variant in variants:
        config = fashion_mnist.get_config(variant)
        if max_steps:
            config.training.max_steps = max_steps
        print(f"\n== Pre-training BYOL ({variant}) ==", flush=True)
        results = train.pretrain(config, os.path.join(workdir, variant))
        rows.append(
            _probe_row(
                f"BYOL ({variant})",
                probe.ProbeResult(**results["probe"]),
                results["final_scalars"]["collapse"],
                results["train_seconds_this_run"] / 60,
            )
        )
        histories[variant] = _history(os.path.join(workdir, variant))

    # The same encoder, untrained: its random features are the bar to clear.
    config = fashion_mnist.get_config(variants[0])
    info = pipeline.dataset_info(config.data.dataset, config.data.data_dir)
    experiment = byol_experiment.ByolExperiment(config, info.num_classes)
    batch = next(
        pipeline.load(
            config.data.dataset,
            "train",
            is_training=True,
            batch_dims=(jax.local_device_count(), 256 // jax.local_device_count()),
            data_dir=config.data.data_dir,
        )
    )
    state = parallel.unreplicate(experiment.init(jax.random.key(config.seed), batch))
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
            probe.run_probe(config, embed, info.num_classes),
            float(metrics.collapse_indicator(outputs["projection"])),
        )
    )

    def pixels(x):
        return np.asarray(x, np.float32).reshape(len(x), -1) / 255.0

    feats = probe.probe_features(config, pixels)
    rows.append(
        _probe_row(
            "raw pixels",
            probe.linear_probe(
                feats["train"], feats["val"], feats["test"], info.num_classes
            ),
        )
    )
    reporting.plot_runs(
        histories,
        os.path.join(workdir, "demo.png"),
        "BYOL on Fashion-MNIST (2-core CPU)",
        probe_baselines={r["encoder"]: r["top1"] / 100 for r in rows[len(variants) :]},
    )
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the demo's rows."""
    lines = [
        "| features | probe top-1 (%) | probe top-5 (%) | collapse indicator "
        "| pre-training (min) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        collapse = "—" if r["collapse"] is None else f"{r['collapse']:.3f}"
        minutes = "—" if r.get("minutes") is None else f"{r['minutes']:.1f}"
        lines.append(
            f"| {r['encoder']} | {r['top1']:.1f} | {r['top5']:.1f} | {collapse} "
            f"| {minutes} |"
        )
    return "\n".join(lines)


# The demo's targets (issue 3): points of probe top-1, and the collapse floor.
MIN_GAIN_OVER_RANDOM = 10.0
MAX_GAP_TO_BN = 5.0
MIN_COLLAPSE_INDICATOR = 0.1


def check_targets(rows: list[dict]) -> list[str]:
    """One line per target: what was measured, and whether it is met.

    Args:
        rows: the demo's rows, with ``BYOL (gn_ws)``, ``random init (gn_ws)``
            and, when it was run, ``BYOL (bn)``.

    Returns:
        Lines such as ``"ok   GN+WS vs random init: +21.3 points (>= 10)"``.
    """
    by_name = {r["encoder"]: r for r in rows}
    gn = by_name.get("BYOL (gn_ws)")
    if gn is None:
        return []
    checks = []
    random_init = by_name.get("random init (gn_ws)")
    if random_init is not None:
        gain = gn["top1"] - random_init["top1"]
        checks.append(
            (
                gain >= MIN_GAIN_OVER_RANDOM,
                f"GN+WS vs random init: {gain:+.1f} "
                f"points (>= {MIN_GAIN_OVER_RANDOM:.0f})",
            )
        )
    bn = by_name.get("BYOL (bn)")
    if bn is not None:
        gap = bn["top1"] - gn["top1"]
        checks.append(
            (
                gap <= MAX_GAP_TO_BN,
                f"BN - GN+WS: {gap:+.1f} points (<= {MAX_GAP_TO_BN:.0f})",
            )
        )
    collapse = gn["collapse"]
    checks.append(
        (
            collapse >= MIN_COLLAPSE_INDICATOR,
            f"GN+WS collapse indicator: "
            f"{collapse:.3f} (>= {MIN_COLLAPSE_INDICATOR}; ~0 is collapse)",
        )
    )
    return [("ok   " if ok else "MISS ") + text for ok, text in checks]


def main(argv, holders: dict[str, flags.FlagHolder]) -> None:
    """Runs the demo with the command line's flags, prints and writes its table."""
    del argv
    workdir, variants = holders["workdir"].value, holders["variants"].value
    logging.set_verbosity(logging.WARNING)
    from byol import runtime  # noqa: PLC0415
    from byol.runtime import set_cpu_flags  # noqa: PLC0415

    set_cpu_flags(2)
    runtime.quiet_logs()
    rows = run(workdir, variants, holders["max_steps"].value)
    table = format_table(rows)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "demo.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(workdir, "demo.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print("\nLinear probe on Fashion-MNIST test (10,000 images):\n")
    print(table)
    print("\nTargets:\n" + "\n".join(check_targets(rows)))
    print(f"\nTraining curves: {os.path.join(workdir, 'demo.png')}")


if __name__ == "__main__":
    _holders = _define_flags()
    app.run(lambda argv: main(argv, _holders))
