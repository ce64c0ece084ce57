"""A matcher of one's own, from a module outside the package (this file): registered with
``@register_matcher`` and named ``package.module:name``, it reaches every caller — ``ImageMatcher``,
the pipeline, co-registration of a pair and of a stack on Dask (Python and the command line), the
matching script, the benchmark — and the provenance records it. Installed plugins are found through
the entry-point group ``s2coreg.matchers``; a bad name is one line naming it and the fix."""
from __future__ import annotations

import json
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

import s2coreg.config as config
import s2coreg.coregistration.pair as coregister
import s2coreg.coregistration.stack as stack
import s2coreg.matching.pipeline as matching
import s2coreg.matching.stages as stages
import s2coreg.training.evaluate as evaluate
from s2coreg.matching.matcher import ImageMatcher
from s2coreg.utils import PipelineError

NAME = "plugin-nearest"
SPEC = f"tests.test_plugin_matcher:{NAME}"        # how any process (a Dask worker) finds it
DATA = Path(__file__).parent / "data"
REF, TARGET = DATA / "bracciano" / "20160718.tif", DATA / "bracciano" / "20180610.tif"
DATES = sorted((DATA / "t36uya").glob("*.tif"))[1:4]     # three clear dates (the first is snow)


@matching.register_matcher
class PluginNearest(matching.MutualNearestNeighbours):
    """Mutual nearest neighbours under a name of its own: every result must equal ``mnn``'s."""

    name = NAME


class EntryPointNearest(matching.MutualNearestNeighbours):
    """Not registered here: an installed plugin's, found through its entry point."""

    name = "entry-point-nearest"


def cfg(matcher: str) -> config.CoregisterConfig:
    return config.replace(config.CoregisterConfig(), matcher=matcher)


def shift_of(result) -> np.ndarray:
    assert result["verified"], result["reason"]
    return np.array([result["shift_m"]["dx"], result["shift_m"]["dy"]])


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# ----------------------------------------------------------------------------- the matching path
@pytest.mark.shipped
def test_the_name_reaches_the_pipeline_image_matcher_and_the_benchmark():
    assert matching.matcher_class(SPEC) is PluginNearest and matching.matcher_class(NAME) is PluginNearest
    assert NAME in matching.matcher_choices() and NAME in matching.matcher_choices(superpoint_features=True)
    assert "sift-first" not in matching.matcher_choices(superpoint_features=True)
    pipeline = matching.MatchingPipeline.from_checkpoints(matcher=SPEC, device="cpu")
    assert isinstance(pipeline.matcher, PluginNearest) and pipeline.matcher_name == SPEC
    assert pipeline.name == f"superpoint+{NAME}+refine+correlate"
    assert ImageMatcher(matcher=SPEC, device="cpu").method == pipeline.name
    method = evaluate.build_method(f"superpoint+{SPEC}+refine", config.EvalConfig())
    assert method.name == f"superpoint+{NAME}+refine" and isinstance(method.pipeline.matcher, PluginNearest)
    with pytest.raises(PipelineError, match="no module no_such_package.matchers to import; install it"):
        evaluate.build_method("superpoint+no_such_package.matchers:x", config.EvalConfig())
    with pytest.raises(PipelineError, match=r"unknown method 'superpoint\+lightglue'.*superpoint\+package.module:name"):
        evaluate.build_method("superpoint+lightglue", config.EvalConfig())


def test_the_matching_script_takes_it(tmp_path):
    """``SuperGlue_architecture.py --matcher package.module:name``: the same matches as ``mnn``."""
    rng = np.random.default_rng(0)
    feats = tmp_path / "features"
    feats.mkdir()
    desc = rng.normal(size=(40, 32)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    order = rng.permutation(40)
    points = rng.uniform(0, 200, (40, 2)).astype(np.float32)
    for name, d, p in (("a", desc, points), ("b", desc[order], points[order] + 3)):
        np.savez(feats / f"{name}.npz", keypoints=p, scores=np.ones(40, np.float32), descriptors=d,
                 image_size=np.array([256, 256]))
    for matcher in ("mnn", SPEC):
        assert stages.match_main(["--features", str(feats), "--all-pairs", "--matcher", matcher,
                                  "--output", str(tmp_path / matcher.replace(":", "_"))]) == 0
    ours, theirs = (np.load(tmp_path / m / "a__b.npz") for m in (SPEC.replace(":", "_"), "mnn"))
    np.testing.assert_array_equal(ours["matches0"], theirs["matches0"])
    assert (ours["matches0"][order] == np.arange(40)).all() and str(ours["method"]).startswith(f"superpoint+{NAME}")


@pytest.mark.shipped
def test_a_module_imported_from_the_name_alone(tmp_path, monkeypatch):
    """What a Dask worker does, given only the name: the module is imported (not before), its
    matcher built; a worker's pipeline (``stack.worker_pipeline``) the same."""
    (tmp_path / "own_matchers_for_test.py").write_text(
        "import s2coreg.matching.pipeline as m\n\n"
        "@m.register_matcher\nclass Mine(m.MutualNearestNeighbours):\n    name = 'mine'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(matching, "MATCHERS", dict(matching.MATCHERS))    # left as it was afterwards
    monkeypatch.setattr(stack, "_PIPELINES", {})
    assert "own_matchers_for_test" not in sys.modules and "mine" not in matching.MATCHERS
    try:
        pipeline = stack.worker_pipeline("own_matchers_for_test:mine")
        assert type(pipeline.matcher).__module__ == "own_matchers_for_test"
        assert pipeline.matcher_name == "own_matchers_for_test:mine"
        assert coregister.engine.check_matcher(cfg("mine")).matcher == "own_matchers_for_test:mine"  # what workers get
    finally:
        sys.modules.pop("own_matchers_for_test", None)


def test_an_installed_plugin_by_its_entry_point(monkeypatch):
    """A plain name that is not registered is looked up in the entry points ``s2coreg.matchers``
    (only then); a broken entry point is one line."""
    import importlib.metadata

    points = [EntryPoint("entry-point-nearest", "tests.test_plugin_matcher:EntryPointNearest", "s2coreg.matchers"),
              EntryPoint("broken", "no_such_plugin_package:Matcher", "s2coreg.matchers")]
    scans = []

    def entry_points(group=None, **_):
        scans.append(group)
        return [p for p in points if p.group == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(matching, "MATCHERS", dict(matching.MATCHERS))
    monkeypatch.setattr(matching, "_FROM_ENTRY_POINTS", set())
    assert matching.build_matcher("mnn") and not scans              # a registered name: no scan
    assert "entry-point-nearest" in matching.matcher_choices()
    assert matching.matcher_class("entry-point-nearest") is EntryPointNearest
    assert matching.matcher_spec("entry-point-nearest") == "entry-point-nearest"
    assert coregister.engine.check_matcher(cfg("entry-point-nearest")).matcher == "entry-point-nearest"
    with pytest.raises(PipelineError, match="'broken': the installed plugin's entry point .* does not load "
                                            ".*ModuleNotFoundError.*reinstall"):
        matching.matcher_class("broken")


# ----------------------------------------------------------------------------- co-registration
@pytest.mark.shipped
def test_a_pair_with_ones_own_matcher_python_and_command_line(tmp_path):
    """The shifts of ``mnn``, to 1 mm, and the matcher recorded as the name that finds it again."""
    mnn = coregister.coregister(REF, TARGET, cfg=cfg("mnn"), progress=False)
    own = coregister.coregister(REF, TARGET, cfg=cfg(SPEC), progress=False)
    np.testing.assert_allclose(shift_of(own), shift_of(mnn), atol=1e-3)
    assert own["provenance"]["settings"]["matcher"] == SPEC
    assert own["provenance"]["settings"]["matching"] == f"superpoint+{NAME}+refine+correlate"
    given = coregister.coregister(REF, TARGET, pipeline=matching.MatchingPipeline.from_checkpoints(matcher=NAME),
                                  progress=False)                       # a pipeline given: recorded by its spec
    assert given["provenance"]["settings"]["matcher"] == SPEC
    assert coregister.main([str(REF), str(TARGET), "--matcher", SPEC, "--output", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "coregistration.json").read_text())
    assert written["provenance"]["settings"]["matcher"] == SPEC
    np.testing.assert_allclose([written["shift_m"]["dx"], written["shift_m"]["dy"]], shift_of(mnn), atol=1e-3)


@pytest.mark.shipped
def test_a_stack_with_ones_own_matcher_python_and_command_line(tmp_path, stack_cli_on_shared_cluster):
    """On Dask (the run's shared cluster): every date placed as ``mnn`` places it, to 1 mm; the
    matcher recorded in stack.json."""
    dask_client = stack_cli_on_shared_cluster
    dates = [str(p) for p in DATES]
    mnn = stack.coregister_stack(dates, None, dates[0], cfg=cfg("mnn"), client=dask_client, progress=False)
    own = stack.coregister_stack(dates, None, dates[0], cfg=cfg(SPEC), client=dask_client, progress=False)
    assert own["provenance"]["settings"]["matcher"] == SPEC
    assert own["provenance"]["settings"]["matching"].startswith(f"superpoint+{NAME}")
    a = {r["date"]: r for r in mnn["dates"]}
    b = {r["date"]: r for r in own["dates"]}
    assert a.keys() == b.keys() and sum(r["status"] == "ok" for r in a.values()) == 2
    for date in a:
        assert a[date]["status"] == b[date]["status"]
        if a[date]["status"] == "ok":
            assert abs(a[date]["dx_m"] - b[date]["dx_m"]) < 1e-3 and abs(a[date]["dy_m"] - b[date]["dy_m"]) < 1e-3
    assert coregister.main(["--stack", *dates, "--reference", dates[0], "--matcher", SPEC,
                            "--output", str(tmp_path / "out")]) == 0
    info = json.loads((tmp_path / "out" / "stack.json").read_text())
    assert info["provenance"]["settings"]["matcher"] == SPEC


@pytest.mark.shipped
def test_bad_names_are_one_line_naming_the_fix(tmp_path, capsys):
    """An unknown name, a module that does not exist and one that registers no such matcher: one
    line each, from Python and from the command line (pair and stack), before any work; the line
    for co-registration lists what it takes, read from the registry."""
    with pytest.raises(PipelineError, match="unknown matcher 'lightglue'; choose from auto, .*mnn.*"
                                            f"{NAME}.*sift-first, or name your own as package.module:name"):
        ImageMatcher(matcher="lightglue")
    taken = ", ".join(matching.matcher_choices())                      # a pair: every one, the cascades too
    assert NAME in taken and "sift-first" in taken
    with pytest.raises(PipelineError, match=f"^matcher='lightglue': no such matcher; co-registration takes "
                                            f"{taken} or a matcher of your own as package.module:name$"):
        coregister.coregister(REF, TARGET, cfg=cfg("lightglue"), progress=False)
    taken = ", ".join(matching.matcher_choices(superpoint_features=True))  # a stack: SuperPoint's features alone
    assert NAME in taken and "sift-first" not in taken
    with pytest.raises(PipelineError, match=f"^matcher='sift-first': not for a stack, which extracts.*; a stack takes "
                                            f"{taken} or a matcher of your own as package.module:name$"):
        stack.coregister_stack([str(p) for p in DATES], cfg=cfg("sift-first"), progress=False)
    with pytest.raises(PipelineError, match="matcher 'no_such_package.matchers:x': no module "
                                            "no_such_package.matchers to import; install it, or add the folder"):
        stack.coregister_stack([str(p) for p in DATES], cfg=cfg("no_such_package.matchers:x"), progress=False)
    with pytest.raises(PipelineError, match="tests.test_plugin_matcher registers no matcher 'lightglue' "
                                            f"\\(it registers {NAME}\\); decorate its class with @register_matcher"):
        matching.MatchingPipeline.from_checkpoints(matcher="tests.test_plugin_matcher:lightglue")
    out = str(tmp_path / "out")
    pair_taken = ", ".join(matching.matcher_choices())
    for argv, said in (([str(REF), str(TARGET), "--matcher", "lightglue"], f"--matcher lightglue: no such matcher; "
                                                                             f"co-registration takes {pair_taken} or a matcher"),
                       ([str(REF), str(TARGET), "--matcher", "no_such_package.matchers:x"], "no module"),
                       (["--stack", *map(str, DATES), "--matcher", "lightglue"], f"takes {taken} or a matcher"),
                       (["--stack", *map(str, DATES), "--matcher", "no_such_package.matchers:x"], "no module")):
        assert coregister.main([*argv, "--output", out]) == 2
        assert said in one_line(capsys), argv
    with pytest.raises(PipelineError, match="name = 'fast'; a matcher's name is a word of its own"):
        matching.register_matcher(type("Fast", (matching.MutualNearestNeighbours,), {"name": "fast"}))


def test_a_taken_name_is_refused_in_one_line():
    """A class of another module registering a name already taken (a user's ``mnn``) is refused:
    the built-in is not replaced behind the user's back; the same class again (a module imported
    twice) is taken."""
    from s2coreg.matching import pipeline

    builtin = pipeline.MATCHERS["mnn"]

    class Impostor(pipeline.Matcher):
        name = "mnn"

    with pytest.raises(PipelineError, match="'mnn' is taken by .*give yours another name"):
        pipeline.register_matcher(Impostor)
    assert pipeline.MATCHERS["mnn"] is builtin
    assert pipeline.register_matcher(builtin) is builtin
