r"""The main job (`make demo`): BYOL without batch statistics on a 2-core CPU.

Pre-trains GN+WS BYOL and, for comparison, vanilla (BN) BYOL on Fashion-MNIST
with the demo's recipe (configs/fashion_mnist.py), and evaluates on the test
split, with the linear probe, kNN and 1%- and 10%-label probes
(`byol.probe.evaluate`):

* each BYOL encoder after pre-training;
* the GN+WS encoder before its first step (what the architecture gives
  before any learning);
* the raw pixels.

It checks the demo's targets (GN+WS at least 10 points above its own start
on the linear probe, within 5 points of BN, not collapsed) and writes
`demo.md`, `demo.json` and `demo.png` (loss, collapse indicator, effective
rank, probe and kNN accuracy over training) into the work directory.

    .venv/bin/python -m experiments.demo --workdir=workdirs/demo [--variants=gn_ws,bn]
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

RECIPE = (
    "the demo's recipe (configs/fashion_mnist.py): TinyResNet width 2, GN with 16 "
    "groups, 300 steps of batch 256 (1.3 epochs), LARS lr 2.0, wd 1e-5, "
    "tau_base 0.996, crop area >= 0.3 with the reference's clamp rule, and the "
    "predictor's learning rate x10 (Tian et al. 2021, against collapse without "
    "batch statistics; the paper's x1 is the study's recipe: docs/study.md)"
)


def _define_flags() -> dict[str, flags.FlagHolder]:
    # Defined when run as a program only, so importing this module (tests do)
    # adds no flags that could clash with byol.main's.
    return dict(
        workdir=flags.DEFINE_string("workdir", "workdirs/demo", "Output directory."),
        variants=flags.DEFINE_list(
            "variants", ["gn_ws", "bn"], "Normalisation variants to pre-train."
        ),
        max_steps=flags.DEFINE_integer("max_steps", None, "Override training steps."),
    )


def suite_row(name: str, suite: dict, collapse=None, minutes=None) -> dict:
    """A table row from `byol.probe.evaluate`'s suite (percentages)."""
    few = suite["few_label"]
    return {
        "encoder": name,
        "linear": 100 * suite["linear"]["top1"],
        "knn": 100 * suite["knn"]["best_top1"],
        "label1": 100 * few["1%"]["top1_mean"],
        "label10": 100 * few["10%"]["top1_mean"],
        "rank": suite["rank"]["embedding"],
        "collapse": collapse,
        "minutes": minutes,
    }


def _history(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def run(workdir: str, variants, max_steps: int | None) -> list[dict]:
    """Pre-trains each variant, adds the baselines, returns the table rows."""
    import numpy as np  # noqa: PLC0415

    from byol import probe, reporting, run_dir, train  # noqa: PLC0415
    from configs import fashion_mnist  # noqa: PLC0415

    rows, baselines, histories = [], [], {}
    for i, variant in enumerate(variants):
        config = fashion_mnist.get_config(variant)
        config.evaluation.evaluate_at_start = i == 0  # the first one's start
        if max_steps:
            config.training.max_steps = max_steps
        print(f"\n== Pre-training BYOL ({variant}) ==", flush=True)
        results = train.pretrain(config, os.path.join(workdir, variant))
        rows.append(
            suite_row(
                f"BYOL ({variant})",
                results["evaluation"],
                results["final_scalars"]["collapse"],
                results["train_seconds_this_run"] / 60,
            )
        )
        if "start_evaluation" in results:
            start = results["start_evaluation"]
            baselines.append(
                suite_row(f"random init ({variant})", start, start.get("collapse"))
            )
        histories[variant] = _history(os.path.join(workdir, variant))

    def pixels(x):
        return np.asarray(x, np.float32).reshape(len(x), -1) / 255.0

    config = fashion_mnist.get_config(variants[0])
    info = run_dir.dataset_info(config)
    feats = probe.probe_features(
        config, pixels, config.evaluation.probe_max_train_examples
    )
    baselines.append(suite_row("raw pixels", probe.evaluate(feats, info.num_classes)))
    reporting.plot_runs(
        histories,
        os.path.join(workdir, "demo.png"),
        "BYOL on Fashion-MNIST (2-core CPU)",
        probe_baselines={r["encoder"]: r["linear"] / 100 for r in baselines},
    )
    return rows + baselines


COLUMNS = (
    ("features", "encoder", "{}"),
    ("linear probe (%)", "linear", "{:.1f}"),
    ("kNN (%)", "knn", "{:.1f}"),
    ("1% labels (%)", "label1", "{:.1f}"),
    ("10% labels (%)", "label10", "{:.1f}"),
    ("effective rank", "rank", "{:.1f}"),
    ("collapse indicator", "collapse", "{:.3f}"),
    ("pre-training (min)", "minutes", "{:.1f}"),
)


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the demo's rows ("—" where a figure does not apply)."""
    lines = [
        "| " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = [
            "—" if r.get(key) is None else form.format(r[key])
            for _, key, form in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The demo's targets: points of linear-probe top-1, and the collapse floor.
MIN_GAIN_OVER_RANDOM = 10.0
MAX_GAP_TO_BN = 5.0
MIN_COLLAPSE_INDICATOR = 0.1


def check_targets(rows: list[dict]) -> list[str]:
    """One line per target that its rows allow: what was measured, met or not."""
    by_name = {r["encoder"]: r for r in rows}
    gn = by_name.get("BYOL (gn_ws)")
    if gn is None:
        return []
    checks = []
    random_init = by_name.get("random init (gn_ws)")
    if random_init is not None:
        gain = gn["linear"] - random_init["linear"]
        checks.append(
            (
                gain >= MIN_GAIN_OVER_RANDOM,
                f"GN+WS vs random init: {gain:+.1f} points "
                f"(>= {MIN_GAIN_OVER_RANDOM:.0f})",
            )
        )
    bn = by_name.get("BYOL (bn)")
    if bn is not None:
        gap = bn["linear"] - gn["linear"]
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
            f"GN+WS collapse indicator: {collapse:.3f} "
            f"(>= {MIN_COLLAPSE_INDICATOR}; ~0 is collapse)",
        )
    )
    return [("ok   " if ok else "MISS ") + text for ok, text in checks]


def main(argv, holders: dict[str, flags.FlagHolder]) -> None:
    """Runs the demo with the command line's flags, prints and writes its table."""
    del argv
    workdir, variants = holders["workdir"].value, holders["variants"].value
    logging.set_verbosity(logging.WARNING)
    from byol import runtime  # noqa: PLC0415

    runtime.set_cpu_flags(2)
    runtime.quiet_logs()
    print(f"Recipe: {RECIPE}", flush=True)
    rows = run(workdir, variants, holders["max_steps"].value)
    table = format_table(rows)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "demo.md"), "w") as f:
        f.write(f"Recipe: {RECIPE}\n\n{table}\n")
    with open(os.path.join(workdir, "demo.json"), "w") as f:
        json.dump({"recipe": RECIPE, "rows": rows}, f, indent=2)
    print("\nFashion-MNIST test split (10,000 images); recipe: " + RECIPE + "\n")
    print(table)
    print("\nTargets:\n" + "\n".join(check_targets(rows)))
    print(f"\nTraining curves: {os.path.join(workdir, 'demo.png')}")


if __name__ == "__main__":
    _holders = _define_flags()
    app.run(lambda argv: main(argv, _holders))
