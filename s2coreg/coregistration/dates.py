"""A stack's dates from what a user gives: files, folders (of dates, of one date's band files,
of ``.SAFE`` products), globs, URLs, STAC Items and ItemCollections, local or remote → one list
of dates (each a path or URL, a list of one date's band files, or a ``products.ItemRef``), the
given reference among them, each date opened (headers only) — and a date's label and a
failure's reason in words, as every line about a date says them. No Dask here: ``stack.py``
runs what this resolves."""
from __future__ import annotations

import glob
import re
import sys
from pathlib import Path

import s2coreg.coregistration.engine as engine
import s2coreg.io.products as dp
import s2coreg.io.remote as remote
from s2coreg.utils import PipelineError


def _is_band_file(p: Path) -> bool:
    return bool(re.search(r"(?:^|_)(B\d[\dA])(?:_\d\dm)?$", p.stem))


def _own_output(p: Path) -> bool:
    """Whether ``p`` is an output of this tool, never a date: a result's names (``engine.RESULT_NAMES``:
    a pair's ``shift_field.tif`` or a stack's ``stack.json`` written into the input folder), the
    stack's ``cache/``, and hidden files and folders (a result being built or published, the lock)."""
    return p.name in engine.RESULT_NAMES or p.name == "cache" or p.name.startswith(".")


def dates_in_folder(folder: Path) -> list:
    """The dates a folder holds (each a path, or a list of one date's band files); this tool's own
    outputs in it are not dates (``_own_output``)."""
    entries = [p for p in folder.iterdir() if not _own_output(p)]
    safes = sorted(p for p in entries if dp.is_safe(p))
    items = sorted(p for p in entries if p.suffix.lower() == ".json")
    rasters = sorted(p for p in entries if p.suffix.lower() in (".tif", ".tiff", ".jp2"))
    out: list = [*safes, *(ref for p in items for ref in _expand_document(p))]
    if rasters:
        by_date: dict[str, list[Path]] = {}
        for r in rasters:
            found = re.search(r"(20\d{6})", r.name)
            by_date.setdefault(found.group(1) if found else f"#{r.name}", []).append(r)
        dated = [k for k in by_date if not k.startswith("#")]
        if len(dated) >= 2:                               # dated files: one date per date in the names
            out += [files if len(files) > 1 else files[0] for _, files in sorted(by_date.items())]
        elif all(_is_band_file(r) for r in rasters):       # one date's band files
            out.append(folder)
        else:                                              # rasters of their own (multi-band)
            out += rasters
    if not out:                                            # a folder of date folders (imgs_1/, imgs_2/)
        out = [d for d in sorted(entries) if d.is_dir() and any(
            q.suffix.lower() in (".tif", ".tiff", ".jp2") for q in d.iterdir())]
    return out


def expand_inputs(inputs: list) -> list:
    """Files, folders, globs and URLs → the stack's dates, in the order given (each a path or
    URL, a list of one date's band files, or a ``dp.ItemRef``: an ItemCollection, local or
    remote, is a date an Item)."""
    out: list = []
    for item in inputs:
        if isinstance(item, (list, tuple)):
            out.append([p if remote.is_remote(p) else Path(p) for p in item])
            continue
        if isinstance(item, dp.ItemRef):
            out.append(item)
            continue
        item = str(item)
        if remote.is_remote(item):
            out += [item] if remote.is_raster(item) else _expand_document(item)
            continue
        matches = sorted(glob.glob(item)) if any(ch in item for ch in "*?[") else [item]
        for m in matches:
            p = Path(m)
            if p.is_dir() and not dp.is_safe(p):
                out += dates_in_folder(p)
            elif p.suffix.lower() in (".json", ".geojson") and p.is_file():
                out += _expand_document(p)
            else:
                out.append(p)
    return out


def find_date(paths: list, reference: str) -> int | None:
    """The index of the date ``reference`` names (its path or URL, or an Item's id), or None."""
    label = engine.input_label(reference) if not remote.is_remote(reference) else reference
    for k, p in enumerate(paths):
        if date_label(p) == label or (isinstance(p, dp.ItemRef) and (p.id == reference or str(p) == reference)):
            return k
    return None


def unique_dates(dates: list) -> list:
    """The dates without repeats (the same file, URL or Item id given twice: used once, said once)."""
    out, seen = [], set()
    for d in dates:
        key = ("item", d.id) if isinstance(d, dp.ItemRef) and d.id else ("path", date_label(d))
        if key in seen:
            print(f"{date_label(d)}: given twice; used once", file=sys.stderr)
            continue
        seen.add(key)
        out.append(d)
    return out


def _expand_document(location) -> list:
    """A STAC document's dates: an Item is one (its location); an ItemCollection one an Item."""
    try:
        refs = dp.stac_items(location)
    except PipelineError:
        return [location]                    # reported with the date (open_date says what is wrong)
    return refs


def date_label(date) -> str:
    """A date's path as one string (a list of band files: their folder; an Item: its document#id)."""
    if isinstance(date, (list, tuple)):
        first = date[0]
        return remote.parent_of(first) if remote.is_remote(first) else str(Path(first).parent.resolve())
    return engine.input_label(date)


def given_reference(paths: list, reference) -> tuple[list, int | None]:
    """The stack's dates and the index of its given reference (``"auto"``: None, chosen later):
    one of ``paths`` (by path, URL or Item id), or a date of its own put first."""
    if str(reference) == "auto":
        return paths, None
    ref_k = find_date(paths, str(reference))
    if ref_k is not None:
        return paths, ref_k
    if not remote.is_remote(reference) and not Path(str(reference)).exists():
        ids = [p.id for p in paths if isinstance(p, dp.ItemRef)]
        raise PipelineError(f"reference={str(reference)!r} is not a date of the stack (no such path, URL or Item "
                            f"id{' among ' + ', '.join(ids[:6]) + (' …' if len(ids) > 6 else '') if ids else ''})")
    given = expand_inputs([reference])
    if len(given) != 1:
        raise PipelineError(f"reference={str(reference)!r} is one date (a path, URL or Item id of the stack); "
                            f"it holds {len(given)}")
    same = [k for k, p in enumerate(paths) if isinstance(p, dp.ItemRef) and isinstance(given[0], dp.ItemRef)
            and p.id == given[0].id]
    return (paths, same[0]) if same else ([given[0], *paths], 0)


OPEN_THREADS = 8          # dates opened at once in the main process (headers: waiting on I/O, not CPU)


def open_dates(paths: list, bands: tuple[str, ...]) -> tuple[dict[int, dp.Product], dict[int, str]]:
    """Every date's product opened (``engine.open_date``: headers, tags, undeclared fill), several
    at once: a remote date's open waits on the network (GDAL releases the GIL), each within its
    own time bound (``remote.within_deadline``), so dates on a server that does not answer cost
    one bound together, not one each in turn. Returns the products and, for the dates that
    cannot be opened, their one-line reasons, both by the date's index."""
    from concurrent.futures import ThreadPoolExecutor

    def one(p):
        try:
            return engine.open_date(p, "date", bands), None
        except Exception as exc:       # a bad date is excluded with its reason in words, wherever it stands
            return None, failure_reason(exc, p, raise_unforeseen=True)

    products: dict[int, dp.Product] = {}
    errors: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=min(OPEN_THREADS, max(1, len(paths)))) as pool:
        for k, (product, error) in enumerate(pool.map(one, paths)):
            if error is None:
                products[k] = product
            else:
                errors[k] = error
    return products, errors


def failure_reason(exc: BaseException, date, raise_unforeseen: bool = False) -> str:
    """Why ``date`` failed, in words: a bad input's line (``engine.bad_input_line``); an unforeseen
    exception named as a fault of this tool (its traceback is in the worker's log), or raised
    again with ``raise_unforeseen`` (in this process: its traceback is then shown)."""
    line = engine.bad_input_line(exc, date_label(date))
    if line is None and raise_unforeseen:
        raise exc
    return line or (f"{date_label(date)}: could not be processed (an unforeseen {type(exc).__name__}, a fault of this "
                    "tool; its traceback is in the log); please report it")
