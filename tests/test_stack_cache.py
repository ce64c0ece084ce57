"""What a stack run keeps for the next one (s2coreg/coregistration/cache.py): keyed by the files' content, entries
that do not read back recomputed, and the work an interrupted stage finished kept.

The stacks are four T36UYA dates written uncompressed (so a pixel edited in place keeps the
file's size), run on the test run's shared cluster (``tests/conftest.py``; a few seconds a run),
the interrupted one on an in-process worker that runs the monkeypatched task."""
from __future__ import annotations

import _thread
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

import s2coreg.io.remote as remote
import s2coreg.coregistration.stack as stack
from s2coreg.coregistration.engine import PairMeasure

pytestmark = pytest.mark.shipped

HERE = Path(__file__).parent
SOURCES = [p for p in sorted((HERE / "data" / "t36uya").glob("*.tif")) if "20160212" not in p.name][:4]
EDITED = 3            # the date edited in place: neither the grid's (the first) nor the reference


@pytest.fixture(scope="module")
def in_process_client():
    """One in-process worker thread: ``task_extract`` monkeypatched here is what it runs."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def write_dates(folder: Path) -> list[Path]:
    """The four dates, uncompressed: an in-place edit keeps each file's size."""
    folder.mkdir(parents=True)
    for path in SOURCES:
        with rasterio.open(path) as s:
            profile, data = s.profile, s.read()
        with rasterio.open(folder / path.name, "w", **{**profile, "compress": None}) as dst:
            dst.write(data)
    return sorted(folder.glob("*.tif"))


@pytest.fixture(scope="module")
def first(dask_client, tmp_path_factory):
    """The dates, and a finished run of them into ``out`` (copied by each test that reuses it)."""
    root = tmp_path_factory.mktemp("first")
    files = write_dates(root / "in")
    result = stack.coregister_stack(files, root / "out", client=dask_client, progress=False)
    return files, root / "out", result


def shifts(result: dict) -> dict[str, tuple[float, float]]:
    return {r["date"]: (r["dx_m"], r["dy_m"]) for r in result["dates"]}


def assert_same_shifts(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for date in a:
        np.testing.assert_allclose(a[date], b[date], atol=1e-6, err_msg=date)


def entries(out: Path, kind: str) -> list[Path]:
    return sorted(p for p in (out / "cache" / kind).glob("*.pkl") if not p.name.startswith("."))


def test_a_date_edited_in_place_is_recomputed_though_its_size_and_time_are_kept(dask_client, tmp_path):
    """The issue's operator: one date's pixels edited in place (in the middle of the file, the
    size kept, the modification time put back), the stack run again into the same output. The
    edited date is located, extracted and paired again, and the shifts equal a fresh run's — not
    the earlier ones."""
    files = write_dates(tmp_path / "in")
    before = stack.coregister_stack(files, tmp_path / "out", client=dask_client, progress=False)
    edited = files[EDITED]
    st = edited.stat()
    with rasterio.open(edited, "r+") as f:        # the middle half of the rows moved 2 px east
        data = f.read()
        data[:, 128:384] = np.roll(data[:, 128:384], 2, axis=2)
        f.write(data)
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (edited.stat().st_size, edited.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    rerun = stack.coregister_stack(files, tmp_path / "out", client=dask_client, progress=False)
    fresh = stack.coregister_stack(files, tmp_path / "fresh", client=dask_client, progress=False)
    assert rerun["computed"]["dates"] == 1 and rerun["computed"]["locations"] == 1
    assert rerun["reused"]["dates"] == 3 and rerun["reused"]["locations"] == 3
    assert_same_shifts(shifts(rerun), shifts(fresh))
    date = rerun["dates"][EDITED]["date"]
    assert np.hypot(*np.subtract(shifts(rerun)[date], shifts(before)[date])) > 0.5      # not the old shift


def edit_in_place(path: Path) -> None:
    """The middle half of ``path``'s rows moved 2 px east, its size and modification time kept."""
    st = path.stat()
    with rasterio.open(path, "r+") as f:
        data = f.read()
        data[:, 128:384] = np.roll(data[:, 128:384], 2, axis=2)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_date_edited_while_the_run_reads_it_publishes_nothing_and_keeps_none_of_its_work(
        dask_client, tmp_path, monkeypatch):
    """A date rewritten after its features were extracted, before the pairs (a download still
    being written, an operator's edit): its content at the end is not the content its key was
    made of, so the run publishes nothing and keeps none of the work it computed — the trial
    found features of the new pixels kept under the old content's key, and a later run of the
    old content placed the date 50 m off from them. The rerun then equals a fresh run."""
    files = write_dates(tmp_path / "in")
    real_pairs = stack.run_pairs

    def edit_then_pair(*args, **kwargs):
        edit_in_place(files[EDITED])
        return real_pairs(*args, **kwargs)

    monkeypatch.setattr(stack, "run_pairs", edit_then_pair)
    with pytest.raises(stack.PipelineError, match="changed while this run read it.*nothing published"):
        stack.coregister_stack(files, tmp_path / "out", client=dask_client, progress=False)
    monkeypatch.setattr(stack, "run_pairs", real_pairs)
    assert not (tmp_path / "out" / "shifts.csv").exists()
    assert not any((tmp_path / "out" / "cache").rglob("*.pkl"))
    rerun = stack.coregister_stack(files, tmp_path / "out", client=dask_client, progress=False)
    fresh = stack.coregister_stack(files, tmp_path / "fresh", client=dask_client, progress=False)
    assert_same_shifts(shifts(rerun), shifts(fresh))


def test_a_reference_edited_in_place_is_chosen_again_as_a_fresh_run_would(dask_client, tmp_path):
    """The earlier run's reference is kept by a rerun (a grown stack's shifts stay comparable) —
    unless its content changed: the trial edited the reference in place and the rerun kept it,
    42 m from a fresh run's absolute shifts. Here the reference loses most of its texture, a
    fresh run chooses another date, and so does the rerun."""
    files = write_dates(tmp_path / "in")
    out = tmp_path / "out"
    before = stack.coregister_stack(files, out, client=dask_client, progress=False)
    ref = next(k for k, r in enumerate(before["dates"]) if r["status"] == "reference")
    st = files[ref].stat()
    with rasterio.open(files[ref], "r+") as f:        # three quarters of the rows flat
        data = f.read()
        data[:, :384] = np.median(data)
        f.write(data)
    os.utime(files[ref], ns=(st.st_atime_ns, st.st_mtime_ns))
    fresh = stack.coregister_stack(files, tmp_path / "fresh", client=dask_client, progress=False)
    assert fresh["reference"] != before["reference"]          # the edit changes a fresh run's choice
    rerun = stack.coregister_stack(files, out, client=dask_client, progress=False)
    assert rerun["reference"] == fresh["reference"]
    assert_same_shifts(shifts(rerun), shifts(fresh))


def test_a_cache_entry_that_does_not_read_back_is_recomputed_with_one_line(first, dask_client, tmp_path, capsys):
    """A date's entry replaced by a pickle of another type (a PairMeasure) and a location's by
    garbage bytes: the rerun succeeds, equals the first run, says one line of each (naming it),
    and writes them again as they should be."""
    files, out0, before = first
    out = tmp_path / "out"
    shutil.copytree(out0, out)
    wrong, garbage = entries(out, "dates")[0], entries(out, "locations")[0]
    wrong.write_bytes(pickle.dumps(PairMeasure(0, 1, True)))
    garbage.write_bytes(b"\x80\x05 not a pickle at all")
    capsys.readouterr()

    rerun = stack.coregister_stack(files, out, client=dask_client, progress=False)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "cache entry" in line]
    assert len(lines) == 2 and "Traceback" not in err
    assert any(line.startswith(str(wrong)) and "DateFeatures" in line and "PairMeasure" in line for line in lines)
    assert any(line.startswith(str(garbage)) and "DateLocation" in line for line in lines)
    assert all("recomputed" in line for line in lines)
    assert rerun["computed"]["dates"] >= 1 and rerun["computed"]["locations"] == 1
    assert_same_shifts(shifts(rerun), shifts(before))
    for path in (wrong, garbage):                  # put back as what it should be
        assert not isinstance(pickle.loads(path.read_bytes()), PairMeasure)


_calls = {"n": 0, "out": None, "dates": 0}
_real_extract = stack.task_extract


def extract_then_interrupt(*args, **kwargs):
    """``task_extract``, except the last date's (one worker thread: the others have finished):
    it waits until the others are in the cache (at most a minute), then interrupts the main
    thread as Ctrl-C does, before its own result is in."""
    _calls["n"] += 1
    if _calls["n"] == _calls["dates"]:
        deadline = time.time() + 60
        while len(entries(_calls["out"], "dates")) < _calls["dates"] - 1 and time.time() < deadline:
            time.sleep(0.1)
        _thread.interrupt_main()
        time.sleep(2)
    return _real_extract(*args, **kwargs)


def test_the_dates_an_interrupted_stage_finished_are_kept(first, in_process_client, tmp_path, monkeypatch):
    """A run interrupted (KeyboardInterrupt in the main thread) while its last date is being
    extracted: the three dates finished before are in the cache, and the rerun reuses them and
    computes the fourth alone; its shifts equal an uninterrupted run's."""
    files, _, before = first
    out = tmp_path / "out"
    _calls.update(n=0, out=out, dates=len(files))
    with monkeypatch.context() as m:
        m.setattr(stack, "task_extract", extract_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            stack.coregister_stack(files, out, client=in_process_client, progress=False)
    assert len(entries(out, "dates")) == len(files) - 1
    assert not (out / "shifts.csv").exists()
    rerun = stack.coregister_stack(files, out, client=in_process_client, progress=False)
    assert rerun["reused"]["dates"] == len(files) - 1 and rerun["computed"]["dates"] == 1
    assert rerun["reused"]["locations"] == len(files)
    assert_same_shifts(shifts(rerun), shifts(before))


def serve(folder: Path, validators: str):
    """``tests/local_server.py`` on ``folder`` in its own process, stating ``validators``."""
    proc = subprocess.Popen([sys.executable, str(HERE / "local_server.py"), str(folder), "--validators", validators],
                            stdout=subprocess.PIPE, text=True)
    return f"http://127.0.0.1:{int(proc.stdout.readline())}", proc


def test_a_url_is_keyed_by_what_its_server_states(tmp_path):
    """A URL whose file is rewritten with the same length: a server stating an ETag (the file's
    time put back) or a Last-Modified (a later time) gives it a new key, and the same key while it
    is unchanged; a server stating neither gives it no content key — a new key every run (never
    reused), the same within one run."""
    for validators in ("etag", "last-modified", "none"):
        folder = tmp_path / validators
        folder.mkdir()
        band = folder / "B04.tif"
        band.write_bytes(b"a" * 5000)
        url, proc = serve(folder, validators)
        try:
            key = remote.content_key(f"{url}/B04.tif")
            again = remote.content_key(f"{url}/B04.tif")
            st = band.stat()
            band.write_bytes(b"b" * 5000)
            later = st.st_mtime_ns + (10 ** 10 if validators == "last-modified" else 0)
            os.utime(band, ns=(st.st_atime_ns, later))
            changed = remote.content_key(f"{url}/B04.tif")
            memo: dict = {}
            one_run = {remote.content_key(f"{url}/B04.tif", memo) for _ in range(3)}
        finally:
            proc.kill()
            proc.wait()
        assert len(one_run) == 1, validators
        if validators == "none":
            assert len({key, again, changed}) == 3
        else:
            assert key == again != changed, validators


def test_a_local_file_and_a_zip_member_are_keyed_by_every_byte(tmp_path):
    """A local file: one byte changed in the middle (size and time kept) changes its key. A band in
    a zipped .SAFE (``/vsizip/``) has a key (it used to fail: no such file), which changes with the
    member's content."""
    band = tmp_path / "B04.tif"
    band.write_bytes(bytes(300_000))
    st = band.stat()
    key = remote.content_key(band)
    with open(band, "r+b") as f:
        f.seek(150_000)
        f.write(b"\x01")
    os.utime(band, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert remote.content_key(band) != key

    keys = []
    for content in (b"a" * 1000, b"b" * 1000):
        archive = tmp_path / "S2A_MSIL1C_X.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("S2A_MSIL1C_X.SAFE/GRANULE/G/IMG_DATA/T_B04.jp2", content)
        keys.append(remote.content_key(f"/vsizip/{archive}/S2A_MSIL1C_X.SAFE/GRANULE/G/IMG_DATA/T_B04.jp2"))
    assert keys[0] != keys[1]


def test_a_file_is_hashed_once_a_run(tmp_path, monkeypatch):
    """Within one run (one memo) a file shared by several dates is read once; a new run reads it again."""
    band = tmp_path / "B04.tif"
    band.write_bytes(bytes(100_000))
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    memo: dict = {}
    remote.content_key(band, memo), remote.content_key(band, memo)
    assert opened.count(str(band)) == 1
    remote.content_key(band, {})
    assert opened.count(str(band)) == 2


def test_a_rerun_that_computes_nothing_draws_no_empty_bars(first, dask_client, tmp_path, capsys):
    """A stack run again with nothing new: every stage from the cache, and no progress bar of
    nothing (``locate: 0date``, ``dates: 0date``, ``pairs: 0pair`` printed four empty bars)."""
    files, out0, before = first
    out = tmp_path / "out"
    shutil.copytree(out0, out)
    capsys.readouterr()
    rerun = stack.coregister_stack(files, out, client=dask_client, progress=True)
    assert rerun["computed"] == {k: 0 for k in rerun["computed"]}
    err = capsys.readouterr().err
    assert not re.search(r"\b0(date|pair) \[", err), err[-500:]
