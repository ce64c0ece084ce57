"""Match Sentinel-2 images from a notebook or the command line: ``ImageMatcher``.

    from inference import ImageMatcher
    matcher = ImageMatcher()                                   # shipped checkpoints, device auto
    result = matcher.match_images("a.jpeg", "b.jpeg")          # paths or arrays (H×W or H×W×C)
    matcher.visualize_matches("a.jpeg", "b.jpeg", result, output="matches.png")

    python inference.py                       # the shipped sample pair → data/output/matches.png
    python inference.py A B [--output DIR]    # any two images
    python inference.py --query Q --gallery DIR   # rank a folder by verified matches

All coordinates are ``(x, y)`` in each input image's own pixel frame, pixel centres at
integer coordinates, whatever size the network saw. With georeferenced inputs (GeoTIFF,
JP2 or ``data_preprocess.py`` outputs with their sidecar ``.json``) the matches are also
given in map coordinates, with the shift between the two dates in metres.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

import config
from SuperPoint import SuperPoint, empty_features, refine_feature_matches
from utils import (IMAGE_SUFFIXES, RASTER_SUFFIXES, PipelineError, atomic_path, estimate_homography, is_verified,
                   list_images, load_image, mutual_nearest_neighbours, normalize_for_network, percentile_stretch,
                   to_gray, write_json)

DEFAULT_RESIZE = 1024          # longer side the network sees, px
MIN_TEXTURE = 1e-3             # std of a normalised image below which it counts as blank


class MatchResult(dict):
    """The result of ``match_images``: a dict that also reads like an object (``r.mkpts0``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


@dataclass
class Loaded:
    """An input image ready for the network, with what is needed to map back."""

    name: str
    image: np.ndarray                 # original array (for display)
    net: np.ndarray                   # (C, h, w) float 0..1 at network size
    valid: np.ndarray | None          # (h, w) bool at network size, None = all valid
    scale: float                      # network pixels per input pixel
    size: tuple[int, int]             # input (width, height)
    transform: object | None = None   # affine of the input's pixel grid (map units)
    crs: object | None = None


# ----------------------------------------------------------------------------- loading
def read_georeference(path: Path):
    """(transform, crs) of a raster file or of a ``data_preprocess.py`` sidecar; (None, None)."""
    from rasterio.transform import Affine

    if path.suffix.lower() in RASTER_SUFFIXES:
        import rasterio

        with rasterio.open(path) as src:
            if src.crs is not None and not src.transform.is_identity:
                return src.transform, src.crs
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        meta = json.loads(sidecar.read_text())
        if meta.get("crs") and meta.get("transform"):
            from rasterio.crs import CRS

            return Affine(*meta["transform"][:6]), CRS.from_user_input(meta["crs"])
    return None, None


def pixel_to_map(points: np.ndarray, transform) -> np.ndarray:
    """Pixel centres (x, y) → map coordinates through an affine ``transform``."""
    p = np.asarray(points, np.float64).reshape(-1, 2) + 0.5
    a, b, c, d, e, f = transform[:6]
    return np.stack([a * p[:, 0] + b * p[:, 1] + c, d * p[:, 0] + e * p[:, 1] + f], axis=-1)


def to_metres(xy: np.ndarray, crs) -> tuple[np.ndarray, object]:
    """Map coordinates → a metric CRS (the same one if already projected, else the local UTM zone)."""
    from rasterio.crs import CRS
    from rasterio.warp import transform as warp

    if crs.is_projected:
        return xy, crs
    lon, lat = warp(crs, "EPSG:4326", xy[:, 0], xy[:, 1])
    zone = int((np.median(lon) + 180) // 6) + 1
    utm = CRS.from_epsg((32600 if np.median(lat) >= 0 else 32700) + zone)
    x, y = warp("EPSG:4326", utm, lon, lat)
    return np.stack([x, y], -1), utm


# ----------------------------------------------------------------------------- matcher
class ImageMatcher:
    """SuperPoint keypoints matched by SuperGlue (mutual nearest neighbours if no SuperGlue
    checkpoint is present), verified by a USAC_MAGSAC homography.

    Args:
        model_path: folder with ``superpoint*.pt`` (and ``superglue*.pt``), or a SuperPoint file.
        device: ``"cpu"``, ``"cuda"``; default ``config.DEVICE``.
        max_keypoints: keypoints per image.
        match_threshold: SuperGlue matching score threshold.
        resize: longer side the network sees; larger inputs are shrunk (coordinates are still
            returned in each input's own frame). 0 = never resize.
        bands: for multi-band inputs, the 0-based channel indices to use (1, 3 or 4 of them,
            matching the model's input channels; grey models average them).
        ransac_threshold: px, in image 1's own frame.
        refine: move each match's point in image 1 to where image 0's keypoint fits best,
            with SuperPoint's fine head (sub-pixel; only if the checkpoint has one).
        min_inliers: fewer RANSAC inliers leave the pair unverified: no homography, no shift,
            ``verified`` False and a ``reason`` (snow, cloud, water or no overlap make a few
            chance agreements, not a transform).
    """

    def __init__(self, model_path: str | Path = config.CHECKPOINT_DIR, device: str | None = None,
                 max_keypoints: int = config.SuperPointConfig.max_keypoints,
                 match_threshold: float = config.SuperGlueConfig.match_threshold, resize: int = DEFAULT_RESIZE,
                 bands: tuple[int, ...] | None = None, ransac_threshold: float = config.EvalConfig.ransac_threshold,
                 refine: bool = True, min_inliers: int = config.EvalConfig.min_inliers):
        self.device = device or config.DEVICE
        model_path = Path(model_path)
        self.superpoint = SuperPoint.from_checkpoint(model_path, self.device)
        self.superglue = None
        glue = sorted(model_path.glob("superglue*.pt")) if model_path.is_dir() else []
        if glue:
            from SuperGlue_architecture import SuperGlue

            self.superglue = SuperGlue.from_checkpoint(glue[0], self.device)
            self.superglue.config = config.replace(self.superglue.config, match_threshold=match_threshold)
        self.max_keypoints, self.resize, self.bands = max_keypoints, resize, bands
        self.ransac_threshold, self.min_inliers = ransac_threshold, min_inliers
        self.refine = refine and self.superpoint.config.fine_dim > 0
        self._cache: dict[str, tuple[Loaded, dict]] = {}

    @property
    def method(self) -> str:
        name = "superpoint+superglue" if self.superglue is not None else "superpoint+mnn"
        return name + ("+refine" if self.refine else "")

    # ------------------------------------------------------------------ inputs
    def load(self, image, name: str | None = None) -> Loaded:
        """A path or an array → network input, with the scale and georeference to map back."""
        transform = crs = valid = None
        if isinstance(image, (str, Path)):
            path = Path(image)
            if path.suffix.lower() not in IMAGE_SUFFIXES and path.exists():
                raise PipelineError(f"{path}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
            array = load_image(path)
            name = name or "/".join(path.parts[-2:])
            transform, crs = read_georeference(path)
            mask = path.with_name(path.stem + "_nodata.png")
            if mask.exists():
                valid = load_image(mask) == 0
        else:
            array = np.asarray(image)
            name = name or "array"
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3):
            raise PipelineError(f"{name}: expected an (H, W) or (H, W, C) image, got shape {array.shape}")
        h, w = array.shape[:2]
        cell = self.superpoint.config.cell
        if min(h, w) < cell:
            raise PipelineError(f"{name}: {w}×{h} px is smaller than one {cell}-px network cell; use a larger image")
        channels = self.superpoint.config.in_channels
        if array.ndim == 3:
            if self.bands is not None:
                bad = [b for b in self.bands if not 0 <= b < array.shape[2]]
                if bad:
                    raise PipelineError(f"{name}: bands {bad} out of range for an image with {array.shape[2]} bands")
                array = array[..., list(self.bands)]
            elif not (array.shape[2] == 3 and array.dtype == np.uint8):
                # an 8-bit RGB picture is unambiguous; 16-bit or multi-band rasters are not
                raise PipelineError(f"{name}: {array.shape[2]}-band {array.dtype} image; choose the bands to use "
                                    "with ImageMatcher(bands=(r, g, b)) or --bands 0,1,2")
        net = normalize_for_network(array, channels)
        scale = 1.0
        if self.resize and max(h, w) > self.resize:
            scale = self.resize / max(h, w)
            nh, nw = max(cell, round(h * scale)), max(cell, round(w * scale))
            net = np.stack([cv2.resize(c, (nw, nh), interpolation=cv2.INTER_AREA) for c in net])
            if valid is not None:
                valid = cv2.resize(valid.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) > 0
            scale = nw / w
        return Loaded(name, array, net.astype(np.float32), valid, scale, (w, h), transform, crs)

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
        """Load and extract an image (cached by file and modification time, or array content).

        Features hold ``keypoints`` in the network frame (for matching) and ``keypoints_image``
        in the input's own frame; ``reason`` says why they are empty, if they are.
        """
        key = self._key(image)
        if key is not None and key in self._cache:
            return self._cache[key]
        loaded = self.load(image, name)
        c, h, w = loaded.net.shape
        feats = {**empty_features(self.superpoint.config, w, h), "reason": None}
        if loaded.valid is not None and not loaded.valid.any():
            feats["reason"] = f"{loaded.name}: no valid pixel (all nodata)"
        elif float(loaded.net.std()) < MIN_TEXTURE:
            feats["reason"] = f"{loaded.name}: blank or uniform image (cloud-covered?), nothing to match"
        else:
            x = torch.from_numpy(loaded.net)[None].to(self.device)
            v = None if loaded.valid is None else torch.from_numpy(loaded.valid)[None].to(self.device)
            with torch.no_grad():
                f = self.superpoint.extract(x, v, self.max_keypoints)[0]
            feats.update({key: value.cpu().numpy().astype(np.float32) for key, value in f.items()})
            if len(feats["keypoints"]) == 0:
                feats["reason"] = f"{loaded.name}: no keypoint found (blank or cloud-covered?)"
        feats["keypoints_image"] = ((feats["keypoints"] + 0.5) / loaded.scale - 0.5).astype(np.float32)
        if key is not None:
            self._cache[key] = (loaded, feats)
        return loaded, feats

    # ------------------------------------------------------------------ matching
    def match_images(self, image0, image1) -> MatchResult:
        """Match two images (paths or arrays, any sizes). See the module docstring for the fields."""
        l0, f0 = self.features(image0)
        l1, f1 = self.features(image1)
        n0, n1 = len(f0["keypoints"]), len(f1["keypoints"])
        matches0 = np.full(n0, -1, np.int64)
        mscores0 = np.zeros(n0, np.float32)
        if n0 and n1:
            if self.superglue is not None:
                from SuperGlue_architecture import match_features

                out = match_features(self.superglue, f0, f1)
                matches0, mscores0 = out["matches0"], out["matching_scores0"]
            else:
                matches0 = mutual_nearest_neighbours(f0["descriptors"], f1["descriptors"])
                ok = matches0 > -1
                mscores0[ok] = np.einsum("nd,nd->n", f0["descriptors"][ok], f1["descriptors"][matches0[ok]])
        valid = matches0 > -1
        k0, k1 = f0["keypoints_image"], f1["keypoints_image"]
        mkpts0, mkpts1 = k0[valid], k1[matches0[valid]]
        if self.refine and valid.any():
            refined = refine_feature_matches(f0, f1, matches0, self.superpoint.config.fine_temperature)
            mkpts1 = ((refined[matches0[valid]] + 0.5) / l1.scale - 0.5).astype(np.float32)
        H, inliers = estimate_homography(mkpts0, mkpts1, self.ransac_threshold)
        verified = is_verified(H, inliers, self.min_inliers)
        reason = f0["reason"] or f1["reason"] or (None if valid.any() else "no match found")
        if not verified:
            H = None
            reason = reason or (f"{int(inliers.sum())} RANSAC inliers < min_inliers={self.min_inliers}: no reliable "
                                "geometric match (snow, cloud, water or no overlap?)")
        result = MatchResult(
            keypoints0=k0, keypoints1=k1, scores0=f0["scores"], scores1=f1["scores"],
            matches0=matches0, matching_scores0=mscores0, mkpts0=mkpts0, mkpts1=mkpts1, mconf=mscores0[valid],
            homography=H, inliers=inliers, num_inliers=int(inliers.sum()), verified=verified,
            image_size0=l0.size, image_size1=l1.size, method=self.method, reason=reason, names=(l0.name, l1.name))
        result.update(self.georeference(l0, l1, mkpts0, mkpts1, inliers if verified else np.zeros_like(inliers)))
        return result

    @staticmethod
    def georeference(l0: Loaded, l1: Loaded, mkpts0, mkpts1, inliers) -> dict:
        """Matched points in map coordinates and the shift between the dates, when both are georeferenced."""
        if l0.transform is None or l1.transform is None:
            return {"crs": None}
        from rasterio.warp import transform as warp

        map0 = pixel_to_map(mkpts0, l0.transform)
        map1 = pixel_to_map(mkpts1, l1.transform)
        if len(map1) and l1.crs != l0.crs:
            x, y = warp(l1.crs, l0.crs, map1[:, 0], map1[:, 1])
            map1 = np.stack([x, y], -1)
        out = {"crs": l0.crs.to_string(), "map_points0": map0, "map_points1": map1, "shift_m": None}
        if inliers.any():
            m0, metric = to_metres(map0[inliers], l0.crs)
            m1, _ = to_metres(map1[inliers], l0.crs) if not l0.crs.is_projected else (map1[inliers], metric)
            d = m1 - m0
            dist = np.linalg.norm(d, axis=1)
            med = np.median(d, axis=0)
            out["shift_m"] = {"dx_median": float(med[0]), "dy_median": float(med[1]),
                              "distance_median": float(np.median(dist)),
                              "distance_mad": float(np.median(np.abs(dist - np.median(dist)))),
                              "distance_p90": float(np.percentile(dist, 90)), "points": int(inliers.sum()),
                              "metric_crs": metric.to_string()}
        return out

    def rank(self, query, candidates, progress: bool = True) -> list[dict]:
        """Rank ``candidates`` (paths, arrays, or a folder) by geometrically verified matches
        (RANSAC inliers) with ``query``; best first. Features are cached, so a gallery is
        extracted once per matcher."""
        from tqdm import tqdm

        if isinstance(candidates, (str, Path)) and Path(candidates).is_dir():
            candidates = list_images(candidates)
        ranking = []
        for i, cand in enumerate(tqdm(list(candidates), desc="rank", unit="img", disable=not progress)):
            name = str(cand) if isinstance(cand, (str, Path)) else f"array {i}"
            if isinstance(cand, (str, Path)) and isinstance(query, (str, Path)) \
                    and Path(cand).resolve() == Path(query).resolve():
                continue
            r = self.match_images(query, cand)
            ranking.append({"candidate": name, "num_inliers": r.num_inliers, "verified": r.verified,
                            "num_matches": len(r.mkpts0), "reason": r.reason})
        return sorted(ranking, key=lambda x: (-x["num_inliers"], -x["num_matches"]))

    # ------------------------------------------------------------------ output
    def visualize_matches(self, image0, image1, result: MatchResult | None = None, output: str | Path | None = None,
                          max_lines: int = 250):
        """Side-by-side images with match lines coloured by confidence; inliers solid, outliers
        dashed red. Returns the matplotlib figure (shown inline in a notebook); saves a PNG."""
        from matplotlib import colormaps
        from matplotlib.figure import Figure

        result = result if result is not None else self.match_images(image0, image1)
        l0, _ = self.features(image0)
        l1, _ = self.features(image1)
        a, b = (self._display(l) for l in (l0, l1))
        h = max(a.shape[0], b.shape[0])
        gap = 10
        canvas = np.ones((h, a.shape[1] + gap + b.shape[1], 3), np.float32)
        canvas[: a.shape[0], : a.shape[1]] = a
        canvas[: b.shape[0], a.shape[1] + gap:] = b
        fig = Figure(figsize=(12, 12 * h / canvas.shape[1] + 0.6), dpi=100)
        ax = fig.add_axes([0, 0, 1, 0.94])
        ax.imshow(canvas)
        ax.set_axis_off()
        off = a.shape[1] + gap
        k0, k1 = result["mkpts0"], result["mkpts1"]
        inl, conf = result["inliers"], result["mconf"]
        order = np.argsort(-conf)[:max_lines]
        cmap = colormaps["viridis"]
        for i in order[::-1]:
            x = [k0[i, 0], k1[i, 0] + off]
            y = [k0[i, 1], k1[i, 1]]
            if inl[i]:
                ax.plot(x, y, "-", color=cmap(float(np.clip(conf[i], 0, 1))), lw=0.8, alpha=0.9)
            else:
                ax.plot(x, y, "--", color="red", lw=0.5, alpha=0.5)
        ax.scatter(result["keypoints0"][:, 0], result["keypoints0"][:, 1], s=1, c="yellow", alpha=0.5)
        ax.scatter(result["keypoints1"][:, 0] + off, result["keypoints1"][:, 1], s=1, c="yellow", alpha=0.5)
        title = (f"{l0.name} ↔ {l1.name}: {len(k0)} matches, {int(inl.sum())} inliers "
                 f"({result['method']}; lines: inliers coloured by confidence, red dashed outliers)")
        shift = result.get("shift_m")
        if shift:
            title += f"\nshift between dates: median {shift['distance_median']:.1f} m " \
                     f"(dx {shift['dx_median']:.1f}, dy {shift['dy_median']:.1f})"
        if result.get("reason"):
            title += f"\n{result['reason']}"
        fig.suptitle(title, fontsize=9)
        if output is not None:
            output = Path(output)
            output.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(output) as tmp:
                fig.savefig(tmp, format="png")
        return fig

    @staticmethod
    def _display(loaded: Loaded) -> np.ndarray:
        """The input as an RGB float image in its own frame (percentile-stretched)."""
        img = loaded.image
        if img.ndim == 3 and img.shape[2] >= 3:
            rgb = percentile_stretch(img[..., :3].astype(np.float32))
        else:
            g = percentile_stretch(to_gray(img))
            rgb = np.stack([g] * 3, -1)
        return rgb

    @staticmethod
    def write_geo(result: MatchResult, folder: str | Path, stem: str = "matches") -> list[Path]:
        """GeoJSON (WGS84 lon/lat, RFC 7946) and CSV of the matches of a georeferenced result."""
        if not result.get("crs"):
            return []
        from rasterio.warp import transform as warp

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        m0, m1 = result["map_points0"], result["map_points1"]
        lon0, lat0 = warp(result["crs"], "EPSG:4326", m0[:, 0], m0[:, 1]) if len(m0) else ([], [])
        lon1, lat1 = warp(result["crs"], "EPSG:4326", m1[:, 0], m1[:, 1]) if len(m1) else ([], [])
        rows = []
        for i in range(len(m0)):
            rows.append({"x0": float(result["mkpts0"][i, 0]), "y0": float(result["mkpts0"][i, 1]),
                         "x1": float(result["mkpts1"][i, 0]), "y1": float(result["mkpts1"][i, 1]),
                         "map_x0": float(m0[i, 0]), "map_y0": float(m0[i, 1]),
                         "map_x1": float(m1[i, 0]), "map_y1": float(m1[i, 1]),
                         "lon0": float(lon0[i]), "lat0": float(lat0[i]), "lon1": float(lon1[i]), "lat1": float(lat1[i]),
                         "confidence": float(result["mconf"][i]), "inlier": bool(result["inliers"][i])})
        geojson = {"type": "FeatureCollection", "source_crs": result["crs"], "shift_m": result.get("shift_m"),
                   "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [r["lon0"], r["lat0"]]},
                                 "properties": r} for r in rows]}
        paths = [folder / f"{stem}.geojson", folder / f"{stem}.csv"]
        write_json(paths[0], geojson)
        with atomic_path(paths[1]) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["x0"])
                writer.writeheader()
                writer.writerows(rows)
        return paths


def summary(result: MatchResult, seconds: float) -> dict:
    out = {"images": list(result["names"]), "method": result["method"], "keypoints": [len(result["keypoints0"]),
           len(result["keypoints1"])], "matches": len(result["mkpts0"]), "inliers": result["num_inliers"],
           "verified": result["verified"],
           "homography": None if result["homography"] is None else np.round(result["homography"], 6).tolist(),
           "crs": result.get("crs"), "shift_m": result.get("shift_m"), "reason": result.get("reason"),
           "seconds": round(seconds, 2)}
    return out


def sample_pair() -> tuple[Path, Path]:
    """The shipped cross-season pair, preprocessed on first use (true colour, georeferenced)."""
    import data_preprocess

    out = config.PREPROCESSED_DIR
    pair = [out / "pisa_20150704" / "overview.jpg", out / "pisa_20180211" / "overview.jpg"]
    if not all(p.exists() for p in pair):
        code = data_preprocess.main(["--input", str(config.SAMPLE_DIR / "pisa"), "--output", str(out)])
        if code != 0:
            raise PipelineError(f"{config.SAMPLE_DIR / 'pisa'}: preprocessing the sample failed; see above")
    return pair[0], pair[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path, help="two images to match (default: the shipped sample pair)")
    parser.add_argument("--query", type=Path, help="rank --gallery by verified matches with this image")
    parser.add_argument("--gallery", type=Path, help="folder of candidate images for --query")
    parser.add_argument("--output", type=Path, default=config.OUTPUT_DIR)
    parser.add_argument("--model-path", type=Path, default=config.CHECKPOINT_DIR)
    parser.add_argument("--device", default=config.DEVICE)
    parser.add_argument("--max-keypoints", type=int, default=config.SuperPointConfig.max_keypoints)
    parser.add_argument("--resize", type=int, default=DEFAULT_RESIZE, help="longer side the network sees; 0 = none")
    parser.add_argument("--bands", default=None, help="multi-band inputs: 0-based channels, e.g. 0,1,2")
    args = parser.parse_args(argv)
    start = time.time()
    try:
        bands = tuple(int(b) for b in args.bands.split(",")) if args.bands else None
        matcher = ImageMatcher(args.model_path, args.device, args.max_keypoints, resize=args.resize, bands=bands)
        if args.query or args.gallery:
            if not (args.query and args.gallery):
                raise PipelineError("--query and --gallery go together")
            if not args.gallery.is_dir():
                raise PipelineError(f"{args.gallery}: no such folder")
            ranking = matcher.rank(args.query, args.gallery)
            args.output.mkdir(parents=True, exist_ok=True)
            write_json(args.output / "ranking.json", {"query": str(args.query), "ranking": ranking})
            for i, r in enumerate(ranking, 1):
                print(f"{i:3d}. {r['num_inliers']:5d} inliers  {r['candidate']}" + ("" if r["verified"] else "  (not verified)"))
            print(f"ranking → {args.output / 'ranking.json'}")
            return 0
        if len(args.images) not in (0, 2):
            raise PipelineError("give two images, or none for the shipped sample pair")
        a, b = args.images if args.images else sample_pair()
        result = matcher.match_images(a, b)
        png = args.output / "matches.png"
        matcher.visualize_matches(a, b, result, output=png)
        geo = matcher.write_geo(result, args.output)
        info = summary(result, time.time() - start)
        write_json(args.output / "matches.json", info)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{info['matches']} matches, {info['inliers']} inliers ({info['method']}) in {info['seconds']} s"
          + (f"; shift between dates: median {info['shift_m']['distance_median']:.1f} m" if info["shift_m"] else "")
          + (f"; {info['reason']}" if info["reason"] else ""))
    print(f"→ {png}, {args.output / 'matches.json'}" + "".join(f", {p}" for p in geo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
