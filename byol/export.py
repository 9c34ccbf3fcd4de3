r"""Export a pre-trained encoder to a plain ``.npz``: numpy arrays and JSON only.

    python -m byol.export --workdir=workdirs/fm --output=encoder.npz \
        [--projector] [--target] [--data_dir=DIR]

The newest checkpoint of the pre-training work directory is restored
(`byol.run_dir.restore_run`; the dataset's metadata gives the classifier's
size, so `--data_dir` must find it if it moved). Keys:

    params/<module>/<name>          online encoder parameters, e.g.
                                    params/res_net50/~/initial_conv/w
    state/<module>/<name>           its state (BN moving averages)
    target_params/..., target_state/...   the target network's (--target)
    model                           JSON of the run's `model` config section
    step                            the checkpoint's step (int64)
    format                          "byol-encoder-npz-1"

A parameter's name never holds ``/``, so the last ``/`` splits module from
name. ``--projector`` adds the projector; the predictor and the online
classifier are never exported. `load_encoder_npz` reads the file back and
`encoder_forward` rebuilds the network it fits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import haiku as hk
import jax
import ml_collections
import numpy as np
from absl import flags, logging

from byol import model as models
from byol import networks
from byol import run_dir as run_dirs

FORMAT = "byol-encoder-npz-1"
# Top-level modules of `make_forward`'s network that are not the encoder.
HEADS = ("projector", "predictor", "classifier")
_GROUPS = ("params", "state", "target_params", "target_state")


def _select(tree: Mapping, modules: tuple[str, ...]) -> dict[str, dict]:
    """The encoder's modules of a Haiku tree, plus the heads named in `modules`."""
    return {
        module: dict(leaves)
        for module, leaves in tree.items()
        if module.split("/")[0] not in HEADS or module.split("/")[0] in modules
    }


def _flatten(group: str, tree: Mapping) -> dict[str, np.ndarray]:
    return {
        f"{group}/{module}/{name}": np.asarray(leaf)
        for module, leaves in tree.items()
        for name, leaf in leaves.items()
    }


def encoder_arrays(
    state,
    model: ml_collections.ConfigDict,
    step: int,
    *,
    projector: bool = False,
    target: bool = False,
) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` (key layout in the module docstring)."""
    heads = ("projector",) if projector else ()
    trees = {"params": state.online_params, "state": state.online_state}
    if target:
        trees.update(target_params=state.target_params, target_state=state.target_state)
    arrays = {}
    for group, tree in trees.items():
        arrays.update(_flatten(group, _select(tree, heads)))
    arrays["model"] = np.array(json.dumps(model.to_dict(), sort_keys=True))
    arrays["step"] = np.array(step, np.int64)
    arrays["format"] = np.array(FORMAT)
    return arrays


def export_encoder(
    workdir: str,
    output: str,
    *,
    data_dir: str | None = None,
    projector: bool = False,
    target: bool = False,
) -> dict[str, Any]:
    """Writes the encoder of a run's newest checkpoint to `output` (atomically).

    Args:
        workdir: the pre-training run's work directory.
        output: the ``.npz`` to write.
        data_dir: where the run's dataset is now, if it moved (its metadata
            gives the classifier's number of classes).
        projector: also export the projector.
        target: also export the target network.

    Returns:
        ``output``, ``step``, ``encoder``, ``arrays`` (count), ``parameters``.

    Raises:
        FileNotFoundError: no config.json or checkpoint, or no dataset.
        ValueError: a checkpoint that does not fit config.json.
    """
    if not os.path.isfile(os.path.join(workdir, run_dirs.CONFIG_FILE)):
        raise FileNotFoundError(
            f"--workdir {workdir!r} has no config.json; expected the --workdir "
            "of a pre-training run"
        )
    if not output.strip() or os.path.isdir(output):
        raise ValueError(f"--output {output!r} must name the .npz file to write")
    run_dirs.writable_dir(os.path.dirname(os.path.abspath(output)), "--output")
    config = run_dirs.read_config(workdir)
    if data_dir:
        config.data.data_dir = data_dir
    run = run_dirs.restore_run(workdir, config)
    if target and not hasattr(run.state, "target_params"):
        raise ValueError(
            f"--target: the run in {workdir!r} (method {config.method!r}) has no "
            "target network"
        )
    arrays = encoder_arrays(
        run.state, config.model, run.step, projector=projector, target=target
    )
    partial = f"{output}.partial"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(partial, "wb") as f:
        np.savez(f, **arrays)
    os.replace(partial, output)
    return {
        "output": output,
        "step": run.step,
        "encoder": config.model.encoder,
        "arrays": len(arrays),
        "parameters": sum(a.size for k, a in arrays.items() if k.startswith("params/")),
    }


def load_encoder_npz(path: str | os.PathLike) -> dict[str, Any]:
    """An exported encoder read back, no pickle involved.

    Returns ``params`` and ``state`` (and ``target_params``/``target_state``
    when exported) as ``{module: {name: array}}``, ``model`` (dict) and
    ``step``; a file of another kind is a one-line ValueError.
    """
    path = os.fspath(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not an exported BYOL encoder: {error}") from None
    if not isinstance(npz, Mapping):  # a .npy: one array
        raise ValueError(f"{path} is not an exported BYOL encoder (one array)")
    with npz:
        if "format" not in npz.files:
            raise ValueError(f"{path} is not an exported BYOL encoder (no 'format')")
        if str(npz["format"]) != FORMAT:
            raise ValueError(
                f"{path} has format {str(npz['format'])!r}; this code reads {FORMAT!r}"
            )
        out: dict[str, Any] = {
            "model": json.loads(str(npz["model"])),
            "step": int(npz["step"]),
        }
        for key in npz.files:
            if key in ("format", "model", "step"):
                continue
            group, _, rest = key.partition("/")
            module, _, name = rest.rpartition("/")
            if group not in _GROUPS or not module or not name:
                raise ValueError(
                    f"{path} has an unknown key {key!r}; expected "
                    "<params|state|target_params|target_state>/<module>/<name>"
                )
            out.setdefault(group, {}).setdefault(module, {})[name] = npz[key]
    out.setdefault("params", {})
    out.setdefault("state", {})
    return out


def encoder_forward(model: Mapping[str, Any]) -> hk.TransformedWithState:
    """The encoder alone, as an exported file's params and state fit it.

    Its BN layers use their own batch in training mode (not a cross-device
    one), so it runs anywhere: ``apply(params, state, None, images,
    is_training)`` on normalised images [B, H, W, C] gives embeddings [B, D].
    """
    model = ml_collections.ConfigDict(dict(model))
    norm = dataclasses.replace(
        models.network_norms(model).encoder, cross_replica_axis=None
    )

    def forward(images: jax.Array, is_training: bool) -> jax.Array:
        encoder = networks.make_encoder(
            model.encoder,
            width_multiplier=model.width_multiplier,
            norm=norm,
            small_image=model.small_image,
        )
        return encoder(images, is_training)

    return hk.transform_with_state(forward)


# ----------------------------------------------------------------------- CLI
# Flags of their own, so that importing this module next to byol.main (which
# defines --workdir too) does not clash.
FLAGS = flags.FlagValues()
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Work directory of a pre-training run.", flag_values=FLAGS
)
_OUTPUT = flags.DEFINE_string("output", None, "The .npz to write.", flag_values=FLAGS)
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "Where the run's dataset is now (default: as in its config.json).",
    flag_values=FLAGS,
)
_PROJECTOR = flags.DEFINE_bool(
    "projector", False, "Also export the projector.", flag_values=FLAGS
)
_TARGET = flags.DEFINE_bool(
    "target", False, "Also export the target network.", flag_values=FLAGS
)
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Show the full traceback of errors.", flag_values=FLAGS
)
flags.mark_flags_as_required(["workdir", "output"], flag_values=FLAGS)


def main(argv: list[str]) -> int:
    """Parses the command line, exports, returns the exit status (2: bad input)."""
    FLAGS.unparse_flags()  # a second call starts from the defaults again
    if any(arg in ("--help", "-h", "--helpfull", "-?") for arg in argv[1:]):
        print(__doc__.strip() + "\n\nFlags:\n" + FLAGS.module_help(__name__))
        return 0
    try:
        FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Orbax and tfds log every file they touch at INFO.
    logging.set_verbosity(logging.WARNING)
    try:
        summary = export_encoder(
            _WORKDIR.value,
            _OUTPUT.value,
            data_dir=_DATA_DIR.value,
            projector=_PROJECTOR.value,
            target=_TARGET.value,
        )
    except (ValueError, OSError) as error:  # bad input, or the disk
        if _TRACEBACK.value:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"Wrote {summary['output']}: step {summary['step']} of {_WORKDIR.value} "
        f"({summary['encoder']}, {summary['parameters']:,} online parameters, "
        f"{summary['arrays']} arrays)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
