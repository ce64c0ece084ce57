"""Shared constants and defaults for every stage of the pipeline.

One place for every knob: the scripts expose the same names as command-line flags
(``--size`` is ``PreprocessConfig.size`` and so on), and the models store the config they
were built with inside their checkpoints.

Coordinate convention used throughout the project: keypoints are ``(x, y)`` in the image's
own pixel frame, with pixel *centres* at integer coordinates (the centre of the top-left
pixel is ``(0, 0)``; its outer corner is ``(-0.5, -0.5)``).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

# torch's OpenMP threads wait for each other at the end of every parallel operation. By default
# they spin; when another process holds one of the cores, the spinning thread and the busy one
# share it and every operation waits for a time slice (measured on 2 cores: matching 3-5× slower).
# Passive waiting sleeps instead: ~1.3× slower under load, ~1.2× slower idle
# (benchmarks/thread_contention.py). OpenMP reads this once, when torch is first imported, so
# the entry scripts import config before torch; set it yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROJECT_NAME = "s2coreg"
VERSION = "0.8.0"

# ----------------------------------------------------------------------------- paths
# In a checkout (this package beside pyproject.toml and model_checkpoints/), ROOT is the
# checkout: the stages read and write its data/ as the scripts always have. Installed with pip,
# ROOT is the working directory, and the shipped checkpoints are the package's own data
# (``s2coreg.model_checkpoints``, mapped from model_checkpoints/ by pyproject.toml).
PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").is_file() and (
    PACKAGE_DIR.parent / "model_checkpoints").is_dir() else None
ROOT = CHECKOUT if CHECKOUT is not None else Path.cwd()
DATA_DIR = ROOT / "data"
PREPROCESSED_DIR = DATA_DIR / "preprocessed"
FEATURES_DIR = DATA_DIR / "features"
MATCHES_DIR = DATA_DIR / "matches"
RESULTS_DIR = DATA_DIR / "results"
OUTPUT_DIR = DATA_DIR / "output"
RUNS_DIR = DATA_DIR / "runs"          # training runs: data/runs/<name>/{last.pt,best.pt}
SAMPLE_DIR = DATA_DIR / "sample"


def _shipped_checkpoints() -> Path:
    if CHECKOUT is not None:
        return CHECKOUT / "model_checkpoints"
    from importlib.resources import files                      # installed: the package's data
    return Path(str(files("s2coreg.model_checkpoints")))


CHECKPOINT_DIR = _shipped_checkpoints()
# Where the real training / evaluation data lives on a development machine. Every script
# takes it as a flag (``--data``); this is only the default.
SHARED_DATA_DIR = ROOT.parent / "shared" / "data"

# "auto": a CUDA GPU where torch can use one, else the CPU (``checkpoints.resolve_device``); config
# itself never imports torch, so light modules (geo, the readers) load without it.
DEVICE = "auto"
SEED = 0

# ----------------------------------------------------------------------------- Sentinel-2
# Native ground sampling distance (metres) of each of the 13 MSI bands.
S2_BAND_RESOLUTION = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}
S2_BANDS = tuple(S2_BAND_RESOLUTION)
S2_NODATA_DN = 0
# Products from processing baseline 04.00 on add 1000 to every digital number (the
# metadata then carries RADIO_ADD_OFFSET / BOA_ADD_OFFSET of -1000).
S2_OFFSET_BASELINE = (4, 0)
S2_DEFAULT_QUANTIFICATION = 10000.0
# Fill a file does not declare as no-data (imaging.border_fill): a constant value connected to the
# raster's edge over at least this share of it, standing apart from the data beside it by at
# least this share of the data's 1-99 % range (saturated snow, clipped shadow: not fill)
FILL_MIN_FRACTION = 0.01
FILL_MIN_CONTRAST = 0.15
FILL_CHECK_SIZE = 512         # px, longer side of the nearest-neighbour read that looks for it


@dataclass
class PreprocessConfig:
    """Defaults of ``data_preprocess.py``."""

    bands: tuple[str, ...] = ("B04", "B03", "B02")  # true colour, R-G-B order
    size: int = 1024                 # overview side in pixels (the original project used 224)
    tile: int = 0                    # native-resolution tile side; 0 = no tiles
    overlap: int = 64                # overlap between neighbouring tiles, pixels
    format: str = "jpeg"             # jpeg | png | tif
    # Fixed reflectance range mapped to 0..255: the same for every date, so one place looks
    # the same on every date (no per-image min/max).
    reflectance_min: float = 0.0
    reflectance_max: float = 0.3
    gamma: float = 1.0               # applied after clipping; 1 = linear
    jpeg_quality: int = 95
    masks: bool = True               # also write cloud / nodata masks when the product has them


# ----------------------------------------------------------------------------- models
@dataclass
class SuperPointConfig:
    """Architecture and extraction settings of SuperPoint (stored in its checkpoint)."""

    in_channels: int = 1                          # grey; 3 = RGB, 4 = RGB+NIR
    # encoder widths, one per VGG block; narrow full-resolution blocks keep extraction at 512²
    # within 2× SIFT's time on 2 CPU cores
    channels: tuple[int, ...] = (16, 32, 64, 64)
    head_dim: int = 128                           # hidden width of both heads
    descriptor_dim: int = 128
    nms_radius: int = 4
    detection_threshold: float = 0.005
    max_keypoints: int = 1024                     # -1 = all above the threshold
    remove_borders: int = 4
    subpixel: bool = True                         # each NMS peak refined to sub-pixel on the heatmap, by:
    subpixel_fit: str = "softargmax"              # softargmax: the heat's expectation over the peak's 3×3;
                                                  # quadratic: a parabola through the log-heat, per axis
    # fine head (0 = none): a dense map at stride 2 whose patches around each keypoint let a
    # match be moved to the pixel in image 1 that best fits image 0's keypoint
    fine_dim: int = 0
    fine_hidden: int = 16                         # hidden width of the fine head
    fine_radius: int = 3                          # search window: ±radius fine cells (±6 px)
    fine_temperature: float = 0.1

    @property
    def cell(self) -> int:
        """Side of one detector cell: each VGG block but the last halves the resolution."""
        return 2 ** (len(self.channels) - 1)

    fine_stride = 2                               # the fine head reads the second block's output


# The paper's configuration (DeTone et al. 2018): 1.3 M parameters.
SUPERPOINT_PAPER = SuperPointConfig(channels=(64, 64, 128, 128), head_dim=256, descriptor_dim=256)


@dataclass
class SuperGlueConfig:
    """Architecture and matching settings of SuperGlue (stored in its checkpoint)."""

    descriptor_dim: int = 128                           # must equal SuperPoint's descriptor_dim
    keypoint_encoder: tuple[int, ...] = (32, 64, 128)   # hidden widths of the position MLP
    layers: int = 3                                     # self + cross attention pairs
    heads: int = 4
    sinkhorn_iterations: int = 20
    match_threshold: float = 0.2
    # initialisation: start as Sinkhorn on cosine similarity / temperature, the dustbin at
    # cosine warm_start_bin (see SuperGlue._warm_start); False = the paper's random init
    warm_start: bool = True
    warm_start_temperature: float = 0.05
    warm_start_bin: float = 0.5


# The paper's configuration (Sarlin et al. 2020): 9 self/cross pairs, 256-d, 100 iterations.
SUPERGLUE_PAPER = SuperGlueConfig(descriptor_dim=256, keypoint_encoder=(32, 64, 128, 256), layers=9,
                                  sinkhorn_iterations=100)


@dataclass
class SuperPointTrainConfig:
    """Defaults of ``train_superpoint.py``."""

    crop: int = 160
    batch_size: int = 12
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_steps: int = 100_000
    minutes: float = 0.0              # wall-clock budget; 0 = none
    val_every: int = 250
    val_pairs: int = 48
    save_every_minutes: float = 5.0
    difficulty: str = "train"         # homography difficulty of the training warps
    num_labels: int = 200             # pseudo-ground-truth keypoints per crop
    num_desc_points: int = 256        # points per crop for the descriptor loss
    desc_temperature: float = 0.05    # dual-softmax temperature
    desc_weight: float = 1.0
    negative_radius: float = 6.0      # other points closer than this are not negatives (px)
    fine_max_shift: float = 5.0       # px: fine-head training moves the window off the truth by up to this
    sensor_mix: float = 0.0           # share of pairs whose image 1 is another sensor's view (dataset.SENSOR_VIEWS)


@dataclass
class SuperGlueTrainConfig:
    """Defaults of ``train_superglue.py``."""

    crop: int = 256
    batch_size: int = 8
    max_keypoints: int = 512          # SuperPoint keypoints per training image
    lr: float = 3e-4
    weight_decay: float = 1e-4
    max_steps: int = 100_000
    minutes: float = 0.0
    val_every: int = 250
    val_pairs: int = 48
    save_every_minutes: float = 5.0
    difficulty: str = "train"
    positive_threshold: float = 3.0   # px: mutual nearest within this → a match
    negative_threshold: float = 5.0   # px: nearest beyond this → unmatched (dustbin); between: ignored
    sensor_mix: float = 0.0           # share of pairs whose image 1 is another sensor's view (dataset.SENSOR_VIEWS)


# ----------------------------------------------------------------------------- geometry
@dataclass
class HomographyDifficulty:
    """Range of the random homographies of one difficulty level."""

    max_angle: float      # degrees, uniform in [-max_angle, max_angle]
    scale: tuple[float, float]  # log-uniform zoom range
    perspective: float    # corner displacement of the projective part, fraction of side
    translation: float    # fraction of the side


DIFFICULTIES = {
    "easy": HomographyDifficulty(max_angle=10, scale=(0.9, 1.1), perspective=0.03, translation=0.05),
    "medium": HomographyDifficulty(max_angle=30, scale=(0.75, 1.33), perspective=0.08, translation=0.1),
    "hard": HomographyDifficulty(max_angle=60, scale=(0.6, 1.66), perspective=0.15, translation=0.15),
    # what the networks are trained on: a little beyond medium
    "train": HomographyDifficulty(max_angle=45, scale=(0.7, 1.43), perspective=0.1, translation=0.15),
    # rotation and zoom as far as `hard` (the campaign's second SuperPoint)
    "train_wide": HomographyDifficulty(max_angle=60, scale=(0.6, 1.66), perspective=0.12, translation=0.15),
}


@dataclass
class MatchingConfig:
    """Defaults of the matching pipeline (``s2coreg/matching/pipeline.py``), ``ImageMatcher`` and the scripts."""

    # ImageMatcher's and s2coreg-match's: the cascade sift-first (SIFT + ratio test + correlation stage, the
    # learned pipeline where that does not verify), chosen on validation (docs/matching.md "The default").
    # Also matching.matcher_choices(): auto = superglue if its checkpoint is there (else mnn), a matcher of
    # matching.MATCHERS (one of your own module as package.module:name), or the cascade fast
    matcher: str = "sift-first"
    resize: int = 1024                # longer side the network sees (ImageMatcher); 0 = never resize
    refine: bool = True               # move matches with SuperPoint's fine head, when it has one
    correlate: bool = True            # then make them precise by correlation (Lucas-Kanade, local contrast)
    correlation_window: int = 31      # px, side of the correlation window
    correlation_max_shift: float = 3.0  # px: a point the correlation moves further keeps its position
    correlation_sigma: float = 2.0    # px, Gaussian scale of the local contrast the correlation runs on
    ransac_threshold: float = 3.0     # px, USAC_MAGSAC, in image 1's own frame
    min_inliers: int = 15             # fewer RANSAC inliers: the pair is not verified (COLMAP's default)
    fast_min_inliers: int = 40        # matcher="fast": fewer mutual-NN inliers hand the pair to SuperGlue
                                      # (chosen on validation: docs/benchmarks.md "The fast mode")
    sift_first_confirm_inliers: int = 40  # matcher="sift-first": SIFT verified with fewer inliers is checked by
    sift_first_confirm_px: float = 5.0    # the learned path; where both verify and their homographies' corners lie
                                          # further apart than this (px), the learned path's answer is taken
    min_texture: float = 1e-3         # std of the normalised image below which it counts as blank
    cache_size: int = 64              # images whose features ImageMatcher keeps (least recently used out)
    progress_pixels: int = 4_000_000   # ImageMatcher shows a progress bar for inputs above this


@dataclass
class CoregisterConfig:
    """Defaults of ``coregister.py`` (pairs and ``--stack``: one engine, ``s2coreg/coregistration/engine.py``)."""

    bands: tuple[str, ...] = ("B04", "B03", "B02")  # those both products have; grey for the network
    # A pair's bands per input, where they differ from ``bands`` (empty: ``bands``): names in each
    # product's own naming or common names (red, nir, swir16, pan), or 1-based indices of a raster
    # — a 5-band target against a 1-band reference. A stack has one ``bands`` for all its dates.
    reference_bands: tuple[str, ...] = ()
    target_bands: tuple[str, ...] = ()
    # Every window's matching; None: the job's own (engine.JOB_MATCHER) — a pair: sift-first (SIFT, the
    # learned path only where SIFT does not verify or verifies with few inliers: a pair SIFT answers never
    # imports torch, a 256² pair's whole process in AROSICS's CPU time; the same shifts, docs/benchmarks.md
    # "Start-up"), a stack: fast (mutual nearest neighbours, SuperGlue where they give few inliers: a date's
    # windows extracted once as SuperPoint features). Or auto (SuperGlue), a registered matcher (mnn, ...;
    # one of your own module as package.module:name), or either cascade (a stack: not sift-first).
    matcher: str | None = None
    overview: int = 1024              # px, longer side of the coarse (whole-product) estimate
    window: int = 512                 # px at native resolution, side of a matching window
    min_window: int = 256             # px, smallest window side where the data allows it
    max_windows: int = 48             # windows matched at most, spread evenly over the valid area
    # A stack's windows at most (with max_windows, the smaller): every date's windows are matched in
    # about three pairs (the reference, its neighbours in time), where a pair reads its own best-first
    # and stops; 16 of 512 px spread evenly cover a full tile in 4 x 4 and cost a third of 48
    # (docs/benchmarks.md "A tile-year's cost"); small scenes have fewer windows than this anyway.
    stack_windows: int = 16
    # A stack's pair that verified fewer than this share of its planned windows (clouds, snow or no
    # data that no mask declares: an overcast date beside a cloudy one) is measured again on the full
    # plan (max_windows: 7 x 7 on a full tile), its two dates reading the windows the stack's plan
    # left out — the date with less texture all of them, the other those where it has some — and
    # only they: clear dates cost what they cost. Chosen on the tile-year's six dates (docs/benchmarks.md
    # "A tile-year's cost"): the one pair off by more than 0.1 m (0.9 m: 45 % cloud beside 95 %)
    # verified 4 of 16 windows, the overcast date's pairs with clear dates 8 of 16 and were within 0.03 m.
    stack_more_windows: float = 0.5
    min_valid: float = 0.5            # share of a window valid (no nodata, cloud, snow) on both dates
    edge_tolerance_px: float = 16.0   # px: a date whose edge lies this little inside the grid's border (a coarse
                                      # offset of a few px) does not shrink the windows: they keep their plan, so
                                      # a grown stack reuses its work; the sliver is nodata for that date alone
                                      # (stacks only: a pair plans on exactly what both dates cover)
    speck_px: int = 16                # invalid specks up to this many px are inpainted and matched through
    min_windows: int = 3              # fewer verified windows (or all, where fewer fit): refused
    # A pair reads its windows best first (engine.measure_in_rounds): ranked on the overviews both
    # dates were located on (valid on both, keypoints on both, the coarse step's inliers), in rounds
    # of the next best window of each of rank_blocks x rank_blocks blocks of the overlap, and stops
    # once stop_windows verified windows agree and cover every block row and column (the shift
    # field and the affine need windows over the whole overlap) and the pair's σ is within
    # stop_sigma_gain of what every candidate window would give (two acquisitions: their 0.4 m
    # floor is soon reached; one acquisition: its σ keeps shrinking as 1/√n, so it reads on)
    # (chosen on the full-tile benchmark, whose tile is built from OMBRIA's training chips;
    # benchmarks/coregistration_full_tile.py, docs/benchmarks.md "A full tile").
    # 0: every planned window (as a stack does). Windows whose overviews show less than
    # rank_min_valid of them valid on both dates are not read (min_valid at full resolution, less a
    # margin for the overview's ~11x coarser pixels at a cloud's or the data's edge).
    rank_blocks: int = 3
    stop_windows: int = 9
    stop_sigma_gain: float = 0.1
    rank_min_valid: float = 0.4
    outlier_sigmas: float = 3.0       # windows further than this × their spread are rejected
    min_spread_px: float = 0.05       # px, smallest spread the outlier rule assumes
    disagreement_px: float = 1.0      # px, windows differing more than this (and their noise) warn
    # The pair's standard error: the windows' own and their spread's, times this factor and at
    # least the floor; calibrated on validation pairs (benchmarks/coregistration.py) so that
    # same-date errors fall within 2σ at least 80 % of the time.
    sigma_scale: float = 1.0
    sigma_floor_px: float = 0.005
    # Two acquisitions (or a date resampled onto the grid): added in quadrature, metres — what the
    # model cannot see (radiometric and landscape differences, resampling). Chosen on loop closures
    # and forward/reverse pairs of 12 real Bracciano dates (10 m, two UTM grids): the smallest floor
    # with >= 90 % of loops within 2σ (0.35 m) and a step of margin; checked on SEN12MS-CR-TS 146,
    # OMBRIA 2021, T36UYA (~107 m px: its loops close without it, hence metres, not px), OSCD
    # (benchmarks/sigma_calibration.py, docs/benchmarks.md "σ calibration")
    sigma_cross_date_m: float = 0.4
    # The tie points' median and the dense estimate this many times their noise apart: σ widened
    # to this share of the gap at least (half: both within 2σ), and a warning
    sigma_disagreement: float = 3.0
    sigma_disagreement_share: float = 0.5
    dense_trust_correlation: float = 0.3   # the dense fit's median |correlation| to trust it over the tie points
    # Each window's learned estimate refined by a dense fit of all pixels both dates show
    # (imaging.dense_translation; engine.refine_translation says when it is used)
    refine: bool = True
    refine_iterations: int = 20       # Newton steps at most
    refine_converged_px: float = 1e-3  # px, the last step moves it less than this, else it is not used
    refine_max_px: float = 1.0        # px, it may move the learned estimate this far,
    refine_reach_se: float = 4.0      # or this many of the learned estimate's standard errors
    refine_min_pixels: int = 1024     # pixels both dates show in the window, at least
    refine_smooth_px: float = 1.0     # px, Gaussian blur of both dates before the dense fit (aliased 10 m bands)
    field_cells: int = 16             # cells of the shift field along the longer side
    cloud_probability: int = 40       # L2A MSK_CLDPRB above this counts as cloud
    # L2A scene classes left out: saturated, cloud shadow, water, cloud medium/high, cirrus, snow
    scl_invalid: tuple[int, ...] = (1, 3, 6, 8, 9, 10, 11)


@dataclass
class EvalConfig:
    """Defaults of ``evaluate.py``."""

    crop: int = 512
    difficulty: str = "medium"
    ransac_threshold: float = MatchingConfig.ransac_threshold   # the same USAC_MAGSAC for every method
    min_inliers: int = MatchingConfig.min_inliers               # as ImageMatcher verifies a pair
    wrong_error: float = 10.0         # px of mean corner error: a verified homography above it is wrong
    correct_threshold: float = 3.0    # px, a match is correct below this reprojection error
    auc_thresholds: tuple[float, ...] = (1.0, 3.0, 5.0, 10.0)
    max_keypoints: int = 1024
    sift_ratio: float = 0.8
    sensor: str | None = None         # image 1 as another sensor's view (dataset.SENSOR_VIEWS), None: Sentinel-2


def as_dict(cfg) -> dict:
    """A dataclass as a plain dict (tuples kept as lists, for JSON and checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(cls, values: dict):
    """Build dataclass ``cls`` from ``values``, ignoring unknown keys, restoring tuples."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key in names:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def replace(cfg, **overrides):
    """``cfg`` with the given fields replaced; ``None`` values are ignored (unset flags)."""
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})

