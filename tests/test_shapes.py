"""One concept, one shape: a pair's result and a stack's row are the same "date's shift relative to
the reference" (``results.DateShift``: the same names and types), and the two matching pipelines
``from_checkpoints`` may return follow one protocol (``matching.pipeline.Pipeline``). The real
pair through both paths: ``tests/test_stack.py::test_a_pair_is_a_stack_of_two``."""
from __future__ import annotations

import inspect
import json
import math
import pickle

import pytest

import s2coreg.results as results
import s2coreg.utils as utils
from s2coreg.coregistration.outputs import SHIFTS_COLUMNS, shifts_row


def test_a_pair_result_and_a_stack_row_share_names_and_types():
    """Every name of ``DateShift`` is read by a pair's ``CoregistrationResult`` and a stack's
    ``StackDate`` with the same type as written."""
    shared = results.DateShift.declared()
    assert set(shared) == {"path", "date", "dx_m", "dy_m", "sigma_m", "tie_points", "status", "verified", "reason",
                           "warnings"}
    pair, row = results.CoregistrationResult.declared(), results.StackDate.declared()
    assert {n: pair.get(n) for n in shared} == shared
    assert {n: row.get(n) for n in shared} == shared
    assert issubclass(results.StackDate, results.DateShift)
    # the shift's own names: dx / dy, with the rows' names as read-only aliases
    assert results.ShiftEstimate.declared()["dx_m"] == results.ShiftEstimate.declared()["dx"] == shared["dx_m"]


def test_derived_keys_read_as_keys_but_stay_out_of_the_json():
    """A pair's ``dx_m`` … read by attribute and key (and ``in``, ``get``) from its ``shift_m``;
    read-only; not in ``dict(r)``, ``to_dict()`` or the JSON (``coregistration.json`` is as it was).
    Refused: NaN and ``excluded``, as a stack's excluded row."""
    shift = results.ShiftEstimate(dx=1.25, dy=-0.5, sigma_m=0.1)
    r = results.CoregistrationResult.from_dict({"verified": True, "shift_m": shift, "target": "/data/b.tif",
                                                "date": "20180610", "tie_points": 120})
    assert (r.dx_m, r["dy_m"], r.get("sigma_m"), r["status"], r.path) == (1.25, -0.5, 0.1, "ok", "/data/b.tif")
    assert r["shift_m"]["dx"] == r["shift_m"]["dx_m"] == shift.dx_m == 1.25 and "dx_m" in r and "dx_m" in shift
    for derived in ("dx_m", "status", "path"):
        assert derived not in dict(r) and derived not in r.to_dict() and derived not in list(r)
    assert "dx_m" not in shift.to_dict()
    with pytest.raises(KeyError, match="read-only"):
        r["dx_m"] = 3.0
    with pytest.raises(KeyError, match="read-only"):
        shift["dx_m"] = 3.0
    with pytest.raises(KeyError, match="read-only"):
        del r["status"]
    with pytest.raises(AttributeError):
        r.status = "ok"
    text = json.dumps(r, default=utils._json_default)
    assert json.loads(text)["shift_m"]["dx"] == 1.25 and "dx_m" not in text
    refused = results.CoregistrationResult(verified=False, reason="snow")
    assert math.isnan(refused.dx_m) and math.isnan(refused["sigma_m"]) and refused.status == "excluded"
    assert pickle.loads(pickle.dumps(r)).dx_m == 1.25


def test_a_stack_row_reads_as_the_dict_it_was_and_writes_its_csv_line():
    """``StackDate``: by key and attribute, ``dict(row)``, pickled and JSON-written; its
    ``shifts.csv`` line has the columns it had, its warnings joined by "; "."""
    row = results.StackDate(path="/data/b.tif", id="b", date="20180610", date_source="name", bands="B04,B03,B02",
                            dx_m=1.5, dy_m=-0.25, sigma_m=0.05, tie_points=300, status="ok",
                            warnings=["first", "second"], offset_px=[0.0, 1.0], shift_px=[0.15, 0.025])
    assert row["dx_m"] == row.dx_m == 1.5 and row["verified"] and row.verified and "verified" not in dict(row)
    assert isinstance(row, results.DateShift) and dict(row)["shift_px"] == [0.15, 0.025]
    again = pickle.loads(pickle.dumps(row))
    assert again.to_dict() == row.to_dict() and json.loads(json.dumps(row, default=utils._json_default))["id"] == "b"
    line = shifts_row(row)
    assert list(line) == SHIFTS_COLUMNS and line["warnings"] == "first; second"
    assert shifts_row(results.StackDate(status="excluded"))["warnings"] is None
    assert not results.StackDate(status="excluded").verified and results.StackDate(status="reference").verified


@pytest.mark.shipped
def test_both_pipelines_follow_the_one_protocol():
    """``MatchingPipeline`` and ``CascadePipeline`` (``fast``, ``sift-first``) — what
    ``from_checkpoints`` returns — are each a ``Pipeline``: the names callers use, the methods with
    the protocol's parameters; ``from_checkpoints`` says so."""
    import s2coreg.config as config
    import s2coreg.matching.pipeline as matching

    members = {n for n in vars(matching.Pipeline) if not n.startswith("_")} | set(matching.Pipeline.__annotations__)
    assert members == {"extractor", "refine", "name", "matcher_name", "ranking_name", "extract", "match_features",
                       "verify", "match", "match_for_ranking"}
    assert inspect.signature(matching.MatchingPipeline.from_checkpoints).return_annotation == "Pipeline"
    learned = matching.MatchingPipeline.from_checkpoints(matcher="superglue", device="cpu")
    pipelines = {"superglue": learned,
                 "fast": matching.MatchingPipeline.from_checkpoints(matcher="fast", device="cpu"),
                 "sift-first": matching.CascadePipeline.from_checkpoints(
                     "sift-first", config.CHECKPOINT_DIR, "cpu", superpoint=learned.extractor.model,
                     superglue=learned.matcher.model)}
    assert isinstance(pipelines["fast"], matching.CascadePipeline)
    for name, p in pipelines.items():
        assert isinstance(p, matching.Pipeline), name
        assert p.matcher_name == name and isinstance(p.name, str) and isinstance(p.refine, bool)
        assert p.ranking_name == learned.name               # every ranking is scored by the learned path
        assert p.extractor is not None and p.extractor.network_size(600, 400) == (600, 400)
    features_only = matching.MatchingPipeline(None, matching.MutualNearestNeighbours())   # features read from files
    assert isinstance(features_only, matching.Pipeline)
    for cls in (matching.MatchingPipeline, matching.CascadePipeline):
        for method in ("extract", "match_features", "verify", "match", "match_for_ranking"):
            assert (list(inspect.signature(getattr(cls, method)).parameters)
                    == list(inspect.signature(getattr(matching.Pipeline, method)).parameters)), f"{cls.__name__}.{method}"

    class NoName:
        extractor, refine, ranking_name = None, False, "x"

        def extract(self, image, valid=None, name="image", size=None, normalized=False): ...

        def match_features(self, f0, f1): ...

        def verify(self, result): ...

        def match(self, image0, image1, valid0=None, valid1=None): ...

        def match_for_ranking(self, f0, f1): ...

    assert not isinstance(NoName(), matching.Pipeline)              # the check is a real one
