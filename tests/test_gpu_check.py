"""The GPU check's wheels cover what a CUDA jax image lacks.

`experiments/gpu_check.sh` installs `make gpu_wheels`' wheels with
``--no-deps`` into an image that has jax, chex, optax and flax: every
requirement of those wheels must be in the image or among the wheels, or the
check dies on an import on the GPU machine (it did: Haiku needs `tabulate`).
"""

import os
import re
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.fixtures import REPO

IMAGE = ("jax", "jaxlib", "chex", "optax", "flax")
# flax is not installed here; what it brings that the wheels use.
FLAX_BRINGS = ("pyyaml",)


def _gpu_wheels() -> dict[str, str]:
    with open(os.path.join(REPO, "Makefile")) as f:
        line = re.search(r"^GPU_WHEELS := (.*)$", f.read(), re.M).group(1)
    return dict(spec.split("==") for spec in line.split())


def _requirements(name: str) -> set[str]:
    """`name`'s own requirements, without extras, for this Python."""
    names = set()
    for text in metadata.requires(name) or ():
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.add(canonicalize_name(requirement.name))
    return names


def _closure(names) -> set[str]:
    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo.extend(_requirements(name))
        except metadata.PackageNotFoundError:
            pass  # flax: not installed here
    return seen


def test_every_requirement_of_the_wheels_is_in_the_image_or_a_wheel():
    wheels = {canonicalize_name(n) for n in _gpu_wheels()}
    image = _closure(IMAGE) | set(FLAX_BRINGS)
    missing = {r for w in wheels for r in _requirements(w)} - wheels - image
    assert not missing, f"add to GPU_WHEELS in the Makefile: {sorted(missing)}"


def test_the_script_installs_the_same_packages_from_pypi():
    with open(os.path.join(REPO, "experiments", "gpu_check.sh")) as f:
        needed = re.search(r'^needed="(.*)"$', f.read(), re.M).group(1).split()
    assert needed == list(_gpu_wheels())
