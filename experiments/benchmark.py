r"""How fast a config trains here: step, input pipeline, FLOP/s, memory, compile.

    .venv/bin/python -m experiments.benchmark \
        --config=configs/fashion_mnist.py:gn_ws --config.model.num_groups=8 \
        [--steps=20] [--windows=5] [--synthetic] [--json_out=bench.json]

    # ResNet-50 at 224 px (ImageNet's config) without ImageNet on disk; the
    # norm is bn or gn_ws, the compute dtype float32 or bfloat16:
    .venv/bin/python -m experiments.benchmark \
        --config=configs/byol.py:epochs=300,norm=gn_ws \
        --config.model.compute_dtype=bfloat16 \
        --config.training.batch_size=8 --synthetic --steps=2 --windows=2

    # ResNet-18 at 128 px (Imagenette's config): --config=configs/imagenette.py:bn

`make benchmark_resnets` runs those four-by-two combinations at small batches.

Prints one table (and optionally writes it as JSON):

* train step images/s, in all and per device: the compiled pmapped
  `ByolExperiment.update` on one batch already on the devices, after
  compilation and warm-up; the median of `--windows` timed windows, each
  ended by `block_until_ready`;
* input pipeline images/s: `byol.data.load` alone with the step's batch
  dimensions, then through `prefetch_to_device` (`--synthetic`: no host
  pipeline, only the transfer of a repeated random batch), and the whole loop
  (load → prefetch → step) for comparison with the step alone; the time of a
  step split into device time and the loop's wait for input;
* FLOPs of one step from XLA's cost analysis of the compiled step, and the
  achieved FLOP/s per device; the machine's matmul FLOP/s, in the config's
  compute dtype, measured in the same run, and the step's fraction of it;
* memory per device where the backend reports it (peak bytes in use; not on
  CPU), XLA's estimate of the step's buffers, and the trace/compile times.

Timings on a shared CPU are noisy: the table shows the load average before and
after, and each rate's spread over the windows.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from byol import byol_experiment, config_checks, runtime
from byol import main as byol_main  # noqa: F401  (its --config, --cpu_devices)
from byol.data import catalog, device  # no TensorFlow: --synthetic runs without it

# Classes of the datasets a synthetic batch can stand in for (labels only).
_NUM_CLASSES = {"cifar100": 100, "imagenet2012": 1000}
_CHANNELS = {"fashion_mnist": 1}
# A window of matmuls lasts at least this long, so timer noise stays small.
_MIN_WINDOW_S = 0.2


# ------------------------------------------------------------------- batches
def synthetic_batch(
    config: ml_collections.ConfigDict, num_devices: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A random uint8 batch shaped as `byol.data.load` would yield it for pmap.

    Fixed-size datasets give ``images`` (cropped on the device), JPEG datasets
    two host crops ``view1``/``view2`` at ``config.data.image_size``.

    Args:
        config: a full config (dataset, image size, batch size).
        num_devices: the leading (device) axis.
        seed: numpy seed of the pixels and labels.

    Returns:
        ``{'images' or 'view1'/'view2': uint8 [D, B/D, H, W, C], 'labels':
        int32 [D, B/D]}``.

    Raises:
        ValueError: if the batch size is not divisible by `num_devices`.

    Example:
        >>> batch = synthetic_batch(config, 2)  # doctest: +SKIP
        >>> batch['images'].shape  # fashion_mnist, batch 256
        (2, 128, 28, 28, 1)
    """
    batch_size = config.training.batch_size
    if batch_size % num_devices:
        raise ValueError(
            f"training.batch_size {batch_size} is not divisible by the "
            f"{num_devices} devices; use a multiple of {num_devices}"
        )
    name = catalog.base_name(config.data.dataset)
    size = config.data.image_size
    shape = (num_devices, batch_size // num_devices)
    image_shape = (*shape, size, size, _CHANNELS.get(name, 3))
    rng = np.random.default_rng(seed)
    out = {"labels": rng.integers(0, num_classes(config, True), shape, np.int32)}
    fixed_size = name in catalog.SPECS and catalog.SPECS[name].fixed_size
    for key in ("images",) if fixed_size else ("view1", "view2"):
        out[key] = rng.integers(0, 256, image_shape, np.uint8)
    return out


def num_classes(config: ml_collections.ConfigDict, synthetic: bool) -> int:
    """Classes of the config's dataset (a synthetic run reads no dataset)."""
    if synthetic:
        return _NUM_CLASSES.get(catalog.base_name(config.data.dataset), 10)
    from byol import run_dir  # noqa: PLC0415

    return run_dir.dataset_info(config).num_classes


def _train_batches(config, batch_dims) -> Iterator[dict[str, np.ndarray]]:
    from byol.data import pipeline  # noqa: PLC0415

    return pipeline.pretraining_batches(config, batch_dims)


# ------------------------------------------------------------------- timing
def time_windows(
    run_window: Callable[[], float], windows: int
) -> tuple[list[float], list[float]]:
    """Rates of `windows` calls of `run_window`, per wall and per CPU second.

    The CPU time is this process's (user + system, all threads). On a CPU
    shared with other jobs, work per CPU second times the cores is roughly
    what the idle machine would do, as long as the work keeps every core
    busy (spinning threads make it an underestimate).

    Args:
        run_window: does some work, waits for it, and returns its amount
            (images, FLOPs).
        windows: how many times to call it.

    Returns:
        ``(wall, cpu)``: work per wall-clock second of each window, and work
        per second of the process's CPU time.

    Example:
        >>> wall, cpu = time_windows(lambda: 10, 3)  # doctest: +SKIP
    """
    wall, cpu = [], []
    for _ in range(windows):
        start, start_cpu = time.perf_counter(), time.process_time()
        work = run_window()
        wall.append(work / max(time.perf_counter() - start, 1e-9))
        cpu.append(work / max(time.process_time() - start_cpu, 1e-9))
    return wall, cpu


def _summary(rates: list[float]) -> dict[str, Any]:
    return dict(
        median=statistics.median(rates), min=min(rates), max=max(rates), all=rates
    )


def _block(tree: Any) -> None:
    jax.block_until_ready(tree)


def measure_pipeline(
    batches: Iterable, batch_size: int, num_batches: int, windows: int
) -> dict[str, Any]:
    """Images/s of an iterator of batches (waiting for device arrays).

    Args:
        batches: yields batches (numpy or `jax.Array` leaves).
        batch_size: images per batch (all devices).
        num_batches: batches timed after the first, split into `windows`.
        windows: timed windows.

    Returns:
        ``{'startup_s': time to the first batch, 'images_per_s': {'median',
        'min', 'max', 'all'}}``.

    Example:
        >>> measure_pipeline(iter(batches), 256, 20, 4)  # doctest: +SKIP
    """
    iterator = iter(batches)
    start = time.perf_counter()
    _block(next(iterator))
    startup = time.perf_counter() - start
    per_window = max(1, num_batches // windows)

    def window() -> int:
        for _ in range(per_window):
            _block(next(iterator))
        return per_window * batch_size

    rates, _ = time_windows(window, windows)
    return dict(startup_s=startup, images_per_s=_summary(rates))


def measure_matmul(
    size: int | None = None, windows: int = 5, dtype: Any = jnp.float32
) -> dict[str, Any]:
    """The machine's matmul FLOP/s: one device alone, and all at once.

    Args:
        size: side of the square matrices (default 2048 on CPU, 8192 otherwise,
            enough to saturate the device).
        windows: timed windows (median reported); each lasts >= 0.2 s.
        dtype: of the matrices (the step's compute dtype: GPUs and TPUs
            multiply bfloat16 several times faster than float32).

    Returns:
        ``{'size', 'dtype', 'single_device': FLOP/s of a jitted matmul on one device,
        'total': FLOP/s of a pmapped matmul on every local device,
        'per_device': total / devices, 'total_windows': per-window totals,
        'total_per_cpu_s': FLOPs per second of process CPU time (pmapped)}``.

    Example:
        >>> measure_matmul(256, windows=2)['total'] > 0  # doctest: +SKIP
        True
    """
    devices = jax.local_devices()
    if size is None:
        size = 2048 if devices[0].platform == "cpu" else 8192
    flops = 2.0 * size**3
    x = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
    xs = jax.device_put(
        np.broadcast_to(np.asarray(x), (len(devices), size, size)),
        device.device_sharding(devices),
    )

    def rate(fn, operand, flops_per_call):
        _block(fn(operand, operand))  # compile
        start = time.perf_counter()
        _block(fn(operand, operand))
        calls = max(1, math.ceil(_MIN_WINDOW_S / (time.perf_counter() - start)))

        def window() -> float:
            out = [fn(operand, operand) for _ in range(calls)]
            _block(out)
            return calls * flops_per_call

        return time_windows(window, windows)

    single, _ = rate(jax.jit(jnp.matmul), x, flops)
    total, total_cpu = rate(jax.pmap(jnp.matmul), xs, flops * len(devices))
    return dict(
        size=size,
        dtype=jnp.dtype(dtype).name,
        single_device=statistics.median(single),
        total=statistics.median(total),
        per_device=statistics.median(total) / len(devices),
        total_windows=total,
        total_per_cpu_s=statistics.median(total_cpu),
    )


# ------------------------------------------------------------ cost analysis
def _cost(stage) -> dict[str, float]:
    cost = stage.cost_analysis()
    if isinstance(cost, list | tuple):  # Older JAX: one dict per executable.
        cost = cost[0] if cost else None
    return dict(cost or {})


@functools.cache
def cost_analysis_is_per_device() -> bool:
    """Whether XLA's cost analysis of a pmapped function counts one device.

    Decided on a pmapped matmul of known FLOPs, since JAX versions differ.

    Example:
        >>> cost_analysis_is_per_device()  # JAX 0.10.2
        True
    """
    n = 64
    devices = jax.local_device_count()
    lowered = jax.pmap(jnp.matmul).lower(
        jnp.ones((devices, n, n)), jnp.ones((devices, n, n))
    )
    flops = _cost(lowered.compile()).get("flops", 0.0)
    one = 2.0 * n**3
    return abs(flops - one) <= abs(flops - devices * one)


def step_flops(stage, num_devices: int) -> float:
    """FLOPs of one step on all devices from a lowered or compiled pmapped step.

    Args:
        stage: ``pmapped.lower(...)`` or its ``.compile()``.
        num_devices: devices the step runs on.

    Returns:
        The FLOPs XLA counts, times `num_devices` if it counts one device.

    Example:
        >>> step_flops(update.lower(state, 0, batch).compile(), 2)  # doctest: +SKIP
    """
    flops = _cost(stage).get("flops", 0.0)
    return flops * num_devices if cost_analysis_is_per_device() else flops


def _xla_buffer_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not every backend implements it)
        return None
    if m is None:
        return None
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )


def device_memory() -> list[dict[str, int] | None]:
    """`memory_stats()` of each local device (None where unsupported, e.g. CPU)."""
    return [d.memory_stats() for d in jax.local_devices()]


# ---------------------------------------------------------------- benchmark
def run_benchmark(
    config: ml_collections.ConfigDict,
    *,
    steps: int = 20,
    windows: int = 5,
    warmup_steps: int = 2,
    synthetic: bool = False,
    matmul_size: int | None = None,
    pipeline_batches: int = 50,
    compiler_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measures the train step, input pipeline, FLOP/s and memory of a config.

    Args:
        config: a full pre-training config (see configs/common.py).
        steps: timed train steps (after compilation and `warmup_steps`).
        windows: timed windows the steps (and pipeline batches) are split into.
        warmup_steps: untimed steps after compilation.
        synthetic: random uint8 batches instead of the dataset; the host
            pipeline and the whole-loop figures are then skipped.
        matmul_size: side of the reference matmul (default: see
            `measure_matmul`).
        pipeline_batches: timed batches of the input pipeline.
        compiler_options: XLA options of the init and step compilations, e.g.
            ``{'xla_backend_optimization_level': 0}`` (fast compile, for tests).

    Returns:
        A JSON-serialisable dict of every figure `format_table` prints.

    Raises:
        ValueError: a config the devices cannot run (batch not divisible...).

    Example:
        >>> results = run_benchmark(config, steps=4, windows=2)  # doctest: +SKIP
        >>> print(format_table(results))  # doctest: +SKIP
    """
    if steps < 1 or windows < 1:
        raise ValueError(f"steps ({steps}) and windows ({windows}) must be >= 1")
    windows = min(windows, steps)
    devices = jax.local_devices()
    num_devices = len(devices)
    batch_size = config.training.batch_size
    per_device = config_checks.per_device_batch(batch_size)
    batch_dims = (num_devices, per_device)
    load_start = os.getloadavg()[0]

    experiment = byol_experiment.ByolExperiment(config, num_classes(config, synthetic))
    sharding = device.device_sharding()
    host_batch = (
        synthetic_batch(config, num_devices)
        if synthetic
        else next(_train_batches(config, batch_dims))
    )
    batch = jax.tree.map(lambda x: jax.device_put(x, sharding), host_batch)

    rng = jax.random.key(config.seed)
    start = time.perf_counter()
    state = experiment.init.lower(rng, batch).compile(compiler_options)(rng, batch)
    _block(state)
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    lowered = experiment.update.lower(state, 0, batch)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options)
    compile_s = time.perf_counter() - start

    step = 0

    def run_steps(n: int, batches: Iterator | None = None) -> int:
        nonlocal state, step
        scalars = None
        for _ in range(n):
            state, scalars = compiled(
                state, step, batch if batches is None else next(batches)
            )
            step += 1
        _block((state, scalars))
        return n * batch_size

    run_steps(warmup_steps)
    per_window = max(1, steps // windows)
    step_rates, step_cpu_rates = time_windows(lambda: run_steps(per_window), windows)
    step_rate = statistics.median(step_rates)

    if synthetic:
        host, loop = None, None
        prefetched = measure_pipeline(
            device.prefetch_to_device(itertools.repeat(host_batch), size=2),
            batch_size,
            pipeline_batches,
            windows,
        )
    else:
        host = measure_pipeline(
            _train_batches(config, batch_dims), batch_size, pipeline_batches, windows
        )
        prefetched = measure_pipeline(
            device.prefetch_to_device(_train_batches(config, batch_dims), size=2),
            batch_size,
            pipeline_batches,
            windows,
        )
        batches = device.prefetch_to_device(_train_batches(config, batch_dims), size=2)
        run_steps(1, batches)  # Fills the prefetch queue.
        loop = _summary(
            time_windows(lambda: run_steps(per_window, batches), windows)[0]
        )

    flops = step_flops(compiled, num_devices)
    unoptimized_flops = step_flops(lowered, num_devices)
    achieved = flops * step_rate / batch_size
    matmul = measure_matmul(
        matmul_size, windows=windows, dtype=experiment.compute_dtype
    )
    # Only the CPU backend computes on this process's threads.
    on_cpu = devices[0].platform == "cpu"
    step_cpu_rate = statistics.median(step_cpu_rates)
    memory = device_memory()
    peaks = [m.get("peak_bytes_in_use") for m in memory if m]
    return dict(
        machine=dict(
            platform=devices[0].platform,
            device_kind=devices[0].device_kind,
            num_devices=num_devices,
            host_cpus=_usable_cores(),
            xla_flags=os.environ.get("XLA_FLAGS", ""),
            load_average_start=load_start,
            load_average_end=os.getloadavg()[0],
        ),
        config=dict(
            dataset=config.data.dataset,
            encoder=config.model.encoder,
            norm=config.model.norm,
            bn_init=bool(config.model.bn_init),
            compute_dtype=experiment.compute_dtype.name,
            accumulation_steps=experiment.accumulation_steps,
            num_groups=config.model.num_groups,
            image_size=config.data.image_size,
            batch_size=batch_size,
            per_device_batch=per_device,
            synthetic=synthetic,
            timed_steps=per_window * windows,
            windows=windows,
        ),
        compile=dict(
            init_s=init_s,
            trace_lower_s=lower_s,
            xla_compile_s=compile_s,
            compiler_options=compiler_options,
        ),
        step=dict(
            images_per_s=_summary(step_rates),
            images_per_s_per_device=step_rate / num_devices,
            seconds_per_step=batch_size / step_rate,
            # CPU backend: images per process CPU second x usable cores, an
            # estimate of the rate on an idle machine; share of the cores got.
            idle_cpu_estimate=step_cpu_rate * _usable_cores() if on_cpu else None,
            core_share=step_rate / step_cpu_rate / _usable_cores() if on_cpu else None,
        ),
        pipeline=dict(
            host=host,
            prefetch=prefetched,
            train_loop_images_per_s=loop,
            prefetch_over_step=prefetched["images_per_s"]["median"] / step_rate,
            host_over_step=host["images_per_s"]["median"] / step_rate if host else None,
            # A loop step = device time + the wait for input it does not hide.
            input_wait_s_per_step=(
                max(0.0, batch_size / loop["median"] - batch_size / step_rate)
                if loop
                else None
            ),
        ),
        flops=dict(
            per_step=flops,
            per_step_per_device=flops / num_devices,
            per_step_unoptimized_hlo=unoptimized_flops,
            cost_analysis_per_device=cost_analysis_is_per_device(),
            achieved_per_s=achieved,
            achieved_per_s_per_device=achieved / num_devices,
        ),
        matmul=matmul,
        matmul_fraction=achieved / matmul["total"],
        # The same ratio per CPU second, less sensitive to other jobs.
        matmul_fraction_cpu_time=flops
        * step_cpu_rate
        / batch_size
        / matmul["total_per_cpu_s"]
        if on_cpu
        else None,
        memory=dict(
            peak_bytes_per_device=max(peaks) if peaks else None,
            xla_buffer_bytes_per_device=_xla_buffer_bytes(compiled),
        ),
    )


# ------------------------------------------------------------------ output
def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _rate(summary: dict[str, Any] | None, unit: str = "img/s") -> str:
    if summary is None:
        return "n/a"
    return (
        f"{summary['median']:,.0f} {unit}  "
        f"(windows {summary['min']:,.0f}..{summary['max']:,.0f})"
    )


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        return os.cpu_count() or 1


def _bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def format_table(
    results: dict[str, Any],
    min_pipeline_ratio: float = 2.0,
    min_matmul_fraction: float = 0.35,
) -> str:
    """The results of `run_benchmark` as a compact two-column table.

    Args:
        results: what `run_benchmark` returned.
        min_pipeline_ratio: pipeline / step ratio the table marks as enough.
        min_matmul_fraction: step / matmul FLOP/s fraction marked as enough.

    Returns:
        The table, one line per figure.

    Example:
        >>> print(format_table(run_benchmark(config)))  # doctest: +SKIP
    """
    m, c, p, f, s = (
        results[k] for k in ("machine", "config", "pipeline", "flops", "step")
    )
    mm = results["matmul"]

    def verdict(value, minimum):
        return "ok" if value >= minimum else "BELOW"

    norm = c["norm"] + (" (bn_init)" if c["bn_init"] else "")
    rows = [
        (
            "config",
            f"{c['dataset']}, {c['encoder']}, {norm}, {c['image_size']} px, "
            f"{c['compute_dtype']}",
        ),
        (
            "batch",
            f"{c['batch_size']} = {m['num_devices']} x {c['per_device_batch']}"
            + (
                f" in {c['accumulation_steps']} micro-batches"
                if c["accumulation_steps"] > 1
                else ""
            )
            + ("  (synthetic)" if c["synthetic"] else ""),
        ),
        (
            "machine",
            f"{m['platform']} ({m['device_kind']}) x{m['num_devices']}, "
            f"{m['host_cpus']} host CPUs, load {m['load_average_start']:.2f} -> "
            f"{m['load_average_end']:.2f}",
        ),
        (
            "compile",
            f"init (incl. compile) {results['compile']['init_s']:.1f} s, trace+lower "
            f"{results['compile']['trace_lower_s']:.1f} s, XLA compile "
            f"{results['compile']['xla_compile_s']:.1f} s",
        ),
        (
            "train step",
            _rate(results["step"]["images_per_s"])
            + f", {s['images_per_s_per_device']:,.1f} img/s/device"
            + f", {1e3 * s['seconds_per_step']:.1f} ms/step",
        ),
        *(
            [
                (
                    "  CPU-time basis",
                    f"{s['idle_cpu_estimate']:,.0f} img/s on idle cores "
                    f"(got {100 * s['core_share']:.0f}% of the cores)",
                )
            ]
            if s["idle_cpu_estimate"]
            else []
        ),
        (
            "input pipeline (host)",
            _rate(p["host"]["images_per_s"]) if p["host"] else "n/a (synthetic)",
        ),
        (
            "  + prefetch_to_device",
            _rate(p["prefetch"]["images_per_s"])
            + ("  (transfer only)" if p["host"] is None else ""),
        ),
        ("train loop (load+step)", _rate(p["train_loop_images_per_s"])),
        (
            "  step time",
            f"device {1e3 * s['seconds_per_step']:.1f} ms + input wait "
            + (
                f"{1e3 * p['input_wait_s_per_step']:.1f} ms"
                if p["input_wait_s_per_step"] is not None
                else "n/a (synthetic)"
            ),
        ),
        (
            "pipeline / step",
            f"{p['prefetch_over_step']:.1f}x  "
            f"[{verdict(p['prefetch_over_step'], min_pipeline_ratio)}: "
            f">= {min_pipeline_ratio:g}x]",
        ),
        (
            "step FLOPs (XLA)",
            f"{_si(f['per_step'], 'FLOP')} total, "
            f"{_si(f['per_step_per_device'], 'FLOP')}/device "
            f"(unoptimised HLO: {_si(f['per_step_unoptimized_hlo'], 'FLOP')})",
        ),
        (
            "step FLOP/s",
            f"{_si(f['achieved_per_s'], 'FLOP/s')} total, "
            f"{_si(f['achieved_per_s_per_device'], 'FLOP/s')}/device",
        ),
        (
            f"matmul {mm['dtype']} {mm['size']}^2",
            f"{_si(mm['total'], 'FLOP/s')} total, "
            f"{_si(mm['per_device'], 'FLOP/s')}/device; "
            f"one device alone {_si(mm['single_device'], 'FLOP/s')}",
        ),
        *(
            [
                (
                    "  CPU-time basis",
                    f"{_si(mm['total_per_cpu_s'] * m['host_cpus'], 'FLOP/s')} "
                    "on idle cores",
                )
            ]
            if results["matmul_fraction_cpu_time"]
            else []
        ),
        (
            "step / matmul",
            f"{100 * results['matmul_fraction']:.1f}%  "
            f"[{verdict(results['matmul_fraction'], min_matmul_fraction)}: "
            f">= {100 * min_matmul_fraction:g}%]"
            + (
                f"; CPU-time basis {100 * results['matmul_fraction_cpu_time']:.1f}%"
                if results["matmul_fraction_cpu_time"]
                else ""
            ),
        ),
        (
            "memory / device",
            f"peak {_bytes(results['memory']['peak_bytes_per_device'])}; "
            f"XLA buffers {_bytes(results['memory']['xla_buffer_bytes_per_device'])}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# ---------------------------------------------------------------------- CLI
def _define_flags() -> dict[str, flags.FlagHolder]:
    # `--config` and `--cpu_devices` are byol.main's (imported above); defined
    # here, at run time only, so that importing this module adds no flags.
    return dict(
        steps=flags.DEFINE_integer("steps", 20, "Timed train steps."),
        windows=flags.DEFINE_integer("windows", 5, "Timed windows (median)."),
        warmup_steps=flags.DEFINE_integer("warmup_steps", 2, "Untimed steps."),
        synthetic=flags.DEFINE_bool(
            "synthetic", False, "Random uint8 batches instead of the dataset."
        ),
        matmul_size=flags.DEFINE_integer(
            "matmul_size", None, "Reference matmul side (2048 CPU, 8192 otherwise)."
        ),
        pipeline_batches=flags.DEFINE_integer(
            "pipeline_batches", 50, "Timed input pipeline batches."
        ),
        json_out=flags.DEFINE_string("json_out", None, "Also write JSON here."),
    )


def main(argv, holders: dict[str, flags.FlagHolder]) -> None:
    """Runs the benchmark with the command line's flags and prints the table."""
    del argv
    logging.set_verbosity(logging.WARNING)
    runtime.set_cpu_flags(flags.FLAGS.cpu_devices)  # Before JAX's backends.
    values = {name: holder.value for name, holder in holders.items()}
    json_out = values.pop("json_out")
    results = run_benchmark(flags.FLAGS.config, **values)
    print(format_table(results))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    runtime.quiet_logs()
    _holders = _define_flags()
    # byol.main requires --workdir for training; the benchmark writes nothing.
    delattr(flags.FLAGS, "workdir")
    app.run(lambda argv: main(argv, _holders))
