"""Publishing a result (issue #28): one writer per output folder, a result visible all at once or
not at all, kills and Ctrl-C mid-run, a full disk — each as an operator meets it, on real runs of
the shipped Bracciano pair and T36UYA dates, and ``OutputFolder`` on its own where no run is needed."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import s2coreg.cli as cli
import s2coreg.coregistration.engine as engine
import s2coreg.coregistration.pair as coregister
import s2coreg.coregistration.stack as stack
from s2coreg.utils import PipelineError

pytestmark = pytest.mark.shipped

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
REF, SUMMER = DATA / "bracciano" / "20160718.tif", DATA / "bracciano" / "20180610.tif"
STACK_DATES = sorted((DATA / "t36uya").glob("*.tif"))[1:4]
PAIR = [str(REF), str(SUMMER), "--threads", "1"]

# holds OUT's lock (as a run does) until killed; says "locked" once it has it
HOLDER = """
import sys, time
import s2coreg.coregistration.engine as engine
with engine.OutputFolder(sys.argv[1], engine.RESULT_NAMES).locked():
    print("locked", flush=True)
    time.sleep(600)
"""

# a pair run into OUT that, once its result is computed, says "writing" and waits for the file GO
PAUSED_RUN = """
import sys, time
from pathlib import Path
import s2coreg.coregistration.pair as coregister
real = coregister.write_outputs
def paused(*args, **kwargs):
    print("writing", flush=True)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)
    return real(*args, **kwargs)
coregister.write_outputs = paused
sys.exit(coregister.main([*sys.argv[3:], "--output", sys.argv[1]]))
"""

# a pair run into OUT SIGKILLed at one step of publishing: before or after the N-th os.replace
# onto a result name of OUT (or .results/current), or the N-th os.unlink of one
KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import s2coreg.coregistration.pair as coregister
out, what, n, when = Path(sys.argv[1]).resolve(), sys.argv[2], int(sys.argv[3]), sys.argv[4]
names = set(coregister.engine.RESULT_NAMES)
count = {"replace": 0, "unlink": 0}
real = {"replace": os.replace, "unlink": os.unlink}

def ours(path):
    p = Path(path)
    return (p.parent == out and p.name in names) or p == out / ".results" / "current"

def hooked(kind):
    def call(*args, **kwargs):
        hit = False
        if ours(args[1] if kind == "replace" else args[0]):
            count[kind] += 1
            hit = kind == what and count[kind] == n
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        done = real[kind](*args, **kwargs)
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)
        return done
    return call

os.replace, os.unlink = hooked("replace"), hooked("unlink")
sys.exit(coregister.main([*sys.argv[5:], "--output", str(out)]))
"""

# a stack run (a LocalCluster of one worker process) that says "started" once its first tasks
# are submitted, then waits 3 s before gathering them: a Ctrl-C lands while they run
SLOW_STACK = """
import sys, time
from pathlib import Path
import s2coreg.coregistration.pair as coregister
import s2coreg.coregistration.stack as stack
real = stack._gather
def gather(*args, **kwargs):
    print("started", flush=True)
    time.sleep(3)
    return real(*args, **kwargs)
stack._gather = gather
sys.exit(coregister.main(["--stack", *sys.argv[2:], "--workers", "1", "--output", sys.argv[1]]))
"""


def spawn(script: str, *args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(proc: subprocess.Popen, word: str) -> None:
    """Until ``proc`` prints ``word`` (fails where it ends first)."""
    line = proc.stdout.readline()
    assert line.strip() == word, f"{line!r}; stderr: {proc.stderr.read()[-2000:]}"


def result_files(out: Path) -> dict:
    """What a reader of OUT sees: every result name that resolves, with its content (bytes of a
    file; a folder's files' names and bytes)."""
    seen = {}
    for n in engine.RESULT_NAMES:
        p = out / n
        if p.is_file():
            seen[n] = p.read_bytes()
        elif p.is_dir():
            seen[n] = {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}
    return seen


def run_folders(out: Path) -> set[Path]:
    """The folders that OUT's visible result names lead to (one: a result seen whole)."""
    return {Path(os.path.realpath(out / n)).parent for n in engine.RESULT_NAMES if (out / n).exists()}


def assert_no_leftovers(out: Path) -> None:
    """Nothing of a killed or finished run beside the result: no hidden entry but ``.results``
    (no lock, build folder or temporary file), in it only ``current`` and its run, no link of
    ours pointing at nothing."""
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".results"]
    current = os.readlink(out / ".results" / "current")
    assert sorted(p.name for p in (out / ".results").iterdir()) == sorted(["current", current])
    assert not [p.name for p in out.iterdir() if p.is_symlink() and not p.exists()]
    assert not [p for p in (out / "cache").rglob(".*")] if (out / "cache").is_dir() else True


def escaping(call, *args):
    """``call(*args)``, failing the test (not ending the session) where Ctrl-C escapes it."""
    try:
        return call(*args)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped: its traceback would be printed")


def one_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()


@pytest.fixture(scope="module")
def earlier_stack(tmp_path_factory, dask_client):
    """A published stack result (shifts.csv, pairs.csv, stack.json, items …), copied by each test
    that needs an earlier result of other names than a pair's."""
    out = tmp_path_factory.mktemp("stack") / "out"
    stack.coregister_stack(STACK_DATES, out, client=dask_client, progress=False)
    return out


@pytest.fixture(scope="module")
def fresh_pair(tmp_path_factory):
    """The pair's result written into a new folder, by one run."""
    out = tmp_path_factory.mktemp("fresh") / "out"
    assert coregister.main([*PAIR, "--output", str(out)]) == 0
    return out


def copy_of(folder: Path, out: Path) -> Path:
    shutil.copytree(folder, out, symlinks=True)
    (out / "my_notes.txt").write_text("mine")
    return out


# ----------------------------------------------------------------------------- one writer
def test_a_second_run_into_a_folder_in_use_is_refused_in_one_line(tmp_path, capsys):
    """Run B into OUT while run A is writing there: refused at once in one line naming OUT and A
    (pid, host, start, command), exit 2 — the pair, the stack, and both from Python — leaving
    A's earlier result and the cache alone; after A ends, a run goes ahead."""
    out = tmp_path / "out"
    assert coregister.main([*PAIR, "--output", str(out)]) == 0
    earlier = result_files(out)
    (out / "cache" / "pairs").mkdir(parents=True)
    (out / "cache" / "pairs" / "kept.pkl").write_bytes(b"A's work")
    capsys.readouterr()
    go = tmp_path / "go"
    a = spawn(PAUSED_RUN, out, go, *PAIR)
    try:
        wait_for(a, "writing")
        holder = f"pid {a.pid} on {socket.gethostname()} since "
        assert coregister.main([*PAIR, "--output", str(out)]) == 2
        line = one_line(capsys.readouterr().err)
        assert str(out) in line and holder in line and "another run is writing there" in line and "-c" in line
        assert coregister.main(["--stack", *map(str, STACK_DATES), "--output", str(out)]) == 2
        assert holder in one_line(capsys.readouterr().err)
        with pytest.raises(PipelineError, match=holder):
            coregister.coregister(REF, SUMMER, out, progress=False)
        with pytest.raises(PipelineError, match=holder):
            stack.coregister_stack(STACK_DATES, out, progress=False)
        assert result_files(out) == earlier and (out / "cache" / "pairs" / "kept.pkl").read_bytes() == b"A's work"
    finally:
        go.touch()
        assert a.wait(timeout=120) == 0, a.stderr.read()
    assert run_folders(out) != set() and (out / "coregistration.json").is_file()
    assert coregister.main([*PAIR, "--output", str(out)]) == 0
    assert_no_leftovers(out)


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    """A run SIGKILLed while it held OUT's lock leaves its lock file (naming it); the kernel let
    go of its lock, so the next run takes it over and then removes the file."""
    out = tmp_path / "out"
    holder = spawn(HOLDER, out)
    try:
        wait_for(holder, "locked")
        with pytest.raises(PipelineError, match=f"pid {holder.pid} "):
            with engine.OutputFolder(out, engine.RESULT_NAMES).locked():
                pass
    finally:
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid} " in (out / engine.LOCK_NAME).read_text()
    assert coregister.main([*PAIR, "--output", str(out)]) == 0
    assert not (out / engine.LOCK_NAME).exists() and (out / "coregistration.json").is_file()


def test_the_lock_is_one_threads_and_reentrant(tmp_path):
    """In one process: the thread that holds OUT may take it again (coregister_dataarray around
    coregister_stack); another thread is refused; a refused or finished call that made OUT
    leaves nothing behind."""
    out = tmp_path / "a" / "out"
    folder = engine.OutputFolder(out, engine.RESULT_NAMES)
    refused = []

    def other():
        try:
            with engine.OutputFolder(out, engine.RESULT_NAMES).locked():
                pass
        except PipelineError as exc:
            refused.append(str(exc))

    with folder.locked():
        with folder.locked():
            assert (out / engine.LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert (out / engine.LOCK_NAME).exists()
    assert refused and f"pid {os.getpid()} " in refused[0]
    assert not (tmp_path / "a").exists()


def test_where_the_file_system_cannot_lock_the_run_says_so_and_goes_on(tmp_path, monkeypatch, capsys):
    """flock refused (ENOLCK: NFS without a lock daemon): one warning line, the run goes on, no
    lock file is left."""
    import fcntl

    def refused(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", refused)
    out = tmp_path / "out"
    with engine.OutputFolder(out, engine.RESULT_NAMES).building() as tmp:
        (tmp / "shifts.csv").write_text("new")
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"warning: {out}: cannot be locked (") and "not kept apart" in line
    assert (out / "shifts.csv").read_text() == "new" and not (out / engine.LOCK_NAME).exists()


# ----------------------------------------------------------------------------- all at once
@pytest.mark.parametrize("what,n,when", [("replace", 1, "before"),     # built, nothing switched
                                         ("replace", 3, "before"),     # some new links made, pointing at nothing
                                         ("replace", 5, "after"),      # just switched
                                         ("unlink", 2, "before")])     # the earlier result's names half removed
def test_a_run_killed_while_publishing_leaves_one_whole_result(earlier_stack, fresh_pair, tmp_path, what, n, when):
    """A pair run into the folder of a stack result (other names: 4 added, 5 gone), SIGKILLed at
    a step of publishing: a reader sees the stack's result whole or the pair's whole, every name
    from one run; the next run removes what the killed one left and equals a fresh run."""
    out = copy_of(earlier_stack, tmp_path / "out")
    before = result_files(out)
    killed = spawn(KILLED_RUN, out, what, n, when, *PAIR)
    _, err = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, f"the kill point was not reached: {err[-2000:]}"
    now = result_files(out)
    assert len(run_folders(out)) == 1
    if set(now) == set(before):
        assert now == before                                            # the earlier result, untouched
    else:
        assert set(now) == set(result_files(fresh_pair))                # the new one, every name of it
        listed = json.loads((out / "coregistration.json").read_text())["outputs"]
        assert {Path(p).name for p in listed} == set(now)
    assert coregister.main([*PAIR, "--output", str(out)]) == 0
    assert_no_leftovers(out)
    again, fresh = result_files(out), result_files(fresh_pair)
    assert set(again) == set(fresh) and again["tie_points.csv"] == fresh["tie_points.csv"]
    mine, theirs = (json.loads(r["coregistration.json"]) for r in (again, fresh))
    assert mine["shift_m"] == theirs["shift_m"] and mine["windows"] == theirs["windows"]
    assert (out / "my_notes.txt").read_text() == "mine"


def test_the_leftovers_of_killed_runs_are_removed_and_others_files_kept(earlier_stack, tmp_path):
    """What killed runs leave — a build folder of an older version holding a whole-looking
    shifts.csv, unpublished results, a half-made link, temporary files of atomic writes in OUT
    and in the cache — is gone once the next run holds the lock; the published result, the
    cache's entries and files of others (hidden ones too) stay."""
    out = copy_of(earlier_stack, tmp_path / "out")
    before, entries = result_files(out), sorted((out / "cache").rglob("*.pkl"))
    assert entries
    junk = [out / ".building.x1y2" / "shifts.csv", out / ".results" / "20240101T000000-dead" / "shifts.csv",
            out / ".shifts.k3j4.part.csv", out / "cache" / "pairs" / ".abc.k3j4.part.pkl",
            out / "cache" / "arrays" / ".date_x.q1.part.tif.aux.xml"]
    for p in junk:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("half")
    os.symlink("nowhere", out / ".results" / ".link-tmp.current.999")
    os.symlink(".results/current/tie_points.csv", out / "tie_points.csv")    # a link of ours, to nothing
    theirs = [out / ".my_settings", out / ".notes.part.txt", out / "cache" / "README"]
    for p in theirs:
        p.write_text("theirs")
    with engine.OutputFolder(out, engine.RESULT_NAMES).locked():
        pass
    assert not [p for p in junk if p.exists()] and not (out / ".building.x1y2").exists()
    assert not (out / "tie_points.csv").is_symlink() and not (out / ".results" / ".link-tmp.current.999").is_symlink()
    assert all(p.read_text() == "theirs" for p in theirs) and sorted((out / "cache").rglob("*.pkl")) == entries
    assert result_files(out) == before and (out / "my_notes.txt").read_text() == "mine"


def test_the_names_are_links_into_the_current_result_and_readers_find_everything(earlier_stack):
    """Each top-level name is a relative link through ``.results/current``; the STAC documents'
    relative hrefs (items/<id>/B04.vrt) resolve and read from OUT, as pystac resolves them."""
    import pystac
    import rasterio

    out = earlier_stack
    for n in ("shifts.csv", "stack.json", "items.geojson", "items", "report.png", "pairs.csv"):
        assert os.readlink(out / n) == f".results/current/{n}"
    assert not Path(os.readlink(out / ".results" / "current")).is_absolute()
    for item in pystac.ItemCollection.from_file(str(out / "items.geojson")):
        for asset in item.assets.values():
            href = asset.get_absolute_href()
            assert href.startswith(str(out / "items")), href
            with rasterio.open(href) as src:
                assert src.read(1).any()


def test_an_older_versions_real_files_are_replaced_and_where_links_fail_moved_in(tmp_path, monkeypatch):
    """A folder of an older version (real files and folders at our names) gets links, its JSON
    removed first; where the file system refuses links, the result is moved in name by name (the
    JSON last) and the earlier one's names removed — never the files of others."""
    out = tmp_path / "out"
    (out / "items" / "a").mkdir(parents=True)
    for n in ("shifts.csv", "stack.json", "items/a/B04.vrt", "my_notes.txt"):
        (out / n).write_text("old")
    folder = engine.OutputFolder(out, engine.RESULT_NAMES)
    order = []
    real_remove = engine._remove
    monkeypatch.setattr(engine, "_remove", lambda p: (order.append(p.name), real_remove(p)))
    with folder.building() as tmp:
        (tmp / "coregistration.json").write_text("{}")
        (tmp / "report.png").write_text("png")
    assert order[:1] == ["stack.json"] and {"shifts.csv", "items"} <= set(order)
    assert (out / "coregistration.json").is_symlink() and (out / "report.png").read_text() == "png"
    assert not any((out / n).exists() or (out / n).is_symlink() for n in ("shifts.csv", "stack.json", "items"))
    monkeypatch.setattr(engine.OutputFolder, "_links_work", lambda self, results: False)
    moved = []
    real_replace = os.replace
    monkeypatch.setattr(engine.os, "replace", lambda a, b: (moved.append(Path(b).name), real_replace(a, b)))
    with folder.building() as tmp:
        (tmp / "shifts.csv").write_text("new")
        (tmp / "stack.json").write_text("{}")
    assert moved[-1] == "stack.json" and (out / "shifts.csv").read_text() == "new"
    assert not (out / "shifts.csv").is_symlink() and not (out / "report.png").exists()
    assert not (out / "coregistration.json").exists() and not (out / ".results").exists()
    assert (out / "my_notes.txt").read_text() == "old"


def test_a_users_files_at_our_names_are_refused_not_replaced(tmp_path, capsys):
    """A folder where no result of ours was ever published but that holds ``items/`` and
    ``report.png`` of the user's: the run is refused in one line naming them (the trial's
    ``items/notes.txt`` and ``corrected/my_precious.tif`` were deleted), and they stay; an
    earlier result of ours (its JSON beside them) is replaced as before."""
    out = tmp_path / "out"
    (out / "items").mkdir(parents=True)
    (out / "items" / "notes.txt").write_text("mine")
    (out / "report.png").write_text("mine")
    with pytest.raises(PipelineError, match=r"holds items/, report.png, which this tool did not write"):
        with engine.OutputFolder(out, engine.RESULT_NAMES).locked():
            pass
    assert coregister.main([*PAIR, "--output", str(out)]) == 2
    assert "which this tool did not write" in one_line(capsys.readouterr().err)
    assert (out / "items" / "notes.txt").read_text() == "mine" and (out / "report.png").read_text() == "mine"
    (out / "stack.json").write_text("{}")           # an older version's result: ours to replace
    with engine.OutputFolder(out, engine.RESULT_NAMES).locked():
        pass


# ----------------------------------------------------------------------------- refused writes, Ctrl-C
@pytest.mark.parametrize("code,earlier", [(errno.ENOSPC, True), (errno.EROFS, True), (errno.EDQUOT, False),
                                          (errno.EACCES, False)])
def test_a_refused_write_is_one_line_exit_2_and_nothing_published(tmp_path, monkeypatch, capsys, code, earlier):
    """Disk full, read-only, quota, permission while a result is written: one line naming the
    file and the fix, exit 2 (not 1: nothing was written), no traceback; the earlier result, if
    any, stands whole, and nothing of the run is left."""
    out = tmp_path / "out"
    if earlier:
        assert coregister.main([*PAIR, "--output", str(out)]) == 0
    before = result_files(out) if earlier else {}

    def refused(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(coregister.engine, "write_csv", refused)
    capsys.readouterr()
    assert coregister.main([*PAIR, "--output", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: ") and "tie_points.csv" in line and os.strerror(code) in line
    assert cli.STORAGE_FIXES[code] in line and f"nothing published in {out}" in line
    if earlier:
        assert result_files(out) == before
        assert_no_leftovers(out)
    else:
        assert not out.exists()


def test_a_cog_write_that_gdal_refuses_is_one_line(tmp_path, monkeypatch, capsys):
    """GDAL's failed write names no cause ("Write failed"): a probe write into OUT finds it (here
    the probe is told the disk is full), one line, exit 2."""
    import rasterio.errors

    def refused(*args, **kwargs):
        raise rasterio.errors.RasterioIOError("Write failed. See previous exception for details.")

    monkeypatch.setattr(coregister.engine, "write_moved", refused)
    monkeypatch.setattr(cli, "_probe_write", lambda folder: errno.ENOSPC)
    out = tmp_path / "out"
    assert coregister.main([*PAIR, "--output", str(out), "--write-corrected"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"error: {out}: No space left on device (Write failed" in line and not out.exists()


def test_a_full_disk_for_real(tmp_path, capsys):
    """On a 700 KiB tmpfs (where this user may mount one): the second result does not fit beside
    the first — one line, exit 2, the first stands; with --write-corrected GDAL's COG write fails
    too (libtiff itself may print its own line before ours)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mount / "out"
        assert coregister.main([*PAIR, "--output", str(out)]) == 0
        before = result_files(out)
        capsys.readouterr()
        assert coregister.main([*PAIR, "--output", str(out)]) == 2
        line = one_line(capsys.readouterr().err)
        assert "No space left on device" in line and str(out) in line
        assert coregister.main([*PAIR, "--output", str(out), "--write-corrected"]) == 2
        err = capsys.readouterr().err
        ours = [ln for ln in err.splitlines() if not ln.startswith("_tiffWriteProc")]
        assert "Traceback" not in err and len(ours) == 1 and "No space left on device" in ours[0]
        assert result_files(out) == before
        assert_no_leftovers(out)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_ctrl_c_mid_run_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the result is written: one line, exit 130, no traceback; the earlier result
    stands and nothing of the interrupted run is left."""
    out = tmp_path / "out"
    assert coregister.main([*PAIR, "--output", str(out)]) == 0
    before = result_files(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(coregister, "write_report", interrupted)
    capsys.readouterr()
    assert escaping(coregister.main, [*PAIR, "--output", str(out)]) == 130
    said = one_line(capsys.readouterr().err)
    assert said == f"interrupted: nothing published in {out} (its earlier result, if any, stands)"
    assert result_files(out) == before
    assert_no_leftovers(out)


def test_ctrl_c_at_a_terminal_stops_a_stack_quietly(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the whole process group: the run and its LocalCluster's
    workers) while a stack's tasks run: exit 130, one line, no traceback from the run, its
    workers or the cluster closing; nothing published; the lock let go."""
    out = tmp_path / "out"
    run = spawn(SLOW_STACK, out, *STACK_DATES, start_new_session=True)
    wait_for(run, "started")
    os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=120)
    said = [ln for ln in err.replace("\r", "\n").splitlines()
            if ln.strip() and not ln.startswith(("locate:", "dates:", "pairs:"))
            and "Port 8787 is already in use" not in ln and "Hosting the HTTP server" not in ln
            and "Perhaps you already have a cluster" not in ln and "warnings.warn(" not in ln]
    assert run.returncode == 130 and "Traceback" not in err, err
    assert said == [f"interrupted: nothing published in {out} (its earlier result, if any, stands); the finished "
                    f"work is kept in {out / 'cache'}, and a rerun resumes from it"], err
    assert not out.exists() or sorted(p.name for p in out.iterdir()) in ([], ["cache"])


def test_cli_run_gives_every_script_the_same_endings(tmp_path, capsys):
    """``cli.run``: Ctrl-C → 130, a refused write → 2, each one line; a bug keeps its traceback."""
    import argparse

    def body(exc):
        def run(args):
            raise exc
        return run

    args = argparse.Namespace(threads=None, output=tmp_path)
    assert escaping(cli.run, body(KeyboardInterrupt()), args) == 130
    assert one_line(capsys.readouterr().err) == "interrupted"
    assert cli.run(body(OSError(errno.ENOSPC, "No space left on device", "/x/y.npz")), args) == 2
    said = one_line(capsys.readouterr().err)
    assert said == f"error: /x/y.npz: No space left on device; {cli.STORAGE_FIXES[errno.ENOSPC]}"
    with pytest.raises(ValueError):
        cli.run(body(ValueError("a bug")), args)


def test_every_command_ends_through_cli_script(monkeypatch, capsys):
    """Every console command — and so every checkout script, each of which runs one
    (tests/test_architecture.py) — ends through ``cli.script``: a Ctrl-C in any of them is one
    line and 130, never Python's traceback and exit 1."""
    import importlib

    from s2coreg import commands

    def interrupted(argv=None):
        raise KeyboardInterrupt

    for command, (target, _) in commands.COMMANDS.items():
        module, _, function = target.partition(":")
        monkeypatch.setattr(importlib.import_module(module), function or "main", interrupted)
        assert commands.run(command, []) == 130, command
        assert one_line(capsys.readouterr().err) == "interrupted", command


def test_cli_script_keeps_exit_1_for_results_and_gives_a_bug_3(capsys):
    """``cli.script``: the script's own code as it is (1: results written, not all verified),
    Ctrl-C 130 in one line, a refused write 2, an unforeseen error its traceback and 3 — never
    Python's 1."""
    def raising(exc):
        def main():
            raise exc
        return main

    assert cli.script(lambda: 1) == 1 and cli.script(lambda: 0) == 0
    assert cli.script(raising(KeyboardInterrupt())) == 130
    assert one_line(capsys.readouterr().err) == "interrupted"
    assert cli.script(raising(OSError(errno.ENOSPC, "No space left on device", "/x/y.npz"))) == 2
    assert "No space left on device" in one_line(capsys.readouterr().err)
    assert cli.script(raising(ZeroDivisionError("a bug"))) == cli.BUG == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "a bug: please report it" in err


def test_a_python_stack_holds_its_folder_while_it_runs(tmp_path, monkeypatch, dask_client):
    """``coregister_stack(..., output)`` from Python is its folder's one writer while it runs (not
    only the command line): another writer, here another thread, is refused while its pairs run."""
    out = tmp_path / "out"
    seen = []
    real = stack.run_pairs

    def run_pairs(*args, **kwargs):
        def other_writer():
            try:
                with engine.OutputFolder(out, engine.RESULT_NAMES).locked():
                    seen.append("got the lock")
            except PipelineError as exc:
                seen.append(str(exc))
        thread = threading.Thread(target=other_writer)
        thread.start()
        thread.join()
        return real(*args, **kwargs)

    monkeypatch.setattr(stack, "run_pairs", run_pairs)
    stack.coregister_stack(STACK_DATES, out, client=dask_client, progress=False)
    assert seen and all("another run is writing there" in s for s in seen), seen
