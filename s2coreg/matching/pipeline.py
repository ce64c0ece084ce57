"""One path from pixels to verified matches, used by every caller.

    pipeline = MatchingPipeline.from_checkpoints()             # shipped SuperPoint + SuperGlue
    f0 = pipeline.extract(image0, valid0)                      # arrays (H, W) or (H, W, C), any dtype
    f1 = pipeline.extract(image1, valid1)
    result = pipeline.verify(pipeline.match_features(f0, f1))  # or pipeline.match(image0, image1)

``ImageMatcher`` (inference.py), the benchmark's learned methods (evaluate.py), SuperGlue's
training features and validation (train_*.py) and the stage scripts (SuperPoint.py,
SuperGlue_architecture.py) all go through this module, so they cannot drift:

* ``SuperPointExtractor``: input normalisation (1-99 percentile stretch over the valid pixels),
  blank and nodata detection, resizing to what the network sees, and the mapping back to each
  input's own pixel frame. Features are a dict of numpy arrays (the field's names, below).
* ``MATCHERS``: the matcher registry. A matcher is one class with a ``name`` and
  ``match(f0, f1) -> (matches0, matching_scores0)``; ``@register_matcher`` makes the name
  usable in ``ImageMatcher(matcher=...)``, ``evaluate.py --methods superpoint+<name>``, the
  matching script's ``--matcher`` and co-registration (``coregister.py --matcher``, pairs and
  stacks); one in a user's own module as ``package.module:name``, an installed plugin's by its
  name (``matcher_class``).
* ``refine_feature_matches``: SuperPoint's fine head moves each match's point in image 1 to
  where image 0's keypoint fits best (sub-pixel).
* ``correlate_matches``: then a correlation stage makes them precise: image 0 is warped onto
  image 1 by a provisional homography of the matches, and each inlier's point is moved by
  Lucas-Kanade on both images' local contrast (``imaging.local_contrast``, gain- and offset-free).
* ``verify``: USAC_MAGSAC homography; a pair is verified with at least ``min_inliers`` inliers.
* ``Pipeline``: the protocol callers use (``extractor``, ``refine``, ``name``, ``matcher_name``,
  ``extract``, ``match_features``, ``verify``, ``match``), which ``MatchingPipeline`` and
  ``CascadePipeline`` both follow and ``MatchingPipeline.from_checkpoints`` returns.

Features (``extract``): ``keypoints`` (N, 2) x y in the input's own pixel frame, pixel centres at
integers; ``scores`` (N); ``descriptors`` (N, D) unit length; ``image_size`` (width, height) of
the input; ``network_size`` (width, height) the network saw; ``scale`` (sx, sy) network pixels per
input pixel; with a fine head ``fine_descriptors`` (N, C), ``fine_patches`` (N, P, C) (float16)
and ``fine_temperature``; for the correlation stage ``texture`` (H', W') uint8, the input's
``local_contrast`` at the resolution it was given, and ``texture_scale`` (its px per own-frame
px); ``reason`` (str) when empty.

Match result (``match_features`` + ``verify``): ``keypoints0/1``, ``scores0/1``,
``descriptors0/1``, ``matches0`` (N0, index into image 1, -1 = none), ``matching_scores0``,
``matches1``, ``matching_scores1``, ``refined_keypoints1`` (N1, 2: matched keypoints of image 1
moved by the fine head and the correlation stage, others as detected), ``correlated1`` (N1 bool,
moved by the correlation stage), ``mkpts0``/``mkpts1`` (M, 2, the matched points,
image 1's refined), ``mconf`` (M), ``image_size0/1``, ``method``, and after ``verify``:
``homography`` (3×3 image 0 → image 1, own frames; None unless verified), ``inliers`` (M bool),
``num_inliers``, ``verified``, ``reason`` (why empty or not verified, else None).
"""
from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import cv2
import numpy as np

import s2coreg.config as config
from s2coreg.models.checkpoints import find_checkpoint, resolve_device
from s2coreg.config import MatchingConfig, SuperPointConfig
from s2coreg.matching.geometry import estimate_homography, is_verified, mutual_nearest_neighbours, warp_points
from s2coreg.io.imaging import local_contrast, normalize_for_network, percentile_stretch, resize_to, to_gray, to_uint8
from s2coreg.utils import PipelineError, torch_threads

if TYPE_CHECKING:       # torch and the networks load with the learned path, not with this module
    import torch

    from s2coreg.models.superpoint import SuperPoint


# ----------------------------------------------------------------------------- frames
def network_size(width: int, height: int, resize: int, cell: int) -> tuple[int, int]:
    """(width, height) the network sees for an input of ``width`` × ``height``: the longer side
    shrunk to ``resize`` (0 = never), never below one ``cell``."""
    if not resize or max(width, height) <= resize:
        return width, height
    s = resize / max(width, height)
    return max(cell, round(width * s)), max(cell, round(height * s))


def to_network_frame(points: np.ndarray, scale) -> np.ndarray:
    """Own-frame pixel centres → the network's frame (``scale`` = network px per input px, x y)."""
    return ((np.asarray(points, np.float64) + 0.5) * np.asarray(scale, np.float64) - 0.5).astype(np.float32)


def frame_scaling(scale) -> np.ndarray:
    """3×3 matrix of ``to_network_frame``: own-frame pixel centres → a grid of ``scale`` (sx, sy)
    pixels per own pixel."""
    sx, sy = (float(v) for v in np.broadcast_to(np.asarray(scale, np.float64), (2,)))
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def to_own_frame(points: np.ndarray, scale) -> np.ndarray:
    """Network-frame pixel centres → the input's own frame (inverse of ``to_network_frame``)."""
    return ((np.asarray(points, np.float64) + 0.5) / np.asarray(scale, np.float64) - 0.5).astype(np.float32)


def select_bands(array: np.ndarray, bands: tuple[int, ...] | None, name: str) -> np.ndarray:
    """The channels of a multi-band array to use: ``bands`` (1-based indices, as GDAL and
    rasterio count bands: ``(3, 2, 1)``), or an 8-bit RGB picture as it is; a 16-bit or
    multi-band raster without ``bands`` is ambiguous, hence an error."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise PipelineError(f"{name}: expected an (H, W) or (H, W, C) image, got shape {array.shape}")
    if array.ndim == 3:
        if array.shape[0] <= 16 and array.shape[2] > 16:
            raise PipelineError(f"{name}: an array of shape {array.shape} looks like (bands, rows, cols), as "
                                "rasterio reads it; pass (rows, cols, bands): np.moveaxis(array, 0, -1)")
        if bands is not None:
            bad = [b for b in bands if not 1 <= b <= array.shape[2]]
            if bad:
                raise PipelineError(f"{name}: bands {bad} out of range for an image with {array.shape[2]} bands "
                                    f"(1-based: 1..{array.shape[2]}); fix bands=")
            array = array[..., [b - 1 for b in bands]]
        elif not (array.shape[2] == 3 and array.dtype == np.uint8):
            raise PipelineError(f"{name}: {array.shape[2]}-band {array.dtype} image; choose the bands to use "
                                "with bands=: 1-based indices (e.g. bands='3,2,1': the third "
                                "band as red), or for a raster file also names from its band descriptions "
                                "(B04,B03,B02)")
    return array


# ----------------------------------------------------------------------------- extraction
def empty_features(cfg: SuperPointConfig, size: tuple[int, int], net_size: tuple[int, int] | None = None,
                   reason: str | None = None) -> dict:
    """The features of an image without keypoints, with every array a model of ``cfg`` gives."""
    net_size = net_size or size
    empty = {"keypoints": np.zeros((0, 2), np.float32), "scores": np.zeros(0, np.float32),
             "descriptors": np.zeros((0, cfg.descriptor_dim), np.float32), "image_size": np.array(size),
             "network_size": np.array(net_size), "scale": np.array(net_size, np.float64) / np.array(size)}
    if cfg.fine_dim:
        empty["fine_descriptors"] = np.zeros((0, cfg.fine_dim), np.float16)
        empty["fine_patches"] = np.zeros((0, (2 * cfg.fine_radius + 1) ** 2, cfg.fine_dim), np.float16)
        empty["fine_temperature"] = np.float32(cfg.fine_temperature)
    if reason:
        empty["reason"] = reason
    return empty


def check_extraction(max_keypoints: int | None, resize: int) -> None:
    """An extractor's settings that can run, or one line naming the setting."""
    if max_keypoints is not None and (not isinstance(max_keypoints, (int, np.integer)) or max_keypoints == 0
                                      or max_keypoints < -1):
        raise PipelineError(f"max_keypoints={max_keypoints}: keypoints per image, 1 or more (-1: all)")
    if resize < 0:
        raise PipelineError(f"resize={resize}: the longer side the network sees, in px (0: never resize)")


class SuperPointExtractor:
    """SuperPoint on any image array: normalisation, blank/nodata checks, resize, and back.

    Args:
        model: a SuperPoint (``SuperPoint.from_checkpoint``); its weights as they are now are used
            (a copy with the batch norms folded in: training it further does not change this one).
        max_keypoints: per image (None: the checkpoint's; -1: all).
        resize: longer side the network sees; larger inputs are shrunk (0 = never).
        detection_threshold, nms_radius: override the checkpoint's (None keeps them).
        min_texture: std of the normalised image below which it counts as blank.
    """

    name = "superpoint"

    def __init__(self, model: SuperPoint, max_keypoints: int | None = None, resize: int = 0,
                 detection_threshold: float | None = None, nms_radius: int | None = None,
                 min_texture: float = MatchingConfig.min_texture, texture: bool = True):
        check_extraction(max_keypoints, resize)
        # the model's own config is left alone: several extractors may share one model; the
        # extractor runs an inference copy with the batch norms folded in (``SuperPoint.fused``)
        self.config = config.replace(model.config, detection_threshold=detection_threshold, nms_radius=nms_radius,
                                     max_keypoints=max_keypoints)
        self.model, self.resize, self.min_texture, self.texture = model.fused(), resize, min_texture, texture

    @classmethod
    def from_checkpoint(cls, path: str | Path = config.CHECKPOINT_DIR, device=None, **options) -> "SuperPointExtractor":
        from s2coreg.models.superpoint import SuperPoint

        return cls(SuperPoint.from_checkpoint(path, resolve_device(device)), **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def network_size(self, width: int, height: int) -> tuple[int, int]:
        return network_size(width, height, self.resize, self.config.cell)

    def extract(self, image: np.ndarray, valid: np.ndarray | None = None, name: str = "image",
                size: tuple[int, int] | None = None, normalized: bool = False) -> dict:
        """Features of one image (see the module docstring).

        Args:
            image: (H, W) or (H, W, C) array, any dtype (channels as the model takes them).
            valid: (H, W) bool, False on nodata; keypoints there are dropped and the stretch
                ignores them.
            name: how messages name the image.
            size: the input's own (width, height) when ``image`` is already a reduced read of
                it (``ImageMatcher`` reads large files decimated); default its own shape.
            normalized: ``image`` is already 0..1 network input (training's augmented crops):
                no stretch.
        """
        image = np.asarray(image)
        h, w = image.shape[:2]
        size = tuple(int(v) for v in (size or (w, h)))
        cell = self.config.cell
        if min(size) < cell or min(h, w) < cell:
            raise PipelineError(f"{name}: {size[0]}×{size[1]} px is smaller than one {cell}-px network cell; "
                                "use a larger image")
        nw, nh = self.network_size(*size)
        given_valid = None if valid is None else np.asarray(valid, bool)
        if valid is not None:
            valid = resize_to(given_valid, nw, nh)
        if valid is not None and not valid.any():
            return empty_features(self.config, size, (nw, nh), f"{name}: no valid pixel (all nodata)")
        # for the correlation stage: the local contrast at the resolution given, with its own mask
        texture = local_contrast(image, given_valid) if self.texture and not normalized else None
        image = resize_to(image, nw, nh)
        if normalized:
            net = np.asarray(image, np.float32)
            net = net[None] if net.ndim == 2 else np.moveaxis(net, -1, 0)
        else:
            net = normalize_for_network(image, self.config.in_channels, valid)
        if float(net.std()) < self.min_texture:
            return empty_features(self.config, size, (nw, nh),
                                  f"{name}: blank or uniform image (cloud-covered?), nothing to match")
        torch = torch_threads()
        x = torch.from_numpy(np.ascontiguousarray(net, np.float32))[None].to(self.device)
        v = None if valid is None else torch.from_numpy(valid)[None].to(self.device)
        with torch.no_grad():
            f = self.model.extract(x, v, cfg=self.config)[0]
        if len(f["keypoints"]) == 0:
            return empty_features(self.config, size, (nw, nh), f"{name}: no keypoint found (blank or cloud-covered?)")
        scale = np.array([nw, nh], np.float64) / np.array(size, np.float64)
        out = {"keypoints": to_own_frame(f["keypoints"].cpu().numpy(), scale),
               "scores": f["scores"].cpu().numpy().astype(np.float32),
               "descriptors": f["descriptors"].cpu().numpy().astype(np.float32),
               "image_size": np.array(size), "network_size": np.array([nw, nh]), "scale": scale}
        if "fine_patches" in f:   # half precision: 49 fine descriptors per keypoint
            out["fine_descriptors"] = f["fine_descriptors"].cpu().numpy().astype(np.float16)
            out["fine_patches"] = f["fine_patches"].cpu().numpy().astype(np.float16)
            out["fine_temperature"] = np.float32(self.config.fine_temperature)
        if texture is not None:
            out["texture"] = texture
            out["texture_scale"] = np.array([w, h], np.float64) / np.array(size, np.float64)
        return out

    __call__ = extract


class SiftExtractor:
    """SIFT keypoints and descriptors (OpenCV) on the 1–99 % stretched image, over its valid
    pixels, with the local contrast the correlation stage runs on: the first path of the
    ``sift-first`` cascade (``CascadePipeline``). The same features dict as ``SuperPointExtractor`` (own-frame
    ``keypoints`` (N, 2), ``scores`` (the detector's response), ``descriptors`` (N, 128) float32,
    ``image_size``, ``texture``), so the matchers, the correlation stage and verification take it."""

    name, texture = "sift", True

    def __init__(self, max_keypoints: int = 1024, network_size=None):
        self.max_keypoints = max_keypoints
        self.feature = cv2.SIFT_create(nfeatures=max(max_keypoints, 0))
        self._network_size = network_size

    def network_size(self, width: int, height: int) -> tuple[int, int]:
        return self._network_size(width, height) if self._network_size else (width, height)

    def extract(self, image, valid=None, name: str = "image", size=None, normalized: bool = False) -> dict:
        image = np.asarray(image)
        h, w = image.shape[:2]
        size = tuple(int(v) for v in (size or (w, h)))
        grey = to_gray(image) if image.ndim == 3 else image.astype(np.float32)
        valid = None if valid is None else np.asarray(valid, bool)
        scale = np.array([w, h], np.float64) / np.array(size, np.float64)
        empty = {"keypoints": np.zeros((0, 2), np.float32), "scores": np.zeros(0, np.float32),
                 "descriptors": np.zeros((0, 128), np.float32), "image_size": np.array(size),
                 "network_size": np.array([w, h]), "scale": scale}
        if valid is not None and not valid.any():
            return {**empty, "reason": f"{name}: no valid pixel (all nodata)"}
        stretched = percentile_stretch(grey, valid=valid)
        if float(stretched.std()) < MatchingConfig.min_texture:
            return {**empty, "reason": f"{name}: blank or uniform image (cloud-covered?), nothing to match"}
        mask = None if valid is None else valid.astype(np.uint8) * 255
        kps, desc = self.feature.detectAndCompute(to_uint8(stretched), mask)
        if not kps:
            return {**empty, "reason": f"{name}: no keypoint found (blank or cloud-covered?)"}
        pts = np.array([k.pt for k in kps], np.float64).reshape(-1, 2)
        return {"keypoints": to_own_frame(pts, scale), "scores": np.array([k.response for k in kps], np.float32),
                "descriptors": desc.astype(np.float32), "image_size": np.array(size), "network_size": np.array([w, h]),
                "scale": scale, "texture": local_contrast(image, valid), "texture_scale": scale}

    __call__ = extract


def network_keypoints(features: dict) -> np.ndarray:
    """A features dict's keypoints in the frame the network saw them (features written before
    ``scale`` existed were extracted at full size)."""
    return to_network_frame(features["keypoints"], features.get("scale", 1.0))


# ----------------------------------------------------------------------------- matchers
class Matcher:
    """The matcher contract: ``match(f0, f1) -> (matches0, matching_scores0)``.

    ``f0``, ``f1`` are features dicts of ``SuperPointExtractor`` with at least one keypoint each;
    ``matches0`` (N0,) int64 indexes image 1 (-1 = no match), ``matching_scores0`` (N0,) float32.
    ``build(model_path, device, **options)`` makes one from the checkpoints in ``model_path``.
    A pipeline built by name gives every registered matcher SuperPoint's features, so each is
    one co-registration takes too (a date's windows are extracted once and matched in every pair).
    """

    name: str = ""

    @classmethod
    def build(cls, model_path: Path, device, **options) -> "Matcher":
        return cls()

    @classmethod
    def available(cls, model_path: Path) -> bool:
        """Whether ``model_path`` holds what this matcher needs (for ``matcher="auto"``)."""
        return True

    def match(self, f0: dict, f1: dict) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


# The matcher registry: name → class. ``matcher=`` takes these names, ``auto`` and the cascades
# below, a matcher of one's own as ``package.module:name`` and an installed plugin's name
# (``matcher_class``): every caller reads the names from here.
MATCHERS: dict[str, type[Matcher]] = {}
# the cascades (``CascadePipeline``) by name, with the features their paths match: co-registration
# takes those that match SuperPoint's alone
CASCADES = {"fast": ("superpoint",), "sift-first": ("sift", "superpoint")}
# installed plugins: an entry point of this group, NAME = "package.module:Class" (looked up only
# for a name not registered, never at import)
ENTRY_POINT_GROUP = "s2coreg.matchers"
OWN_MATCHER = "package.module:name"      # how a matcher of one's own is named (its module registers it)
_FROM_ENTRY_POINTS: set[type[Matcher]] = set()


class UnknownMatcher(PipelineError):
    """A matcher name that is neither registered, nor an installed plugin's, nor ``package.module:name``."""


def register_matcher(cls: type[Matcher]) -> type[Matcher]:
    """Class decorator: make a matcher available by its ``name``."""
    if not cls.name or cls.name == "auto" or cls.name in CASCADES or set(cls.name) & set(":+,"):
        raise PipelineError(f"{cls.__qualname__}: name = {cls.name!r}; a matcher's name is a word of its own "
                            "(not empty, auto or a cascade's; no ':', '+' or ',')")
    known = MATCHERS.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise PipelineError(f"{cls.__module__}.{cls.__qualname__}: the matcher name {cls.name!r} is taken by "
                            f"{known.__module__}.{known.__qualname__}; give yours another name")
    MATCHERS[cls.name] = cls          # (the same class again, its module imported twice: the newer one)
    return cls


def installed_matchers() -> dict:
    """The matchers installed packages offer: their entry points of ``ENTRY_POINT_GROUP`` by name."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def matcher_choices(superpoint_features: bool = False) -> tuple[str, ...]:
    """Every name ``ImageMatcher(matcher=...)`` and ``--matcher`` take (besides ``package.module:name``):
    ``auto``, the registered and installed matchers, the cascades; ``superpoint_features``: only
    those matching SuperPoint's features alone (co-registration's)."""
    cascades = [c for c, paths in CASCADES.items() if not superpoint_features or paths == ("superpoint",)]
    return ("auto", *sorted(set(MATCHERS) | set(installed_matchers())), *cascades)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _import_own(name: str, module: str) -> None:
    """Import the module of ``package.module:name`` (its ``@register_matcher`` registers the matcher)."""
    try:
        importlib.import_module(module)
    except Exception as exc:         # the module's own error: one line; its traceback stays chained
        missing = getattr(exc, "name", None)         # ModuleNotFoundError: which module is not there
        if isinstance(exc, ModuleNotFoundError) and missing and (module == missing or module.startswith(missing + ".")):
            raise PipelineError(f"matcher {name!r}: no module {module} to import; install it, or add the folder "
                                "that holds it to PYTHONPATH (every process that matches imports it, Dask's "
                                "workers too)") from exc
        raise PipelineError(f"matcher {name!r}: importing {module} failed ({_one_line(exc)}); fix that "
                            "module") from exc


def _load_plugin(ep) -> None:
    """Register the matcher class an installed plugin's entry point names."""
    try:
        cls = ep.load()
    except Exception as exc:
        raise PipelineError(f"matcher {ep.name!r}: the installed plugin's entry point ({ENTRY_POINT_GROUP}: "
                            f"{ep.name} = {ep.value}) does not load ({_one_line(exc)}); reinstall or fix that "
                            "package") from exc
    if not (isinstance(cls, type) and issubclass(cls, Matcher)) or cls.name != ep.name:
        raise PipelineError(f"matcher {ep.name!r}: the installed plugin's entry point ({ENTRY_POINT_GROUP}: "
                            f"{ep.name} = {ep.value}) must name a Matcher subclass whose name is {ep.name!r}")
    MATCHERS.setdefault(cls.name, cls)
    _FROM_ENTRY_POINTS.add(cls)


def matcher_class(name: str) -> type[Matcher]:
    """The registered matcher class ``name`` names:

    * a registered name (``mnn``, ``superglue``, one a module already imported registered);
    * ``package.module:name``, a matcher of one's own: ``package.module`` is imported (its
      ``@register_matcher`` registers ``name``), so a process given only the name (a Dask worker)
      finds it too;
    * an installed plugin's name (entry point group ``s2coreg.matchers``, ``name = package.module:Class``),
      looked up where the name is not registered.

    Anything else is one line: ``UnknownMatcher`` for an unknown name, a ``PipelineError`` for a
    module that does not import or does not register the name."""
    module, sep, short = name.partition(":")
    if sep:
        if not module or not short:
            raise PipelineError(f"matcher {name!r}: name a matcher of your own as {OWN_MATCHER}")
        _import_own(name, module)
        if short not in MATCHERS:
            theirs = sorted(n for n, c in MATCHERS.items() if c.__module__ == module)
            raise PipelineError(f"matcher {name!r}: {module} registers no matcher {short!r}"
                                f"{' (it registers ' + ', '.join(theirs) + ')' if theirs else ''}; decorate its "
                                f"class with @register_matcher (s2coreg.matching.pipeline) and set name = {short!r}")
        return MATCHERS[short]
    if name not in MATCHERS and name in (installed := installed_matchers()):
        _load_plugin(installed[name])
    if name not in MATCHERS:
        raise UnknownMatcher(f"unknown matcher {name!r}; choose from {', '.join(matcher_choices())}, or name your "
                             f"own as {OWN_MATCHER} (its module registers it with @register_matcher)")
    return MATCHERS[name]


def spec_of(cls: type[Matcher]) -> str:
    """The name ``matcher=`` takes for the matcher class ``cls`` in any process: the project's and an
    installed plugin's by their ``name``; one of a user's module as ``package.module:name`` (a Dask
    worker imports the module from it); one defined in ``__main__`` by its ``name`` (this process only)."""
    module = cls.__module__
    if module == "__main__" or module.split(".")[0] == __name__.split(".")[0] or cls in _FROM_ENTRY_POINTS:
        return cls.name
    return f"{module}:{cls.name}"


def matcher_spec(name: str) -> str:
    """``name`` checked (``matcher_class``) and as every process takes it (``spec_of``); ``auto`` and
    the cascades as they are."""
    return name if name == "auto" or name in CASCADES else spec_of(matcher_class(name))


def build_matcher(name: str, model_path: str | Path = config.CHECKPOINT_DIR, device=None, **options) -> Matcher:
    """The matcher called ``name`` (see ``matcher_class``; ``auto``: SuperGlue if its checkpoint is
    in ``model_path``'s folder, else mutual nearest neighbours)."""
    model_path = Path(model_path)
    if name == "auto":
        name = "superglue" if MATCHERS["superglue"].available(model_path) else "mnn"
    return matcher_class(name).build(model_path, device, **options)


@register_matcher
class MutualNearestNeighbours(Matcher):
    """Mutual nearest neighbours of the descriptors; the score is their cosine similarity."""

    name = "mnn"

    def __init__(self, min_similarity: float = -1.0):
        self.min_similarity = min_similarity

    @classmethod
    def build(cls, model_path, device, match_threshold: float | None = None, **_):
        return cls(-1.0 if match_threshold is None else match_threshold)

    def match(self, f0, f1):
        matches0 = mutual_nearest_neighbours(f0["descriptors"], f1["descriptors"], self.min_similarity)
        scores0 = np.zeros(len(matches0), np.float32)
        ok = matches0 > -1
        scores0[ok] = np.einsum("nd,nd->n", f0["descriptors"][ok], f1["descriptors"][matches0[ok]])
        return matches0, scores0


@register_matcher
class RatioTest(Matcher):
    """Lowe's ratio test: a keypoint's nearest descriptor of image 1 when it is clearly nearer
    than the second (distance ratio below ``ratio``, 0.8); the score is 1 − that ratio. SIFT's
    matcher in the ``sift-first`` cascade."""

    name = "ratio"

    def __init__(self, ratio: float = 0.8):
        self.ratio = ratio

    @classmethod
    def build(cls, model_path, device, match_threshold: float | None = None, **_):
        return cls(0.8 if match_threshold is None else match_threshold)

    def match(self, f0, f1):
        matches0 = np.full(len(f0["keypoints"]), -1, np.int64)
        scores0 = np.zeros(len(f0["keypoints"]), np.float32)
        if len(f1["keypoints"]) < 2:
            return matches0, scores0
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(np.asarray(f0["descriptors"], np.float32),
                                                     np.asarray(f1["descriptors"], np.float32), k=2)
        for pair in pairs:
            if len(pair) == 2 and pair[0].distance < self.ratio * pair[1].distance:
                matches0[pair[0].queryIdx] = pair[0].trainIdx
                scores0[pair[0].queryIdx] = 1 - pair[0].distance / max(pair[1].distance, 1e-9)
        return matches0, scores0


@register_matcher
class SuperGlueMatcher(Matcher):
    """The SuperGlue of a checkpoint; ``match_threshold`` overrides the checkpoint's."""

    name = "superglue"

    def __init__(self, model, match_threshold: float | None = None):
        model.config = config.replace(model.config, match_threshold=match_threshold)
        self.model = model

    @classmethod
    def available(cls, model_path):
        return find_checkpoint(model_path, "SuperGlue", required=False) is not None

    @classmethod
    def build(cls, model_path, device, match_threshold: float | None = None, **_):
        """From a SuperGlue checkpoint file, or the ``superglue*.pt`` of a folder."""
        from s2coreg.models.superglue import SuperGlue

        return cls(SuperGlue.from_checkpoint(model_path, resolve_device(device)), match_threshold)

    def match(self, f0, f1):
        from s2coreg.models.superglue import pad_batch

        dim = self.model.config.descriptor_dim
        if f0["descriptors"].shape[1] != dim:
            raise PipelineError(f"features have {f0['descriptors'].shape[1]}-d descriptors but the SuperGlue "
                                f"checkpoint expects {dim}-d; extract them with the SuperPoint it was trained on")
        # SuperGlue sees the keypoints as the network saw them
        g0 = {**f0, "keypoints": network_keypoints(f0), "image_size": f0.get("network_size", f0["image_size"])}
        g1 = {**f1, "keypoints": network_keypoints(f1), "image_size": f1.get("network_size", f1["image_size"])}
        device = next(self.model.parameters()).device
        with torch_threads().no_grad():
            out = self.model({k: v.to(device) for k, v in pad_batch([g0], [g1]).items()})
        return out["matches0"][0].cpu().numpy(), out["matching_scores0"][0].cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------- refinement
def refine_feature_matches(f0: dict, f1: dict, matches0: np.ndarray) -> np.ndarray:
    """Image 1's keypoints (own frame) with the matched ones moved by SuperPoint's fine head
    (``SuperPoint.refine_matches``: ``fine_descriptors`` of image 0 against ``fine_patches`` of
    image 1, in the frame the network saw)."""
    c0, c1 = f0["fine_descriptors"].shape[-1], f1["fine_patches"].shape[-1]
    if c0 != c1:
        raise PipelineError(f"fine features of {c0} and {c1} channels: extract both images with the same "
                            "SuperPoint checkpoint")
    from s2coreg.models.superpoint import refine_matches

    torch = torch_threads()
    kpts1 = network_keypoints(f1)
    with torch.no_grad():
        refined, _ = refine_matches(torch.as_tensor(f0["fine_descriptors"]), torch.as_tensor(f1["fine_patches"]),
                                    torch.from_numpy(kpts1), torch.as_tensor(matches0), float(f1["fine_temperature"]))
    out = np.asarray(f1["keypoints"], np.float32).copy()
    moved = matches0[matches0 > -1]
    out[moved] = to_own_frame(refined.numpy()[moved], f1.get("scale", 1.0))
    return out


def correlate_matches(f0: dict, f1: dict, mkpts0: np.ndarray, mkpts1: np.ndarray, homography: np.ndarray,
                      window: int = MatchingConfig.correlation_window,
                      max_shift: float = MatchingConfig.correlation_max_shift) -> tuple[np.ndarray, np.ndarray]:
    """Matched points of image 1 made precise by correlation (own frames in and out).

    Image 0's ``texture`` is warped onto image 1 by ``homography`` (image 0 → image 1, own
    frames): locally it then differs from image 1 by a small shift, which pyramid-free
    Lucas-Kanade measures in a ``window``² px window around each point, iterating to sub-pixel
    precision. A point moves to ``homography(mkpts0) + shift`` when LK converges within
    ``max_shift`` px (in the texture's pixels); otherwise it keeps its ``mkpts1``. Returns the
    points and which moved. Both dicts need ``texture`` (extractors with ``texture=True``).
    """
    t0, t1 = f0["texture"], f1["texture"]
    to_t0 = frame_scaling(f0.get("texture_scale", (1.0, 1.0)))      # own frame → texture pixels
    to_t1 = frame_scaling(f1.get("texture_scale", (1.0, 1.0)))
    H = to_t1 @ np.asarray(homography, np.float64) @ np.linalg.inv(to_t0)
    h1, w1 = t1.shape
    warped0 = cv2.warpPerspective(t0, H, (w1, h1), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                  borderValue=128)
    start = warp_points(np.asarray(mkpts0, np.float64), H @ to_t0).astype(np.float32).reshape(-1, 1, 2)
    moved = np.zeros(len(mkpts0), bool)
    out = np.asarray(mkpts1, np.float32).copy()
    if not len(start):
        return out, moved
    end, status, _ = cv2.calcOpticalFlowPyrLK(warped0, t1, start, start.copy(), winSize=(window, window),
                                              maxLevel=0, flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                                              criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01))
    end, start = end.reshape(-1, 2), start.reshape(-1, 2)
    inside = (end >= 0).all(1) & (end[:, 0] <= w1 - 1) & (end[:, 1] <= h1 - 1)
    moved = (status.ravel() == 1) & inside & (np.linalg.norm(end - start, axis=1) < max_shift)
    out[moved] = warp_points(end[moved].astype(np.float64), np.linalg.inv(to_t1)).astype(np.float32)
    return out, moved


def correlation_stage(f0: dict, f1: dict, mkpts0: np.ndarray, mkpts1: np.ndarray,
                      ransac_threshold: float = MatchingConfig.ransac_threshold,
                      window: int = MatchingConfig.correlation_window,
                      max_shift: float = MatchingConfig.correlation_max_shift) -> tuple[np.ndarray, np.ndarray]:
    """``correlate_matches`` on the inliers of a provisional USAC_MAGSAC homography of the matches
    (at least 8); the outliers, and every match when there is no such homography, stay as they are.
    Returns image 1's matched points and which moved."""
    moved = np.zeros(len(mkpts0), bool)
    if len(mkpts0) < 8 or "texture" not in f0 or "texture" not in f1:
        return np.asarray(mkpts1, np.float32), moved
    H, inliers = estimate_homography(mkpts0, mkpts1, ransac_threshold)
    if H is None or inliers.sum() < 8:
        return np.asarray(mkpts1, np.float32), moved
    out = np.asarray(mkpts1, np.float32).copy()
    out[inliers], moved[inliers] = correlate_matches(f0, f1, mkpts0[inliers], mkpts1[inliers], H, window, max_shift)
    return out, moved


def correlate_keypoints1(f0: dict, f1: dict, matches0: np.ndarray, keypoints1: np.ndarray,
                         ransac_threshold: float = MatchingConfig.ransac_threshold) -> tuple[np.ndarray, np.ndarray]:
    """``correlation_stage`` on the matches ``matches0`` (index into image 1, -1 none): image 1's
    keypoints (N1, 2) with the matched ones moved, and which moved (N1 bool)."""
    matched = matches0 > -1
    idx1 = matches0[matched]
    points, moved = correlation_stage(f0, f1, np.asarray(f0["keypoints"], np.float32)[matched],
                                      np.asarray(keypoints1, np.float32)[idx1], ransac_threshold)
    out = np.asarray(keypoints1, np.float32).copy()
    out[idx1] = points
    moved1 = np.zeros(len(out), bool)
    moved1[idx1] = moved
    return out, moved1


# ----------------------------------------------------------------------------- pipeline
@runtime_checkable
class Pipeline(Protocol):
    """What callers use of a matching path, and what ``MatchingPipeline.from_checkpoints`` returns:
    a ``MatchingPipeline``, or for ``matcher="fast"`` / ``"sift-first"`` a ``CascadePipeline``.
    ``ImageMatcher`` and ``evaluate.py``'s ``PipelineMethod`` take either, the co-registration
    engine and ``Coregistration`` too (a stack not ``sift-first``, whose features are not
    SuperPoint's alone: ``engine.check_matcher``). ``isinstance(p, Pipeline)`` checks the names are there.

    Attributes:
        extractor: the features' extractor (its ``network_size(width, height)``: what
            ``ImageMatcher`` reads a large file at); None for a pipeline of features read from files
        refine: the fine head moves the matches (False where the checkpoint has none)
        name: the path that runs, as the provenance records it (``superpoint+superglue+refine+correlate``;
            a cascade's: ``FIRST, else FALLBACK``)
        matcher_name: the name ``matcher=`` takes for it (``superglue``, ``mnn``, ``fast``, ...)
        ranking_name: the one path ``match_for_ranking`` scores every pair with (a cascade's: its
            fallback), as a ranking's ``method`` records it
    """

    extractor: SuperPointExtractor | SiftExtractor | None
    refine: bool

    @property
    def name(self) -> str: ...

    @property
    def matcher_name(self) -> str: ...

    @property
    def ranking_name(self) -> str: ...

    def extract(self, image, valid=None, name: str = "image", size=None, normalized: bool = False) -> dict:
        """One image's features (the module docstring's Features)."""
        ...

    def match_features(self, f0: dict, f1: dict) -> dict:
        """Two images' features matched and refined (a cascade's: verified too)."""
        ...

    def verify(self, result: dict) -> dict:
        """``match_features``'s result with ``homography``, ``inliers``, ``num_inliers``, ``verified``."""
        ...

    def match(self, image0, image1, valid0=None, valid1=None) -> dict:
        """Extract, match, refine and verify two image arrays."""
        ...

    def match_for_ranking(self, f0: dict, f1: dict) -> dict:
        """Two images' features matched and verified by the one path ``ranking_name`` names, for
        every pair: inlier counts that compare across the candidates of a ranking."""
        ...


def path_name(detector: str, matcher: str, refine: bool, correlate: bool) -> str:
    """A matching path's name as provenances record it: ``superpoint+superglue+refine+correlate``."""
    return f"{detector}+{matcher}" + ("+refine" if refine else "") + ("+correlate" if correlate else "")


class MatchingPipeline:
    """Extractor + matcher + refinement + verification: arrays in, the standard dict out.

    Args:
        extractor: a ``SuperPointExtractor`` (None for a pipeline that only matches features
            read from files).
        matcher: a ``Matcher``.
        refine: refine matches with the fine head when both images' features carry it.
        correlate: then make them precise by correlation (``correlation_stage``) when both
            images' features carry their ``texture``.
        ransac_threshold: px, in image 1's own frame.
        min_inliers: fewer USAC_MAGSAC inliers leave the pair unverified (no homography).
    """

    def __init__(self, extractor: SuperPointExtractor | None, matcher: Matcher, refine: bool = True,
                 ransac_threshold: float = MatchingConfig.ransac_threshold,
                 min_inliers: int = MatchingConfig.min_inliers, correlate: bool = MatchingConfig.correlate):
        self.extractor, self.matcher = extractor, matcher
        self.refine = refine and (extractor is None or extractor.config.fine_dim > 0)
        self.correlate = correlate
        if extractor is not None:
            extractor.texture = correlate
        self.ransac_threshold, self.min_inliers = ransac_threshold, min_inliers

    @classmethod
    def from_checkpoints(cls, model_path: str | Path = config.CHECKPOINT_DIR, matcher: str = "auto",
                         device=None, *, max_keypoints: int | None = None, resize: int = 0,
                         match_threshold: float | None = None, refine: bool = MatchingConfig.refine,
                         ransac_threshold: float = MatchingConfig.ransac_threshold,
                         min_inliers: int = MatchingConfig.min_inliers, detection_threshold: float | None = None,
                         nms_radius: int | None = None, superpoint=None, superglue=None,
                         correlate: bool = MatchingConfig.correlate,
                         fast_min_inliers: int = MatchingConfig.fast_min_inliers, lazy: bool = False,
                         keep_more_inliers: bool = False) -> Pipeline:
        """The pipeline of the checkpoints in ``model_path``: a folder, or a SuperPoint file
        whose folder holds the matcher's checkpoint. ``superpoint`` / ``superglue``: models
        already loaded (training validation) instead of files. ``None`` settings keep the
        checkpoint's. ``matcher="auto"`` (the default here) is the learned pipeline, SuperGlue where
        its checkpoint is there (what co-registration and the benchmarks build); ``ImageMatcher``'s
        default is ``MatchingConfig.matcher``. ``matcher="fast"`` or ``"sift-first"`` gives a
        ``CascadePipeline`` (``fast_min_inliers``: the fast one's acceptance): either is a ``Pipeline``.
        ``lazy``: sift-first's learned path is built where a pair first needs it (``LazyPipeline``:
        co-registration's pairs, so that one SIFT answers never imports torch); its checkpoints'
        content is then checked there, not here. ``keep_more_inliers``: of sift-first's two
        answers that agree, the one with more inliers (co-registration's: see ``CascadePipeline``)."""
        if matcher in CASCADES:
            return CascadePipeline.from_checkpoints(matcher, model_path, device, max_keypoints=max_keypoints,
                                                    accept_inliers=fast_min_inliers,
                                                    resize=resize, ransac_threshold=ransac_threshold,
                                                    min_inliers=min_inliers, match_threshold=match_threshold,
                                                    refine=refine, detection_threshold=detection_threshold,
                                                    nms_radius=nms_radius, correlate=correlate, lazy=lazy,
                                                    keep_more_inliers=keep_more_inliers)
        if superglue is None and matcher != "auto":
            matcher_class(matcher)           # a bad name is one line before any model loads
        from s2coreg.models.superpoint import SuperPoint

        model_path = Path(model_path)
        device = resolve_device(device)
        sp_model = superpoint if superpoint is not None else SuperPoint.from_checkpoint(model_path, device)
        extractor = SuperPointExtractor(sp_model, max_keypoints, resize, detection_threshold, nms_radius)
        if superglue is not None:
            glue = SuperGlueMatcher(superglue, match_threshold)
        else:
            folder = model_path if model_path.is_dir() or not model_path.exists() else model_path.parent
            glue = build_matcher(matcher, folder, device, match_threshold=match_threshold)
        return cls(extractor, glue, refine, ransac_threshold, min_inliers, correlate)

    @property
    def matcher_name(self) -> str:
        """The name ``matcher=`` takes for this pipeline's matcher in any process (``superglue``,
        ``mnn``, ...; a user's as ``package.module:name``: ``spec_of``)."""
        return spec_of(type(self.matcher))

    @property
    def name(self) -> str:
        return path_name(self.extractor.name if self.extractor is not None else "superpoint", self.matcher.name,
                         self.refine, self.correlate)

    def extract(self, image, valid=None, name: str = "image", size=None, normalized: bool = False) -> dict:
        if self.extractor is None:
            raise PipelineError("this pipeline has no extractor; build it with MatchingPipeline.from_checkpoints")
        return self.extractor.extract(image, valid, name, size, normalized)

    def match_features(self, f0: dict, f1: dict) -> dict:
        """Match two images' features and refine the matches; no geometry (see ``verify``)."""
        n0, n1 = len(f0["keypoints"]), len(f1["keypoints"])
        matches0, scores0 = np.full(n0, -1, np.int64), np.zeros(n0, np.float32)
        if n0 and n1:
            matches0, scores0 = self.matcher.match(f0, f1)
            matches0 = np.asarray(matches0, np.int64)
        valid = matches0 > -1
        matches1, scores1 = np.full(n1, -1, np.int64), np.zeros(n1, np.float32)
        matches1[matches0[valid]] = np.nonzero(valid)[0]
        scores1[matches0[valid]] = scores0[valid]
        points1 = np.asarray(f1["keypoints"], np.float32)
        refined = np.zeros(n1, bool)
        if self.refine and valid.any() and "fine_patches" in f1 and "fine_descriptors" in f0:
            points1 = refine_feature_matches(f0, f1, matches0)
            refined = matches1 > -1
        correlated = np.zeros(n1, bool)
        if self.correlate and valid.any():
            points1, correlated = correlate_keypoints1(f0, f1, matches0, points1, self.ransac_threshold)
        reason = f0.get("reason") or f1.get("reason") or (None if valid.any() else "no match found")
        return {"keypoints0": f0["keypoints"], "keypoints1": f1["keypoints"], "scores0": f0["scores"],
                "scores1": f1["scores"], "descriptors0": f0["descriptors"], "descriptors1": f1["descriptors"],
                "matches0": matches0, "matching_scores0": scores0, "matches1": matches1, "matching_scores1": scores1,
                "refined_keypoints1": points1, "refined1": refined, "correlated1": correlated,
                "mkpts0": np.asarray(f0["keypoints"], np.float32)[valid], "mkpts1": points1[matches0[valid]],
                "mconf": scores0[valid], "image_size0": tuple(int(v) for v in f0["image_size"]),
                "image_size1": tuple(int(v) for v in f1["image_size"]), "method": self.name, "reason": reason}

    def verify(self, result: dict) -> dict:
        """Add ``homography``, ``inliers``, ``num_inliers``, ``verified`` and the ``reason``."""
        H, inliers = estimate_homography(result["mkpts0"], result["mkpts1"], self.ransac_threshold)
        verified = is_verified(H, inliers, self.min_inliers)
        reason = result.get("reason")
        if not verified:
            H = None
            reason = reason or (f"{int(inliers.sum())} RANSAC inliers < min_inliers={self.min_inliers}: no reliable "
                                "geometric match (snow, cloud, water or no overlap?)")
        return {**result, "homography": H, "inliers": inliers, "num_inliers": int(inliers.sum()),
                "verified": verified, "reason": reason}

    def match(self, image0, image1, valid0=None, valid1=None) -> dict:
        """Extract, match, refine and verify two image arrays."""
        f0 = self.extract(image0, valid0, "image 0")
        f1 = self.extract(image1, valid1, "image 1")
        return self.verify(self.match_features(f0, f1))

    @property
    def ranking_name(self) -> str:
        """The path ``match_for_ranking`` scores every pair with (``ImageMatcher.rank``): this one."""
        return self.name

    def match_for_ranking(self, f0: dict, f1: dict) -> dict:
        """Two images' features matched and verified by one path for every pair, so that inlier
        counts compare across the candidates of a ranking: this pipeline's own."""
        return self.verify(self.match_features(f0, f1))


def corners_apart(h_a: np.ndarray, h_b: np.ndarray, f0: dict) -> float:
    """The largest distance (image 1 px) between where two homographies put image 0's corners."""
    w, h = f0.get("image_size", (0, 0))
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64).reshape(-1, 1, 2)
    a = cv2.perspectiveTransform(corners, np.asarray(h_a, np.float64))
    b = cv2.perspectiveTransform(corners, np.asarray(h_b, np.float64))
    return float(np.linalg.norm(a - b, axis=-1).max())


class LazyPipeline:
    """A ``MatchingPipeline`` of the checkpoints built where it is first used: the learned path of
    the ``sift-first`` cascade, so that a run whose pairs SIFT verifies never imports torch nor
    reads a checkpoint (a small pair's whole process: torch's import alone is about AROSICS's
    whole run, docs/benchmarks.md "Start-up"). Built once, under a lock (windows run in threads);
    every attribute but those below is the built pipeline's.

    What is checked at once, before any work (one line each): the SuperPoint checkpoint is there,
    and a GPU named (``cuda``) is usable (that loads torch: a GPU run needs it anyway; ``auto``
    picks where the path loads).
    A checkpoint that is there but unreadable is reported where it loads."""

    def __init__(self, build, model_path, device, ransac_threshold: float, min_inliers: int, correlate: bool):
        find_checkpoint(model_path, "SuperPoint")            # missing: one line now, not mid-run
        if str(device or "auto") not in ("auto", "cpu"):       # a GPU named: usable, or one line now
            resolve_device(device)
        self._build, self._built, self._lock = build, None, threading.Lock()
        self._glue = "superglue" if SuperGlueMatcher.available(Path(model_path)) else "mnn"
        self.ransac_threshold, self.min_inliers, self.correlate = ransac_threshold, min_inliers, correlate

    @property
    def loaded(self) -> bool:
        """Whether the learned path has been built (torch imported, the checkpoints read)."""
        return self._built is not None

    @property
    def pipeline(self) -> MatchingPipeline:
        if self._built is None:
            with self._lock:
                if self._built is None:
                    self._built = self._build()
        return self._built

    @property
    def name(self) -> str:
        """The built pipeline's name; before it is built, the one it will have with a fine head
        (the shipped checkpoints'), without loading anything."""
        if self._built is not None:
            return self._built.name
        return path_name("superpoint", self._glue, MatchingConfig.refine, self.correlate)

    def __getattr__(self, attr: str):
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.pipeline, attr)


class CascadePipeline:
    """A cheap matching path first, a stronger one only where the first does not verify: the
    same interface as ``MatchingPipeline`` (both are a ``Pipeline``); a result says which path made it (``method``, and
    ``cascade_path``: the first path's or the fallback's short name). Two are built by name:

    * ``matcher="fast"``: SuperPoint + mutual nearest neighbours (+ fine head + correlation
      stage), accepted with at least ``MatchingConfig.fast_min_inliers`` inliers; else SuperGlue
      on the *same* features (nothing extracted twice). At or below SIFT's time a pair, about the
      learned pipeline's accuracy (chosen on validation: docs/benchmarks.md "The fast mode").
    * ``matcher="sift-first"``: SIFT, the ratio test and the correlation stage first (the most
      precise at one pixel where it verifies: the same season, clear skies), the learned pipeline
      where it does not; the learned features of an image are extracted once, when a pair first
      needs them (the image is kept with its SIFT features, ``source``). About twice SIFT's time.
      Built with ``lazy``, the learned path itself is built where first needed (``LazyPipeline``:
      co-registration's pairs, whose start-up then has no torch where SIFT answers). With
      ``keep_more_inliers`` (co-registration's), of SIFT's few-inlier answer and the learned
      path's that agree within ``sift_first_confirm_px``, the one with more inliers is returned
      (they rank a pair's windows and make its tie points; the cloudy full tile's coarse step:
      SIFT 20 inliers, the learned path 406).
    """

    def __init__(self, kind: str, first: MatchingPipeline, fallback: "MatchingPipeline | LazyPipeline",
                 labels: tuple[str, str], accept_inliers: int, shared: bool, confirm_below: int = 0,
                 keep_more_inliers: bool = False):
        self.matcher_name = kind          # fast | sift-first: the name matcher= takes for it
        self.first, self.fallback, self.labels = first, fallback, labels
        self.accept_inliers, self.shared = accept_inliers, shared
        # the first path's answer, verified with fewer inliers than this, is checked against the
        # fallback's (sift-first: SIFT's few-inlier fits were the wrong ones; 0: never)
        self.confirm_below, self.confirm_px = confirm_below, MatchingConfig.sift_first_confirm_px
        self.keep_more_inliers = keep_more_inliers
        self.extractor = first.extractor
        self.correlate = fallback.correlate
        self.ransac_threshold, self.min_inliers = fallback.ransac_threshold, fallback.min_inliers

    @property
    def refine(self) -> bool:
        """The fallback's (the learned path's fine head; sift-first: loads it)."""
        return self.fallback.refine

    @classmethod
    def from_checkpoints(cls, name: str, model_path=config.CHECKPOINT_DIR, device=None, *, max_keypoints=None,
                         resize=0, ransac_threshold=MatchingConfig.ransac_threshold,
                         min_inliers=MatchingConfig.min_inliers, accept_inliers=MatchingConfig.fast_min_inliers,
                         lazy: bool = False, keep_more_inliers: bool = False, **learned_options) -> "CascadePipeline":
        """``name``: ``fast`` or ``sift-first`` (see the class); ``accept_inliers``: the fast
        cascade's (mutual nearest neighbours' inliers that keep the pair from SuperGlue); ``lazy``:
        sift-first's learned path built where first needed (``LazyPipeline``); ``keep_more_inliers``:
        see the class."""
        def learned_path() -> MatchingPipeline:
            return MatchingPipeline.from_checkpoints(model_path, "auto", device, max_keypoints=max_keypoints,
                                                     resize=resize, ransac_threshold=ransac_threshold,
                                                     min_inliers=min_inliers, **learned_options)

        if name == "fast":
            learned = learned_path()
            if not isinstance(learned.matcher, SuperGlueMatcher):
                raise PipelineError(f"{model_path}: matcher='fast' falls back to SuperGlue, and there is no superglue*.pt "
                                    "beside the SuperPoint checkpoint; add one, or use matcher='mnn'")
            mnn = MatchingPipeline(learned.extractor, MutualNearestNeighbours(), learned.refine, ransac_threshold,
                                   min_inliers, learned.correlate)
            return cls(name, mnn, learned, ("mnn", learned.matcher.name), max(min_inliers, accept_inliers),
                       shared=True)
        if name == "sift-first":
            correlate = learned_options.get("correlate", MatchingConfig.correlate)
            given = learned_options.get("superpoint") is not None or learned_options.get("superglue") is not None
            if not lazy or given:
                learned = learned_path()          # the checkpoints read now (or models given: training's validation)
                cell, max_keypoints = learned.extractor.config.cell, max_keypoints or learned.extractor.config.max_keypoints
            else:                                 # the learned path (torch, both checkpoints) where first needed
                check_extraction(max_keypoints, resize)
                learned = LazyPipeline(learned_path, model_path, device, ransac_threshold, min_inliers, correlate)
                cell, max_keypoints = SuperPointConfig().cell, max_keypoints or SuperPointConfig.max_keypoints
            sift = SiftExtractor(max_keypoints, lambda w, h: network_size(w, h, resize, cell))
            classical = MatchingPipeline(None, RatioTest(), refine=False, ransac_threshold=ransac_threshold,
                                         min_inliers=min_inliers, correlate=correlate)
            classical.extractor = sift
            return cls(name, classical, learned, ("sift", "learned"), min_inliers, shared=False,
                       confirm_below=MatchingConfig.sift_first_confirm_inliers, keep_more_inliers=keep_more_inliers)
        raise PipelineError(f"unknown cascade {name!r}; choose from {', '.join(CASCADES)}")

    @property
    def name(self) -> str:
        return f"{self.first.name}, else {self.fallback.name}"

    def extract(self, image, valid=None, name: str = "image", size=None, normalized: bool = False) -> dict:
        f = self.extractor.extract(image, valid, name, size, normalized)
        if not self.shared:
            f["source"] = (image, valid, name, size, normalized)
        return f

    def _fallback_features(self, f: dict) -> dict:
        if self.shared:
            return f
        if "fallback" not in f:
            f["fallback"] = self.fallback.extract(*f["source"])
        return f["fallback"]

    def match_features(self, f0: dict, f1: dict) -> dict:
        """The first path's result where it verifies with ``accept_inliers``, else the
        fallback's (verified or not)."""
        first = self.first.verify(self.first.match_features(f0, f1))
        nothing = self.shared and (f0.get("reason") or f1.get("reason"))   # blank: the fallback has nothing more
        accepted = first["verified"] and first["num_inliers"] >= self.accept_inliers
        if nothing or (accepted and first["num_inliers"] >= self.confirm_below):
            return {**first, "method": self.first.name, "cascade_path": self.labels[0]}
        why = (f"{first['num_inliers']} inliers < {self.accept_inliers}" if first["verified"] else "did not verify")
        g0, g1 = self._fallback_features(f0), self._fallback_features(f1)
        r = self.fallback.verify(self.fallback.match_features(g0, g1))
        if accepted:           # few inliers: kept where the fallback does not verify, or agrees with it
            if not r["verified"]:
                return {**first, "method": self.first.name, "cascade_path": self.labels[0]}
            apart = corners_apart(first["homography"], r["homography"], f0)
            if apart > self.confirm_px:
                why = f"{first['num_inliers']} inliers, its homography {apart:.0f} px from the {self.labels[1]} path's"
            elif self.keep_more_inliers and r["num_inliers"] > first["num_inliers"]:
                why = f"{first['num_inliers']} inliers, {r['num_inliers']} of the {self.labels[1]} path's agree"
            else:
                return {**first, "method": self.first.name, "cascade_path": self.labels[0]}
        return {**r, "method": f"{self.fallback.name} ({self.labels[0]}: {why})", "cascade_path": self.labels[1]}

    def verify(self, result: dict) -> dict:
        return result if "verified" in result else self.fallback.verify(result)

    def match(self, image0, image1, valid0=None, valid1=None) -> dict:
        return self.match_features(self.extract(image0, valid0, "image 0"), self.extract(image1, valid1, "image 1"))

    @property
    def ranking_name(self) -> str:
        """The path ``match_for_ranking`` scores every pair with: the fallback (the learned pipeline)."""
        return self.fallback.name

    def match_for_ranking(self, f0: dict, f1: dict) -> dict:
        """The fallback path on every pair, whatever the first path would give: a pair the first
        path accepts and one it hands on would otherwise be scored by different paths, whose inlier
        counts do not compare (SIFT's against SuperGlue's; mutual nearest neighbours' against
        SuperGlue's). The fallback is the one path that answers every pair (``ImageMatcher.rank``)."""
        g0, g1 = self._fallback_features(f0), self._fallback_features(f1)
        r = self.fallback.verify(self.fallback.match_features(g0, g1))
        return {**r, "method": self.fallback.name, "cascade_path": self.labels[1]}


# ----------------------------------------------------------------------------- features files
FEATURE_ARRAYS = ("keypoints", "scores", "descriptors", "image_size", "network_size", "scale",
                  "fine_descriptors", "fine_patches", "fine_temperature", "texture", "texture_scale")


def features_to_file(features: dict) -> dict:
    """The arrays of a features dict to write to an ``.npz`` (``reason`` as a string)."""
    out = {k: features[k] for k in FEATURE_ARRAYS if k in features}
    if features.get("reason"):
        out["reason"] = np.array(features["reason"])
    return out


def load_features(path: str | Path) -> dict:
    """A features ``.npz`` written by ``SuperPoint.py``, as the dict ``extract`` returns."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: no features; run SuperPoint.py on that image first")
    try:
        with np.load(path) as f:
            out = {k: f[k] for k in FEATURE_ARRAYS if k in f}
            if "reason" in f:
                out["reason"] = str(f["reason"])
    except Exception as exc:
        raise PipelineError(f"{path}: not a features file of SuperPoint.py ({exc}); re-extract it") from exc
    missing = [k for k in ("keypoints", "scores", "descriptors", "image_size") if k not in out]
    if missing:
        raise PipelineError(f"{path}: not a features file of SuperPoint.py (no {', '.join(missing)}); re-extract it")
    return out
