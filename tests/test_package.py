"""The installable package: a wheel built from the checkout holds the code, the shipped
checkpoints and the console commands, and installed elsewhere it finds its checkpoints from any
working directory (no checkout beside it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of what pyproject.toml packages (the build writes build/ beside
    its sources: not into the checkout)."""
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("s2coreg", "model_checkpoints"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True, timeout=300)
    (found,) = out.glob("s2coreg-*.whl")
    return found


def test_the_wheel_holds_the_package_its_checkpoints_and_commands(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "s2coreg").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    shipped = {f"s2coreg/model_checkpoints/{p.name}" for p in (ROOT / "model_checkpoints").glob("*.pt")}
    assert shipped and shipped <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "data/", "campaign/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert all(f"{name} = {target}" in text for name, target in scripts.items())


def test_installed_it_finds_its_checkpoints_from_any_folder(wheel, tmp_path):
    """Installed into a folder of its own and run from another, without the checkout on the path:
    config points at the package's own checkpoints, which load, and the commands start."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import s2coreg, s2coreg.config as c; from s2coreg.models.checkpoints import describe; "
            "print(s2coreg.__file__); print(c.CHECKOUT); print(c.CHECKPOINT_DIR); "
            "print(describe(c.CHECKPOINT_DIR / 'superpoint.pt').splitlines()[0])")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    package, checkout, checkpoints, described = done.stdout.splitlines()
    assert Path(package).is_relative_to(site) and checkout == "None"
    assert Path(checkpoints) == site / "s2coreg" / "model_checkpoints" and "SuperPoint" in described
    helped = subprocess.run([sys.executable, "-c", "import sys; from s2coreg import commands; "
                             "sys.argv = ['coregister', '--help']; sys.exit(commands.coregister())"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: coregister"), helped.stderr[-2000:]
    # the demo's sample is the checkout's: installed, the match command without images says what to give
    bare = subprocess.run([sys.executable, "-c", "import sys; from s2coreg import commands; "
                           "sys.argv = ['s2coreg-match']; sys.exit(commands.match())"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert bare.returncode == 2 and "give two images: s2coreg-match IMAGE0 IMAGE1" in bare.stderr, bare.stderr[-2000:]
    assert len(bare.stderr.strip().splitlines()) == 1 and not (elsewhere / "data").exists()


@pytest.mark.shipped
def test_the_checkout_scripts_run_in_sequence_as_before(tmp_path):
    """In a checkout, the design's top-level scripts still run as a pipeline — stage 1, 2, 3, each
    reading the previous stage's files — and ``from inference import ImageMatcher`` still works."""
    def run(*args):
        done = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{args[0]}: {done.stderr[-2000:]}"
        return done

    pre, features, matches = tmp_path / "pre", tmp_path / "features", tmp_path / "matches"
    run("data_preprocess.py", "--input", ROOT / "data" / "sample" / "pisa", "--output", pre, "--size", 256,
        "--no-masks")
    run("SuperPoint.py", "--input", pre, "--output", features, "--max-keypoints", 256, "--threads", 1)
    assert len(list(features.rglob("*.npz"))) >= 2
    run("SuperGlue_architecture.py", "--features", features, "--output", matches, "--all-pairs", "--threads", 1)
    assert list(matches.rglob("*.npz"))
    images = sorted(pre.rglob("overview.jpg"))
    code = ("from inference import ImageMatcher; import sys; "
            "r = ImageMatcher(threads=1).match_images(sys.argv[1], sys.argv[2]); print(len(r.mkpts0) > 0)")
    assert run("-c", code, *images[:2]).stdout.strip() == "True"
