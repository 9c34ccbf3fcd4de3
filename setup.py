"""Installs byol: BYOL and BYOL without batch statistics in JAX/Haiku."""

import setuptools

setuptools.setup(
    name="byol",
    version="0.1.0",
    description=(
        "BYOL (Grill et al., 2020) and BYOL without batch statistics "
        "(Richemond et al., 2020) in JAX and Haiku."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # configs/ too: shipped configs (and a user's that imports them) load
    # from any directory.
    packages=setuptools.find_packages(include=["byol", "byol.*", "configs"]),
    python_requires=">=3.11",
    install_requires=[
        "absl-py>=2.1",
        "chex>=0.1.90",
        "dm-haiku>=0.0.17",
        "dm-pix>=0.4.4",
        # Tested: 0.10.2 (Python 3.11's newest) and 0.12 (Python 3.12's).
        "jax>=0.10.2,<0.13",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "optax>=0.2.5",
    ],
    extras_require={
        # The training system: tf.data input pipeline, checkpoints, logs, plots.
        "train": [
            "matplotlib>=3.8",
            "orbax-checkpoint>=0.11",
            "tensorboardX>=2.6",
            "tensorflow-cpu>=2.18",
            "tensorflow-datasets>=4.9.7",
            # tfds imports it but does not declare it on Python >= 3.9.
            "importlib_resources>=6",
        ],
        "dev": ["packaging>=23", "pytest>=8", "pytest-xdist>=3.6", "ruff>=0.8"],
    },
)
