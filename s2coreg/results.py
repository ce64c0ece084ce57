"""The public results, typed: what a user gets back, with every field documented once.

Shapes follow kornia's style: ``(N, 2)`` is N points as (x, y) in the image's own pixel frame,
pixel centres at integers (see docs/conventions.md). Each result is a dataclass that also reads
as the dict it used to be (``r["homography"]``, ``r.get("shift_m")``, ``{**r}``, ``json``), and like
an object (``r.homography``), so code written against the dicts keeps working.

* ``Features`` — one image's keypoints and descriptors (a ``TypedDict``: the features dicts the
  matching path passes around, ``matching.SuperPointExtractor.extract`` / ``SiftExtractor``).
* ``MatchResult`` — two images matched (``ImageMatcher.match_images``).
* ``ShiftEstimate`` — the displacement of one date's content relative to another's, in metres.
* ``DateShift`` — one date's shift relative to the reference: the fields a pair's result and a
  stack's row share, by name and type (``dx_m``, ``dy_m``, ``sigma_m``, ``tie_points``, ``status``,
  ``verified``, ``reason``, ``warnings``, ``date``, ``path``).
* ``CoregistrationResult`` — two products co-registered (``coregister.coregister``, the content
  of ``coregistration.json``); it reads as its target's ``DateShift`` too (``r.dx_m``, ``r["status"]``).
* ``StackDate`` — a stack's row (``coregister_stack(...)["dates"]``, a line of ``shifts.csv``): a
  ``DateShift`` with the stack's own fields.

``to_dict()`` is the JSON form (a ``ShiftEstimate`` leaves out the fields of the other kind of
estimate); ``dict(r)`` holds every field, ``None`` where it does not apply. Keys *derived* from
the fields (``ShiftEstimate.dx_m``, alias of ``dx``; ``CoregistrationResult.dx_m``, from its
``shift_m``) read by key and attribute like the others, but are read-only and not iterated: they
are not in ``dict(r)``, ``to_dict()`` or the JSON.

* ``StackResult`` — a stack co-registered (``coregister_stack``): the dict it always was
  (``r["dates"]``, ``r["pairs"]``, ``r["reference"]``, …), with ``to_dataframe()`` and ``report()``.

In a notebook (docs/coregistration.md#in-a-notebook): each shows a compact ``repr`` — the numbers a
user looks at first, the fields that are set; an array as its shape and dtype (``<(412, 2)
float32>``), a list of warnings as its length — and an HTML table (``_repr_html_``): a pair's with
its ``report.png`` beside it, a stack's its dates' table and its report picture.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import numpy as np


class Features(TypedDict, total=False):
    """One image's features (the dict every extractor returns and every matcher takes)."""

    keypoints: np.ndarray          # (N, 2) float32, x y, the image's own frame
    scores: np.ndarray             # (N,) float32, detector confidence
    descriptors: np.ndarray        # (N, D) float32, L2-normalised (SuperPoint) or SIFT's 128
    image_size: np.ndarray         # (2,) the image's own (width, height)
    network_size: np.ndarray       # (2,) (width, height) the detector saw
    scale: np.ndarray              # (2,) network size / own size, per axis
    fine_descriptors: np.ndarray   # (N, C) float16, the fine head's descriptor at each keypoint
    fine_patches: np.ndarray       # (N, P, C) float16, the fine map around each keypoint
    fine_temperature: float
    texture: np.ndarray            # (h, w) uint8, local contrast for the correlation stage
    texture_scale: np.ndarray      # (2,) texture size / own size
    valid: np.ndarray              # (h, w) bool, where the image holds data (co-registration windows)
    reason: str                    # why there are no keypoints (blank, cloud, no data)


def _unset(value) -> bool:
    """None, an empty list / dict / string, NaN: left out of a compact repr."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (list, tuple, dict, str)):
        return len(value) == 0
    return False


def _short(value) -> str:
    """A value as a compact repr shows it: an array as its shape and dtype, floats to mm (3
    decimals), a long list of texts (warnings) as its first, shortened, and how many more, a long
    text or dict shortened."""
    if isinstance(value, np.ndarray):
        return f"<{tuple(value.shape)} {value.dtype}>"
    if isinstance(value, Record):
        return repr(value)
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value) and sum(map(len, value)) > 60:
            first = value[0] if len(value[0]) <= 72 else value[0][:71] + "…"     # what it says, shortened
            more = f" (+{len(value) - 1} more)" if len(value) > 1 else ""
            return f"[{first!r}{more}]"
        inner = ", ".join(_short(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        text = "{" + ", ".join(f"{k!r}: {_short(v)}" for k, v in value.items()) + "}"
        return text if len(text) <= 80 else f"<dict of {len(value)}>"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "…'"


def _html_value(value):
    """A value as the HTML table shows it: an array as its shape, a record as its repr, numbers to
    the millimetre (in lists too)."""
    if isinstance(value, (np.ndarray, Record, dict, list, tuple, float, np.floating)):
        return _short(value)
    return value


def _optional(module: str, what: str):
    """``module`` imported, or one clear error naming what needs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs {module}, which is not installed: pip install {module}") from None


def _name(path: str | None) -> str | None:
    """A path's or URL's last part (a compact repr's)."""
    return None if path is None else str(path).rstrip("/").rsplit("/", 1)[-1]


class Record(MutableMapping):
    """A dataclass that reads (and writes) like a dict of its fields; keys it does not declare
    are kept too (``extra``), so that a result can grow without breaking its readers.
    ``_derived``: read-only properties that read by key too (``r["dx_m"]``), but are not
    iterated (not in ``dict(r)``, ``to_dict()`` or the JSON: their fields are)."""

    _derived: ClassVar[tuple[str, ...]] = ()

    def __getitem__(self, key: str) -> Any:
        if key in self._fields() or key in self._derived:
            return getattr(self, key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._derived:
            raise KeyError(f"{key} is read-only in {type(self).__name__}: derived from its fields")
        if key in self._fields():
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self._derived:
            raise KeyError(f"{key} is read-only in {type(self).__name__}: derived from its fields")
        if key in self._fields():
            raise KeyError(f"{key} is a field of {type(self).__name__}; set it to None instead")
        del self.extra[key]

    def __iter__(self):
        yield from self._fields()
        yield from self.extra

    def __len__(self) -> int:
        return len(self._fields()) + len(self.extra)

    def __getattr__(self, name: str) -> Any:      # undeclared keys read as attributes too
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(name)

    @classmethod
    def _fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def declared(cls) -> dict[str, str]:
        """Every name it reads by — its fields and its derived keys — with its type as written
        (``DateShift.declared().items() <= CoregistrationResult.declared().items()``)."""
        out = {f.name: str(f.type) for f in dataclasses.fields(cls) if f.name != "extra"}
        out.update({name: str(getattr(cls, name).fget.__annotations__["return"]) for name in cls._derived})
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Record":
        """From a plain dict: declared keys become fields, the others ``extra``."""
        names = set(cls._fields())
        out = cls(**{k: v for k, v in data.items() if k in names})
        out.extra.update({k: v for k, v in data.items() if k not in names})
        return out

    def to_dict(self) -> dict:
        """A plain dict (nested records too), for JSON."""
        return {k: (v.to_dict() if isinstance(v, Record) else v) for k, v in self.items()}

    # what a notebook (or print) shows: the fields that are set, compactly; ``_shown`` names the
    # keys worth a first look, in order (all that are set where empty)
    _shown: ClassVar[tuple[str, ...]] = ()

    def _summary(self) -> list[tuple[str, Any]]:
        """(name, value) of the keys shown: ``_shown``'s (else every field's and extra's), those set."""
        names = self._shown or tuple(self)
        return [(k, self[k]) for k in names if k in self and not _unset(self[k])]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={_short(v)}' for k, v in self._summary())})"

    def _table(self) -> list[tuple[str, Any]]:
        """The rows of the HTML table: every key that is set."""
        return [(k, v) for k, v in self.items() if not _unset(v)]

    def _repr_html_(self) -> str:
        from s2coreg.display import key_value_table

        return key_value_table([(k, _html_value(v)) for k, v in self._table()], caption=type(self).__name__)


@dataclasses.dataclass(eq=False, repr=False)
class ShiftEstimate(Record):
    """The displacement of one date's content relative to another's: a feature at map point P in
    the first is found at P + (dx, dy) in the second. Metres, x east, y north, in ``metric_crs``
    (the first date's CRS where it is projected in ground metres, else the local UTM zone).

    Attributes:
        dx: the displacement east, m
        dy: the displacement north, m
        sigma_m: standard error of the shift (per axis, RMS of the two), m
        metric_crs: the CRS whose metres these are (EPSG code)
        length: |(dx, dy)|
        sigma_x: robust spread (1.4826 × MAD) of one match's displacement, m
        sigma_y: the same north
        r68: radius around (dx, dy) holding 68 % of the matches, m
        r95: the same for 95 %
        se: standard error of the shift vector's length (= √2 sigma_m; ImageMatcher's first name for it)
        points: matches the estimate is made of
        ce90_m: radius holding 90 % of the error (2.146 σ), m
        se_x: standard error of dx, m
        se_y: standard error of dy, m
        window_spread_m: robust spread of the windows' estimates, m (x, y)
        shift_px: the shift in pixels of the reference grid (x right, y down)
        extra: keys the result carries beyond these (a result can grow)

    ``dx_m`` / ``dy_m``: read-only aliases of ``dx`` / ``dy`` (by attribute and key, not iterated
    nor in the JSON), the names a stack's row and ``CoregistrationResult`` give them.
    """

    _derived = ("dx_m", "dy_m")
    _shown = ("dx", "dy", "sigma_m", "points", "r68", "ce90_m", "metric_crs")

    dx: float = 0.0
    dy: float = 0.0
    sigma_m: float | None = None        # standard error of the shift (per axis, RMS of the two), m
    metric_crs: str | None = None
    # from matches (``ImageMatcher``): one match's robust spread and radii, their count
    length: float | None = None         # |(dx, dy)|
    sigma_x: float | None = None        # robust spread (1.4826 × MAD) of one match's displacement, m
    sigma_y: float | None = None
    r68: float | None = None            # radius around (dx, dy) holding 68 % of the matches, m
    r95: float | None = None
    se: float | None = None             # standard error of the vector (√2 sigma_m), ImageMatcher's first name
    points: int | None = None           # matches the estimate is made of
    # from a co-registration (``coregister``): per-axis errors, the windows, the grid
    ce90_m: float | None = None         # radius holding 90 % of the error (2.146 σ), m
    se_x: float | None = None           # standard error of dx, m
    se_y: float | None = None
    window_spread_m: list[float] | None = None   # robust spread of the windows' estimates, m (x, y)
    shift_px: list[float] | None = None          # the shift in pixels of the reference grid (x right, y down)
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def dx_m(self) -> float:
        """Alias of ``dx`` (read-only): the displacement east, m."""
        return self.dx

    @property
    def dy_m(self) -> float:
        """Alias of ``dy`` (read-only): the displacement north, m."""
        return self.dy

    def to_dict(self) -> dict:
        """The fields this estimate has (the others, of the other kind of estimate, left out)."""
        return {k: v for k, v in super().to_dict().items() if v is not None}


@dataclasses.dataclass(eq=False, repr=False)
class MatchResult(Record):
    """Two images matched (``ImageMatcher.match_images``); names as SuperGlue / LightGlue /
    glue-factory use them. Image 1's matched points are refined (fine head, correlation stage).

    Attributes:
        keypoints0: (N0, 2) detected in image 0
        keypoints1: (N1, 2) detected in image 1
        scores0: (N0,)
        scores1: (N1,)
        descriptors0: (N0, D)
        descriptors1: (N1, D)
        matches0: (N0,) index into keypoints1, −1 = no match
        matching_scores0: (N0,)
        matches1: (N1,) index into keypoints0, −1 = no match
        matching_scores1: (N1,)
        refined_keypoints1: (N1, 2) image 1's keypoints after refinement
        refined1: (N1,) bool: moved by the fine head
        correlated1: (N1,) bool: moved by the correlation stage
        mkpts0: (K, 2) matched points of image 0
        mkpts1: (K, 2) their matches in image 1 (refined)
        mconf: (K,) match confidence
        homography: (3, 3) image 0 → image 1, None when not verified
        inliers: (K,) bool, USAC_MAGSAC inliers
        num_inliers: how many inliers
        verified: at least min_inliers inliers
        reason: why there is nothing to match, or no verification
        image_size0: (width, height) of each input
        image_size1: (width, height) of image 1
        method: the path that made the result (e.g. superpoint+superglue+refine+correlate)
        cascade_path: with ``matcher="fast"`` or ``"sift-first"``: which of the cascade's two
            paths made it (``mnn`` / ``superglue``, ``sift`` / ``learned``); else None
        names: the inputs' names
        crs: with two georeferenced inputs: image 0's CRS
        map_points0: (K, 2) the matches in map coordinates of ``crs``
        map_points1: (K, 2) their matches in map coordinates of ``crs``
        shift_m: from the verified inliers
        extra: keys the result carries beyond these (a result can grow)
    """

    keypoints0: np.ndarray | None = None          # (N0, 2) detected in image 0
    keypoints1: np.ndarray | None = None          # (N1, 2) detected in image 1
    scores0: np.ndarray | None = None             # (N0,)
    scores1: np.ndarray | None = None
    descriptors0: np.ndarray | None = None        # (N0, D)
    descriptors1: np.ndarray | None = None
    matches0: np.ndarray | None = None            # (N0,) index into keypoints1, −1 = no match
    matching_scores0: np.ndarray | None = None    # (N0,)
    matches1: np.ndarray | None = None            # (N1,) index into keypoints0, −1 = no match
    matching_scores1: np.ndarray | None = None
    refined_keypoints1: np.ndarray | None = None  # (N1, 2) image 1's keypoints after refinement
    refined1: np.ndarray | None = None            # (N1,) bool: moved by the fine head
    correlated1: np.ndarray | None = None         # (N1,) bool: moved by the correlation stage
    mkpts0: np.ndarray | None = None              # (K, 2) matched points of image 0
    mkpts1: np.ndarray | None = None              # (K, 2) their matches in image 1 (refined)
    mconf: np.ndarray | None = None               # (K,) match confidence
    homography: np.ndarray | None = None          # (3, 3) image 0 → image 1, None when not verified
    inliers: np.ndarray | None = None             # (K,) bool, USAC_MAGSAC inliers
    num_inliers: int = 0
    verified: bool = False                        # at least min_inliers inliers
    reason: str | None = None                     # why there is nothing to match, or no verification
    image_size0: tuple | None = None              # (width, height) of each input
    image_size1: tuple | None = None
    method: str = ""
    cascade_path: str | None = None               # matcher="fast" / "sift-first": which path made it
    names: tuple | None = None                    # the inputs' names
    crs: str | None = None                        # with two georeferenced inputs: image 0's CRS
    map_points0: np.ndarray | None = None         # (K, 2) the matches in map coordinates of ``crs``
    map_points1: np.ndarray | None = None
    shift_m: ShiftEstimate | None = None          # from the verified inliers
    extra: dict = dataclasses.field(default_factory=dict)

    def _summary(self) -> list[tuple[str, Any]]:
        def count(a):
            return None if a is None else len(a)

        out = [("names", self.names), ("method", self.method), ("cascade_path", self.cascade_path),
               ("keypoints", (count(self.keypoints0), count(self.keypoints1))), ("matches", count(self.mkpts0)),
               ("num_inliers", self.num_inliers), ("verified", self.verified), ("reason", self.reason),
               ("crs", self.crs), ("shift_m", self.shift_m)]
        return [(k, v) for k, v in out if not _unset(v)]

    def _table(self) -> list[tuple[str, Any]]:
        rows = [(k, v) for k, v in self._summary() if k != "shift_m"]
        if self.shift_m is not None:
            rows += [(f"shift_m.{k}", v) for k, v in self.shift_m._table()]
        return rows

    def to_geodataframe(self):
        """The matches as points (``geopandas.GeoDataFrame``, optional: ``pip install geopandas``)
        at image 0's map points, in ``crs``: ``x1`` / ``y1`` their matches in image 1 (same CRS),
        ``dx`` / ``dy`` the displacement (``crs``'s units), ``confidence``, ``inlier``. Needs two
        georeferenced inputs."""
        if self.map_points0 is None or self.crs is None:
            raise ValueError("to_geodataframe: the matches have no map coordinates (two georeferenced inputs needed)")
        gpd = _optional("geopandas", "to_geodataframe")
        p0, p1 = np.asarray(self.map_points0, np.float64), np.asarray(self.map_points1, np.float64)
        inliers = np.zeros(len(p0), bool) if self.inliers is None else np.asarray(self.inliers, bool)
        return gpd.GeoDataFrame({"x1": p1[:, 0], "y1": p1[:, 1], "dx": p1[:, 0] - p0[:, 0], "dy": p1[:, 1] - p0[:, 1],
                                 "confidence": np.asarray(self.mconf, np.float64), "inlier": inliers},
                                geometry=gpd.points_from_xy(p0[:, 0], p0[:, 1]), crs=self.crs)


@dataclasses.dataclass(eq=False, repr=False)
class DateShift(Record):
    """One date's shift relative to the reference: the fields a pair's result
    (``CoregistrationResult``: its target's) and a stack's row (``StackDate``) share, with the same
    names and types. The displacement of the date's content, in ground metres, x east, y north: a
    feature at the reference's map point P is found in this date at P + (dx_m, dy_m); its
    correction is the negative (docs/conventions.md).

    Attributes:
        path: the date's input as one string (its absolute path, or the URL)
        date: its acquisition date, YYYYMMDD (where it cannot be known: its file's stem)
        dx_m: the displacement east, m (NaN where not placed)
        dy_m: the displacement north, m (NaN where not placed)
        sigma_m: its standard error (per axis, RMS of the two), m (NaN where not placed)
        tie_points: the verified matches it rests on
        status: ``reference``, ``ok`` (placed) or ``excluded``
        reason: why it is excluded (or, placed, how: "placed through its neighbours"), else None
        warnings: what a translation does not describe, a sentence each
        verified: placed (``status`` is not ``excluded``); read-only, from ``status``
        extra: keys the result carries beyond these (a result can grow)
    """

    _derived = ("verified",)
    _shown = ("date", "status", "dx_m", "dy_m", "sigma_m", "tie_points", "reason", "warnings", "path")

    path: str | None = None
    date: str | None = None
    dx_m: float = math.nan
    dy_m: float = math.nan
    sigma_m: float = math.nan
    tie_points: int = 0
    status: str = "excluded"                      # reference | ok | excluded
    reason: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def verified(self) -> bool:
        """Placed: the reference, or a date its pairs placed (``status`` is not ``excluded``)."""
        return self.status != "excluded"


@dataclasses.dataclass(eq=False, repr=False)
class StackDate(DateShift):
    """A stack's row (``coregister_stack(...)["dates"]``; a line of ``shifts.csv``, whose
    ``warnings`` are joined by "; "): a ``DateShift`` with the stack's own fields.

    Attributes:
        id: its STAC Item's id, else its product's or file's name (unique in the stack)
        date_source: where ``date`` came from (``--date``, metadata, name; ``engine.acquisition_date``)
        bands: the bands read, comma-separated (None where it was never read)
        offset_px: its coarse offset on the reference grid, px (None where never located)
        shift_px: its displacement on the reference grid, px (x right, y down)
    """

    _shown = ("id", "date", "status", "dx_m", "dy_m", "sigma_m", "tie_points", "reason", "warnings")

    id: str | None = None
    date_source: str | None = None
    bands: str | None = None
    offset_px: list[float] | None = None
    shift_px: list[float] | None = None


@dataclasses.dataclass(eq=False, repr=False)
class CoregistrationResult(Record):
    """Two products co-registered (``coregister.coregister``; ``coregistration.json``).

    Attributes:
        verified: co-registered (enough windows verified)
        reason: why the pair is refused
        warnings: what a translation does not describe
        shift_m: the target's content relative to the reference
        affine: reference map → target map, "matrix" 2×3
        tie_points: verified matches in the used windows
        windows: used, rejected, reasons, size_px
        coarse: the coarse step: verified, inliers, offset_px
        seconds: wall time
        bands: each date's bands read
        reference: absolute paths
        target: the target's absolute path
        crs: the reference grid's
        provenance: software, version, commit, settings, inputs, time
        outputs: the files written, absolute
        date: the target's acquisition date, YYYYMMDD (where it cannot be known: its file's stem)
        extra: keys the result carries beyond these (a result can grow)

    It reads as its target's ``DateShift`` too, by attribute and key (read-only, derived, not
    in the JSON): ``dx_m`` / ``dy_m`` / ``sigma_m`` (``shift_m``'s ``dx`` / ``dy`` / ``sigma_m``;
    NaN where not verified), ``status`` (``ok`` or ``excluded``), ``path`` (``target``); with
    ``verified``, ``reason``, ``warnings``, ``tie_points`` and ``date``, a stack's row's names and
    types (``StackDate``).
    """

    _derived = ("path", "dx_m", "dy_m", "sigma_m", "status")

    verified: bool = False
    reason: str | None = None                     # why the pair is refused
    warnings: list[str] = dataclasses.field(default_factory=list)   # what a translation does not describe
    shift_m: ShiftEstimate | None = None          # the target's content relative to the reference
    affine: dict | None = None                    # reference map → target map, "matrix" 2×3
    tie_points: int = 0
    windows: dict | None = None                   # used, rejected, reasons, size_px
    coarse: dict | None = None                    # the coarse step: verified, inliers, offset_px
    seconds: float | None = None
    bands: dict | None = None                     # each date's bands read
    reference: str | None = None                  # absolute paths
    target: str | None = None
    crs: str | None = None                        # the reference grid's
    provenance: dict | None = None                # software, version, commit, settings, inputs, time
    outputs: list[str] | None = None              # the files written, absolute
    date: str | None = None                       # the target's acquisition date, YYYYMMDD
    extra: dict = dataclasses.field(default_factory=dict)

    # the target's DateShift (read-only: from the fields above)
    @property
    def path(self) -> str | None:
        """The target's input (``target``)."""
        return self.target

    @property
    def dx_m(self) -> float:
        """``shift_m``'s ``dx``, m east (NaN where not verified)."""
        return math.nan if self.shift_m is None else float(self.shift_m["dx"])

    @property
    def dy_m(self) -> float:
        """``shift_m``'s ``dy``, m north (NaN where not verified)."""
        return math.nan if self.shift_m is None else float(self.shift_m["dy"])

    @property
    def sigma_m(self) -> float:
        """``shift_m``'s ``sigma_m``, m (NaN where not verified)."""
        return math.nan if self.shift_m is None else float(self.shift_m["sigma_m"])

    @property
    def status(self) -> str:
        """``ok`` where verified, else ``excluded`` (a stack's words for its target's row)."""
        return "ok" if self.verified else "excluded"

    def _summary(self) -> list[tuple[str, Any]]:
        windows = self.windows or {}
        out = [("verified", self.verified), ("reason", self.reason), ("dx_m", self.dx_m), ("dy_m", self.dy_m),
               ("sigma_m", self.sigma_m), ("ce90_m", (self.shift_m or {}).get("ce90_m")),
               ("tie_points", self.tie_points),
               ("windows_used", windows.get("used")), ("windows_rejected", windows.get("rejected")),
               ("warnings", self.warnings), ("date", self.date), ("target", _name(self.target))]
        return [(k, v) for k, v in out if not _unset(v)]

    def _table(self) -> list[tuple[str, Any]]:
        rows = [(k, v) for k, v in self._summary() if k not in ("warnings", "target")]
        rows += [("warning", w) for w in self.warnings]
        rows += [("reference", self.reference), ("target", self.target), ("seconds", self.seconds)]
        return [(k, v) for k, v in rows if not _unset(v)]

    def own_output(self, name: str) -> Path | None:
        """This run's file ``name`` in its output folder, while the folder still holds this run's
        result; else None. A later run into the same folder (a notebook cell run again) replaces
        the folder's files: they are then that run's, never shown as this one's."""
        import json

        for written in self.outputs or []:
            path = Path(written)
            if path.name != name or not path.is_file():
                continue
            try:
                published = json.loads((path.parent / "coregistration.json").read_text()).get("provenance")
            except (OSError, ValueError):
                return None
            mine = json.loads(json.dumps(self.provenance, default=str))       # as the JSON holds it
            return path if published == mine else None
        return None

    def report_path(self) -> Path | None:
        """The ``report.png`` this run wrote (with ``output``) while its folder holds this run's
        result (``own_output``); else None."""
        return self.own_output("report.png")

    def report(self):
        """The ``report.png`` this run wrote, as a picture a notebook shows (``display.PngFile``);
        None where none was written (no ``output``)."""
        from s2coreg.display import PngFile

        path = self.report_path()
        return PngFile(path) if path is not None else None

    def _repr_html_(self) -> str:
        from s2coreg.display import img_tag, side_by_side

        table = super()._repr_html_()
        path = self.report_path()
        return side_by_side(table, img_tag(path.read_bytes(), width=900)) if path is not None else table

    def tie_points_gdf(self):
        """The tie points it wrote (``tie_points.geojson``, with ``output``) as a
        ``geopandas.GeoDataFrame`` (optional: ``pip install geopandas``), WGS84 points at their
        reference position with the CSV's columns (``dx_m``, ``dy_m``, ``score``, ``inlier``, …)."""
        gpd = _optional("geopandas", "tie_points_gdf")
        found = self.own_output("tie_points.geojson")
        if found is None:
            if any(Path(n).name == "tie_points.geojson" for n in self.outputs or []):
                raise ValueError("tie_points_gdf: the output folder now holds a later run's result (its "
                                 "tie_points.geojson is that run's); co-register into another folder to keep both")
            raise ValueError("tie_points_gdf: no tie_points.geojson (coregister(..., output=FOLDER) writes it)")
        return gpd.read_file(found)


class StackResult(dict):
    """A stack co-registered (``coregister_stack``): the dict it always was — ``"dates"`` (a
    ``StackDate`` a date), ``"pairs"`` (dicts, the lines of ``pairs.csv``), ``"reference"``,
    ``"reference_id"``, ``"placed"``, ``"excluded"``, ``"timing"``, ``"provenance"``, … — read,
    pickled and written as JSON as a dict, with what a notebook shows: a compact ``repr``, the
    dates as an HTML table with the report picture (``_repr_html_``, no pandas needed),
    ``to_dataframe()`` and ``report()``."""

    DATE_COLUMNS: ClassVar[tuple[str, ...]] = ("date", "id", "status", "dx_m", "dy_m", "sigma_m", "tie_points",
                                               "reason", "warnings")

    def __repr__(self) -> str:
        dates = self.get("dates", [])
        return (f"StackResult({len(dates)} dates: {self.get('placed')} placed, {self.get('excluded')} excluded; "
                f"reference={self.get('reference_id')!r}; {len(self.get('pairs', []))} pairs; "
                f"{self.get('seconds')} s)")

    def to_dataframe(self, table: str = "dates"):
        """``table`` (``"dates"``: one row a date, ``StackDate``'s fields; ``"pairs"``: one row a
        pair, as ``pairs.csv``) as a ``pandas.DataFrame`` (optional: ``pip install pandas``)."""
        if table not in ("dates", "pairs"):
            raise ValueError(f"to_dataframe: table={table!r}; 'dates' or 'pairs'")
        pd = _optional("pandas", "to_dataframe")
        return pd.DataFrame([dict(r) for r in self[table]])

    def report(self):
        """dx and dy of each date over time (``report.png``'s picture), a ``picture.Picture``:
        a notebook shows it; ``.savefig(path)`` writes it."""
        from s2coreg.picture import stack_report_figure

        return stack_report_figure(self)

    def _repr_html_(self) -> str:
        from s2coreg.display import html_table, img_tag, png_bytes

        caption = (f"{len(self['dates'])} dates: {self.get('placed')} placed, {self.get('excluded')} excluded; "
                   f"reference {self.get('reference_id')}")
        table = html_table([dict(r) for r in self["dates"]], list(self.DATE_COLUMNS), caption=caption)
        try:
            picture = img_tag(png_bytes(self.report()), width=900)
        except Exception:            # a table without its picture rather than no table (a hand-made dict)
            picture = ""
        return table + picture


class Ranking(list):
    """``ImageMatcher.rank``'s answer: the list of candidates it always was (a dict each:
    ``candidate``, ``num_inliers``, ``verified``, ``num_matches``, ``reason``, ``error``, ``method``,
    ``cascade_path``; best first), shown in a notebook as a table (``_repr_html_``)."""

    COLUMNS: ClassVar[tuple[str, ...]] = ("rank", "candidate", "verified", "num_inliers", "num_matches", "reason")

    def _repr_html_(self) -> str:
        from s2coreg.display import html_table

        rows = [{**r, "rank": k + 1, "candidate": Path(str(r["candidate"])).name} for k, r in enumerate(self)]
        verified = sum(bool(r.get("verified")) for r in self)
        return html_table(rows, list(self.COLUMNS), caption=f"{len(self)} candidates ranked, {verified} verified")
