"""What a run shows while it runs and leaves behind: progress, logs, plots.

Only process 0 of a multi-host run writes; the others stay silent.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping

import jax

# Scalars shown on the one-line progress display, in order.
PROGRESS_KEYS = ("loss", "collapse", "top1")


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    """A progress line: step/total, images/s, ETA and the key scalars."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int):
        """Starts the clock at `start_step` of `total_steps`."""
        self.total_steps = total_steps
        self.batch_size = batch_size
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self.images_per_second = 0.0

    def update(self, step: int, scalars: Mapping[str, float]) -> str:
        """Returns (and prints, on process 0) the progress line after `step`."""
        now = time.perf_counter()
        steps = step - self._last_step
        if steps > 0:
            self.images_per_second = steps * self.batch_size / (now - self._last_time)
        self._last_step, self._last_time = step, now
        eta = (self.total_steps - step) * self.batch_size
        eta /= max(self.images_per_second, 1e-9)
        parts = [
            f"step {step}/{self.total_steps}",
            f"{self.images_per_second:,.0f} img/s",
            f"ETA {_format_duration(eta)}",
        ]
        parts += [f"{k} {scalars[k]:.4f}" for k in PROGRESS_KEYS if k in scalars]
        line = " | ".join(parts)
        if jax.process_index() == 0:
            print(line, flush=True, file=sys.stdout)
        return line


class MetricsLog:
    """Scalars over training: a JSON-lines file plus TensorBoard event files.

    The JSON-lines file survives restarts: on resume, entries after the
    restored step are dropped, so the history matches what the run computed.
    """

    def __init__(self, workdir: str, resume_step: int):
        """Opens `<workdir>/metrics.jsonl` and `<workdir>/tensorboard`."""
        self._enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.history: list[dict[str, float]] = []
        if not self._enabled:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                lines = [line for line in f if line.strip()]
            rows = []
            for number, line in enumerate(lines):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    if number < len(lines) - 1:  # not a write cut short by a kill
                        raise ValueError(
                            f"{self.path} line {number + 1} is not JSON; move the "
                            "file aside to start a new log"
                        ) from None
            self.history = [r for r in rows if r["step"] <= resume_step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.history)
        from tensorboardX import SummaryWriter  # noqa: PLC0415

        self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """Appends one row of scalars at `step`."""
        if not self._enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self.history.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in scalars.items():
            self._writer.add_scalar(key, float(value), int(step))
        self._writer.flush()

    def close(self) -> None:
        """Closes the TensorBoard writer (its thread fails at exit otherwise)."""
        if self._enabled:
            self._writer.close()


def plot_training(history: list[Mapping[str, float]], path: str, title: str) -> None:
    """Saves a PNG with the loss, collapse indicator and probe accuracy by step."""
    plot_runs({"": history}, path, title)


def plot_runs(
    histories: Mapping[str, list[Mapping[str, float]]],
    path: str,
    title: str,
    probe_baselines: Mapping[str, float] | None = None,
) -> None:
    """Saves one PNG comparing runs: loss, collapse indicator, probe accuracy by step.

    ``histories`` maps a run's name (empty: no legend) to `MetricsLog.history`
    rows; ``probe_baselines`` (name -> top-1 fraction) are drawn as horizontal
    lines on the probe panel.
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = [
        (("repr_loss",), "BYOL loss (2 − 2cos, both views)"),
        (("collapse",), "collapse indicator (1 healthy, 0 collapsed)"),
        (("rank_projection",), "effective rank of the projection (val)"),
        (("probe_top1", "knn20_top1"), "linear probe (test, —), kNN-20 (val, --) %"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6))
    for ax, (keys, label) in zip(axes, panels, strict=True):
        for i, (name, history) in enumerate(histories.items()):
            for key, style in zip(keys, ("-", "--"), strict=False):
                rows = [r for r in history if key in r]
                scale = 100 if key.endswith("top1") else 1
                ax.plot(
                    [r["step"] for r in rows],
                    [r[key] * scale for r in rows],
                    marker="o" if len(rows) < 20 else "",
                    ls=style,
                    color=f"C{i}",
                    label=name if style == "-" else None,
                )
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    for i, (name, top1) in enumerate((probe_baselines or {}).items()):
        axes[-1].axhline(100 * top1, color=f"C{len(histories) + i}", ls="--")
        axes[-1].annotate(
            name,
            (0.02, 100 * top1),
            xycoords=("axes fraction", "data"),
            va="bottom",
            fontsize=8,
        )
    if any(histories):
        axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
