"""The project's layers: no import circle among its modules, light modules without torch,
benchmarks that stand alone."""
from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = {p.stem for p in ROOT.glob("*.py")}


def imports_of(path: Path) -> set[str]:
    """The project modules ``path`` imports anywhere (in functions too), except in its
    ``if __name__ == "__main__":`` block — a script's entry, not a dependency of the module."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return (found & MODULES) - {path.stem}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_circle_among_the_project_modules():
    graph = {m: imports_of(ROOT / f"{m}.py") for m in MODULES}
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))
    # the check itself finds a circle when there is one
    assert find_cycle({**graph, "config": graph["config"] | {"coregister"}}) is not None


def test_config_and_geo_load_without_torch():
    code = "import sys; sys.path.insert(0, %r); import config, geo, data_preprocess; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code % str(ROOT)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_benchmarks_stand_alone():
    """No benchmark imports the tests: shared helpers live in the project (or benchmarks/)."""
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        assert "tests" not in {n.split(".")[0] for n in _all_imports(path)}, path.name


def _all_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_every_script_builds_its_parser_on_the_one_skeleton():
    """Scripts share ``cli.parser`` / ``cli.add_runtime`` (one place for the shared flags and the
    one-line errors): ``argparse.ArgumentParser`` is built in ``cli.py`` alone."""
    for path in sorted(ROOT.glob("*.py")):
        if path.name == "cli.py":
            continue
        assert "ArgumentParser(" not in path.read_text(), path.name
    for script in ("data_preprocess", "stages", "inference", "coregister", "evaluate", "training"):
        assert "cli.parser(" in (ROOT / f"{script}.py").read_text(), script


def test_every_benchmark_and_script_starts():
    """Each benchmark and top-level script imports and explains its flags (``--help``): a moved
    function or a broken import shows here, not in a user's run."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py")) + [ROOT / f"{s}.py" for s in (
        "coregister", "inference", "data_preprocess", "evaluate", "SuperPoint", "SuperGlue_architecture",
        "train_superpoint", "train_superglue")]
    def start(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:           # a fresh interpreter each, two at a time
        for path, done in zip(scripts, pool.map(start, scripts)):
            assert done.returncode == 0 and "usage" in done.stdout, f"{path.name}: {done.stderr[-500:]}"


LAYERS = {  # docs/architecture.md's module map: a module imports from its own layer or those below
    "config": 0,
    "utils": 1, "imaging": 1, "geometry": 1, "geo": 1, "results": 1, "cli": 1, "remote": 1,
    "data_preprocess": 2, "checkpoints": 2, "dataset": 2, "samples": 2,
    "SuperPoint": 3, "SuperGlue_architecture": 3,
    "matching": 4,
    "evaluate": 5, "visualization": 5, "coreg_engine": 5,
    "inference": 6, "stages": 6, "coregister": 6, "stack": 6, "stack_outputs": 6, "stack_cache": 6, "training": 6, "train_superpoint": 6,
    "train_superglue": 6,
}


def test_every_module_imports_only_from_its_layer_or_below():
    assert set(LAYERS) == MODULES, "put every module in a layer (docs/architecture.md)"
    wrong = [f"{m} (layer {LAYERS[m]}) imports {n} (layer {LAYERS[n]})" for m in sorted(MODULES)
             for n in imports_of(ROOT / f"{m}.py") if LAYERS[n] > LAYERS[m]]
    assert not wrong, "; ".join(wrong)
