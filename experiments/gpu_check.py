r"""The ResNet-50 BYOL step on this machine's accelerators, within a time budget.

    bash experiments/gpu_check.sh            # installs what the image lacks, then this
    python -m experiments.gpu_check [--budget_s=420] [--per_device_batch=256]

For BN and GN+WS, in bfloat16 then float32, at 224 px on synthetic batches (no
dataset, no TensorFlow): img/s per device, the step's FLOP/s, its fraction of
the device's bfloat16 matmul rate measured in the same run, and peak memory.
Variants are dropped, saying so, when the budget would not fit them (each
takes about twice the first one's time: compile, warm-up, timed steps).
On a CPU (a smoke run) use e.g. ``--per_device_batch=2 --steps=1``.
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags, logging

_BUDGET = flags.DEFINE_integer("budget_s", 420, "Stop starting variants after this.")
_BATCH = flags.DEFINE_integer("per_device_batch", 256, "Images per device and step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per window.")
_WINDOWS = flags.DEFINE_integer("windows", 3, "Timed windows (median).")
_JSON = flags.DEFINE_string("json_out", None, "Also write the results here.")
VARIANTS = (
    ("bn", "bfloat16"),
    ("gn_ws", "bfloat16"),
    ("bn", "float32"),
    ("gn_ws", "float32"),
)


def versions() -> dict[str, str]:
    """The versions of what the step runs on."""
    import importlib.metadata  # noqa: PLC0415

    import jax  # noqa: PLC0415

    out = {"python": sys.version.split()[0]}
    for package in (
        "jax",
        "jaxlib",
        "dm-haiku",
        "optax",
        "chex",
        "dm-pix",
        "ml-collections",
    ):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "missing"
    device = jax.devices()[0]
    out["device"] = f"{jax.device_count()} x {device.device_kind} ({device.platform})"
    return out


def check(budget_s, per_device_batch, steps, windows) -> list[dict]:
    """Measures every variant the budget allows; one dict each."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from configs import byol as byol_configs  # noqa: PLC0415
    from experiments import benchmark  # noqa: PLC0415

    started = time.perf_counter()
    peak = benchmark.measure_matmul(dtype=jnp.bfloat16, windows=windows)
    print(
        f"bf16 matmul: {peak['per_device'] / 1e12:.1f} TFLOP/s per device", flush=True
    )
    rows, first = [], None
    for norm, dtype in VARIANTS:
        elapsed = time.perf_counter() - started
        if first is not None and elapsed + 2 * first > budget_s:
            print(f"skipped {norm} {dtype}: {elapsed:.0f} s of {budget_s} s used")
            continue
        config = byol_configs.get_config(f"epochs=300,norm={norm}")
        config.model.compute_dtype = dtype
        config.training.batch_size = per_device_batch * jax.device_count()
        begun = time.perf_counter()
        result = benchmark.run_benchmark(
            config, steps=steps * windows, windows=windows, synthetic=True
        )
        first = first or time.perf_counter() - begun
        step = result["step"]
        row = dict(
            norm=norm,
            dtype=dtype,
            img_s_per_device=step["images_per_s_per_device"],
            flops_per_s_per_device=result["flops"]["achieved_per_s_per_device"],
            bf16_matmul_fraction=result["flops"]["achieved_per_s_per_device"]
            / peak["per_device"],
            peak_memory_gib=(result["memory"]["peak_bytes_per_device"] or 0) / 2**30,
            compile_s=result["compile"]["xla_compile_s"],
            seconds=time.perf_counter() - begun,
        )
        rows.append(row)
        print(
            f"{norm:>6} {dtype:>8}: {row['img_s_per_device']:8,.0f} img/s/device, "
            f"{row['flops_per_s_per_device'] / 1e12:6.1f} TFLOP/s "
            f"({100 * row['bf16_matmul_fraction']:.0f}% of bf16 matmul), peak "
            f"{row['peak_memory_gib']:.1f} GiB, compile {row['compile_s']:.0f} s",
            flush=True,
        )
    return rows


def main(argv) -> None:
    """Prints the versions, then one line per variant."""
    del argv
    logging.set_verbosity(logging.WARNING)
    info = versions()
    print(" ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    rows = check(_BUDGET.value, _BATCH.value, _STEPS.value, _WINDOWS.value)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"versions": info, "variants": rows}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
