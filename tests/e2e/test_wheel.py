"""A non-editable install ships conf/ inside the package and runs from any directory."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_wheel_ships_configs_and_runs_elsewhere(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels)],
                   check=True, cwd=tmp_path, capture_output=True)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), *map(str, wheels.glob("*.whl"))],
                   check=True, capture_output=True)
    code = ("import sys, ldmkit, ldmkit.runner; print(ldmkit.__file__); print(ldmkit.runner.conf_dir());"
            "sys.argv = ['ldmkit', 'train-ldm', 'cond=class', '--cfg', 'job']; from ldmkit.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)}, check=True).stdout.splitlines()
    assert out[0] == str(target / "ldmkit" / "__init__.py") and out[1] == str(target / "ldmkit" / "conf")
    assert "  _target_: ldmkit.models.conditioners.ClassConditioner" in out


def test_every_config_group_folder_is_a_listed_package():
    """setuptools ships (and stays quiet about) each conf/ group folder only when pyproject lists it."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    packages = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {f"ldmkit.conf.{p.name}" for p in (root / "conf").iterdir() if p.is_dir() and any(p.glob("*.yaml"))}
    assert folders <= packages, sorted(folders - packages)
