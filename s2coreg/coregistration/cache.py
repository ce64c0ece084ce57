"""What a stack run keeps for the next one: a stack that grows reuses its earlier work.

Running ``coregister.py --stack`` again into the same output folder with more dates reuses each
date's coarse location and window features and each pair's measurement that an earlier run
computed, and measures only what is new; the whole pair graph is then adjusted again. Every entry
is keyed by what it was made from — the content of the date's files (``remote.content_key``: a
digest of every byte of a local file, so that a pixel edited in place is seen whatever the size
and modification time say; the CRC-32 a zip records for a zipped ``.SAFE``'s band; the ETag /
Last-Modified / length of an http(s) URL, and no reusable key at all for a URL whose server
states neither), the date's path (its name and date may come from it), the reference grid's
date, the windows and the settings (``CoregisterConfig``, bands, the software version and the
checkpoints) — so a changed file or setting is recomputed, never reused. ``s3://``, ``gs://``
and ``az://`` objects are keyed by their URL alone (their ETags need their SDKs): a replaced
object keeps its key.

What the key costs: every run hashes every date's files again (once a run, in the main process,
before any task; never remembered across runs, where an in-place edit would go unseen). A
full-size date of four 10980² uint16 bands takes 1.0 s (deflate GeoTIFF, 533 MB) or 0.5 s
(lossless JPEG 2000, 407 MB) on one core — 3–8 % of that date's 15 s extraction — measured by
``benchmarks/cache_key_cost.py`` on 2 shared cores (``data/results/cache_key_cost.json``); a
rerun of a 100-date stack spends 1–2 minutes hashing before it reuses anything.

Entries are pickles in ``OUTPUT/cache/{locations,dates,windows,pairs}/<key>.pkl`` (``windows``: a
window a date read beyond the stack's plan for a pair short of verified windows, one entry each), each written
atomically as soon as its task finishes (a run interrupted in the middle of a stage keeps what
that stage finished); an entry that does not unpickle to its kind's class (``ENTRY_TYPES``) is
removed and recomputed, with one line on stderr. After a successful run only the entries it used
are kept. The cache is this project's own output: point ``--output`` only at folders you trust
(unpickling runs code).
"""
from __future__ import annotations

import hashlib
import json
import pickle
import sys
from pathlib import Path

import s2coreg.coregistration.engine as engine
import s2coreg.io.products as dp
import s2coreg.io.remote as remote
from s2coreg.utils import atomic_path

KINDS = ("locations", "dates", "windows", "pairs")
# what an entry of each kind must unpickle to: anything else is recomputed (``WorkCache.get``)
ENTRY_TYPES = {"locations": engine.DateLocation, "dates": engine.DateFeatures, "windows": engine.DateFeatures,
               "pairs": engine.PairMeasure}


def _digest(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def checkpoint_keys(memo: dict | None = None) -> dict:
    """The content keys of the shipped checkpoints the workers load (a retrained model: new features)."""
    import s2coreg.config as config

    folder = Path(config.CHECKPOINT_DIR)
    return {p.name: remote.content_key(p, memo) for p in sorted(folder.glob("*.pt"))} if folder.is_dir() else {}


class WorkCache:
    """The reusable work of a stack in ``output/cache`` (no cache when ``output`` is None)."""

    def __init__(self, output: str | Path | None, settings: dict):
        self.folder = Path(output).resolve() / "cache" if output is not None else None
        self.content_keys: dict = {}       # this run's files' content keys (each file hashed once a run)
        self.salt = _digest(settings, engine.software_version(), checkpoint_keys(self.content_keys))
        self.used: set[Path] = set()
        self.written: set[Path] = set()     # the entries this run computed and wrote
        self.reused = dict.fromkeys(KINDS, 0)
        self.computed = dict.fromkeys(KINDS, 0)

    def key(self, *parts) -> str:
        return _digest(self.salt, *parts)

    def date_content(self, product: dp.Product, bands: list[str]) -> str:
        """A key of a date's data: the content keys of the files of its ``bands`` and masks."""
        files = sorted({product.band_path(b) for b in bands} | set(product.masks.values()))
        return _digest(bands, [remote.content_key(f, self.content_keys) for f in files], product.nodata,
                       product.quantification, sorted(product.offsets.items()))

    def _path(self, kind: str, key: str) -> Path | None:
        return None if self.folder is None else self.folder / kind / f"{key}.pkl"

    def get(self, kind: str, key: str):
        """The entry of ``kind`` under ``key``, or None: absent, or not readable back as what it
        should be (``ENTRY_TYPES``: a truncated or foreign pickle, an entry of another kind) —
        then one line on stderr names it, it is removed and its work is recomputed."""
        path = self._path(kind, key)
        if path is None or not path.is_file():
            return None
        expected = ENTRY_TYPES[kind]
        try:
            with open(path, "rb") as f:
                value = pickle.load(f)
            why = None if isinstance(value, expected) else f"holds a {type(value).__name__}"
        except Exception as exc:       # anything unpickling can raise: a damaged entry, never a traceback
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
        if why is not None:
            print(f"{path}: cache entry is not a {expected.__name__} ({why}); removed, its work is recomputed",
                  file=sys.stderr)
            path.unlink(missing_ok=True)
            return None
        self.used.add(path)
        self.reused[kind] += 1
        return value

    def put(self, kind: str, key: str, value) -> None:
        self.computed[kind] += 1
        path = self._path(kind, key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        self.used.add(path)
        self.written.add(path)

    def changed(self, dates: dict, content: dict) -> list:
        """The dates (key → (product, bands)) whose content is no longer ``content[key]``, the key
        the run began with: every file hashed again (a fresh memo). A file rewritten while the
        run read it would otherwise leave work made of its new pixels under its old key — reused
        by every later run of the old content. Costs a second read of every file (the key's
        cost, ``cache_key_cost.py``); nothing without a cache folder."""
        if self.folder is None:
            return []
        fresh, keep = {}, self.content_keys
        self.content_keys = fresh
        try:
            return [k for k, (product, bands) in dates.items() if self.date_content(product, bands) != content[k]]
        finally:
            self.content_keys = keep

    def forget_computed(self) -> None:
        """Remove the entries this run wrote (work of a file that changed while it was read)."""
        for path in self.written:
            path.unlink(missing_ok=True)

    def prune(self) -> None:
        """Remove the entries this run did not use (dates no longer in the stack, old settings)."""
        if self.folder is None:
            return
        for kind in KINDS:
            for path in (self.folder / kind).glob("*.pkl") if (self.folder / kind).is_dir() else []:
                if path not in self.used:
                    path.unlink(missing_ok=True)

    def counts(self) -> dict:
        # per kind (windows: those a date read beyond the stack's plan, one entry each: stack.read_more_windows)
        return {"reused": dict(self.reused), "computed": dict(self.computed)}
