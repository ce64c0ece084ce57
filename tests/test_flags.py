"""Flags: every command's flags are its stage's config fields with the same defaults (or listed
here, each with its reason); every flag of ``coregister`` works for a pair and a stack alike, or is
refused in one line where it would have no effect; the library's errors name parameters
(``bands=``), the command line's name flags (``--bands``). Nothing here runs a matcher: seconds."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

import s2coreg.config as config
import s2coreg.coregistration.pair as coregister
import s2coreg.coregistration.stack as stack
from s2coreg import cli, commands
from s2coreg.utils import PipelineError

DATA = Path(__file__).parent / "data"
REF, SUMMER = DATA / "bracciano" / "20160718.tif", DATA / "bracciano" / "20180610.tif"
DATES = sorted((DATA / "t36uya").glob("*.tif"))[1:3]          # two snow-free dates
PACKAGE = Path(coregister.__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z]")


class _Parsed(Exception):
    """Raised instead of parsing: carries the parser a command's ``main`` built."""


def parser_of(command: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``command``'s main builds (``commands.COMMANDS``), caught as it parses: nothing runs."""
    module, _, function = commands.COMMANDS[command][0].partition(":")
    main = getattr(importlib.import_module(module), function or "main")

    def caught(self, args=None, namespace=None):
        raise _Parsed(self)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", caught)
        with pytest.raises(_Parsed) as parsed:
            main([])
    return parsed.value.args[0]


# ----------------------------------------------------------------------------- flags and configs
# Each command's stage configs: a flag whose dest is a field of one of them must have its default.
CONFIGS = {
    "coregister": (config.CoregisterConfig,),
    "s2coreg-preprocess": (config.PreprocessConfig,),
    "s2coreg-extract": (config.SuperPointConfig,),
    "s2coreg-match-features": (config.MatchingConfig, config.SuperGlueConfig),
    "s2coreg-match": (config.MatchingConfig,),
    "s2coreg-evaluate": (config.EvalConfig,),
    "s2coreg-train-superpoint": (config.SuperPointTrainConfig, config.SuperPointConfig),
    "s2coreg-train-superglue": (config.SuperGlueTrainConfig, config.SuperGlueConfig),
    "s2coreg-checkpoints": (),
}
# One flag for several fields: dest → the fields its value holds, in order.
COMPOSITE = {"s2coreg-preprocess": {"reflectance_range": ("reflectance_min", "reflectance_max")}}
# Settings a checkpoint stores (a field of its model's config): None = the checkpoint's own value.
FROM_CHECKPOINT = {
    "s2coreg-extract": {"detection_threshold": config.SuperPointConfig, "nms_radius": config.SuperPointConfig},
    "s2coreg-match-features": {"match_threshold": config.SuperGlueConfig},
    "s2coreg-match": {"max_keypoints": config.SuperPointConfig},
    "s2coreg-evaluate": {"match_threshold": config.SuperGlueConfig},
}
RUNTIME = {"device": config.DEVICE, "threads": 0}    # cli.add_runtime's, the same for every command
# Flags that are no config field: inputs, outputs, runtime, modes — each command's, with the reason.
NOT_CONFIG = {
    "coregister": {
        "reference", "target", "output", "date",             # inputs and outputs (coregister()'s parameters)
        "write_corrected", "correction",                     # what is written: coregister(write_corrected=, correction=)
        "ref_nodata", "target_nodata",                       # a pair's inputs' no-data rules (coregister()'s)
        "stack", "stack_reference", "scheduler", "workers", "neighbours",   # a stack's: coregister_stack()'s
        "stac_search", "collection", "bbox", "datetime", "max_cloud", "max_items",   # the search: search_items()'s
        "device", "threads",                                 # runtime
    },
    "s2coreg-preprocess": {
        "input", "output",
        "scale", "offset",          # plain band files' DN → reflectance (products: their metadata's), not a setting
    },
    "s2coreg-extract": {
        "input", "output", "checkpoint", "overwrite", "device", "threads",
        # the stage's images are data_preprocess.py's overviews and tiles, already at the size they are
        # matched at: 0 = as they are (MatchingConfig.resize, 1024, is ImageMatcher's, for any image)
        "resize",
    },
    "s2coreg-match-features": {
        "features", "pairs", "all_pairs", "output", "checkpoint", "overwrite", "device", "threads",
        "no_refine", "no_correlate",       # MatchingConfig.refine / correlate, switched off (checked below)
    },
    "s2coreg-match": {
        "images", "query", "gallery", "output", "model_path", "device", "threads",
        "fast",         # --matcher fast, as a switch
        "bands",        # ImageMatcher(bands=): the inputs' bands, None = each raster's own (no config field)
    },
    "s2coreg-evaluate": {
        "data", "model_path", "superglue", "output", "reference", "seed", "device", "threads",
        "methods", "sources", "split", "repeats",    # what is evaluated and how often, not how a method runs
    },
    "s2coreg-train-superpoint": {
        "data", "run_dir", "output", "resume", "stop_after", "seed", "smoke", "threads", "arch", "fine_from",
        "superglue",
    },
    "s2coreg-train-superglue": {
        "data", "run_dir", "output", "resume", "stop_after", "seed", "smoke", "threads", "arch", "superpoint",
        "init",
        "val_crop",     # the validation crops' side (EvalConfig.crop is evaluate.py's, 512)
    },
    "s2coreg-checkpoints": {"paths"},
}
# Config fields whose flag has another default, and why (the test fails once they agree: then drop the line)
DIFFERS = {
    # a registered matcher by name, built from --checkpoint alone (matching.MATCHERS): this stage matches
    # SuperPoint feature files, where MatchingConfig.matcher's cascade (sift-first) extracts SIFT from pixels
    "s2coreg-match-features": {"matcher": "superglue"},
    # None: the train config's max_steps, or 12 with --smoke (training/loop.py)
    "s2coreg-train-superpoint": {"max_steps": None,
                                 # the fine head trained with --fine-from, 16 wide (SuperPointConfig.fine_dim
                                 # 0 is a model without one, which --fine-from never trains)
                                 "fine_dim": 16},
    "s2coreg-train-superglue": {"max_steps": None},
}
# Runtime flags whose default is not RUNTIME's, and why
RUNTIME_DEFAULTS = {"s2coreg-evaluate": {"device": "cpu"}}    # its timings are reported for the CPU by default


def as_field(value, default):
    """A flag's default as the config field holds it (comma-separated bands → a tuple)."""
    if isinstance(default, tuple) and isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


@pytest.mark.parametrize("command", sorted(commands.COMMANDS))
def test_every_flag_is_its_config_field_with_its_default_or_listed(command, monkeypatch):
    parser = parser_of(command, monkeypatch)
    fields = {}
    for cls in CONFIGS[command]:
        for f in dataclasses.fields(cls):
            fields.setdefault(f.name, getattr(cls(), f.name))
    listed = NOT_CONFIG[command]
    for action in parser._actions:
        dest, default = action.dest, action.default
        if dest == "help":
            continue
        where = f"{command} {'/'.join(action.option_strings) or dest}"
        assert not (dest in fields and dest in listed), f"{where}: a config field, and listed as not one"
        if dest in COMPOSITE.get(command, {}):
            want = tuple(fields[name] for name in COMPOSITE[command][dest])
            assert tuple(default) == want, f"{where}: default {default}, the config's {want}"
        elif dest in FROM_CHECKPOINT.get(command, {}):
            model = FROM_CHECKPOINT[command][dest]
            assert dest in {f.name for f in dataclasses.fields(model)} and default is None, \
                f"{where}: None (the checkpoint's {model.__name__}.{dest}) expected"
        elif dest.startswith("no_") and dest[3:] in fields and isinstance(action, argparse._StoreTrueAction):
            assert fields[dest[3:]] is True, f"{where}: switches off {dest[3:]}, whose default is off already"
        elif dest in DIFFERS.get(command, {}):
            assert dest in fields and default == DIFFERS[command][dest] != fields[dest], \
                f"{where}: listed as differing from the config ({fields.get(dest)!r}) with {DIFFERS[command][dest]!r}"
        elif dest in fields:
            assert as_field(default, fields[dest]) == fields[dest], \
                f"{where}: default {default!r}, the config's {fields[dest]!r}"
        else:
            assert dest in listed, f"{where}: neither a field of {[c.__name__ for c in CONFIGS[command]]} nor listed"
        if dest in RUNTIME:
            want = RUNTIME_DEFAULTS.get(command, {}).get(dest, RUNTIME[dest])
            assert default == want, f"{where}: default {default!r}, the runtime's {want!r}"
    stale = listed - {a.dest for a in parser._actions}
    assert not stale, f"{command}: listed, but no such flag: {sorted(stale)}"


# ----------------------------------------------------------------------------- coregister: pair and stack
# Every flag of `coregister`: its value (and what it needs beside it, given in both runs).
BOTH = {        # the same effect on a pair and on a stack
    "--output": (["OUT2"], []), "--bands": (["nir"], []), "--window": (["256"], []),
    "--max-windows": (["7"], []), "--overview": (["640"], []), "--matcher": (["mnn"], []),
    "--write-corrected": ([], []), "--date": (["20160718.tif=2016-07-19"], []), "--device": (["cuda:1"], []),
}
PAIR_ONLY = {
    "--ref-bands": (["1"], []), "--target-bands": (["1"], []), "--ref-nodata": (["0"], []),
    "--target-nodata": (["none"], []), "--correction": (["field"], ["--write-corrected"]), "--threads": (["1"], []),
}
SEARCH = ["--stac-search", "https://stac.example.org/"]
STACK_ONLY = {
    "--reference": ([str(SUMMER)], []), "--scheduler": (["tcp://127.0.0.1:8786"], []), "--workers": (["1"], []),
    "--neighbours": (["1"], []), "--stac-search": (SEARCH[1:], []), "--collection": (["s2"], SEARCH),
    "--bbox": (["36", "50", "38", "51"], SEARCH), "--datetime": (["2016-01-01/2017-01-01"], SEARCH),
    "--max-cloud": (["20"], SEARCH), "--max-items": (["5"], SEARCH),
}


@pytest.fixture
def passed_on(monkeypatch, tmp_path):
    """``passed_on(argv)``: what ``coregister`` hands the library for ``argv`` — the pair's
    ``coregister()`` or the stack's ``coregister_stack()`` call, the pipeline's device, the threads,
    the STAC search — recorded instead of run, with the config's fields one by one."""
    seen: dict = {}

    class Pipeline:
        @staticmethod
        def from_checkpoints(matcher=None, device=None, **_):
            seen["device"] = device

    def pair(reference, target, output, bands, write_corrected, cfg, pipeline, **kw):
        seen.update(inputs=[reference, target], output=output, bands=bands, write_corrected=write_corrected,
                    cfg=cfg, **kw)
        return {"warnings": [], "shift_m": None, "reason": "recorded"}

    def a_stack(inputs, output, reference, bands, cfg, scheduler, workers, neighbours, write_corrected, **kw):
        seen.update(inputs=list(inputs), output=output, reference=reference, bands=bands, cfg=cfg,
                    scheduler=scheduler, workers=workers, neighbours=neighbours, write_corrected=write_corrected, **kw)
        return {"dates": [], "reference": "recorded", "reference_reason": "recorded", "seconds": 0.0}

    monkeypatch.setattr(coregister, "MatchingPipeline", Pipeline)
    monkeypatch.setattr(coregister, "coregister", pair)
    monkeypatch.setattr(stack, "coregister_stack", a_stack)
    monkeypatch.setattr(coregister, "set_threads", lambda n: seen.update(threads=n))
    monkeypatch.setattr(coregister.dp, "search_items", lambda *a: seen.update(search=a) or [])

    def run(argv: list[str]) -> dict:
        seen.clear()
        argv = [str(tmp_path / a) if a.startswith("OUT") else a for a in argv]
        coregister.main(argv)
        out = {k: v for k, v in seen.items() if k != "cfg"}
        out.update({f"cfg.{k}": v for k, v in dataclasses.asdict(seen["cfg"]).items()})
        return out

    return run


def effect(with_flag: dict, without: dict) -> dict:
    return {k: with_flag.get(k) for k in with_flag.keys() | without.keys() if with_flag.get(k) != without.get(k)}


def refused(argv: list[str], flag: str, capsys) -> str:
    """The one line ``coregister argv`` is refused with (argparse's usage before it): it names ``flag``."""
    with pytest.raises(SystemExit) as stop:
        coregister.main(argv)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and line.startswith(f"{coregister_prog()}: error:") and flag in line, line
    return line


def coregister_prog() -> str:
    return argparse.ArgumentParser().prog


def test_every_coregister_flag_is_classified(monkeypatch):
    parser = parser_of("coregister", monkeypatch)
    flags = {a.option_strings[0] for a in parser._actions if a.option_strings} - {"-h", "--stack"}
    assert flags == BOTH.keys() | PAIR_ONLY.keys() | STACK_ONLY.keys()
    assert not (BOTH.keys() & PAIR_ONLY.keys() or BOTH.keys() & STACK_ONLY.keys() or PAIR_ONLY.keys() & STACK_ONLY.keys())


@pytest.mark.parametrize("flag", sorted(BOTH))
def test_a_flag_has_the_same_effect_on_a_pair_and_a_stack(flag, passed_on):
    value, beside = BOTH[flag]
    pair, stack_run = [str(REF), str(SUMMER), "--output", "OUT"], ["--stack", str(REF), str(SUMMER), "--output", "OUT"]
    on_pair = effect(passed_on(pair + beside + [flag, *value]), passed_on(pair + beside))
    on_stack = effect(passed_on(stack_run + beside + [flag, *value]), passed_on(stack_run + beside))
    assert on_pair, f"{flag}: no effect on a pair"
    assert on_pair == on_stack, f"{flag}: a pair gets {on_pair}, a stack {on_stack}"


@pytest.mark.parametrize("flag", sorted(PAIR_ONLY))
def test_a_pair_flag_works_on_a_pair_and_is_refused_for_a_stack(flag, passed_on, capsys):
    value, beside = PAIR_ONLY[flag]
    pair = [str(REF), str(SUMMER), "--output", "OUT", *beside]
    assert effect(passed_on(pair + [flag, *value]), passed_on(pair)), f"{flag}: no effect on a pair"
    refused(["--stack", str(REF), str(SUMMER), flag, *value], flag, capsys)


@pytest.mark.parametrize("flag", sorted(STACK_ONLY))
def test_a_stack_flag_works_on_a_stack_and_is_refused_for_a_pair(flag, passed_on, capsys):
    value, beside = STACK_ONLY[flag]
    dates = ["--stack", str(REF), str(SUMMER), "--output", "OUT", *beside]
    assert effect(passed_on(dates + [flag, *value]), passed_on(dates)), f"{flag}: no effect on a stack"
    refused([str(REF), str(SUMMER), flag, *value], flag, capsys)


def test_flags_given_at_their_default_or_without_what_they_need_are_refused(passed_on, capsys):
    """A flag given is a flag meant: at its default value too (``--workers 0`` for a pair), and
    where what it needs is missing (``--correction`` writes nothing without ``--write-corrected``;
    ``--workers`` sizes no cluster with ``--scheduler``; ``--max-items`` without ``--stac-search``)."""
    refused([str(REF), str(SUMMER), "--workers", "0"], "--workers", capsys)
    refused([str(REF), str(SUMMER), "--neighbours", "2"], "--neighbours", capsys)
    refused([str(REF), str(SUMMER), "--reference", "auto"], "--reference", capsys)
    refused(["--stack", str(REF), str(SUMMER), "--threads", "0"], "--threads", capsys)
    refused([str(REF), str(SUMMER), "--correction", "affine"], "--write-corrected", capsys)
    refused(["--stack", str(REF), str(SUMMER), "--scheduler", "tcp://h:8786", "--workers", "2"], "--workers", capsys)
    refused(["--stack", str(REF), str(SUMMER), "--max-items", "5"], "--max-items", capsys)
    refused(["--stack", str(REF), str(SUMMER), "--neighbours", "-1"], "--neighbours", capsys)
    # a stack's translation is what a stack writes: given with --write-corrected, it changes nothing
    assert passed_on(["--stack", str(REF), str(SUMMER), "--write-corrected", "--correction", "translation"])["write_corrected"]


# ----------------------------------------------------------------------------- --device on a stack's workers
def test_the_device_reaches_every_task_of_a_stack_and_its_pipeline(dask_client, monkeypatch):
    """``coregister_stack(device=)``: every task builds its worker's pipeline on that device (a
    CUDA worker is not at hand here: the workers' check is told "cuda", the build's device is
    recorded and a CPU pipeline returned), and the provenance says where it ran."""
    from s2coreg.matching.pipeline import MatchingPipeline

    cpu = MatchingPipeline.from_checkpoints(matcher="mnn", device="cpu")
    real_build, real_worker_pipeline = MatchingPipeline.from_checkpoints, stack.worker_pipeline
    built, asked = [], []

    def build(cls, model_path=config.CHECKPOINT_DIR, matcher="auto", device=None, **kw):
        if device == "cpu":                          # the provenance's name of the path, in this process
            return real_build(model_path, matcher, device, **kw)
        built.append((matcher, device))
        return cpu

    def worker_pipeline(matcher="auto", device=None):
        asked.append(device)
        return real_worker_pipeline(matcher, device)

    monkeypatch.setattr(MatchingPipeline, "from_checkpoints", classmethod(build))
    monkeypatch.setattr(stack, "_PIPELINES", {})
    monkeypatch.setattr(stack, "worker_pipeline", worker_pipeline)
    monkeypatch.setattr(stack, "check_workers_device", lambda client, device: ["cuda:0"])
    cfg = config.CoregisterConfig(matcher="mnn", max_windows=1)
    r = stack.coregister_stack(DATES, cfg=cfg, client=dask_client, progress=False, device="cuda")
    assert built == [("mnn", "cuda")]
    assert len(asked) >= 5 and set(asked) == {"cuda"}       # overview, 2 locations, 2 extractions, a pair
    assert r["provenance"]["settings"]["device"] == "cuda:0"


def test_a_device_no_worker_can_use_is_one_line_before_any_work(dask_client, tmp_path, capsys,
                                                               stack_cli_on_shared_cluster):
    """``gpu0`` is no device anywhere: the stack's workers say so before any task, in one line —
    naming ``device=`` from Python, ``--device`` on the command line (``auto`` resolves on each
    worker: here, its CPU)."""
    assert stack.check_workers_device(dask_client, "auto") == ["cpu"]
    assert stack.worker_device("auto") == ("cpu", None)
    with pytest.raises(PipelineError, match=r"^worker \S+: device='gpu0': not a device name") as error:
        stack.coregister_stack(DATES, client=dask_client, progress=False, device="gpu0")
    assert not FLAG.search(str(error.value))
    code = coregister.main(["--stack", *map(str, DATES), "--device", "gpu0", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.match(r"error: worker \S+: --device gpu0: not a device name", err[0]), err


# ----------------------------------------------------------------------------- errors: parameters and flags
@pytest.mark.parametrize("given, says_python, says_cli", [
    ({"correction": "shear"}, "correction='shear'", "--correction"),
    ({"bands": "0"}, "bands='0': indices are 1-based", "--bands 0: indices are 1-based"),
    ({"target_nodata": 70000}, "target_nodata=70000 cannot occur", "--target-nodata 70000 cannot occur"),
    ({"device": "gpu0"}, "device='gpu0': not a device name", "--device gpu0: not a device name"),
])
def test_python_names_the_parameter_and_the_command_line_the_flag(given, says_python, says_cli, tmp_path, capsys):
    """The same bad value: through Python the error names the parameter (``bands='0'``), through
    the command line the flag (``--bands 0``), each in one line."""
    (name, value), = given.items()
    with pytest.raises(PipelineError) as error:
        if name == "device":
            from s2coreg.matching.pipeline import MatchingPipeline

            MatchingPipeline.from_checkpoints(device=value)
        else:
            coregister.coregister(REF, SUMMER, **given, write_corrected=True, progress=False)
    assert says_python in str(error.value) and not FLAG.search(str(error.value)), str(error.value)
    flag = "--" + {"target_nodata": "target-nodata"}.get(name, name)
    argv = [str(REF), str(SUMMER), "--output", str(tmp_path / "out"), "--write-corrected", flag, str(value)]
    try:
        code = coregister.main(argv)
    except SystemExit as stop:                      # argparse's own check of the flag (its choices)
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and says_cli in err[-1] and "=" not in err[-1].split(":")[1], err
    assert len(err) == 1 or err[-1].startswith(f"{coregister_prog()}: error: argument {flag}"), err


def test_cli_flags_says_parameters_as_flags():
    assert cli.flags("device='cuda': no CUDA GPU; use device='cpu'") == "--device cuda: no CUDA GPU; use --device cpu"
    assert cli.flags("fix bands= (1-based indices); e.g. bands='3,2,1'") == "fix --bands (1-based indices); e.g. --bands 3,2,1"
    assert cli.flags("x.tif: ref_nodata=300 cannot occur") == "x.tif: --ref-nodata 300 cannot occur"
    assert cli.flags("start without resume=True") == "start without --resume"
    assert cli.flags("cfg.bands=3 and --bands=2 and min_inliers=15 stay") == "cfg.bands=3 and --bands=2 and min_inliers=15 stay"


# Library errors that may name a flag, and why: a command line to run, or another's work in progress
NAMES_A_FLAG = {
    ("training/loop.py", "check_resumable"),            # "{the run's own command} --resume": a command to run
    ("training/evaluate.py", "build_method"),           # "train one with train_superpoint.py --fine-from"
}
CLI_BODIES = re.compile(r"^(_?main|\w+_main|_extract|_match|training_parser)$")   # parsers and script bodies


def test_no_library_error_names_a_flag():
    """``raise PipelineError(...)`` outside the parsers and script bodies (``main``, ``cli.py``)
    names parameters (``bands=``), never flags (``--bands``): Python callers have no flags."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "cli.py":
            continue
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or CLI_BODIES.match(function.name):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                        "PipelineError" in (getattr(node.exc.func, "id", None), getattr(node.exc.func, "attr", None)) \
                        and node.exc.args:
                    text = "".join(c.value for c in ast.walk(node.exc.args[0])
                                   if isinstance(c, ast.Constant) and isinstance(c.value, str))
                    if FLAG.search(text) and (rel, function.name) not in NAMES_A_FLAG:
                        found.append(f"{rel}:{node.lineno} ({function.name}): {text[:80]}")
    assert not found, "library errors naming flags:\n" + "\n".join(found)


PAIR = [str(DATA / "bracciano" / "20160718.tif"), str(DATA / "bracciano" / "20170404.tif")]


@pytest.mark.parametrize("setting, value", [("window", 0), ("window", -5), ("max_windows", 0), ("overview", 3)])
def test_sizes_that_cannot_measure_are_refused_in_one_line(setting, value, tmp_path, capsys):
    """``--window 0`` divided by zero (a traceback, exit 3), ``--window -5`` failed in numpy,
    ``--max-windows 0`` and ``--overview 3`` were taken silently: each is one line, before any
    work — the parameter from Python (pair and stack), the flag from the command line."""
    cfg = dataclasses.replace(config.CoregisterConfig(), **{setting: value})
    with pytest.raises(PipelineError, match=rf"^{setting}={value}: must be a whole number of at least"):
        coregister.coregister(*PAIR, cfg=cfg, progress=False)
    with pytest.raises(PipelineError, match=rf"^{setting}={value}: "):
        stack.coregister_stack(DATES, cfg=cfg, progress=False)
    flag = cli.FLAG_OF[setting]
    assert coregister.main([*PAIR, "--output", str(tmp_path / "out"), flag, str(value)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag} {value}: must be"), err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_is_one_line(monkeypatch):
    """``scheduler=`` where no Dask scheduler answers: one line naming the address (was Dask's
    OSError traceback, exit 3, after 30 s)."""
    monkeypatch.setattr(stack, "SCHEDULER_TIMEOUT_S", 2)
    with pytest.raises(PipelineError, match=r"^scheduler='tcp://127.0.0.1:1': no Dask scheduler answered within 2 s"):
        stack.coregister_stack(DATES, scheduler="tcp://127.0.0.1:1", progress=False)


def test_one_folder_given_as_a_string_is_one_input(dask_client, tmp_path):
    """``coregister_stack("dates/")``: the folder (not its characters one by one, which read
    ``/`` and every one-letter path)."""
    folder = tmp_path / "dates"
    folder.mkdir()
    for date in DATES:
        (folder / date.name).symlink_to(date)
    for given in (str(folder), folder):
        r = stack.coregister_stack(given, client=dask_client, progress=False)
        assert sorted(Path(row["path"]).name for row in r["dates"]) == sorted(d.name for d in DATES)


def test_a_refused_flag_is_one_line_not_the_usage(capsys):
    """A refusal while the flags are read is one line (``prog: error: …; see prog --help``): the
    whole usage came first, fifteen lines of it."""
    with pytest.raises(SystemExit) as ended:
        coregister.main([*PAIR, "--workers", "2"])
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers: for --stack only" in err[0] and err[0].endswith("--help)"), err


def test_a_raster_without_georeference_is_one_line_not_rasterio_s_warning_too(tmp_path):
    """A target with no georeference: our one line (what it lacks, how to add it), without
    rasterio's NotGeoreferencedWarning printed above it (``cli.script``), in a fresh interpreter."""
    import subprocess
    import sys
    import warnings

    import numpy as np
    import rasterio

    bare = tmp_path / "bare.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(bare, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16") as dst:
            dst.write(np.ones((1, 64, 64), "uint16"))
    done = subprocess.run([sys.executable, str(PACKAGE.parent / "coregister.py"), PAIR[0], str(bare), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and err[0].startswith(f"error: {bare}: has no CRS"), err
