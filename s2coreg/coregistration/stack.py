"""Co-register a whole stack of dates jointly, as Dask tasks: ``coregister.py --stack``.

    python coregister.py --stack DATES... [--reference auto|PATH] --output DIR [--scheduler tcp://HOST:8786]

DATES: files, folders or globs. A folder of ``.SAFE`` products, STAC Items or dated rasters holds
one date each; a folder of one date's band files (``B02.tif``, ``B03.tif``, ``B04.tif``) is one
date; a folder of such folders (``imgs_1/``, ``imgs_2/``) is one date a sub-folder.

The same engine as a pair (``s2coreg/coregistration/engine.py``; a pair is a stack of two): every date is read on
one grid (the first usable date's, or ``--reference PATH``'s), each at its own coarse offset, in the
same windows, and its features are extracted once (one task per date). Pairs are then measured
window by window (one task per pair): every date against its neighbours in time
(``--neighbours`` on each side) and the reference and, where a date has too few verified pairs,
against more distant dates; a pair that verified too few of its windows (``stack_more_windows``:
clouds or snow no mask declares over both dates) is measured again on the full plan, its two dates
reading the windows the stack's plan left out (``read_more_windows``). Each pair gives a
displacement with its calibrated standard error and its warnings. A robust weighted least-squares adjustment over the pair graph then places every
date: ``x_j − x_i = d_ij`` for every verified pair, the reference fixed at 0, Cauchy-reweighted so
that inconsistent pairs lose their weight (their residuals, the loop-closure errors, are reported).
A date that cannot be matched to the reference directly is placed through its neighbours; a date
that joins no pair with the reference's part of the graph is excluded with the reason.

Outputs in DIR (one run at a time; the earlier run's replaced as a whole, all at once — see
``engine.OutputFolder``): ``shifts.csv`` (a row a date: absolute
path, item id, date, dx_m, dy_m, sigma_m, status ``reference`` / ``ok`` / ``excluded``, reason,
warnings), ``pairs.csv``, ``stack.json`` (reference, timing, provenance), ``report.png`` (shifts
over time, the reference marked) and with ``--write-corrected`` ``corrected/``: every placed
date's files with their georeference moved by its correction in their own CRS (COGs with the
provenance as tags) and ``stack.geojson``, a STAC ItemCollection of them (geometry, bbox,
``proj:`` fields, links).

Dask: by default a ``LocalCluster`` with one single-threaded worker process per core (torch then
never oversubscribes); ``--scheduler`` runs the same tasks on an existing cluster, whose scheduler
and workers must import this package: install it on each machine, as on the client
(``pip install s2coreg-….whl`` or ``pip install /path/to/checkout``, the same version), then
``dask scheduler`` and ``dask worker tcp://HOST:8786 --nworkers N --nthreads 1``; each worker reads
the checkpoints the package ships (docs/coregistration.md: never ``PYTHONPATH`` to a checkout,
whose files may change under a running cluster). From a plain
Python script, ``coregister_stack`` works without an ``if __name__ == "__main__":`` guard: the
LocalCluster's workers are started without running the script again. A bad date (unreadable, off a
north-up grid, without a CRS or valid pixels) is excluded with one line in words wherever it
stands, and the others go on; this tool's own outputs in an input folder are not dates; Dask
retries a task whose worker died.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import s2coreg.config as config
import s2coreg.coregistration.engine as engine
import s2coreg.io.products as dp
import s2coreg.io.remote as remote
import s2coreg.coregistration.outputs as stack_outputs
from s2coreg.coregistration.cache import WorkCache
from s2coreg.config import CoregisterConfig
from s2coreg.coregistration.engine import DateFeatures, PairMeasure
from s2coreg.results import StackDate, StackResult
from s2coreg.utils import PipelineError, atomic_path, set_threads
from s2coreg.coregistration.dates import (date_label, expand_inputs, failure_reason, find_date, given_reference,
                                          open_dates, unique_dates)

_PIPELINES: dict = {}     # one matching pipeline per worker process, matcher and device, loaded on its first task


def worker_pipeline(matcher: str = engine.JOB_MATCHER["stack"], device: str | None = None):
    """The matching pipeline of this process for ``matcher`` (``CoregisterConfig.matcher`` as
    ``engine.checked_config`` gives it) on
    ``device`` as ``coregister_stack`` was given it (None or ``"auto"``: this worker's CUDA GPU
    where torch can use one, else its CPU — resolved here, on the worker); loaded once; one torch
    thread per worker."""
    if (matcher, device) not in _PIPELINES:
        from s2coreg.matching.pipeline import MatchingPipeline

        set_threads(1)
        _PIPELINES[matcher, device] = MatchingPipeline.from_checkpoints(matcher=matcher, device=device)
    return _PIPELINES[matcher, device]


def worker_device(device: str | None) -> tuple[str | None, str | None]:
    """Run on each worker before any task: the device ``device`` gives there (``"auto"`` resolved
    on the worker's own machine), or the one line why it cannot be used there (``cuda`` on a
    worker without a GPU)."""
    from s2coreg.models.checkpoints import resolve_device

    try:
        return str(resolve_device(device)), None
    except PipelineError as exc:
        return None, str(exc)


def check_workers_device(client, device: str | None) -> list[str]:
    """The devices ``device`` gives on the client's workers (``worker_device``), or one line naming a
    worker where it cannot be used: before any work, not as every date's exclusion."""
    found = client.run(worker_device, device)
    bad = {address: line for address, (_, line) in found.items() if line}
    if bad:
        address, line = sorted(bad.items())[0]
        more = f" (and {engine.plural(len(bad) - 1, 'other worker')})" if len(bad) > 1 else ""
        raise PipelineError(f"worker {address}{more}: {line}")
    return sorted({used for used, _ in found.values()})


def _earlier_run(output, paths: list) -> tuple[int | None, int | None, str | None]:
    """The reference an earlier run in ``output`` chose and the date whose grid it used, where
    those dates are still in the stack (a stack that grows keeps both: the shifts of its old dates
    stay comparable, and its cached work stays valid), and the reference's content key then (a
    reference edited since is not kept: its rerun then chooses as a fresh run does)."""
    if output is None or not (Path(output) / "stack.json").is_file():
        return None, None, None
    try:
        earlier = json.loads((Path(output) / "stack.json").read_text())
    except (OSError, ValueError):
        return None, None, None

    def find(*keys):
        for key in keys:
            k = find_date(paths, str(earlier[key])) if earlier.get(key) else None
            if k is not None:
                return k
        return None

    return find("reference", "reference_id"), find("grid_date"), earlier.get("reference_content")


# ----------------------------------------------------------------------------- tasks
@dataclass
class TaskError:
    """A task's bad input (a ``PipelineError``), returned as a value: reported once with the date,
    not retried, no worker traceback in the log."""

    message: str


def reports_bad_input(task):
    """A task that returns a bad input's failure as a ``TaskError`` in words instead of raising it
    (Dask would log the traceback on the worker and retry a failure that cannot change): its
    ``PipelineError``, and what a corrupt or truncated file, a CRS or a georeference out of shape
    raise deeper down (``engine.bad_input_line``). Anything else is raised: a fault of this tool."""
    @functools.wraps(task)
    def run(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except Exception as exc:
            line = engine.bad_input_line(exc, date_label(getattr(args[0], "path", args[0])))
            if line is None:
                raise
            return TaskError(line)
    return run


@reports_bad_input
def task_overview(path, bands: list[str], grid: dp.Grid, cfg: CoregisterConfig,
                  nodata: float | str | None = None, device: str | None = None) -> engine.Overview:
    """Task: the reference grid product's overview and its features. ``nodata``: its no-data rule
    as the main process decided it (``engine.with_nodata``: no fill looked for again); ``device``:
    ``worker_pipeline``'s (so are the other tasks')."""
    product = engine.open_date(path, "reference", tuple(bands), nodata)
    return engine.reference_overview(worker_pipeline(cfg.matcher, device), product, bands, grid, cfg)


@reports_bad_input
def task_locate(path, bands: list[str], grid: dp.Grid, overview: engine.Overview | None,
                cfg: CoregisterConfig, nodata: float | str | None = None,
                device: str | None = None) -> engine.DateLocation:
    """Task: a date's coarse offset and extent on the grid (``nodata``: as ``task_overview``'s)."""
    product = engine.open_date(path, "date", tuple(bands), nodata)
    return engine.locate_date(worker_pipeline(cfg.matcher, device), path, product, bands, grid, overview, cfg)


@reports_bad_input
def task_extract(location: engine.DateLocation, grid: dp.Grid, windows, cfg: CoregisterConfig,
                 device: str | None = None, only: set[int] | None = None) -> DateFeatures:
    """Task: a date's windows (``only``: those of these indices) read and their features extracted once."""
    product = engine.open_date(location.path, "date", tuple(location.bands), location.nodata)
    return engine.extract_date(worker_pipeline(cfg.matcher, device), product, location, grid, windows, cfg,
                               only=only)


def task_pair(i: int, j: int, a: DateFeatures, b: DateFeatures, cfg: CoregisterConfig, px_m: float,
              device: str | None = None, measured: dict | None = None) -> PairMeasure:
    """Task: two dates measured window by window (``measured``: windows already matched, as
    ``engine.measure_pair`` takes them). Their tie points are dropped (not needed here), but for a
    pair short of verified windows (``short_pairs``), which is measured again on more windows
    (``read_more_windows``) with these windows' measures reused: its warnings read every used
    window's tie points, and it has few."""
    pair = engine.measure_pair(worker_pipeline(cfg.matcher, device), i, j, a, b, cfg, px_m, measured=measured)
    if measured is not None or not short_pairs([pair], len(a.windows), cfg):
        for w in pair.windows:
            w.tie_a = w.tie_b = w.score = np.zeros(0)
    return pair


# a stack corrects dates by translation only: a date that needs an affine is co-registered as a pair
STACK_AFFINE_HINT = ("co-register this date as a pair against the reference with correction='affine' "
                     "(--correction affine)")


# ----------------------------------------------------------------------------- adjustment
def adjust(n: int, pairs: list[PairMeasure], reference: int, iterations: int = 20) -> dict:
    """Robust weighted least squares of ``x_j − x_i = d_ij`` over the verified pairs, ``x_ref = 0``.

    Returns per date ``x`` (n, 2) px (NaN where not placed), ``sigma`` (n,), ``placed`` (n,) and per
    pair ``weight`` and ``residual`` (px). Cauchy weights on residuals normalised by each pair's
    sigma (scale 2.385): a pair inconsistent with the rest loses its weight.
    """
    ok = [p for p in pairs if p.verified]
    adj = {k: set() for k in range(n)}
    for p in ok:
        adj[p.i].add(p.j)
        adj[p.j].add(p.i)
    placed, todo = {reference}, [reference]
    while todo:
        for m in adj[todo.pop()]:
            if m not in placed:
                placed.add(m)
                todo.append(m)
    unknown = [k for k in range(n) if k in placed and k != reference]
    col = {k: c for c, k in enumerate(unknown)}
    use = [p for p in ok if p.i in placed and p.j in placed]
    x = np.full((n, 2), np.nan)
    x[reference] = 0.0
    sigma = np.full(n, np.nan)
    sigma[reference] = 0.0
    weights = {(p.i, p.j): 1.0 for p in use}
    residuals = {}
    if unknown and use:
        A = np.zeros((len(use), len(unknown)))
        for r, p in enumerate(use):
            if p.j in col:
                A[r, col[p.j]] += 1
            if p.i in col:
                A[r, col[p.i]] -= 1
        D = np.array([p.shift_px for p in use])
        s = np.array([p.sigma_px for p in use])
        w = np.ones(len(use))
        for _ in range(iterations):
            W = w / s ** 2
            N = A.T @ (A * W[:, None])
            sol = np.linalg.lstsq(N, A.T @ (D * W[:, None]), rcond=None)[0]       # (unknowns, 2)
            res = D - A @ sol
            u = np.linalg.norm(res, axis=1) / s
            w = 1 / (1 + (u / 2.385) ** 2)
        cov = np.linalg.pinv(A.T @ (A * (w / s ** 2)[:, None]))
        for k, c in col.items():
            x[k] = sol[c]
            sigma[k] = float(np.sqrt(max(cov[c, c], 0.0)))
        for r, p in enumerate(use):
            weights[(p.i, p.j)] = float(w[r])
            residuals[(p.i, p.j)] = float(np.linalg.norm(res[r]))
    return {"x": x, "sigma": sigma, "placed": np.array([k in placed for k in range(n)]),
            "weight": weights, "residual": residuals}


def _joined(k: int, pairs: list[PairMeasure]) -> set[int]:
    """Date ``k`` and every date that verified pairs join to it, directly or through others."""
    joined, todo = {k}, [k]
    while todo:
        m = todo.pop()
        for p in pairs:
            if p.verified and m in (p.i, p.j) and (other := p.j if m == p.i else p.i) not in joined:
                joined.add(other)
                todo.append(other)
    return joined


def choose_reference(dates: list[DateFeatures | None]) -> tuple[int, str]:
    """The date with the most keypoints over valid windows (most valid, cloud- and snow-free,
    textured area)."""
    scores = [(d.keypoints if d is not None else -1) for d in dates]
    k = int(np.argmax(scores))
    d = dates[k]
    return k, (f"most keypoints in valid windows: {d.keypoints} over {len(d.features)} of {len(d.windows)} windows "
               f"({d.valid_share:.0%} of their area valid)")


# ----------------------------------------------------------------------------- cluster
@contextlib.contextmanager
def workers_without_rerunning_main():
    """Start worker processes without running the caller's script again.

    Dask's LocalCluster starts its workers with multiprocessing's *spawn*, which runs the main
    script again in each (as ``__mp_main__``) — without an ``if __name__ == "__main__":`` guard
    that starts a cluster inside every worker. The workers need only this repository's modules
    (on ``sys.path``, which spawn passes on), so the main module's file and spec are hidden while
    they start, and restored after."""
    main = sys.modules.get("__main__")
    saved = {a: getattr(main, a) for a in ("__file__", "__spec__") if main is not None and hasattr(main, a)}
    try:
        if main is not None:
            if "__file__" in saved:
                del main.__file__
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            for a, v in saved.items():
                setattr(main, a, v)


# Dask's preload, run in each LocalCluster worker process as it starts (its main thread): a
# terminal's Ctrl-C goes to every process of its foreground group, and a worker that got it died
# with its own tracebacks; the run's own process handles it (it closes the cluster, whose workers
# then end quietly). A worker still starting (importing) when Ctrl-C comes may print its own.
WORKER_IGNORES_CTRL_C = """
import signal


def dask_setup(worker):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
"""


SCHEDULER_TIMEOUT_S = 30     # a scheduler's address that answers nothing: refused after this long


def start_client(scheduler: str | None, workers: int | None):
    """A client of ``scheduler``, or of a new LocalCluster of ``workers`` processes (one per core
    when None) that ignore Ctrl-C (``WORKER_IGNORES_CTRL_C``) and close without log lines
    (``closing_quietly``). Returns (client, cluster or None)."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=SCHEDULER_TIMEOUT_S), None
        except (OSError, TimeoutError) as exc:      # no scheduler there (refused, unknown host, no answer)
            raise PipelineError(f"scheduler={scheduler!r}: no Dask scheduler answered within {SCHEDULER_TIMEOUT_S} s "
                                f"({' '.join(str(exc).split())[:160]}); start one there (dask scheduler) or give "
                                "its address") from exc
    n = workers or len(os.sched_getaffinity(0))
    cluster = client = None
    try:
        with workers_without_rerunning_main():
            cluster = closing_quietly(LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                   dashboard_address=":0", preload=[WORKER_IGNORES_CTRL_C]))
        client = Client(cluster)
        return closing_quietly(client, before=lambda: client.run(_quiet_logs, wait=True)), cluster
    except BaseException:             # Ctrl-C while they started: none left running
        try:
            if client is not None:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()
        raise


def _quiet_logs(level: int = 50) -> None:
    """Dask's, tornado's and asyncio's log lines below ``level`` (CRITICAL) silenced in this process."""
    import logging

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(level)


def closing_quietly(obj, before=None):
    """``obj`` (our own LocalCluster or its client) whose ``close()`` prints nothing: a run cut
    short (Ctrl-C, an error) closes it with tasks still running, and Dask then logged each
    cancelled task and the workers it stopped, in the workers (``before``: the client silences
    them first) and here. Whatever closing raises is dropped: the run's own error or interrupt is
    what the user is told."""
    import logging

    close = obj.close
    closed = []

    def quietly(*args, **kwargs):
        if closed:                    # once: a second close (Client.__del__ after ours, cut short by a
            return None               # Ctrl-C) would wait on workers that are gone — the trial's hang
        closed.append(True)
        loggers = [logging.getLogger(n) for n in ("distributed", "tornado", "asyncio")]
        levels = [lg.level for lg in loggers]
        _quiet_logs()
        try:
            if before is not None:
                with contextlib.suppress(Exception):
                    before()
        finally:                      # closed even where a Ctrl-C cut ``before`` short
            try:
                with contextlib.suppress(Exception):
                    close(*args, **kwargs)
            finally:
                for lg, level in zip(loggers, levels):
                    lg.setLevel(level)

    obj.close = quietly
    return obj


def _as_completed(futures: list):
    """Dask's ``as_completed`` on the futures' own client: a ``client=`` given to ``coregister_stack``
    need not be Dask's default one."""
    from dask.distributed import as_completed

    return as_completed(futures, loop=futures[0].client.loop) if futures else iter(())


def _gather(futures: dict, label: str, progress: bool, errors: dict, paths: list, on_done=None) -> dict:
    """Results of ``futures`` (key → future) as they finish; a failing one's error recorded.
    ``on_done(key, value)`` is called on each result as it arrives (the cache keeps it then, so
    a run interrupted in the middle of a stage keeps the work that stage finished)."""
    from s2coreg.display import tqdm

    by_key = {f.key: k for k, f in futures.items()}
    out = {}
    for fut in tqdm(_as_completed(list(futures.values())), total=len(futures), desc=label, unit="date",
                    disable=not progress or not futures):          # all cached: no empty bar
        k = by_key[fut.key]
        try:
            value = fut.result()
        except Exception as exc:       # a bad product is reported; the others go on
            errors[k] = failure_reason(exc, paths[k])
            continue
        if isinstance(value, TaskError):
            errors[k] = value.message
        else:
            out[k] = value
            if on_done is not None:
                on_done(k, value)
    return out


def _value(future, date):
    """A task's value; its failure (a ``TaskError``, or an exception after Dask's retries) as a
    ``PipelineError`` in words."""
    try:
        value = future.result()
    except Exception as exc:
        raise PipelineError(failure_reason(exc, date)) from exc
    if isinstance(value, TaskError):
        raise PipelineError(value.message)
    return value


# ----------------------------------------------------------------------------- driver
def usable_bands(paths: list, products: dict, bands: tuple[str, ...], errors: dict) -> dict:
    """The bands read of each opened date that can be placed: the bands most dates share (else
    each date's own), on a map CRS and a north-up grid (a rotated date would be "placed" km off);
    a date that cannot is left out with its reason in ``errors``."""
    keys = list(products)
    try:
        per_date = engine.common_bands([products[k] for k in keys], bands, quorum=0.5)
    except PipelineError:
        per_date = []
        for k in keys:
            try:
                per_date.append(engine.date_bands(products[k], bands))
            except PipelineError as exc:
                errors[k] = str(exc)
                per_date.append(None)
    date_bands = {k: b for k, b in zip(keys, per_date) if b is not None}
    for k in list(date_bands):
        try:
            engine.check_georeference(products[k], date_bands[k], "date")
        except Exception as exc:
            errors[k] = failure_reason(exc, paths[k], raise_unforeseen=True)
            date_bands.pop(k)
    return date_bands


def pipeline_name(matcher: str, device: str | None) -> str:
    """The matching path a worker runs (``superpoint+superglue+refine+correlate`` …), for the
    provenance: read where the pipeline is already loaded."""
    return worker_pipeline(matcher, device).name


@engine.one_writer            # with ``output``: its one writer, from before any work to the cache's pruning
def coregister_stack(inputs: list, output: str | Path | None = None, reference: str = "auto", *,
                     bands: tuple[str, ...] | None = None, cfg: CoregisterConfig | None = None,
                     scheduler: str | None = None, workers: int | None = None, neighbours: int = 2,
                     write_corrected: bool = False, progress: bool = True, client=None,
                     dates: dict | None = None, device: str | None = None) -> StackResult:
    """Co-register every date of ``inputs`` jointly (see the module docstring); returns the rows of
    ``shifts.csv`` (``"dates"``: a ``results.StackDate`` a date, read as a dict too, whose shared
    fields are a pair's ``CoregistrationResult``'s: ``dx_m``, ``dy_m``, ``sigma_m``, ``status``, …)
    and ``pairs.csv`` (``"pairs"``: dicts) and what the run was, and with ``output`` writes them.
    ``client``: a ``dask.distributed.Client`` to run on (left open), instead of ``scheduler`` /
    a LocalCluster. With ``output``, the work is kept in ``output/cache`` and a later run with
    more dates reuses it (``cache``; counted in ``reused`` / ``computed``). ``dates``:
    {NAME: YYYY-MM-DD} for dates whose metadata and name do not give one (``--date``). ``device``:
    the workers' (``cpu``, ``cuda``; None or ``"auto"``: each worker's CUDA GPU where torch can use
    one, else its CPU, resolved on the worker), checked on every worker before any work.
    The result is a ``results.StackResult``: the dict, with ``to_dataframe()`` and ``report()``
    (a notebook shows it as the dates' table and the report picture)."""
    cfg = engine.checked_config(cfg, stack=True)      # the workers get a user's matcher as package.module:name
    if client is not None and (scheduler is not None or workers is not None):
        raise PipelineError("client= runs the stack on that client; scheduler= and workers= start or reach a cluster "
                            "of its own: give one or the other")
    bands = dp.normalise_bands(bands) or tuple(cfg.bands)
    if output is not None:
        engine.OutputFolder(output, engine.RESULT_NAMES).check()          # before any work
    if isinstance(inputs, (str, Path, dp.ItemRef)):        # one folder, glob, URL or collection: one input
        inputs = [inputs]
    start = time.time()
    paths, ref_k = given_reference(unique_dates(expand_inputs(inputs)), reference)
    pinned, pinned_grid, pinned_content = _earlier_run(output, paths) if ref_k is None else (None, None, None)
    if len(paths) < 2:
        raise PipelineError(f"{', '.join(map(str, inputs))}: a stack needs at least two dates (found {len(paths)})")
    engine.check_given_dates(dates, paths)
    products, errors = open_dates(paths, bands)
    date_bands = usable_bands(paths, products, bands, errors)
    if ref_k is not None and ref_k not in date_bands:
        raise PipelineError(errors[ref_k])
    # the grid's date: the given reference, else the earlier run's grid date, else the first date —
    # and where one cannot be read (its grid, its overview, its own location), the next usable one
    candidates = [ref_k] if ref_k is not None else list(dict.fromkeys(
        k for k in (pinned_grid, *date_bands) if k in date_bands))
    if not candidates:
        raise PipelineError("no date of the stack can be used: " + "; ".join(errors[k] for k in sorted(errors)))
    given_dates = dates
    content = {}                  # what each date's data is (its files' content keys), for the cache
    own_client = client is None
    if own_client:
        client, cluster = start_client(scheduler, workers)
    else:
        cluster = None
    try:
        worker_devices = check_workers_device(client, device)
        t_extract = time.time()
        for grid_k in candidates:
            try:
                grid = engine.grid_of(products[grid_k], date_bands[grid_k])
                px_m = engine.metres_per_px(grid)
                cache = WorkCache(output, {"cfg": config.as_dict(cfg), "bands": list(bands),
                                           "grid": [list(grid.transform)[:6], grid.width, grid.height, str(grid.crs)]})
                for k in [k for k in date_bands if k not in content]:       # each date's once, whatever the grid
                    try:
                        content[k] = cache.date_content(products[k], date_bands[k]) if cache.folder else str(k)
                    except (OSError, PipelineError) as exc:
                        errors[k] = str(exc)
                        date_bands.pop(k)
                if grid_k not in content:
                    raise PipelineError(errors[grid_k])
                # a date is its files' content and its path (its name and date may come from the path: two
                # dates of the same pixels are still two dates)
                loc_keys = {k: cache.key("location", content[k], date_label(paths[k]), content[grid_k]) for k in date_bands}
                locations = {}
                for k in date_bands:
                    cached = cache.get("locations", loc_keys[k])
                    if cached is not None:
                        locations[k] = dataclasses.replace(cached, path=paths[k])
                ov = None
                if any(k not in locations for k in date_bands if k != grid_k):
                    ov = client.submit(task_overview, paths[grid_k], date_bands[grid_k], grid, cfg,
                                       products[grid_k].nodata, device, retries=2, key=f"overview-{time.time_ns()}")
                    _value(ov, paths[grid_k])
                if grid_k not in locations:
                    own = _value(client.submit(task_locate, paths[grid_k], date_bands[grid_k], grid, None, cfg,
                                               products[grid_k].nodata, device, retries=2,
                                               key=f"locate-{grid_k}-{time.time_ns()}"), paths[grid_k])
                    cache.put("locations", loc_keys[grid_k], own)
                    locations[grid_k] = own
                break
            except PipelineError as exc:
                if ref_k is not None:
                    raise
                errors[grid_k] = str(exc)
                date_bands.pop(grid_k, None)
        else:
            raise PipelineError("no date of the stack can be used: " + "; ".join(errors[k] for k in sorted(errors)))
        located = {k: client.submit(task_locate, paths[k], date_bands[k], grid, ov, cfg,
                                    products[k].nodata, device, retries=2, key=f"locate-{k}-{time.time_ns()}")
                   for k in date_bands if k not in locations}
        for k, loc in _gather(located, "locate", progress, errors, paths,
                              on_done=lambda k, loc: cache.put("locations", loc_keys[k], loc)).items():
            locations[k] = loc
        locations = {k: engine.with_given_date(loc, dates) for k, loc in locations.items()}
        region = engine.common_region(grid, [loc.extent_px for loc in locations.values()], cfg.edge_tolerance_px)
        windows = engine.plan_windows(region, config.replace(cfg, max_windows=min(cfg.max_windows,
                                                                                 cfg.stack_windows)))
        feature_keys = {k: cache.key("date", loc_keys[k], windows) for k in locations}
        results, extracted = {}, {}
        for k, loc in locations.items():
            cached = cache.get("dates", feature_keys[k])
            if cached is not None:
                cached.location = loc
                results[k] = cached
                extracted[k] = client.scatter(cached)
        new = {k: client.submit(task_extract, loc, grid, windows, cfg, device, retries=2,
                                key=f"extract-{k}-{time.time_ns()}")
               for k, loc in locations.items() if k not in results}
        for k, value in _gather(new, "dates", progress, errors, paths,
                                on_done=lambda k, value: cache.put("dates", feature_keys[k], value)).items():
            results[k] = value
        extracted.update(new)
        dates: list[DateFeatures | None] = [results.get(k) for k in range(len(paths))]
        ok = [k for k in range(len(paths)) if dates[k] is not None and dates[k].features]
        for k in range(len(paths)):
            if dates[k] is not None and not dates[k].features:
                errors[k] = ("no valid pixel in the windows (no data, cloud or snow everywhere)" if not dates[k].valid_share
                             else "no window with enough valid, textured area (cloud, snow or nodata)")
        if ref_k is not None:
            ref = ref_k
            if ref not in ok:
                raise PipelineError(f"{date_label(paths[ref])}: the reference has no usable window: {errors.get(ref)}")
            ref_reason = "given"
        elif pinned is not None and pinned in ok and content.get(pinned) == pinned_content:
            ref, ref_reason = pinned, (f"kept from the earlier run in {Path(output).resolve()} (a grown stack keeps "
                                       "its reference; give reference= (--reference) to change it)")
        elif ok:
            ref, ref_reason = choose_reference([dates[k] if k in ok else None for k in range(len(paths))])
        else:
            raise PipelineError("no date of the stack has a usable window: " + "; ".join(errors.values()))
        t_pairs = time.time()
        order = sorted(ok, key=lambda k: dates[k].date)
        wanted = set()
        for pos, k in enumerate(order):
            for m in order[max(0, pos - neighbours): pos + neighbours + 1]:
                if m != k:
                    wanted.add((min(k, m), max(k, m)))
            if k != ref:
                wanted.add((min(k, ref), max(k, ref)))
        futures = {k: extracted[k] for k in ok}
        pairs = run_pairs(client, sorted(wanted), futures, cfg, px_m, progress, cache, feature_keys, device)
        counts = {k: 0 for k in ok}                 # a date with fewer than 2 verified pairs: more distant dates
        for p in pairs:
            if p.verified:
                counts[p.i] += 1
                counts[p.j] += 1
        extra = set()
        for k in ok:
            if counts[k] < 2:
                pos = order.index(k)
                for m in order[max(0, pos - 3 * neighbours): pos + 3 * neighbours + 1]:
                    if m != k and (min(k, m), max(k, m)) not in wanted:
                        extra.add((min(k, m), max(k, m)))
        if extra:
            pairs += run_pairs(client, sorted(extra), futures, cfg, px_m, progress, cache, feature_keys, device)
        best = max((_joined(k, pairs) for k in ok), key=len)
        if ref_k is None and ref != pinned and len(best) > len(_joined(ref, pairs)):
            # the date with the most keypoints joins fewer dates than others do (a different place, a
            # date of noise): the reference is chosen among the dates that can be placed
            first, others = ref, len(_joined(ref, pairs)) - 1
            ref, ref_reason = choose_reference([dates[k] if k in best else None for k in range(len(paths))])
            ref_reason += (f"; chosen among the {len(best)} dates that verified pairs join together "
                           f"({remote.name_of(date_label(paths[first]))} had more keypoints, but is joined to "
                           f"{engine.plural(others, 'other date') if others else 'no other date'})")
            done = {(p.i, p.j) for p in pairs}
            pairs += run_pairs(client, sorted({(min(k, ref), max(k, ref)) for k in best if k != ref} - done), futures,
                               cfg, px_m, progress, cache, feature_keys, device)
        t_more = time.time()
        pairs, more, replanned = read_more_windows(client, pairs, dates, futures, locations, windows, region, grid,
                                                   cfg, px_m, progress, cache, loc_keys, feature_keys, device, paths)
        matching = client.submit(pipeline_name, cfg.matcher, device, pure=False).result()
        timing = {"workers": len(client.scheduler_info()["workers"]), "dates": len(extracted),
                  "extract_s": round(t_pairs - t_extract, 2), "pairs": len(pairs),
                  "pairs_s": round(t_more - t_pairs, 2), "more_windows_s": round(time.time() - t_more, 2)}
    finally:
        try:
            if own_client:
                client.close()
        finally:                  # the cluster closed even where a Ctrl-C cut the client's closing short
            if cluster is not None:
                cluster.close()
    changed = cache.changed({k: (products[k], date_bands[k]) for k in content if k in date_bands}, content)
    if changed:                   # read part before, part after an edit: neither the result nor its work is kept
        cache.forget_computed()
        raise PipelineError(f"{'; '.join(date_label(paths[k]) for k in changed)}: changed while this run read "
                            f"{'it' if len(changed) == 1 else 'them'} (the content differs from the run's start); "
                            "nothing published, this run's work not kept: rerun once the files are written")
    cache.prune()
    solution = adjust(len(paths), pairs, ref)
    result = finish(paths, products, locations, dates, errors, pairs, solution, ref, ref_reason, grid, time.time() - start,
                    scheduler, given_dates)
    result["timing"] = timing
    result["grid_date"] = date_label(paths[grid_k])
    result["reference_content"] = content.get(ref) if cache.folder else None    # what a rerun keeps it by
    result.update(cache.counts())
    # read = planned + more: a date reads more where a pair of it verified too few (read_more_windows)
    result["windows"] = {"planned": len(windows), "size_px": list(windows[0][2:]) if windows else None,
                         "more_below": cfg.stack_more_windows,
                         "dates": {row["id"]: {"read": len(windows) + more.get(k, {}).get("more", 0),
                                               "more": more.get(k, {}).get("more", 0),
                                               "why_more": more.get(k, {}).get("why")}
                                   for k, row in enumerate(result["dates"]) if dates[k] is not None}}
    for row, p in zip(result["pairs"], pairs):
        row["windows_planned"] = replanned.get((p.i, p.j), len(windows))
    result["provenance"] = engine.provenance([date_label(p) for p in paths], cfg, bands=list(bands),
                                             reference=reference, neighbours=neighbours,
                                             correction="translation" if write_corrected else None,
                                             device=",".join(worker_devices),
                                             matching=matching)
    if output is not None:
        stack_outputs.write_stack_outputs(result, paths, products, grid, Path(output), write_corrected)
    return result


def run_pairs(client, pairs: list[tuple[int, int]], date_futures: dict, cfg, px_m: float,
              progress: bool, cache: WorkCache, feature_keys: dict, device: str | None = None,
              keys: dict | None = None, measured: dict | None = None) -> list[PairMeasure]:
    """The pairs measured as Dask tasks, those of an earlier run taken from ``cache`` (``keys``: each
    pair's cache key, where not that of its two dates' ``feature_keys``; ``measured``: (i, j) → its
    windows already matched, ``task_pair``'s)."""
    from s2coreg.display import tqdm

    keys = keys or {(i, j): cache.key("pair", feature_keys[i], feature_keys[j], px_m) for i, j in pairs}
    out = []
    for (i, j), key in keys.items():
        cached = cache.get("pairs", key)
        if cached is not None:
            cached.i, cached.j = i, j
            out.append(cached)
    done = {(p.i, p.j) for p in out}
    # ``measured`` passed only where there is some: a first round's task is the same call as before it existed
    futures = {client.submit(task_pair, i, j, date_futures[i], date_futures[j], cfg, px_m, device, retries=2,
                             key=f"pair-{i}-{j}-{time.time_ns()}",
                             **({"measured": measured[i, j]} if measured and (i, j) in measured else {})): (i, j)
               for i, j in pairs if (i, j) not in done}
    for fut in tqdm(_as_completed(list(futures)), total=len(futures), desc="pairs", unit="pair",
                    disable=not progress or not futures):
        i, j = futures[fut]
        try:
            measure = fut.result()
        except Exception as exc:       # an error, not a refusal: recorded as such, never cached
            why = f"could not be measured ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'})"
            out.append(PairMeasure(i, j, False, reason=why, error=why))
            continue
        cache.put("pairs", keys[(i, j)], measure)
        out.append(measure)
    return sorted(out, key=lambda p: (p.i, p.j))


# ----------------------------------------------------------------------------- more windows for short pairs
def short_pairs(pairs: list[PairMeasure], planned: int, cfg: CoregisterConfig) -> list[PairMeasure]:
    """The pairs measured (not failed) that verified fewer than ``stack_more_windows`` of their
    ``planned`` windows: clouds, snow or no data that no mask declares cover the rest, and the few
    left (cloud edges, haze) can pull the pair's estimate (45 % cloud beside 95 %: 4 of 16
    windows, 0.9 m off)."""
    return [p for p in pairs if p.error is None and p.windows_used < cfg.stack_more_windows * planned]


def task_merge(first: DateFeatures, extended: list, *parts: DateFeatures) -> DateFeatures:
    """Task: a date's features on the ``extended`` plan — its first round's (the stack's plan, the
    first indices of ``extended``) and the windows read beyond it (``parts``) — where they are:
    nothing goes through the main process."""
    features = dict(first.features)
    for part in parts:
        features.update(part.features)
    return DateFeatures(first.location, extended, features, first.valid_share,
                        first.keypoints + sum(len(f["keypoints"]) for x, f in features.items() if x not in first.features))


class _OnDemand(dict):
    """A dict whose missing key's value is made (``make(key)``) and kept when first asked for."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        value = self[key] = self.make(key)
        return value


def _read_windows(client, need: dict, got: dict, parts: dict, locations: dict, grid: dp.Grid, extended: list, cfg,
                  device, cache: WorkCache, loc_keys: dict, progress: bool, paths: list) -> None:
    """The windows ``need`` (date → indices of ``extended``) read for each date: into ``got`` (date →
    {index: features, or None where the window has too little valid area or texture}) and ``parts``
    (date → the tasks, or cached values, that hold them: ``task_merge``'s), each window cached on its
    own (kind ``windows``: a grown stack reuses every window read, whichever pairs wanted it). A
    date whose reading fails keeps what it has (its first round's pairs stand)."""
    keys = {(k, x): cache.key("window", loc_keys[k], extended[x]) for k, xs in need.items() for x in xs}
    todo: dict[int, set[int]] = {}
    cached: dict[int, dict] = {}
    for (k, x), key in keys.items():
        entry = cache.get("windows", key)
        if entry is None:
            todo.setdefault(k, set()).add(x)
        else:
            got.setdefault(k, {})[x] = entry.features.get(0)
            if 0 in entry.features:
                cached.setdefault(k, {})[x] = entry.features[0]
    for k, features in cached.items():
        parts.setdefault(k, []).append(DateFeatures(locations[k], extended, features))

    def keep(k, value):
        for x in sorted(todo[k]):
            f = value.features.get(x)
            got.setdefault(k, {})[x] = f
            cache.put("windows", keys[k, x], DateFeatures(value.location, [extended[x]], {} if f is None else {0: f}))

    futures = {k: client.submit(task_extract, locations[k], grid, extended, cfg, device, xs, retries=2,
                                key=f"more-{k}-{time.time_ns()}") for k, xs in todo.items()}
    for k in _gather(futures, "more windows", progress, {}, paths, on_done=keep):
        parts.setdefault(k, []).append(futures[k])


def read_more_windows(client, pairs: list[PairMeasure], dates: list, date_futures: dict, locations: dict,
                      windows: list, region, grid: dp.Grid, cfg: CoregisterConfig, px_m: float, progress: bool,
                      cache: WorkCache, loc_keys: dict, feature_keys: dict, device: str | None,
                      paths: list) -> tuple[list[PairMeasure], dict, dict]:
    """The pairs short of verified windows (``short_pairs``) measured again on the full plan: the
    stack's windows, then those of ``max_windows``'s plan it left out (``engine.plan_windows``;
    on a full tile 4 x 4 of 7 x 7). Of each such pair, the date with fewer windows of texture among
    the planned ones (the cloudier) reads all those windows, the other only those where the first
    has texture (a window blank on one date is never matched), and the pair matches only the new
    windows (those of its first round are reused); a pair with no new window both show stands as
    it was. Only these dates read more: a clear date beside clear ones costs what it cost.
    ``date_futures``: each date's first-round features where the workers hold them. Returns the
    pairs (those measured again replaced), what each date read beyond the plan (date →
    ``{"more": n, "why": [lines]}``) and each re-measured pair's planned windows ((i, j) → n)."""
    planned = set(windows)
    extended = list(windows) + [w for w in engine.plan_windows(region, cfg) if w not in planned]
    extras = range(len(windows), len(extended))
    short = [p for p in short_pairs(pairs, len(windows), cfg) if dates[p.i] is not None and dates[p.j] is not None] \
        if len(extended) > len(windows) else []
    if not short:
        return pairs, {}, {}

    def name(k):
        return remote.name_of(date_label(paths[k]))

    def lead(p):            # (the cloudier: fewer windows of texture, then the later date; the other)
        first = min((p.i, p.j), key=lambda k: (len(dates[k].features), -k))
        return first, p.j if first == p.i else p.i

    got: dict[int, dict] = {}
    parts: dict[int, list] = {}
    _read_windows(client, {lead(p)[0]: set(extras) for p in short}, got, parts, locations, grid, extended, cfg,
                  device, cache, loc_keys, progress, paths)
    need: dict[int, set[int]] = {}
    for p in short:
        first, other = lead(p)
        want = {x for x in extras if got.get(first, {}).get(x) is not None} - set(got.get(other, {}))
        if want:
            need.setdefault(other, set()).update(want)
    _read_windows(client, need, got, parts, locations, grid, extended, cfg, device, cache, loc_keys, progress, paths)
    more: dict[int, dict] = {}
    again = []
    for p in short:
        first, other = lead(p)
        short_by = (f"verified {p.windows_used} of {len(windows)} windows (fewer than stack_more_windows, "
                    f"{cfg.stack_more_windows:.0%})")
        more.setdefault(first, {"why": []})["why"].append(
            f"its pair with {name(other)} {short_by}: the full plan's {len(extras)} other windows read")
        more.setdefault(other, {"why": []})["why"].append(
            f"its pair with {name(first)} {short_by}: the full plan's other windows where {name(first)} has "
            "texture read")
        if any(got.get(p.i, {}).get(x) is not None and got.get(p.j, {}).get(x) is not None for x in extras):
            again.append(p)
    for k in more:
        more[k]["more"] = len(got.get(k, {}))
    if not again:
        return pairs, more, {}
    # a pair's result is made of the windows both dates read: its key names them (and the dates' own work)
    keys = {(p.i, p.j): cache.key("pair", feature_keys[p.i], feature_keys[p.j], px_m, extended,
                                  sorted(set(got.get(p.i, {})) & set(got.get(p.j, {})))) for p in again}
    # each date's features on the full plan, merged on a worker where a pair not in the cache asks for them
    futures = _OnDemand(lambda k: client.submit(task_merge, date_futures[k], extended, *parts[k],
                                                key=f"merge-{k}-{time.time_ns()}"))
    # the windows the first round matched are not matched again: their measures as they were before
    # the first round's outlier test (which the new measure makes again, over all its windows)
    reuse = {(p.i, p.j): {w.index: dataclasses.replace(w, status="used", reason=None) if w.reason == engine.OUTLIER_WINDOW
                          else dataclasses.replace(w) for w in p.windows} for p in again}
    measured = run_pairs(client, sorted(keys), futures, cfg, px_m, progress, cache, feature_keys, device, keys=keys,
                         measured=reuse)
    # the new measure replaces the first where it verifies, or neither did: a pair verified on the one
    # window both dates showed (min_windows asks no more of one) and refused on more (fewer than
    # min_windows of them verified) keeps its first measure
    before = {(p.i, p.j): p for p in pairs}
    redone = {(m.i, m.j): m for m in measured if m.verified or not before[m.i, m.j].verified}
    for m in measured:
        if (m.i, m.j) not in redone:
            for k in (m.i, m.j):
                more[k]["why"].append(f"its pair with {name(m.j if k == m.i else m.i)} measured again on "
                                      f"{len(extended)} windows was refused ({m.reason or m.error}): its first "
                                      "measure stands")
    return (sorted([p for p in pairs if (p.i, p.j) not in redone] + list(redone.values()), key=lambda p: (p.i, p.j)),
            more, {ij: len(extended) for ij in redone})


def _to_metres(grid: dp.Grid, d_px) -> np.ndarray:
    """Displacements (N, 2) in grid px (NaN where unknown) → metres east/north at the grid's centre."""
    d_px = np.atleast_2d(np.asarray(d_px, np.float64))
    out = np.full(d_px.shape, np.nan)
    known = np.isfinite(d_px).all(1)
    if known.any():
        centre = np.tile([[grid.width / 2, grid.height / 2]], (int(known.sum()), 1))
        out[known] = engine.pixel_shifts_in_metres(grid, centre, d_px[known])[0]
    return out


def item_ids(paths: list, products: dict) -> list[str]:
    """A unique id a date: its STAC Item's id, else its product's name (else its file or folder
    name). Outside names: files made from them go through ``engine.safe_name``."""
    ids, seen = [], {}
    for k, p in enumerate(paths):
        base = (p.id if isinstance(p, dp.ItemRef) and p.id else
                products[k].name if k in products else remote.name_of(date_label(p)))
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return ids


def finish(paths, products, locations, dates, errors, pairs, solution, ref, ref_reason, grid, seconds,
           scheduler, given_dates: dict | None = None) -> StackResult:
    px = engine.metres_per_px(grid)
    x_m = _to_metres(grid, solution["x"])
    kinds = [tuple(loc.bands) for loc in locations.values()]
    usual = max(set(kinds), key=kinds.count) if kinds else ()
    ids = item_ids(paths, products)
    rows = []
    for k, p in enumerate(paths):
        d = dates[k]
        status, reason = "excluded", errors.get(k)
        if k == ref:
            status, reason = "reference", ref_reason
        elif solution["placed"][k] and np.isfinite(solution["x"][k]).all():
            direct = any(r.verified and {r.i, r.j} == {k, ref} for r in pairs)
            status, reason = "ok", None if direct else "placed through its neighbours (not matched to the reference)"
        elif reason is None:          # why its pair with the reference was refused, where it was measured
            with_ref = next((r for r in pairs if {r.i, r.j} == {k, ref}), None)
            why = (with_ref.reason or with_ref.error) if with_ref is not None else None
            reason = "no verified pair joins it to the reference " + (f"(its pair with the reference: {why})" if why
                                                                      else "(snow, cloud or a different place?)")
        # a date's warnings come from its pair with the reference (the yardstick; a rotated date
        # would otherwise lend its warning, with either sign, to every neighbour it was matched
        # with), or from all its pairs where it has none with the reference
        own = [r for r in pairs if r.verified and {r.i, r.j} == {k, ref}] or \
              [r for r in pairs if r.verified and k in (r.i, r.j)]
        warnings = [] if k == ref else sorted({w.replace(engine.AFFINE_ADVICE, STACK_AFFINE_HINT)
                                               for r in own for w in r.warnings})
        if k in products and products[k].fill:
            warnings.insert(0, products[k].fill)
        if k in locations and list(locations[k].bands) != list(usual):
            warnings.append(f"read with {','.join(locations[k].bands)} (most dates: {','.join(usual)})")
        # a date never located (unreadable, refused at the door) still gets its date from --date, its
        # metadata where it opened, or its name
        date, source = ((d.date, d.location.date_source) if d else
                        (locations[k].date, locations[k].date_source) if k in locations else
                        engine.acquisition_date(products.get(k), p, engine.given_date(given_dates, p)))
        rows.append(StackDate(path=date_label(p), id=ids[k], date=date or remote.stem_of(engine.first_path(p)),
                              date_source=source,
                              bands=",".join(locations[k].bands) if k in locations else None, dx_m=float(x_m[k, 0]),
                              dy_m=float(x_m[k, 1]), sigma_m=float(solution["sigma"][k] * px),
                              tie_points=sum(r.tie_points for r in pairs if r.verified and k in (r.i, r.j)),
                              status=status, reason=reason, warnings=warnings,
                              offset_px=list(locations[k].offset_px) if k in locations else None,
                              shift_px=[float(v) for v in solution["x"][k]]))
    pair_rows = []
    for r in pairs:
        d_m = _to_metres(grid, [r.shift_px])[0] if r.verified else [np.nan, np.nan]
        pair_rows.append({"date_i": rows[r.i]["date"], "date_j": rows[r.j]["date"], "path_i": rows[r.i]["path"],
                          "path_j": rows[r.j]["path"], "verified": r.verified, "dx_m": float(d_m[0]),
                          "dy_m": float(d_m[1]), "sigma_m": float((r.sigma_px or np.nan) * px),
                          "windows": r.windows_used,
                          "weight": solution["weight"].get((r.i, r.j), 0.0) if r.verified else 0.0,
                          "residual_m": solution["residual"].get((r.i, r.j), np.nan) * px if r.verified else np.nan,
                          "reason": r.reason, "error": r.error, "warnings": "; ".join(r.warnings) or None,
                          **{f"windows_{k}": v for k, v in engine.refinement_counts(r.windows).items()
                             if k != "learned_reasons"}})
    return StackResult({"reference": rows[ref]["path"], "reference_id": ids[ref], "reference_reason": ref_reason, "dates": rows,
            "pairs": pair_rows, "seconds": round(seconds, 1), "scheduler": scheduler or "LocalCluster",
            "crs": grid.crs.to_string(), "grid": {"transform": list(grid.transform)[:6],
                                                  "width": grid.width, "height": grid.height},
            "placed": sum(r["status"] != "excluded" for r in rows), "excluded": sum(r["status"] == "excluded" for r in rows),
            "errors": [f"{rows[r.i]['path']} / {rows[r.j]['path']}: {r.error}" for r in pairs if r.error]})


# ----------------------------------------------------------------------------- xarray
def _grid_of_dataarray(da) -> dp.Grid:
    """The pixel grid of a ``(…, y, x)`` DataArray: its transform from the pixel-centre coordinates,
    its CRS from ``.rio.crs`` (rioxarray), ``.odc.geobox`` (odc-stac), the ``spatial_ref`` /
    ``epsg`` coordinates or a ``crs`` attribute (stackstac)."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    for dim in ("y", "x"):
        if dim not in da.dims:
            raise PipelineError(f"DataArray with dims {da.dims}: needs 'y' and 'x' (and 'time', 'band')")
    x, y = np.asarray(da["x"].values, np.float64), np.asarray(da["y"].values, np.float64)
    if len(x) < 2 or len(y) < 2:
        raise PipelineError(f"DataArray of {len(y)}×{len(x)} px: too small to co-register")
    rx, ry = (x[-1] - x[0]) / (len(x) - 1), (y[-1] - y[0]) / (len(y) - 1)
    if not (np.allclose(np.diff(x), rx, rtol=1e-6, atol=1e-6) and np.allclose(np.diff(y), ry, rtol=1e-6, atol=1e-6)):
        raise PipelineError("DataArray: x and y are not a regular grid; reproject it onto one (rioxarray's .rio.reproject)")
    crs = None
    candidates = [lambda: da.rio.crs, lambda: da.odc.geobox.crs, lambda: da.coords["spatial_ref"].attrs.get("crs_wkt"),
                  lambda: da.attrs.get("crs"), lambda: f"EPSG:{int(da.coords['epsg'].values.flat[0])}"]
    for get in candidates:
        try:
            value = get()
        except Exception:
            continue
        if value:
            crs = CRS.from_user_input(str(value)) if not isinstance(value, CRS) else value
            break
    if crs is None:
        raise PipelineError("DataArray: no CRS found (.rio.crs, .odc.geobox, spatial_ref, attrs['crs']); "
                            "set one with da.rio.write_crs('EPSG:32636')")
    transform = Affine(rx, 0.0, x[0] - rx / 2, 0.0, ry, y[0] - ry / 2)
    return dp.Grid(transform, len(x), len(y), crs)


def _nodata_of_dataarray(da):
    for get in (lambda: da.rio.nodata, lambda: da.attrs.get("nodata"), lambda: da.attrs.get("_FillValue"),
                lambda: da.encoding.get("_FillValue")):
        try:
            value = get()
        except Exception:
            continue
        if value is not None:
            return value
    return None


def _time_labels(da) -> list[str]:
    import pandas as pd

    return [pd.Timestamp(t).strftime("%Y%m%dT%H%M%S") for t in da["time"].values]


@engine.one_writer            # with ``output``: its one writer (output/cache/arrays is written first)
def coregister_dataarray(da, reference="auto", bands=None, output: str | Path | None = None,
                         cfg: CoregisterConfig | None = None, client=None, scheduler: str | None = None,
                         workers: int | None = None, neighbours: int = 2, progress: bool = False,
                         device: str | None = None):
    """Co-register every date of a ``(time, band, y, x)`` (or ``(time, y, x)``) DataArray, as
    ``odc-stac`` (``.to_array("band")``), ``stackstac`` or ``rioxarray`` produce it, Dask-backed or
    not, on the same engine as ``--stack``. Returns an ``xarray.Dataset`` on ``time``:
    ``dx_m`` / ``dy_m`` (east / north), ``dx_px`` / ``dy_px`` (on the array's grid), ``sigma_m``,
    ``status`` (``reference`` / ``ok`` / ``excluded``) and ``reason``; ``align(da, result)``
    moves the dates onto the reference.

    ``reference``: ``"auto"``, a time (anything ``da.sel(time=...)`` takes) or an index. ``bands``:
    names as the ``band`` coordinate has them (``red`` or ``B04``). Each date is computed date by
    date (one date in memory) and written as a tiled GeoTIFF named by its content, in a temporary
    folder — or, when ``output`` is given, in ``output/cache/arrays``, where an unchanged date keeps
    its file and so its work: a grown array reuses its earlier run (``cache``) — and read
    window by window from there."""
    import tempfile

    import rasterio
    import xarray as xr

    if "time" not in da.dims or da.sizes["time"] < 2:
        raise PipelineError(f"DataArray with dims {dict(da.sizes)}: needs a 'time' dimension of at least two dates")
    grid = _grid_of_dataarray(da)
    if "band" not in da.dims:
        da = da.expand_dims(band=["grey"])
    names = [dp.canonical_band_name(b) for b in da["band"].values]
    wanted = dp.normalise_bands(bands) or tuple((cfg or CoregisterConfig()).bands)
    chosen = [k for k, n in enumerate(names) if n in wanted]
    chosen = sorted(chosen, key=lambda k: wanted.index(names[k])) or list(range(min(3, len(names))))
    if bands and not [n for n in names if n in wanted]:
        raise PipelineError(f"DataArray bands {list(map(str, da['band'].values))}: none of {', '.join(wanted)}; "
                            "choose with bands=")
    nodata = _nodata_of_dataarray(da)
    stamps = _time_labels(da)
    ref_k = None
    if str(reference) != "auto":
        if isinstance(reference, (int, np.integer)):
            ref_k = int(reference)
        else:
            times = da["time"].values
            ref_k = int(np.argmin(np.abs(times - np.datetime64(da.sel(time=reference, method="nearest")["time"].values))))
    keep = None if output is None else Path(output).resolve() / "cache" / "arrays"
    tmp = Path(tempfile.mkdtemp(prefix="coregister_da_")) if keep is None else keep
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        files = []
        for k in range(da.sizes["time"]):
            data = np.ascontiguousarray(da.isel(time=k, band=chosen).transpose("band", "y", "x").values)
            # named by its content: an unchanged date keeps its file (and its work in the cache)
            digest = hashlib.sha1(data.tobytes() + repr((list(grid.transform)[:6], str(grid.crs), nodata,
                                                         [names[c] for c in chosen])).encode()).hexdigest()[:16]
            path = tmp / f"date_{stamps[k]}_{digest}.tif"
            files.append(path)
            if path.exists():
                continue
            profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=len(chosen), dtype=data.dtype.name,
                           crs=grid.crs, transform=grid.transform, tiled=True, blockxsize=256, blockysize=256,
                           compress="deflate", nodata=nodata)
            with atomic_path(path) as part:
                with rasterio.open(part, "w", **profile) as dst:
                    dst.write(data)
                    dst.descriptions = tuple(names[c] if names[c] != "grey" else "" for c in chosen)
        for old in set(tmp.glob("date_*.tif")) - set(files):          # dates no longer in the array
            old.unlink(missing_ok=True)
        result = coregister_stack(files, output, str(files[ref_k]) if ref_k is not None else "auto", bands=bands,
                                  cfg=cfg, scheduler=scheduler, workers=workers, neighbours=neighbours,
                                  progress=progress, client=client, device=device)
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = result["dates"]
    if len(rows) != da.sizes["time"]:
        raise PipelineError("internal: one row a date expected")
    shift_px = np.array([r["shift_px"] if r["status"] != "excluded" else [np.nan, np.nan] for r in rows], np.float64)
    out = xr.Dataset({"dx_m": ("time", [r["dx_m"] for r in rows]), "dy_m": ("time", [r["dy_m"] for r in rows]),
                      "dx_px": ("time", shift_px[:, 0]), "dy_px": ("time", shift_px[:, 1]),
                      "sigma_m": ("time", [r["sigma_m"] for r in rows]),
                      "status": ("time", [r["status"] for r in rows]),
                      "reason": ("time", [r["reason"] or "" for r in rows])},
                     coords={"time": da["time"].values},
                     attrs={"reference_time": str(da["time"].values[[r["status"] for r in rows].index("reference")]),
                            "crs": grid.crs.to_string(), "bands": ",".join(names[c] for c in chosen),
                            "reused": json.dumps(result.get("reused", {})),
                            "software": f"{result['provenance']['name']} {result['provenance']['version']}"})
    return out


ALIGN_MARGIN_PX = 24      # overlap beyond the shift between chunks in align(): the sinc's 8 px and the fill's 4σ
ALIGN_FILL_SIGMA_PX = 2.0  # no-data filled from valid neighbours within ~4σ before the shift


def _shift_block(block: np.ndarray, d: tuple[float, float], nodata, margin: int) -> np.ndarray:
    """One chunk (…, y, x) with its content moved by −d (px) by a windowed-sinc shift
    (``imaging.sinc_shift``: local, so chunks with ``margin`` of overlap give the same pixels as
    the whole array), its no-data kept: no-data pixels are first filled from their valid
    neighbours (a local, Gaussian-weighted mean), and a pixel whose nearest source pixel is no data
    or lies outside the array is no data."""
    from s2coreg.io.imaging import fill_from_neighbours, sinc_shift

    dx, dy = d
    shape = block.shape
    flat = block.reshape(-1, *shape[-2:])
    floating = np.issubdtype(block.dtype, np.floating)
    out = np.empty(flat.shape, np.float64)
    fill = np.nan if floating and (nodata is None or np.isnan(nodata)) else nodata
    for k, img in enumerate(flat):
        invalid = ~np.isfinite(img) if floating else np.zeros(img.shape, bool)
        if nodata is not None and not (floating and np.isnan(nodata)):
            invalid |= img == nodata
        values = fill_from_neighbours(img, invalid, ALIGN_FILL_SIGMA_PX)[0] if invalid.any() else img
        out[k] = sinc_shift(np.asarray(values, np.float64), -dx, -dy)
        # a pixel is no data where its nearest source pixel is, or lies outside the array (a block
        # reaches the array's edge on a side without overlap; elsewhere its overlap covers the shift)
        src = np.pad(invalid, 1, constant_values=True)
        h, w = img.shape
        ys = np.clip(np.arange(h) + int(np.round(dy)) + 1, 0, h + 1)
        xs = np.clip(np.arange(w) + int(np.round(dx)) + 1, 0, w + 1)
        bad = src[np.ix_(ys, xs)]
        if fill is not None:
            out[k][bad] = fill
    out = out.reshape(shape)
    if not floating:
        info = np.iinfo(block.dtype)
        out = np.clip(np.round(np.nan_to_num(out, nan=fill if fill is not None else 0)), info.min, info.max)
    return out.astype(block.dtype)


def align(da, shifts, excluded: str = "nodata"):
    """``da`` (the DataArray given to ``coregister_dataarray``) with every date's content moved onto
    the reference by its ``shifts`` (that function's Dataset): a windowed-sinc sub-pixel shift
    (``imaging.sinc_shift``, 8 lobes: close to band-limited, and local) on the same grid — same dims, coords and dtype; lazy, chunk by chunk (with an overlap of
    the shift and a margin) when ``da`` is Dask-backed; no data kept (a pixel whose source is no
    data, or lies outside the array, is no data). In memory and chunk by chunk give the same pixels. ``excluded`` dates: ``"nodata"`` (all no data), ``"keep"`` (as they were)
    or ``"drop"`` (removed from ``time``)."""
    import xarray as xr

    if excluded not in ("nodata", "keep", "drop"):
        raise PipelineError(f"align: excluded={excluded!r}; one of nodata, keep, drop")
    nodata = _nodata_of_dataarray(da)
    status = {np.datetime64(t): str(s) for t, s in zip(shifts["time"].values, shifts["status"].values)}
    d_by_time = {np.datetime64(t): (float(x), float(y)) for t, x, y in
                 zip(shifts["time"].values, shifts["dx_px"].values, shifts["dy_px"].values)}
    if excluded == "drop":
        da = da.sel(time=[t for t in da["time"].values if status.get(np.datetime64(t)) != "excluded"])
    floating = np.issubdtype(da.dtype, np.floating)
    fill = np.nan if floating and nodata is None else (nodata if nodata is not None else 0)
    slices = []
    for t in da["time"].values:
        piece = da.sel(time=t)
        s = status.get(np.datetime64(t))
        if s is None:
            raise PipelineError(f"align: time {t} has no shift in the shifts given (run coregister_dataarray on "
                                "this array)")
        if s == "excluded":
            slices.append(piece if excluded == "keep" else xr.full_like(piece, fill))
            continue
        d = d_by_time[np.datetime64(t)]
        if s == "reference" or (abs(d[0]) < 1e-9 and abs(d[1]) < 1e-9):
            slices.append(piece)
            continue
        margin = int(np.ceil(max(abs(d[0]), abs(d[1])))) + ALIGN_MARGIN_PX
        dims = piece.dims
        piece = piece.transpose(*[x for x in dims if x not in ("y", "x")], "y", "x")
        if hasattr(piece.data, "map_overlap"):                       # Dask: chunk by chunk
            depth = {piece.ndim - 2: margin, piece.ndim - 1: margin}
            depth.update({k: 0 for k in range(piece.ndim - 2)})
            data = piece.data.map_overlap(_shift_block, d=d, nodata=nodata, margin=margin, depth=depth,
                                          boundary="none", dtype=piece.dtype)
        else:
            data = _shift_block(np.asarray(piece.data), d, nodata, margin)
        slices.append(piece.copy(data=data).transpose(*dims))
    out = xr.concat(slices, dim="time")
    out.attrs = dict(da.attrs)
    return out.transpose(*da.dims)
