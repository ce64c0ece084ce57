"""What `pip install .` (no extras) puts in a fresh virtual environment: its size on disk, its
packages, and that none of the test tooling comes with it; then its commands from another folder.

    python benchmarks/install_size.py            # ~1 min; writes data/results/install_size.json

On our machines pip takes PyTorch's CPU build from the local wheel (pyproject.toml allows
torch<2.14); elsewhere pip's choice of torch decides most of the size."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_TOOLING = ("pytest", "pytest-xdist", "moto", "odc-stac", "rangehttpserver", "flask", "docker", "cfn-lint")


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "data" / "results" / "install_size.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        start = time.time()
        subprocess.run([*pip, "install", "-q", str(ROOT)], check=True, cwd=tmp)
        seconds = time.time() - start
        listed = json.loads(subprocess.run([*pip, "list", "--format", "json"], check=True, capture_output=True,
                                           text=True).stdout)
        packages = {p["name"].lower(): p["version"] for p in listed}
        elsewhere = Path(tmp) / "elsewhere"
        elsewhere.mkdir()
        helped = subprocess.run([str(venv / "bin" / "coregister"), "--help"], cwd=elsewhere, capture_output=True,
                                text=True)
        result = {"megabytes": round(folder_size(venv) / 1e6), "install_seconds": round(seconds),
                  "packages": len(packages), "torch": packages.get("torch"),
                  "test_tooling_installed": sorted(t for t in TEST_TOOLING if t in packages),
                  "coregister_help_from_another_folder": helped.returncode == 0 and "usage" in helped.stdout,
                  "largest": sorted(((p.name, round(folder_size(p) / 1e6)) for p in
                                     (venv / "lib").glob("python*/site-packages/*") if p.is_dir()),
                                    key=lambda kv: -kv[1])[:6]}
    print(f"pip install . (no extras): {result['megabytes']} MB in the venv, {result['packages']} packages, "
          f"torch {result['torch']}, installed in {result['install_seconds']} s")
    print(f"test tooling installed: {result['test_tooling_installed'] or 'none'}; "
          f"coregister --help from another folder: {'ok' if result['coregister_help_from_another_folder'] else 'FAILED'}")
    print("largest: " + ", ".join(f"{n} {mb} MB" for n, mb in result["largest"]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["coregister_help_from_another_folder"] and not result["test_tooling_installed"] else 1


if __name__ == "__main__":
    sys.exit(main())
