"""Match Sentinel-2 images from a notebook or the command line: ``ImageMatcher``.

    from s2coreg.matching.matcher import ImageMatcher
    matcher = ImageMatcher()                                   # shipped checkpoints, device auto
    result = matcher.match_images("a.jpeg", "b.jpeg")          # paths or arrays (H×W or H×W×C)
    matcher.visualize_matches("a.jpeg", "b.jpeg", result, output="matches.png")

    python inference.py                       # the shipped sample pair → data/output/matches.png
    python inference.py A B [--output DIR]    # any two images
    python inference.py --query Q --gallery DIR   # rank a folder by verified matches

``ImageMatcher`` is a thin façade: it reads files (decimated when larger than what the network
sees), keeps the features of recent images, and hands the pixels to the one matching path of
``s2coreg/matching/pipeline.py``; georeferencing is ``s2coreg/io/geo.py``'s and pictures ``s2coreg/matching/visualization.py``'s. All
coordinates are ``(x, y)`` in each input image's own pixel frame, pixel centres at integer
coordinates, whatever size the network saw. With georeferenced inputs (GeoTIFF, JP2 or
``data_preprocess.py`` outputs with their sidecar ``.json``) the matches are also given in map
coordinates, with the shift between the two dates in metres.
"""
from __future__ import annotations

import s2coreg.config as config  # noqa: I001  first: OpenMP's waiting policy is set there, before torch loads

import dataclasses
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import s2coreg.cli as cli
import s2coreg.io.geo as geo
import s2coreg.matching.visualization as visualization
from s2coreg.config import MatchingConfig
from s2coreg.matching.pipeline import OWN_MATCHER, MatchingPipeline, matcher_choices, select_bands
from s2coreg.results import MatchResult, Ranking
from s2coreg.io.imaging import IMAGE_SUFFIXES, image_dimensions, list_images, load_image, load_valid_mask, resize_to
from s2coreg.utils import PipelineError, set_threads, write_json


@dataclass
class Loaded:
    """An input image as the network sees it, with what is needed to map back."""

    name: str
    image: np.ndarray                 # the bands used, at the network's size (also for display)
    valid: np.ndarray | None          # (h, w) bool at the network's size, None = all valid
    size: tuple[int, int]             # the input's own (width, height)
    georef: geo.Georeference | None = None


class ImageMatcher:
    """Two images matched and verified by a USAC_MAGSAC homography. By default
    (``MatchingConfig.matcher``, ``sift-first``, chosen on validation: docs/matching.md "The
    default"): SIFT + the ratio test + the correlation stage where that verifies, else the learned
    pipeline — SuperPoint keypoints matched by SuperGlue (mutual nearest neighbours if no SuperGlue
    checkpoint is present), refined by the fine head and the correlation stage.

    Args:
        model_path: folder with ``superpoint*.pt`` (and ``superglue*.pt``), or a SuperPoint
            file (the matcher's checkpoint is then looked for beside it).
        device: ``"cpu"``, ``"cuda"``; default ``config.DEVICE``.
        max_keypoints: keypoints per image (None: the checkpoint's, 1024 shipped).
        match_threshold: the matcher's score threshold (None: the checkpoint's).
        resize: longer side the network sees; larger inputs are shrunk (coordinates are still
            returned in each input's own frame). 0 = never resize.
        bands: for multi-band inputs, the bands to use, 1-based as GDAL counts them (1, 3 or 4 of them,
            matching the model's input channels; grey models average them), or names from a raster's
            band descriptions (``("B04", "B03", "B02")``, ``("red", ...)``), or a string as
            ``--bands`` takes them (``"3,2,1"``). None: a raster that
            describes B04, B03 and B02 uses them; a single band or an 8-bit RGB picture as it is.
        ransac_threshold: px, in image 1's own frame.
        refine: move each match's point in image 1 to where image 0's keypoint fits best,
            with SuperPoint's fine head (sub-pixel; only if the checkpoint has one).
        correlate: then make the matches precise by correlation: image 0 warped onto image 1 by
            a provisional homography, each inlier moved by Lucas-Kanade on local contrast
            (``matching.correlation_stage``).
        min_inliers: fewer RANSAC inliers leave the pair unverified: no homography, no shift,
            ``verified`` False and a ``reason`` (snow, cloud, water or no overlap make a few
            chance agreements, not a transform).
        matcher: None: ``MatchingConfig.matcher``, ``sift-first``; a cascade
            (``matching.CascadePipeline``): ``sift-first`` (SIFT, the ratio test and the correlation
            stage first, the learned pipeline where that does not verify: the most precise at one
            pixel and the best at 5 px on validation and test) or ``fast`` (mutual nearest neighbours
            first, SuperGlue on the same features where they give fewer than ``fast_min_inliers``
            inliers: about SIFT's time a pair); ``auto`` (the learned pipeline alone: SuperGlue where
            its checkpoint is there, else mutual nearest neighbours); or a name of
            ``matching.MATCHERS`` (``superglue``, ``mnn``; a matcher of your own module as
            ``package.module:name``, an installed plugin's by its name: ``matching.matcher_class``).
        threads: torch's and OpenCV's CPU threads (None leaves their settings: all cores); give
            each of several parallel workers ``cores // workers``.
        cache_size: images whose features are kept (least recently used dropped first).
        config: a ``config.MatchingConfig`` with every default of the matching path; the
            keyword arguments above override its fields (``ImageMatcher(config=cfg, resize=0)``).
    """

    def __init__(self, model_path: str | Path = config.CHECKPOINT_DIR, device: str | None = None,
                 max_keypoints: int | None = None, match_threshold: float | None = None,
                 resize: int | None = None, bands: tuple[int, ...] | None = None,
                 ransac_threshold: float | None = None, refine: bool | None = None,
                 min_inliers: int | None = None, matcher: str | None = None,
                 threads: int | None = None, cache_size: int | None = None,
                 correlate: bool | None = None, *, config: MatchingConfig | None = None):
        # one configuration object, merged with the keyword overrides (LightGlue's default_conf)
        overrides = {k: v for k, v in dict(resize=resize, ransac_threshold=ransac_threshold, refine=refine,
                                           min_inliers=min_inliers, matcher=matcher, cache_size=cache_size,
                                           correlate=correlate).items() if v is not None}
        cfg = dataclasses.replace(config or MatchingConfig(), **overrides)
        if bands is not None:           # "4,3,2", ("B04", "B03", "B02"), ("red", ...), (3, 2, 1), as coregister.py
            import s2coreg.io.products as products

            bands = products.normalise_bands(bands) or None
        if threads:
            set_threads(threads)
        self.config = cfg
        self.pipeline = MatchingPipeline.from_checkpoints(
            model_path, cfg.matcher, device, max_keypoints=max_keypoints, resize=cfg.resize,
            match_threshold=match_threshold, refine=cfg.refine, ransac_threshold=cfg.ransac_threshold,
            min_inliers=cfg.min_inliers, correlate=cfg.correlate, fast_min_inliers=cfg.fast_min_inliers)
        self.bands, self.cache_size = bands, cfg.cache_size
        self._cache: OrderedDict[str, tuple[Loaded, dict]] = OrderedDict()

    @property
    def method(self) -> str:
        """The path that runs, as the provenance records it (a cascade's: ``FIRST, else FALLBACK``)."""
        return self.pipeline.name

    @property
    def ranking_method(self) -> str:
        """The one path ``rank`` scores every candidate with (a cascade's: its learned fallback)."""
        return self.pipeline.ranking_name

    @property
    def refine(self) -> bool:
        return self.pipeline.refine

    # ------------------------------------------------------------------ inputs
    def load(self, image, name: str | None = None) -> Loaded:
        """A path or an array → the bands to use at the network's size, with the input's own size
        and georeference. Files larger than the network's input are read decimated."""
        extractor = self.pipeline.extractor
        if isinstance(image, (str, Path)):
            path = Path(image)
            if path.suffix.lower() not in IMAGE_SUFFIXES and path.exists():
                raise PipelineError(f"{path}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
            name = name or "/".join(path.parts[-2:])
            size = image_dimensions(path)
            net = extractor.network_size(*size)
            array = load_image(path, None if net == size else net)
            valid = load_valid_mask(path, None if net == size else net)
            georef = geo.read_georeference(path)
            bands = band_indices(path, self.bands)
        else:
            array, name, valid, georef = np.asarray(image), name or "array", None, None
            size = (array.shape[1], array.shape[0]) if array.ndim >= 2 else (0, 0)
            net = extractor.network_size(*size)
            bands = band_indices(None, self.bands)
        try:
            array = select_bands(array, bands, name)
        except PipelineError as exc:
            described = band_descriptions(path) if isinstance(image, (str, Path)) else []
            if bands is None and any(d != "?" for d in described):   # the names bands= could take
                raise PipelineError(f"{exc}; its bands: {', '.join(described)}") from None
            raise
        if np.issubdtype(array.dtype, np.floating):
            # NaN or ±inf (a float raster's no data, or an array's gaps): no data there, as a NaN
            # nodata tag is read — one such pixel made the whole image's stretch NaN, and no keypoint
            finite = np.isfinite(array).all(-1) if array.ndim == 3 else np.isfinite(array)
            if not finite.all():
                array = np.where(finite[..., None] if array.ndim == 3 else finite, array, 0).astype(array.dtype)
                valid = finite if valid is None else valid & finite
        array = resize_to(array, *net)       # an image smaller than a network cell is refused by extract()
        if valid is not None:
            valid = resize_to(valid, *net)
        return Loaded(name, array, valid, size, georef)

    def _key(self, image) -> str | None:
        if isinstance(image, (str, Path)):
            p = Path(image).resolve()
            if p.exists():
                st = p.stat()
                return f"{p}:{st.st_mtime_ns}:{st.st_size}"
            return None
        a = np.ascontiguousarray(image)
        return "array:" + hashlib.sha1(a.tobytes()).hexdigest() + str(a.shape) + str(a.dtype)

    def features(self, image, name: str | None = None) -> tuple[Loaded, dict]:
        """Load and extract an image (the last ``cache_size`` images are kept, by file and
        modification time, or array content). ``reason`` says why the features are empty."""
        key = self._key(image)
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        loaded = self.load(image, name)
        feats = self.pipeline.extract(loaded.image, loaded.valid, loaded.name, size=loaded.size)
        if key is not None and self.cache_size > 0:
            self._cache[key] = (loaded, feats)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return loaded, feats

    # ------------------------------------------------------------------ matching
    def match_images(self, image0, image1) -> MatchResult:
        """Match two images (paths or arrays, any sizes). See ``s2coreg/matching/pipeline.py`` for the fields;
        with two georeferenced inputs also ``crs``, ``map_points0/1`` and ``shift_m``."""
        return self._match(image0, image1, lambda f0, f1: self.pipeline.verify(self.pipeline.match_features(f0, f1)))

    def _match(self, image0, image1, match) -> MatchResult:
        """Two images' (cached) features through ``match(f0, f1)``, as a georeferenced result."""
        from s2coreg.display import tqdm

        big = any(_pixels(im) > MatchingConfig.progress_pixels for im in (image0, image1))
        with tqdm(total=3, desc="match", unit="step", disable=not big, leave=False) as bar:
            l0, f0 = self.features(image0)
            bar.update()
            l1, f1 = self.features(image1)
            bar.update()
            result = MatchResult.from_dict(match(f0, f1))
            bar.update()
        result["names"] = (l0.name, l1.name)
        inliers = result["inliers"] if result["verified"] else np.zeros_like(result["inliers"])
        result.update(geo.georeference_matches(result["mkpts0"], result["mkpts1"], l0.georef, l1.georef, inliers))
        return result

    def rank(self, query, candidates, progress: bool = True) -> Ranking:
        """Rank ``candidates`` (paths, arrays, or a folder) by geometrically verified matches
        (RANSAC inliers) with ``query``; best first. A candidate that cannot be read is listed
        last with its ``error``; the others go on. Features are cached (``cache_size``).

        Every candidate is scored by one path, ``ranking_method``, so that inlier counts compare: a
        cascade's (``sift-first``, the default, and ``fast``) is its learned fallback for every
        candidate — SIFT's inliers (or mutual nearest neighbours') on the pairs the first path
        accepts would not compare with SuperGlue's on the others. A ranking so costs the learned
        pipeline a candidate, and each entry's ``method`` is that path's."""
        from s2coreg.display import tqdm

        if isinstance(candidates, (str, Path)) and Path(candidates).is_dir():
            candidates = list_images(candidates)
        self.features(query)          # a query that cannot be read stops here, with its reason
        ranking = []
        for i, cand in enumerate(tqdm(list(candidates), desc="rank", unit="img", disable=not progress)):
            name = str(cand) if isinstance(cand, (str, Path)) else f"array {i}"
            if isinstance(cand, (str, Path)) and isinstance(query, (str, Path)) \
                    and Path(cand).resolve() == Path(query).resolve():
                continue
            try:
                r = self._match(query, cand, self.pipeline.match_for_ranking)
            except PipelineError as exc:
                ranking.append({"candidate": name, "num_inliers": 0, "verified": False, "num_matches": 0,
                                "reason": str(exc), "error": True, "method": None, "cascade_path": None})
                continue
            ranking.append({"candidate": name, "num_inliers": r.num_inliers, "verified": r.verified,
                            "num_matches": len(r.mkpts0), "reason": r.reason, "error": False,
                            "method": r.method, "cascade_path": r.cascade_path})
        return Ranking(sorted(ranking, key=lambda x: (x["error"], -x["num_inliers"], -x["num_matches"])))

    # ------------------------------------------------------------------ output
    def visualize_matches(self, image0, image1, result: MatchResult | None = None, output: str | Path | None = None,
                          max_lines: int = 250):
        """Side-by-side picture of the matches (``visualization.plot_matches``): inliers coloured
        by confidence, outliers red, the counts drawn of the total in the title. Returns the
        matplotlib figure (a ``picture.Picture``: a notebook shows it, pyplot imported or not);
        with ``output`` also writes a PNG."""
        result = result if result is not None else self.match_images(image0, image1)
        l0, _ = self.features(image0)
        l1, _ = self.features(image1)
        return visualization.plot_matches(l0.image, l1.image, result, (l0.name, l1.name), output, max_lines)

    write_geo = staticmethod(geo.write_matches)


def band_indices(path: Path | None, bands) -> tuple[int, ...] | None:
    """``bands`` as 1-based indices of the raster at ``path``: indices as they are; names (``B04``,
    or STAC common names such as ``red``) by the file's band descriptions. Without ``bands``, a
    raster whose descriptions name red, green and blue (B04, B03, B02) uses those, as
    ``coregister.py`` does; others are used as they are (one band, an 8-bit RGB picture)."""
    from s2coreg.io.products import canonical_band_name

    if bands is not None and all(isinstance(b, (int, np.integer)) or str(b).isdigit() for b in bands):
        return tuple(int(b) for b in bands)
    described = band_descriptions(path) if path is not None else []
    names = [canonical_band_name(d) for d in described]
    if bands is None:       # a raster describing red, green and blue: those
        rgb = [canonical_band_name(b) for b in config.CoregisterConfig.bands]
        return tuple(names.index(b) + 1 for b in rgb) if set(rgb) <= set(names) else None
    if not described:
        raise PipelineError(f"{path or 'array'}: bands by name ({', '.join(map(str, bands))}) need a raster whose "
                            "bands are described; give 1-based indices instead (e.g. 3,2,1)")
    wanted = [canonical_band_name(b) for b in bands]
    missing = [b for b in wanted if b not in names]
    if missing:
        raise PipelineError(f"{path}: no band named {', '.join(missing)} (its bands: {', '.join(described)}); "
                            "fix bands= (names or 1-based indices)")
    return tuple(names.index(b) + 1 for b in wanted)


def band_descriptions(path: Path) -> list[str]:
    """A raster's band descriptions (``?`` where a band has none); [] for a picture (PNG, JPEG)."""
    if path.suffix.lower() not in (".tif", ".tiff", ".jp2"):
        return []
    import rasterio

    with rasterio.open(path) as src:
        return [d or "?" for d in src.descriptions]


def _pixels(image) -> int:
    """Pixel count of a path (from its header) or an array; 0 when unknown."""
    if isinstance(image, (str, Path)):
        try:
            w, h = image_dimensions(image)
        except PipelineError:
            return 0
        return w * h
    shape = np.shape(image)
    return int(shape[0] * shape[1]) if len(shape) >= 2 else 0


def summary(result: MatchResult, seconds: float) -> dict:
    out = {"images": list(result["names"]), "method": result["method"], "cascade_path": result["cascade_path"],
           "keypoints": [len(result["keypoints0"]),
           len(result["keypoints1"])], "matches": len(result["mkpts0"]), "inliers": result["num_inliers"],
           "verified": result["verified"],
           "homography": None if result["homography"] is None else np.round(result["homography"], 6).tolist(),
           "crs": result.get("crs"), "shift_m": result.get("shift_m"), "reason": result.get("reason"),
           "seconds": round(seconds, 2)}
    return out


def sample_pair() -> tuple[Path, Path]:
    """The shipped cross-season pair, preprocessed on first use (true colour, georeferenced)."""
    from s2coreg.preprocess import preprocess

    out = config.PREPROCESSED_DIR
    pair = [out / "pisa_20150704" / "overview.jpg", out / "pisa_20180211" / "overview.jpg"]
    if not all(p.exists() for p in pair):
        if not (config.SAMPLE_DIR / "pisa").is_dir():          # installed: the sample is the checkout's
            raise PipelineError(f"{config.SAMPLE_DIR / 'pisa'}: no shipped sample here (it is in a checkout of the "
                                "repository, data/sample/); give two images: s2coreg-match IMAGE0 IMAGE1")
        done = preprocess(config.SAMPLE_DIR / "pisa", out)
        if done.errors:
            raise PipelineError(f"{config.SAMPLE_DIR / 'pisa'}: preprocessing the sample failed ({done.errors[0][1]})")
    return pair[0], pair[1]


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("images", nargs="*", type=Path, help="two images to match (default: the shipped sample pair)")
    parser.add_argument("--query", type=Path, help="rank --gallery by verified matches with this image")
    parser.add_argument("--gallery", type=Path, help="folder of candidate images for --query")
    parser.add_argument("--output", type=Path, default=config.OUTPUT_DIR,
                        help="folder for matches.png, matches.json, .geojson, .csv (or ranking.json)")
    parser.add_argument("--model-path", type=Path, default=config.CHECKPOINT_DIR,
                        help="folder of the checkpoints, or a SuperPoint file (its matcher looked for beside it)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--matcher", default=MatchingConfig.matcher,
                      help=f"{', '.join(matcher_choices())}, or a matcher of your own as {OWN_MATCHER} (its module "
                           "registers it). sift-first: SIFT + the correlation stage first, the learned pipeline where "
                           "that does not verify (chosen on validation, the best at 1 and 5 px: docs/matching.md); "
                           "auto: the learned pipeline alone (SuperGlue where its checkpoint is there); fast: see "
                           "--fast. A ranking (--query) scores every candidate with a cascade's learned path")
    mode.add_argument("--fast", action="store_true",
                      help="the fast mode (--matcher fast): mutual nearest neighbours first, SuperGlue on the "
                           "same features where they give few inliers; at or below SIFT's time a pair on 256² "
                           "images, about 1.3x on 512² ones (docs/benchmarks.md)")
    cli.add_runtime(parser)
    parser.add_argument("--max-keypoints", type=int, default=None, help="default: the checkpoint's (1024)")
    parser.add_argument("--resize", type=int, default=MatchingConfig.resize,
                        help="longer side the network sees; 0 = none")
    parser.add_argument("--bands", default=None, help="multi-band inputs: the bands to use, by name (B04,B03,B02 or red,green,blue, from the "
                             "files' band descriptions) or 1-based index as GDAL counts them (3,2,1)")
    args = parser.parse_args(argv)
    start = time.time()
    try:
        set_threads(args.threads or None)
        matcher = ImageMatcher(args.model_path, args.device, args.max_keypoints, resize=args.resize, bands=args.bands,
                               matcher="fast" if args.fast else args.matcher)
        if args.query or args.gallery:
            if not (args.query and args.gallery):
                raise PipelineError("--query and --gallery go together")
            if not args.gallery.is_dir():
                raise PipelineError(f"{args.gallery}: no such folder")
            ranking = matcher.rank(args.query, args.gallery)
            args.output.mkdir(parents=True, exist_ok=True)
            # one path scored every candidate (a cascade's learned one): "method" names it
            write_json(args.output / "ranking.json", {"query": str(args.query), "method": matcher.ranking_method,
                                                      "matcher": matcher.config.matcher, "ranking": ranking})
            for i, r in enumerate(ranking, 1):
                note = f"  error: {r['reason']}" if r["error"] else ("" if r["verified"] else "  (not verified)")
                print(f"{i:3d}. {r['num_inliers']:5d} inliers  {r['candidate']}{note}")
            print(f"ranking ({matcher.ranking_method}, for every candidate) → {args.output / 'ranking.json'}")
            return 0
        if len(args.images) not in (0, 2):
            raise PipelineError("give two images, or none for the shipped sample pair")
        a, b = args.images if args.images else sample_pair()
        result = matcher.match_images(a, b)
        png = args.output / "matches.png"
        matcher.visualize_matches(a, b, result, output=png)
        written = matcher.write_geo(result, args.output)
        info = summary(result, time.time() - start)
        write_json(args.output / "matches.json", info)
    except PipelineError as exc:
        return cli.fail(exc)
    shift = info["shift_m"]
    print(f"{info['matches']} matches, {info['inliers']} inliers ({info['method']}) in {info['seconds']} s"
          + (f"; shift between the dates (median vector): dx {shift['dx']:+.1f} m east, dy {shift['dy']:+.1f} m "
             f"north; one match scatters {shift['r68']:.1f} m (68 %)" if shift else "")
          + (f"; {info['reason']}" if info["reason"] else ""))
    print(f"→ {png}, {args.output / 'matches.json'}" + "".join(f", {p}" for p in written))
    return 0
