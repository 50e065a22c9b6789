"""The wheel's packages, plus experiments/ (grids, hydra configs) shipped as harness/experiments.

pyproject.toml holds everything else; only this mapping needs code: setuptools' package finder
cannot place a top-level folder under another package's name, and harness/config/search.py
reads the
configs from harness/experiments/ when installed (experiments/ of the checkout otherwise).
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["core*", "model*", "harness*", "reports*"]),
        "harness.experiments",
    ],
    package_dir={"harness.experiments": "experiments"},
)
