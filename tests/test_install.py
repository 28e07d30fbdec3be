"""Installed like a library: a wheel of the project, put in a fresh virtual environment, runs a shipped study by name
from a folder that holds no studies/ (the ladder, and the report it writes at the end).

The wheel is built from a copy of the sources (the build writes build/ and *.egg-info beside them); the fresh
environment gets the dependencies through a .pth line naming this interpreter's site-packages, so nothing is
downloaded (no pip in it: this pip installs into it with --python).
"""

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def build_wheel(folder: Path) -> Path:
    """The project's wheel, built from a copy of its sources (the build writes beside them)."""
    source = folder / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source)
    for name in ("ablation", "studies"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    # Offline where this environment can build a wheel itself: setuptools with bdist_wheel (its own from 70.1, else
    # the wheel package's); otherwise pip's build isolation downloads them (CI has the internet).
    offline = importlib.util.find_spec("setuptools") and (importlib.util.find_spec("wheel") or importlib.util.find_spec(
        "setuptools.command.bdist_wheel"))
    isolation = ["--no-build-isolation"] if offline else []
    succeed([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", folder / "wheels", source])
    return next((folder / "wheels").glob("ablation-*.whl"))


def fresh_environment(folder: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed (not editable) and this environment's packages visible."""
    succeed([sys.executable, "-m", "venv", "--without-pip", folder / "venv"])
    python = folder / "venv" / "bin" / "python"
    purelib = succeed([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    ours = dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"]])
    (Path(purelib) / "dependencies.pth").write_text("\n".join(ours) + "\n")  # after its own site-packages on sys.path
    succeed([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    return python


def succeed(command, **options) -> str:
    """Run a command that must succeed; its stdout (its stderr in the failure)."""
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600, **options)
    assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_holds_every_module_and_the_studies(tmp_path):
    files = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "ablation").rglob("*.py")}
    studies = {f"ablation/studies/{p.name}" for p in (REPO / "studies").glob("*.toml")}
    assert len(studies) >= 3 and studies <= files
    assert modules <= files, f"not in the wheel: {sorted(modules - files)}"


def test_an_installed_package_runs_a_shipped_study_by_name_from_any_folder(tmp_path, cifar_path):
    python = fresh_environment(tmp_path, build_wheel(tmp_path))
    elsewhere = tmp_path / "elsewhere"  # no studies/ here, and not the repository
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/store/mlflow.db"
    (tmp_path / "store").mkdir()
    where = succeed([python, "-c", "import ablation.core.study as s; print(s.SHIPPED_STUDIES)"], cwd=elsewhere, env=env)
    assert Path(where.strip()).is_relative_to(tmp_path / "venv"), where
    done = subprocess.run([python, "-m", "ablation.ladder", "--study", "assignment", "--profile", "smoke",
                           "--steps", "template", "--data", str(cifar_path)],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "study 'assignment' (assignment.toml)" in output
    assert (elsewhere / "reports" / "assignment" / "report.html").is_file(), output[-3000:]
