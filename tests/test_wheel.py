"""What works from a checkout works from a built wheel, run from outside it:
the wheel carries the package and the studies, and the command line finds
both there."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def test_the_wheel_lists_every_package_of_the_checkout():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_checkout = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "recurse").rglob("__init__.py")}
    assert set(setuptools["packages"]) == in_checkout | {"recurse.studies"}
    assert setuptools["package-dir"] == {"recurse.studies": "studies"}


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """The wheel built from this checkout, installed (without dependencies,
    which this environment has) into a folder of its own."""
    build = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(build / "dist"), str(ROOT)], check=True, cwd=build)
    wheels = list((build / "dist").glob("recurse-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(build / "site"),
                    str(wheels[0])], check=True, cwd=build)
    return build / "site"


def run_outside_the_checkout(site, folder, *arguments):
    """``python -m recurse ARGUMENTS`` from ``folder``, importing recurse from ``site`` only."""
    environment = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "recurse", *arguments], cwd=folder, env=environment,
                          capture_output=True, text=True, check=True, timeout=300)


def test_the_wheel_carries_the_studies_and_runs_them_from_any_folder(installed_wheel, tmp_path):
    assert (installed_wheel / "recurse" / "studies" / "tying.py").exists()
    assert not (installed_wheel / "studies").exists()  # no top-level package named "studies"
    where = subprocess.run([sys.executable, "-c", "import recurse, recurse.studies; print(recurse.__file__); "
                            "print(recurse.studies.__file__)"], cwd=tmp_path, capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONPATH": str(installed_wheel)}).stdout.split()
    assert all(Path(path).is_relative_to(installed_wheel) for path in where), where

    demo = tmp_path / "demo"
    run_outside_the_checkout(installed_wheel, tmp_path, "demo", "--quiet", "--tasks", "2", "--steps", "20",
                             "--out", str(demo))
    for name in ("config.json", "metrics.csv", "summary.md", "demo.png"):
        assert (demo / name).stat().st_size > 0, name

    study = tmp_path / "study"
    printed = run_outside_the_checkout(installed_wheel, tmp_path, "run", "tying", "--quick", "--out", str(study))
    assert "tied depth 2" in printed.stdout
    for name in ("summary.md", "tying.png", "config.json"):
        assert (study / name).stat().st_size > 0, name


def test_the_core_imports_no_optional_extra():
    """Integrations and peers are extras: ``import recurse`` loads none of them."""
    extras = ["transformers", "accelerate", "pytorch_lightning", "lightning", "prodigyopt", "dadaptation",
              "dog", "schedulefree", "mechanic_pytorch", "gdtuo", "optuna_dashboard", "expecttest"]
    code = f"import sys, recurse; print([m for m in {extras!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"
