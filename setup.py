"""The package's files; everything else is in pyproject.toml.

The studies stay at the repository's root (studies/, the project's layout) and ship inside the package
as ablation/studies/, so that `--study NAME` finds them after a plain `pip install .`, from any folder
(ablation.core.study.SHIPPED_STUDIES). Subpackages are found, not listed: a new one ships without an edit here.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["ablation", "ablation.*"]) + ["ablation.studies"],
      package_dir={"ablation.studies": "studies"}, package_data={"ablation.studies": ["*.toml"]})
