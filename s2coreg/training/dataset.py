"""Pair sources for training and evaluation: real cross-date Sentinel-2 pairs plus warps.

Every source yields *scenes*: co-registered images of one place on several dates, so the
ground truth between any two dates is the identity. A training or evaluation pair takes
a crop of one date, warps another date by a random homography ``H`` (image-0 pixels →
image-1 pixels), and records ``H`` with both valid masks.

The three splits, **by place** (every date of a place in one split, ``split_of``):

    source (folder)                     train                     val (checkpoint selection)  test (README only)
    OSCD (``oscd/<city>/``)             9 cities                  ``OSCD_VAL_CITIES`` (5)     —
    OMBRIA test split (``ombria/``)     chips not every 5th       every 5th chip              —
    OMBRIA training split (``ombria_train/``)  all 624 chips      —                           —
    T36UYA (``ukraine_T36UYA/``)        north half, south-west    bottom-right quarter        —
    OMBRIA 2021 (``ombria2021/``)       —                         —                           all chips
    Lake Bracciano (``sen2dwater/``)    —                         —                           all dates
    SEN12MS-CR-TS 146 (``sen12mscrts_roi146/``)  —                —                           all dates
    ``data_preprocess.py`` outputs      all                       —                           —

Train and val are what the shipped checkpoints were trained and selected on; the test places
were never read by any training or selection (``test_pairs``; ``evaluate.py --split test``).
Georeferenced places of different splits do not overlap (a test checks their footprints); the
OMBRIA chips of ``ombria/`` and ``ombria_train/`` that show the same ground (found by template
matching) are all in train, and no OMBRIA 2021 chip shows ground of either.
"""
from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

import s2coreg.config as config
from s2coreg.matching.geometry import sample_homography, translation, warp_points
from s2coreg.io.imaging import load_image, percentile_stretch, to_gray
from s2coreg.utils import PipelineError

# Validation places. OSCD: cities whose two dates span seasons (pisa: July vs February,
# beihai: December vs March, ...) and one on another pixel grid (saclay_e).
OSCD_VAL_CITIES = ("pisa", "beihai", "bercy", "nantes", "saclay_e")
OMBRIA_VAL_EVERY = 5           # every 5th chip (by id) is a validation place
T36UYA_VAL_WINDOW = (512, 512, 1024, 1024)   # x0, y0, x1, y1 of the held-out quarter
# Hand-checked dates of T36UYA: snow cover, and (nearly) cloud-free summers.
T36UYA_SNOW = ("20160212", "20161205")
T36UYA_CLEAR = ("20160621", "20160830", "20190427", "20190606", "20190611", "20190815",
                "20190825", "20190830", "20190904", "20190909")


@dataclass
class Scene:
    """Co-registered grey images of one place: ``images[i]`` float32 (H, W), valid bool (H, W)."""

    name: str
    source: str
    images: list[np.ndarray]
    valid: list[np.ndarray]
    dates: list[str] = field(default_factory=list)
    bounds: tuple[float, float, float, float] | None = None   # lon/lat footprint, when georeferenced


# ----------------------------------------------------------------------------- sources
def _oscd_scene(city_dir: Path) -> Scene:
    import rasterio
    from rasterio.warp import Resampling, reproject

    def read(folder):
        bands, profile = [], None
        for band in ("B04", "B03", "B02"):
            with rasterio.open(folder / f"{band}.tif") as src:
                bands.append(src.read(1).astype(np.float32))
                profile = (src.transform, src.crs, src.height, src.width)
        return np.stack(bands, -1), profile

    img1, (t1, crs1, h1, w1) = read(city_dir / "imgs_1")
    bounds = lonlat_bounds(crs1, t1, w1, h1)
    img2, (t2, crs2, _, _) = read(city_dir / "imgs_2")
    if img2.shape != img1.shape or t1 != t2:
        # other pixel grid: bring date 2 onto date 1's grid through the geotransforms
        out = np.zeros_like(img1)
        for b in range(3):
            reproject(img2[..., b], out[..., b], src_transform=t2, src_crs=crs2, dst_transform=t1,
                      dst_crs=crs1, resampling=Resampling.bilinear, src_nodata=0, dst_nodata=0)
        img2 = out
    dates = re.findall(r"\d{8}", (city_dir / "dates.txt").read_text())
    images = [to_gray(img1), to_gray(img2)]
    return Scene(f"oscd/{city_dir.name}", "oscd", images, [img1.min(-1) > 0, img2.min(-1) > 0], dates, bounds)


def lonlat_bounds(crs, transform, width: int, height: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of a raster grid."""
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    return tuple(float(v) for v in transform_bounds(crs, "EPSG:4326", *array_bounds(height, width, transform)))


def _ombria_scenes(root: Path, split: str) -> list[Scene]:
    """OMBRIA chips of ``root``: its test split (``ombria/``: every 5th chip val, the rest train)
    or its training split (``ombria_train/``: all train; named ``ombria_train/<chip>``)."""
    source = root.name
    scenes = []
    for before in sorted((root / "BEFORE").glob("S2_before_*.png")):
        chip = before.stem.rsplit("_", 1)[1]
        after = root / "AFTER" / f"S2_after_{chip}.png"
        chip_split = "train" if source == "ombria_train" else ("val" if int(chip) % OMBRIA_VAL_EVERY == 0 else "train")
        if not after.exists() or chip_split != split:
            continue
        images = [to_gray(load_image(p)) for p in (before, after)]
        scenes.append(Scene(f"{source}/{chip}", "ombria", images, [np.ones(im.shape, bool) for im in images],
                            ["before", "after"]))
    return scenes


def _t36uya_scenes(root: Path, split: str) -> list[Scene]:
    files = sorted(root.glob("*_TCI.jpg"))
    dates = [re.search(r"_(\d{8})T", f.name).group(1) for f in files]
    images = [to_gray(load_image(f)) for f in files]
    x0, y0, x1, y1 = T36UYA_VAL_WINDOW
    if split == "val":
        windows = {"val": (slice(y0, y1), slice(x0, x1))}
    else:  # the rest of the tile as two rectangles that never overlap the held-out quarter
        windows = {"north": (slice(0, y0), slice(None)), "southwest": (slice(y0, None), slice(0, x0))}
    scenes = []
    for name, win in windows.items():
        crops = [im[win] for im in images]
        # nodata outside the swath is black; JPEG ringing keeps it a few levels above 0
        valid = [cv2.erode((c > 4).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for c in crops]
        scenes.append(Scene(f"t36uya/{name}", "t36uya", crops, valid, dates))
    return scenes


def _preprocessed_scenes(root: Path) -> list[Scene]:
    """Outputs of data_preprocess.py grouped by tile id (the same grid on every date)."""
    groups: dict[str, list[tuple[str, Path]]] = {}
    for sidecar in sorted(root.rglob("*.json")):
        meta = json.loads(sidecar.read_text())
        image = next((p for p in sidecar.parent.glob(sidecar.stem + ".*") if p.suffix != ".json"), None)
        if image is None or "tile_id" not in meta:
            continue
        key = f"{meta['tile_id']}/{meta.get('output', 'overview')}/{meta.get('size')}"
        groups.setdefault(key, []).append((meta.get("sensing_date", ""), image))
    scenes = []
    for key, items in groups.items():
        if len(items) < 2:
            continue
        items.sort()
        images = [to_gray(load_image(p)) for _, p in items]
        if len({im.shape for im in images}) != 1:
            continue
        valid = []
        for _, p in items:
            mask = p.with_name(p.stem + "_nodata.png")
            valid.append(load_image(mask) == 0 if mask.exists() else np.ones(images[0].shape, bool))
        scenes.append(Scene(f"preprocessed/{key}", "preprocessed", images, valid, [d for d, _ in items]))
    return scenes


# The test places: sources no training run or checkpoint selection here has used. Their pairs are
# for reporting only (``evaluate.py --split test``); nothing is ever selected on them.
BRACCIANO_SUMMER = ("06", "07", "08")        # months
# SEN12MS-CR-TS region 146 (2018), dates checked by eye and by B02 (clouds are bright in blue):
SEN12_CLEAR_COLD = ("20180210", "20180322", "20181207")
SEN12_CLEAR_SUMMER = ("20180610", "20180720", "20180809", "20180903")
SEN12_PARTLY_CLOUDY = ("20180106", "20180307", "20180705", "20180918")   # 7-41 % bright cloud
SEN12_REFERENCE = "20180730"


def _series_scene(root: Path, name: str) -> Scene | None:
    """A time series of multi-band ``YYYYMMDD.tif`` files of one place (band descriptions name the
    bands): the dates on the first file's grid, grey from B04, B03, B02."""
    import rasterio

    files, grid = sorted(root.glob("*.tif")), None
    images, valid, dates = [], [], []
    for f in files:
        with rasterio.open(f) as src:
            if grid is None:
                grid = (src.crs, src.transform, src.width, src.height)
            if (src.crs, src.transform, src.width, src.height) != grid:
                continue     # Bracciano: the 5 dates on the neighbouring UTM zone's grid
            idx = [src.descriptions.index(b) + 1 for b in ("B04", "B03", "B02")]
            rgb = np.moveaxis(src.read(idx).astype(np.float32), 0, -1)
        images.append(to_gray(rgb))
        valid.append(rgb.min(-1) > 0)
        dates.append(f.stem)
    return Scene(name, name, images, valid, dates, lonlat_bounds(*grid)) if images else None


def _ombria2021_scenes(root: Path) -> list[Scene]:
    scenes = []
    for before in sorted(root.glob("*/BEFORE/imbefore_*.png")):
        n = before.stem.rsplit("_", 1)[1]
        after = before.parent.parent / "AFTER" / f"imafter_{n}.png"
        if after.exists():
            images = [to_gray(load_image(p)) for p in (before, after)]
            scenes.append(Scene(f"ombria2021/{before.parent.parent.name.lower()}/{n}", "ombria2021", images,
                                [np.ones(im.shape, bool) for im in images], ["before", "after"]))
    return scenes


def test_pairs(root: str | Path) -> list["EvalPair"]:
    """The test split's cross-date pairs: OMBRIA's 2021 flood event (France; chips that are not
    nearly all water), Lake Bracciano 2016–2022 (summer against winter of the same years,
    summer 2016 against summers five and six years later), and the SEN12MS-CR-TS series of 2018
    (clear winter against clear summer dates; partly cloudy dates against a clear one)."""
    root = Path(root)
    pairs = []
    for scene in _ombria2021_scenes(root / "ombria2021"):
        if min(im.std() for im in scene.images) > 5:
            pairs.append(EvalPair(scene.name, "ombria2021-flood", scene, 0, 1))
    scene = _series_scene(root / "sen2dwater" / "bracciano", "bracciano")
    if scene is not None:
        idx = {d: k for k, d in enumerate(scene.dates)}
        summers = [d for d in scene.dates if d[4:6] in BRACCIANO_SUMMER]
        winters = [d for d in scene.dates if d[4:6] in ("12", "01", "02")]
        for s in (d for d in summers if d[:4] in ("2016", "2017", "2018")):
            for w in (d for d in winters if abs(int(d[:4]) - int(s[:4])) <= 1):
                pairs.append(EvalPair(f"bracciano/{s}-{w}", "bracciano-summer-winter", scene, idx[s], idx[w]))
        for s in (d for d in summers if d[:4] == "2016"):
            for later in (d for d in summers if d[:4] in ("2021", "2022")):
                pairs.append(EvalPair(f"bracciano/{s}-{later}", "bracciano-across-years", scene, idx[s], idx[later]))
    scene = _series_scene(root / "sen12mscrts_roi146", "sen12ms")
    if scene is not None:
        idx = {d: k for k, d in enumerate(scene.dates)}
        summers = [d for d in SEN12_CLEAR_SUMMER if d in idx]
        for a in (d for d in SEN12_CLEAR_COLD if d in idx):
            for b in summers:
                pairs.append(EvalPair(f"sen12ms/{a}-{b}", "sen12ms-winter-summer", scene, idx[a], idx[b]))
        for a in (d for d in SEN12_PARTLY_CLOUDY if d in idx):
            pairs.append(EvalPair(f"sen12ms/{a}-{SEN12_REFERENCE}", "sen12ms-partly-cloudy", scene, idx[a],
                                  idx[SEN12_REFERENCE]))
    if not pairs:
        raise PipelineError(f"{root}: no test pairs (expected ombria2021/, sen2dwater/bracciano/, "
                            "sen12mscrts_roi146/)")
    return pairs


def load_scenes(root: str | Path, split: str = "train", sources: tuple[str, ...] | None = None) -> list[Scene]:
    """All scenes of the ``split`` ('train' or 'val') found under ``root``.

    ``root`` may be the shared data folder (with ``oscd/``, ``ombria/``, ``ombria_train/``,
    ``ukraine_T36UYA/``) or a ``data_preprocess.py`` output folder. ``sources``: a subset of
    oscd, ombria, ombria_train, t36uya, preprocessed. Preprocessed outputs have no held-out place
    of their own and go to 'train' only.
    """
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"{root}: no such data folder; pass root= pointing at the shared data or "
                            "a data_preprocess.py / s2coreg-preprocess output")
    wanted = set(sources or ("oscd", "ombria", "ombria_train", "t36uya", "preprocessed"))
    scenes: list[Scene] = []
    if "oscd" in wanted and (root / "oscd").is_dir():
        for city in sorted(p for p in (root / "oscd").iterdir() if (p / "imgs_1").is_dir()):
            if (city.name in OSCD_VAL_CITIES) == (split == "val"):
                scenes.append(_oscd_scene(city))
    if "ombria" in wanted and (root / "ombria").is_dir():
        scenes += _ombria_scenes(root / "ombria", split)
    if "ombria_train" in wanted and (root / "ombria_train").is_dir() and split == "train":
        scenes += _ombria_scenes(root / "ombria_train", split)
    if "t36uya" in wanted and (root / "ukraine_T36UYA").is_dir():
        scenes += _t36uya_scenes(root / "ukraine_T36UYA", split)
    if "preprocessed" in wanted and split == "train":
        scenes += _preprocessed_scenes(root)
    if not scenes:
        raise PipelineError(f"{root}: no {split} scenes found (expected oscd/, ombria/, ukraine_T36UYA/ "
                            "or data_preprocess.py outputs with sidecar .json)")
    return scenes


# ----------------------------------------------------------------------------- pairs
def warp_pair(scene: Scene, i: int, j: int, x0: int, y0: int, crop: tuple[int, int], H: np.ndarray) -> dict:
    """Crop date ``i`` at (x0, y0) and view date ``j`` of the same place through ``H``.

    ``crop`` = (width, height). Image 1 is sampled from the whole of date ``j`` (not only the
    crop), so it keeps real content where the warp looks beyond the crop.
    """
    w, h = crop
    img0 = scene.images[i][y0:y0 + h, x0:x0 + w]
    valid0 = scene.valid[i][y0:y0 + h, x0:x0 + w]
    M = H @ translation(-x0, -y0)  # date-j full-image pixels → image-1 pixels
    img1 = cv2.warpPerspective(scene.images[j], M, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    valid1 = cv2.warpPerspective(scene.valid[j].astype(np.uint8), M, (w, h), flags=cv2.INTER_NEAREST,
                                 borderValue=0) > 0
    return {"image0": img0, "image1": img1, "valid0": valid0, "valid1": valid1, "H_0to1": H}


def pick_crop(rng: np.random.Generator, scene: Scene, i: int, crop: int, min_valid: float = 0.9,
              tries: int = 20) -> tuple[int, int] | None:
    """A random crop origin in date ``i`` with at least ``min_valid`` valid pixels."""
    h, w = scene.images[i].shape
    if h < crop or w < crop:
        return None
    for _ in range(tries):
        x0, y0 = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))
        if scene.valid[i][y0:y0 + crop, x0:x0 + crop].mean() >= min_valid:
            return x0, y0
    return None


def photometric(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random brightness, contrast, gamma, blur, noise, haze and cloud-like blobs.

    ``image`` in 0..1. Returns the changed image and a bool mask of pixels left visible
    (False under an opaque synthetic cloud).
    """
    h, w = image.shape
    x = image * rng.uniform(0.6, 1.4) + rng.uniform(-0.15, 0.15)
    x = np.clip(x, 0, 1) ** np.exp(rng.uniform(-0.4, 0.4))
    if rng.random() < 0.3:
        sigma = rng.uniform(0.3, 1.2)
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    visible = np.ones((h, w), bool)
    if rng.random() < 0.3:  # haze or clouds: a smooth random field blended towards white
        field = cv2.resize(rng.random((4, 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        field = np.clip((field - rng.uniform(0.4, 0.8)) * 4, 0, 1)
        x = x * (1 - field) + field * rng.uniform(0.7, 1.0)
        visible = field < 0.5
    x = x + rng.normal(0, rng.uniform(0, 0.03), x.shape)
    return np.clip(x, 0, 1).astype(np.float32), visible


# Other sensors' views of a 10 m Sentinel-2 crop: their pixel size over Sentinel-2's 10 m.
# Landsat 8/9 OLI: 30 m multispectral bands, the 15 m panchromatic band (503-676 nm).
SENSOR_VIEWS = {"landsat30": 3.0, "landsat15": 1.5}


def sensor_view(rng: np.random.Generator, image: np.ndarray, valid: np.ndarray,
                kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (a crop on Sentinel-2's 10 m grid) as another sensor would see it, back on the
    same grid, so the pair's homography and labels still hold: blurred by the coarser sensor's
    point spread (a Gaussian of FWHM one of its pixels), sampled at its pixel size (area
    average, ``SENSOR_VIEWS``), given its noise (a standard deviation of 0.2-1 % of the crop's
    1-99 % range at its pixels), quantised to 12 bits of that range (OLI's), and resampled back
    bilinearly, as a co-registration reads it onto another grid. Its spectral response differs
    too — a mild random tone curve (the pan band spans green and red; on one grey band there is
    no spectrum to re-mix, so a curve is what remains of it). ``valid`` shrinks to the coarse
    pixels that are wholly valid. Returns (image as float32 in the input's range, valid)."""
    factor = SENSOR_VIEWS[kind]
    h, w = image.shape
    x = image.astype(np.float32)
    lo, hi = np.percentile(x[valid] if valid.any() else x, (1, 99))
    span = max(float(hi - lo), 1e-6)
    u = np.clip((x - lo) / span, 0, 1)
    u = u ** np.float32(np.exp(rng.uniform(-0.15, 0.15)))                    # the spectral tone curve
    u = cv2.GaussianBlur(u, (0, 0), factor / 2.355)                          # the sensor's PSF
    small = (max(2, round(w / factor)), max(2, round(h / factor)))
    coarse = cv2.resize(u, small, interpolation=cv2.INTER_AREA)
    coarse = coarse + rng.normal(0, rng.uniform(0.002, 0.01), coarse.shape).astype(np.float32)
    coarse = np.round(np.clip(coarse, 0, 1) * 4095) / 4095                   # 12 bits
    u = cv2.resize(coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    bad = cv2.resize((~valid).astype(np.float32), small, interpolation=cv2.INTER_AREA) > 0
    ok = cv2.resize((~bad).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return (lo + u * span).astype(np.float32), valid & ok


def repeatable_corners(img0: np.ndarray, img1: np.ndarray, valid0: np.ndarray, valid1: np.ndarray,
                       H: np.ndarray, num: int, nms_radius: int = 4, block: int = 5) -> np.ndarray:
    """Pseudo-ground-truth keypoints of image 0 that are corners on *both* dates.

    The Shi-Tomasi response of image 1 is warped back into image 0's frame; the minimum of
    the two responses, within both valid masks, is non-maximum suppressed and its ``num``
    strongest peaks returned (N×2, x y, integer pixel centres). Training the detector on
    these teaches it what stays put across seasons, not every corner of one date.
    """
    h, w = img0.shape
    r0 = cv2.cornerMinEigenVal(img0.astype(np.float32), block, 3)
    r1 = cv2.cornerMinEigenVal(img1.astype(np.float32), block, 3)
    r1 = cv2.warpPerspective(r1, np.linalg.inv(H), (w, h), flags=cv2.INTER_LINEAR)
    v1 = cv2.warpPerspective(valid1.astype(np.uint8), np.linalg.inv(H), (w, h), flags=cv2.INTER_NEAREST) > 0
    r = np.minimum(r0, r1) * (valid0 & v1)
    border = 8
    r[:border], r[-border:], r[:, :border], r[:, -border:] = 0, 0, 0, 0
    peaks = (r == cv2.dilate(r, np.ones((2 * nms_radius + 1,) * 2, np.uint8))) & (r > 0.02 * max(r.max(), 1e-9))
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-r[ys, xs])[:num]
    return np.stack([xs[order], ys[order]], -1).astype(np.float32)


class TrainingPairs(torch.utils.data.Dataset):
    """Random cross-date pairs with warps, photometric changes and detector labels.

    Item ``k`` is a pure function of ``(seed, k)``, so a resumed run sees the same data.
    Each item holds ``image0/1`` (1, S, S) in 0..1, ``valid0/1``, ``H_0to1``, ``labels0/1``
    (S/cell, S/cell) detector classes (cell² = no keypoint, -1 = ignored) and
    ``points0/1`` (P, 2) with ``point_mask`` (P) for the descriptor loss.
    """

    def __init__(self, scenes: list[Scene], cfg: config.SuperPointTrainConfig, cell: int = 8,
                 seed: int = config.SEED, length: int = 10 ** 9):
        self.scenes, self.cfg, self.cell, self.seed, self.length = scenes, cfg, cell, seed, length
        # sample sources evenly, then scenes within a source in proportion to their area
        self.by_source: dict[str, list[int]] = {}
        for k, s in enumerate(scenes):
            self.by_source.setdefault(s.source, []).append(k)

    def __len__(self):
        return self.length

    def _sample_pair(self, rng):
        cfg = self.cfg
        for _ in range(50):
            source = list(self.by_source)[rng.integers(len(self.by_source))]
            idx = self.by_source[source]
            area = np.array([self.scenes[k].images[0].size for k in idx], np.float64)
            scene = self.scenes[idx[rng.choice(len(idx), p=area / area.sum())]]
            n = len(scene.images)
            i = int(rng.integers(n))
            j = i if n == 1 else int((i + rng.integers(1, n)) % n)        # another date where there is one
            origin = pick_crop(rng, scene, i, cfg.crop)
            if origin is None:
                continue
            H = sample_homography(rng, (cfg.crop, cfg.crop), cfg.difficulty)
            pair = warp_pair(scene, i, j, *origin, (cfg.crop, cfg.crop), H)
            if pair["valid1"].mean() < 0.5 or pair["image0"].std() < 1.0 or pair["image1"].std() < 1.0:
                continue
            return pair
        raise PipelineError("could not draw a valid training pair in 50 tries; check the training data")

    def pair(self, k: int) -> tuple[np.random.Generator, dict]:
        """Pair ``k``: stretched, photometrically changed images (0..1) with ``valid0/1``,
        ``visible0/1`` (not under a synthetic cloud) and ``H_0to1``; and the rng to go on with."""
        rng = np.random.default_rng([self.seed, k])
        pair = self._sample_pair(rng)
        mix = getattr(self.cfg, "sensor_mix", 0.0)
        sensor = np.random.default_rng([self.seed, k, 1])  # a stream of its own: the rest of the pair as without
        if mix > 0 and sensor.random() < mix:
            kind = sorted(SENSOR_VIEWS)[sensor.integers(len(SENSOR_VIEWS))]
            pair["image1"], pair["valid1"] = sensor_view(sensor, pair["image1"], pair["valid1"], kind)
        for i in "01":
            image = percentile_stretch(pair[f"image{i}"], valid=pair[f"valid{i}"])
            pair[f"image{i}"], pair[f"visible{i}"] = photometric(rng, image)
        return rng, pair

    def __getitem__(self, k):
        cfg, cell = self.cfg, self.cell
        rng, pair = self.pair(k)
        img0, img1, vis0, vis1 = pair["image0"], pair["image1"], pair["visible0"], pair["visible1"]
        v0, v1, H = pair["valid0"], pair["valid1"], pair["H_0to1"]
        kp0 = repeatable_corners(img0, img1, v0 & vis0, v1 & vis1, H, cfg.num_labels)
        kp1 = np.round(warp_points(kp0, H)).astype(np.float32)
        labels0 = keypoint_labels(kp0, v0, cell)
        labels1 = keypoint_labels(kp1, v1, cell)
        # descriptor loss points: the labels plus random points, kept where visible on both
        s = cfg.crop
        extra = rng.uniform(4, s - 5, size=(cfg.num_desc_points, 2)).astype(np.float32)
        pts0 = np.concatenate([kp0, extra])[: cfg.num_desc_points]
        pts1 = warp_points(pts0, H).astype(np.float32)
        inside = (pts1 >= 0).all(1) & (pts1 <= s - 1).all(1)
        xi0, yi0 = np.round(pts0).astype(int).T
        xi1, yi1 = np.clip(np.round(pts1), 0, s - 1).astype(int).T
        mask = inside & v0[yi0, xi0] & vis0[yi0, xi0] & v1[yi1, xi1] & vis1[yi1, xi1]
        return {
            "image0": torch.from_numpy(img0)[None], "image1": torch.from_numpy(img1)[None],
            "valid0": torch.from_numpy(v0), "valid1": torch.from_numpy(v1),
            "H_0to1": torch.from_numpy(H).float(),
            "labels0": torch.from_numpy(labels0), "labels1": torch.from_numpy(labels1),
            "points0": torch.from_numpy(pts0), "points1": torch.from_numpy(np.clip(pts1, 0, s - 1)),
            "point_mask": torch.from_numpy(mask),
        }


def keypoint_labels(keypoints: np.ndarray, valid: np.ndarray, cell: int) -> np.ndarray:
    """Detector targets: per cell the index of its keypoint pixel (row-major within the cell),
    ``cell²`` for none, -1 for cells that touch invalid pixels. (H/cell, W/cell) int64."""
    h, w = valid.shape
    hc, wc = h // cell, w // cell
    labels = np.full((hc, wc), cell * cell, np.int64)
    xs, ys = np.round(keypoints).astype(int).T if len(keypoints) else (np.zeros(0, int),) * 2
    ok = (xs >= 0) & (xs < wc * cell) & (ys >= 0) & (ys < hc * cell)
    # strongest first: write in reverse so the first keypoint of a cell wins
    for x, y in list(zip(xs[ok], ys[ok]))[::-1]:
        labels[y // cell, x // cell] = (y % cell) * cell + (x % cell)
    bad = valid[: hc * cell, : wc * cell].reshape(hc, cell, wc, cell).min(axis=(1, 3)) == 0
    labels[bad] = -1
    return labels


# ----------------------------------------------------------------------------- evaluation pairs
@dataclass
class EvalPair:
    """One real cross-date pair of a validation place, before cropping and warping."""

    name: str
    category: str
    scene: Scene
    i: int
    j: int


VALIDATION_SOURCES = ("oscd", "ombria", "t36uya")     # where evaluation_pairs finds validation places


def evaluation_pairs(root: str | Path, sources: tuple[str, ...] | None = None) -> list[EvalPair]:
    """The fixed list of validation cross-date pairs used by ``evaluate.py`` and training.

    T36UYA: snow dates against clear summers ("snow-summer"), and clear 2016 against clear
    2019 summers ("across-years"); OSCD validation cities (their category says whether the
    dates are in different seasons); OMBRIA validation chips before/after a flood.
    """
    pairs = []
    for scene in load_scenes(root, "val", sources):
        if scene.source == "t36uya":
            idx = {d: k for k, d in enumerate(scene.dates)}
            clear = [d for d in T36UYA_CLEAR if d in idx]
            for s in T36UYA_SNOW:
                for c in clear:
                    if s in idx:
                        pairs.append(EvalPair(f"t36uya/{s}-{c}", "t36uya-snow-summer", scene, idx[s], idx[c]))
            for a in (d for d in clear if d.startswith("2016")):
                for b in (d for d in clear if d.startswith("2019")):
                    pairs.append(EvalPair(f"t36uya/{a}-{b}", "t36uya-across-years", scene, idx[a], idx[b]))
        elif scene.source == "oscd":
            m0, m1 = (int(d[4:6]) for d in scene.dates[:2])
            gap = min(abs(m0 - m1), 12 - abs(m0 - m1))
            pairs.append(EvalPair(scene.name, "oscd-cross-season" if gap >= 3 else "oscd-same-season", scene, 0, 1))
        elif scene.source == "ombria":
            if min(im.std() for im in scene.images) > 5:  # skip chips that are nearly all water
                pairs.append(EvalPair(scene.name, "ombria-flood", scene, 0, 1))
    return pairs


def make_eval_sample(pair: EvalPair, crop: int, difficulty: str, seed: int, repeat: int = 0,
                     sensor: str | None = None) -> dict:
    """Deterministic crop (centre) and warp of one evaluation pair.

    The crop is ``min(crop, image side)``; the homography is drawn from
    ``seed, crc32(name), repeat``. ``sensor`` (a key of ``SENSOR_VIEWS``): image 1 is then that
    sensor's view of its date (``sensor_view``, drawn from the same seed), image 0 stays
    Sentinel-2's.
    """
    h, w = pair.scene.images[pair.i].shape
    c = min(crop, h, w)
    rng = np.random.default_rng([seed, zlib.crc32(pair.name.encode()), repeat])
    x0, y0 = (w - c) // 2, (h - c) // 2
    H = sample_homography(rng, (c, c), difficulty)
    sample = warp_pair(pair.scene, pair.i, pair.j, x0, y0, (c, c), H)
    if sensor is not None:
        sample["image1"], sample["valid1"] = sensor_view(rng, sample["image1"], sample["valid1"], sensor)
    sample.update(name=pair.name, category=pair.category)
    return sample
