"""The project's layers: no import circle among its modules (imports made lazily included), light
modules without torch, benchmarks that stand alone."""
from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("config", "utils", "dataset", "data_preprocess", "SuperPoint", "SuperGlue_architecture",
                "inference", "train_superpoint", "train_superglue", "coregister", "evaluate")


def module_name(path: Path) -> str:
    """``s2coreg/io/geo.py`` → ``s2coreg.io.geo``; ``s2coreg/io/__init__.py`` → ``s2coreg.io``; a
    checkout's entry point by its file's name."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in [*sorted((ROOT / "s2coreg").rglob("*.py")),
                                       *(ROOT / f"{e}.py" for e in ENTRY_POINTS)]}


def imports_in(source: str, itself: str = "") -> set[str]:
    """The project modules ``source`` imports anywhere: at its top, in functions (lazily, on first
    use), in its ``__main__`` block, and by name (``import_module("s2coreg.…")``, a command's
    ``"module:function"``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:              # from s2coreg.io import geo: the submodule, not the package
                found.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("s2coreg."):
            found.add(node.value.partition(":")[0])
    return {m for m in found if m in MODULES} - {itself}


def imports_of(path: Path) -> set[str]:
    return imports_in(path.read_text(), module_name(path))


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
    """A module that imports another inside a function or its ``__main__`` block depends on it as
    much as one that imports it at its top: the circle of the networks' old ``__main__`` blocks
    (SuperPoint → stages → matching → SuperPoint) counts."""
    graph = {m: imports_of(p) for m, p in MODULES.items()}
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))
    # the check sees a lazy import and a __main__ block's, and finds the circle they close
    lazy = imports_in("def f():\n    import s2coreg.coregistration.pair\n")
    main = imports_in('if __name__ == "__main__":\n    from s2coreg.matching import stages\n')
    assert lazy == {"s2coreg.coregistration.pair"} and main == {"s2coreg.matching.stages"}
    assert find_cycle({**graph, "s2coreg.models.superpoint": graph["s2coreg.models.superpoint"] | main})


def test_config_and_geo_load_without_torch():
    code = ("import sys; sys.path.insert(0, %r); import s2coreg, s2coreg.config, s2coreg.io.geo, "
            "s2coreg.io.grid, s2coreg.io.products, s2coreg.preprocess; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code % str(ROOT)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


STACK_ONLY = ("dask", "distributed", "xarray", "pystac", "pystac_client")


def test_a_pair_loads_no_stack_or_plotting_library_until_it_needs_one(tmp_path):
    """A pair's command (``s2coreg.coregistration.pair``, what ``coregister A B`` runs) imports none of
    the stack's libraries, matplotlib or torch at import; a whole pair run loads matplotlib for its
    report only, never the stack's (Dask, xarray, STAC), and torch only where SIFT does not answer
    (the default, sift-first, on the sample pair: SIFT answers; ``--matcher fast`` loads it):
    start-up is what the run needs."""
    data = ROOT / "tests" / "data" / "bracciano"
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from s2coreg import commands
import s2coreg.coregistration.pair
heavy = {STACK_ONLY + ("matplotlib", "torch")!r}
print("at import:", sorted(m for m in sys.modules if m.split(".")[0] in heavy))
rc = commands.run("coregister", [{str(data / "20160718.tif")!r}, {str(data / "20180610.tif")!r},
                                 "--output", {str(tmp_path / "out")!r}] + sys.argv[1:])
print("after the run:", rc, sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy)))
"""
    for extra, loaded in (([], "['matplotlib']"), (["--matcher", "fast"], "['matplotlib', 'torch']")):
        out = subprocess.run([sys.executable, "-c", code, *extra], capture_output=True, text=True, check=True,
                             cwd=tmp_path)
        lines = out.stdout.splitlines()
        assert "at import: []" in lines
        assert f"after the run: 0 {loaded}" in lines, (extra, lines)   # the report's figure, nothing of the stack's


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
    """Commands share ``cli.parser`` / ``cli.add_runtime`` (one place for the shared flags and the
    one-line errors): ``argparse.ArgumentParser`` is built in ``s2coreg/cli.py`` alone, and every
    console command's module builds its parser on it."""
    for name, path in MODULES.items():
        if name != "s2coreg.cli":
            assert "ArgumentParser(" not in path.read_text(), path.name
    from s2coreg.commands import COMMANDS

    for module, _ in COMMANDS.values():
        text = MODULES[module.partition(":")[0]].read_text()
        assert "cli.parser(" in text or "training_parser(" in text, module        # loop.training_parser: on cli


def test_every_command_is_a_checkout_script_and_a_console_command():
    """``pyproject.toml``'s console commands are ``s2coreg.commands``'s, and each checkout script
    named there runs its command."""
    import tomllib

    from s2coreg import commands

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(commands.COMMANDS)
    for command, target in scripts.items():
        function = target.partition(":")[2]
        assert hasattr(commands, function), target
        checkout_script = commands.COMMANDS[command][1]
        if checkout_script:
            assert f"commands.{function}()" in (ROOT / checkout_script).read_text(), checkout_script


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
    "s2coreg.config": 0, "s2coreg.io": 0, "s2coreg.models": 0, "s2coreg.matching": 0,
    "s2coreg.coregistration": 0, "s2coreg.training": 0,
    "s2coreg.utils": 1, "s2coreg.io.imaging": 1, "s2coreg.matching.geometry": 1, "s2coreg.io.geo": 1,
    "s2coreg.results": 1, "s2coreg.display": 1, "s2coreg.picture": 1, "s2coreg.cli": 1, "s2coreg.io.remote": 1,
    "s2coreg.io.grid": 2,
    "s2coreg.io.products": 2, "s2coreg.models.checkpoints": 2, "s2coreg.training.dataset": 2, "s2coreg.samples": 2,
    "s2coreg.models.superpoint": 3, "s2coreg.models.superglue": 3,
    "s2coreg.matching.pipeline": 4,
    "s2coreg.training.evaluate": 5, "s2coreg.matching.visualization": 5, "s2coreg.coregistration.engine": 5,
    "s2coreg.matching.matcher": 6, "s2coreg.matching.stages": 6, "s2coreg.coregistration.pair": 6,
    "s2coreg.coregistration.stack": 6, "s2coreg.coregistration.dates": 6, "s2coreg.coregistration.outputs": 6, "s2coreg.coregistration.cache": 6,
    "s2coreg.preprocess": 6,
    "s2coreg.training.loop": 6, "s2coreg.training.superpoint": 6, "s2coreg.training.superglue": 6,
    "s2coreg.commands": 7, "s2coreg": 7,  # the package's names load lazily from the layers below
    **{e: 8 for e in ENTRY_POINTS},   # the checkout's scripts: nothing in the package imports them
}


def test_every_module_imports_only_from_its_layer_or_below():
    assert set(LAYERS) == set(MODULES), "put every module in a layer (docs/architecture.md)"
    wrong = [f"{m} (layer {LAYERS[m]}) imports {n} (layer {LAYERS[n]})" for m in sorted(MODULES)
             for n in imports_of(MODULES[m]) if LAYERS[n] > LAYERS[m]]
    assert not wrong, "; ".join(wrong)
