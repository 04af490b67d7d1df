"""What `pip install .` puts into site-packages: the project under its own name, mongo_migrate.

A Docker image or a Dask worker may have another package called `tasks` or `flows` installed; the
project's code must be imported from its own folders whatever else is on the path.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("blocks", "tasks", "flows", "deployments", "sandbox")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, cwd=out)
    (wheel,) = out.glob("mongo_migrate-*.whl")
    return wheel


def test_the_wheel_holds_every_module_under_mongo_migrate_and_nothing_at_the_top(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert top_level == {"mongo_migrate", "mongo_migrate-0.1.0.dist-info"}
    expected = {f"mongo_migrate/{p.relative_to(ROOT).as_posix()}"
                for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts}
    assert expected <= set(names), f"left out of the wheel: {sorted(expected - set(names))}"
    entry_points = zipfile.ZipFile(wheel).read("mongo_migrate-0.1.0.dist-info/entry_points.txt").decode()
    assert "mongo-migrate = mongo_migrate.flows.cli:console_main" in entry_points


def test_the_install_compiles_every_package_folder():
    with open(ROOT / "pyproject.toml", "rb") as f:
        folders = list(tomllib.load(f)["tool"]["setuptools"]["package-dir"].values())
    assert sorted(folders) == sorted(PACKAGES)
    [line] = [x for x in (ROOT / "Makefile").read_text().splitlines() if x.startswith("PACKAGES :=")]
    assert line.split(":=")[1].split("#")[0].split() == folders


def test_the_installed_project_imports_its_own_modules_beside_another_tasks_package(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    # other packages of the same short names, first on the path: a bare `import tasks` would get them
    decoys = tmp_path / "decoys"
    for name in PACKAGES:
        (decoys / name).mkdir(parents=True)
        (decoys / name / "__init__.py").write_text(f"raise ImportError('the decoy {name} was imported')\n")
    script = (
        "import importlib, pkgutil, sys\n"
        "import mongo_migrate\n"
        "found = []\n"
        "for m in pkgutil.walk_packages(mongo_migrate.__path__, 'mongo_migrate.'):\n"
        "    found.append(importlib.import_module(m.name).__file__)\n"
        "print(len(found))\n"
        "outside = [f for f in found if not f.startswith(sys.argv[1])]\n"
        "assert not outside, outside\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(decoys), str(site)])}
    done = subprocess.run([sys.executable, "-c", script, str(site)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = sum(1 for package in PACKAGES for _ in (ROOT / package).rglob("*.py"))
    assert int(done.stdout.split()[-1]) == modules
    cli = subprocess.run([sys.executable, "-m", "mongo_migrate.flows.cli", "--help"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "usage: mongo-migrate" in cli.stdout
