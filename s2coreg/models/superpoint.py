"""SuperPoint (DeTone, Malisiewicz, Rabinovich 2018); ``python SuperPoint.py`` runs the extraction stage.

Network: a VGG-style encoder with stride ``cell`` (8), a detector head of ``cell² + 1``
channels (one per pixel of a cell plus "no keypoint") and a descriptor head whose dense
map is sampled bilinearly at the keypoints and L2-normalised.

    python SuperPoint.py --input data/preprocessed --output data/features

writes one ``.npz`` per image with ``keypoints`` (N×2, x y, pixel centres at integers, in
the input image's own pixel frame), ``scores`` (N), ``descriptors`` (N×D) and
``image_size`` (width, height); a model with a fine head adds ``fine_descriptors`` (N×C) and
``fine_patches`` (N×P×C, the fine map's cells around each keypoint; float16), with which
matches are refined to sub-pixel, and ``fine_temperature``. The stage script itself is
``stages.extract_main`` (it calls the matching path, which imports this network).
"""
from __future__ import annotations

import s2coreg.config as config  # noqa: I001  first: OpenMP's waiting policy is set there, before torch loads

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s2coreg.models.checkpoints import CheckpointMixin
from s2coreg.config import SuperPointConfig
from s2coreg.utils import PipelineError

CHECKPOINT_KIND = "SuperPoint"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3×3 conv + BN + ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


def _head(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, c_out, 1),
    )


def simple_nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Keep only the local maxima of ``scores`` (B, H, W) within a (2r+1)² window; others → 0.

    Max-pool NMS; the square window's max-pool is done as two separable 1-D pools (the same
    result, a quarter of the work at 512² with r = 4). On the CPU OpenCV's dilation computes the
    same maximum 13× faster (0.9 vs 11.5 ms at 512²).
    """
    if radius <= 0:
        return scores
    k = 2 * radius + 1
    if scores.device.type == "cpu" and scores.dtype == torch.float32:
        import cv2

        kernel = np.ones((k, k), np.uint8)
        pooled = torch.from_numpy(np.stack([cv2.dilate(np.ascontiguousarray(s), kernel, borderType=cv2.BORDER_REPLICATE)
                                            for s in scores.numpy()]))
        return torch.where(scores == pooled, scores, torch.zeros_like(scores))
    pooled = F.max_pool2d(scores[:, None], (1, k), stride=1, padding=(0, radius))
    pooled = F.max_pool2d(pooled, (k, 1), stride=1, padding=(radius, 0))[:, 0]
    return torch.where(scores == pooled, scores, torch.zeros_like(scores))


def sample_descriptors(keypoints: torch.Tensor, descriptors: torch.Tensor, cell: int) -> torch.Tensor:
    """Bilinearly sample a dense descriptor map at keypoints and L2-normalise.

    Args:
        keypoints: (B, N, 2) x y in image pixels, pixel centres at integers.
        descriptors: (B, D, Hc, Wc) map; its cell (i, j) covers image pixels
            ``cell*j .. cell*j + cell - 1`` horizontally, so its centre is at
            ``cell*j + (cell - 1) / 2``.
        cell: stride of the map.
    Returns:
        (B, N, D) unit descriptors.
    """
    _, _, hc, wc = descriptors.shape
    grid = (keypoints - (cell - 1) / 2.0) / cell  # map-cell coordinates, centres at integers
    grid = grid / grid.new_tensor([max(wc - 1, 1), max(hc - 1, 1)]) * 2 - 1
    sampled = F.grid_sample(descriptors, grid[:, None], mode="bilinear", align_corners=True)
    return F.normalize(sampled[:, :, 0].transpose(1, 2), p=2, dim=-1)


def window_offsets(radius: int, device=None) -> torch.Tensor:
    """(P, 2) x y offsets, in fine cells, of a (2r+1)² window, row-major; P // 2 is the centre."""
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dx.reshape(-1), dy.reshape(-1)], -1)


def _fine_cell(points: torch.Tensor, stride: int) -> torch.Tensor:
    """Index (x, y) of the fine-map cell nearest to each point; cell j is centred on stride·j + (stride−1)/2."""
    return torch.round((points - (stride - 1) / 2) / stride)


def snap_to_fine_grid(points: torch.Tensor, stride: int = SuperPointConfig.fine_stride) -> torch.Tensor:
    """Centre, in image pixels, of the fine-map cell nearest to each point."""
    return stride * _fine_cell(points, stride) + (stride - 1) / 2


def fine_patches(fine_dense: torch.Tensor, points: torch.Tensor, radius: int,
                 stride: int = SuperPointConfig.fine_stride) -> torch.Tensor:
    """Fine descriptors of the (2r+1)² cells of the fine map around the cell nearest each point.

    The window is centred on ``snap_to_fine_grid(points)``; cells beyond the map are zero
    vectors. A gather, not an interpolation: 6× cheaper than bilinear sampling, and
    training sees exactly what inference sees.

    Args:
        fine_dense: (B, C, H/stride, W/stride) unit-length fine map.
        points: (B, N, 2) x y image pixels.
    Returns:
        (B, N, P, C), P = (2r+1)², row-major, the centre at P // 2.
    """
    b, c, h, w = fine_dense.shape
    n = points.shape[1]
    padded = F.pad(fine_dense, (radius,) * 4).flatten(2)                          # (B, C, Hp*Wp)
    wp, hp = w + 2 * radius, h + 2 * radius
    cell = _fine_cell(points, stride).long() + radius                             # (B, N, 2) in the padded map
    off = window_offsets(radius, points.device).long()                            # (P, 2)
    ix = (cell[:, :, None, 0] + off[:, 0]).clamp(0, wp - 1)
    iy = (cell[:, :, None, 1] + off[:, 1]).clamp(0, hp - 1)
    idx = (iy * wp + ix).reshape(b, 1, -1).expand(b, c, -1)
    return padded.gather(2, idx).reshape(b, c, n, -1).permute(0, 2, 3, 1)


def refine_matches(fine0: torch.Tensor, patches1: torch.Tensor, kpts1: torch.Tensor, matches0: torch.Tensor,
                   temperature: float, stride: int = SuperPointConfig.fine_stride) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each match's point in image 1 to where image 0's keypoint fits best.

    The fine descriptor of keypoint i of image 0 is compared with the window of fine cells
    around its match j in image 1; the softmax over the window peaks at the best cell, refined
    to sub-pixel by the expectation over the peak's 3×3 neighbourhood.

    Args:
        fine0: (N0, C) fine descriptors of image 0's keypoints (``fine_descriptors``).
        patches1: (N1, P, C) fine windows around image 1's keypoints (``fine_patches``).
        kpts1: (N1, 2) keypoints of image 1.
        matches0: (N0,) index into image 1 or -1.
    Returns:
        refined (N1, 2) keypoints of image 1 (unmatched ones unchanged) and (N1,) the peak
        probability of each refined keypoint (0 for unmatched ones).
    """
    refined, confidence = kpts1.clone(), kpts1.new_zeros(len(kpts1))
    side = int(round(patches1.shape[1] ** 0.5))
    radius = side // 2
    i0 = torch.nonzero(matches0 > -1, as_tuple=True)[0]
    if len(i0) == 0:
        return refined, confidence
    j1 = matches0[i0]
    sim = torch.einsum("npc,nc->np", patches1[j1].float(), fine0[i0].float()) / temperature
    prob = sim.softmax(dim=1)                                                 # (M, P)
    peak = prob.argmax(dim=1)
    py, px = peak // side, peak % side
    # expectation over the peak's 3×3 neighbourhood (clipped to the window)
    prob2d = prob.view(-1, side, side)
    ys = (py[:, None] + torch.arange(-1, 2, device=prob.device)[None]).clamp(0, side - 1)   # (M, 3)
    xs = (px[:, None] + torch.arange(-1, 2, device=prob.device)[None]).clamp(0, side - 1)
    w = prob2d[torch.arange(len(peak))[:, None, None], ys[:, :, None], xs[:, None, :]]      # (M, 3, 3)
    w = w / w.sum(dim=(1, 2), keepdim=True)
    ey = (w.sum(2) * ys.float()).sum(1) - radius
    ex = (w.sum(1) * xs.float()).sum(1) - radius
    centre = snap_to_fine_grid(kpts1[j1], stride)
    refined[j1] = centre + stride * torch.stack([ex, ey], -1).to(kpts1.dtype)
    confidence[j1] = prob.max(dim=1).values.to(kpts1.dtype)
    return refined, confidence


class SuperPoint(CheckpointMixin, nn.Module):
    """SuperPoint with configurable widths, descriptor size and input bands.

    ``SuperPoint(config)`` builds random weights; ``SuperPoint.from_checkpoint(path)`` loads.
    """

    kind = CHECKPOINT_KIND
    config_class = SuperPointConfig

    def __init__(self, cfg: SuperPointConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or SuperPointConfig()
        widths = (cfg.in_channels,) + tuple(cfg.channels)
        self.blocks = nn.ModuleList(_block(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.pool = nn.MaxPool2d(2, 2)
        self.detector = _head(cfg.channels[-1], cfg.head_dim, cfg.cell ** 2 + 1)
        self.descriptor = _head(cfg.channels[-1], cfg.head_dim, cfg.descriptor_dim)
        if cfg.fine_dim > 0:
            # at 512² on 2 CPU cores: 16 hidden channels cost 2 ms, 32 cost 9 ms (oneDNN kernels)
            self.fine = _head(cfg.channels[1], cfg.fine_hidden, cfg.fine_dim)
        # NHWC weights: oneDNN's convolutions run about twice as fast on CPU (same state_dict)
        self.to(memory_format=torch.channels_last)

    def fused(self) -> "SuperPoint":
        """An inference copy with every batch norm folded into the convolution before it (eval
        mode, the same outputs to float rounding, ~20 % faster on the CPU); ``self`` is untouched,
        so a model in training can be validated through it."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        def fold(seq: nn.Sequential) -> nn.Sequential:
            mods, out = list(seq), []
            while mods:
                m = mods.pop(0)
                if isinstance(m, nn.Conv2d) and mods and isinstance(mods[0], nn.BatchNorm2d):
                    m = fuse_conv_bn_eval(m, mods.pop(0))
                out.append(m)
            return nn.Sequential(*out)

        model = copy.deepcopy(self).eval()
        model.blocks = nn.ModuleList(fold(b) for b in model.blocks)
        model.detector, model.descriptor = fold(model.detector), fold(model.descriptor)
        if self.config.fine_dim > 0:
            model.fine = fold(model.fine)
        return model.to(memory_format=torch.channels_last).requires_grad_(False)

    # ------------------------------------------------------------------ dense outputs
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense outputs for a batch ``image`` (B, C, H, W), H and W multiples of ``cell``.

        Returns ``logits`` (B, cell²+1, H/cell, W/cell) and ``descriptors_dense``
        (B, D, H/cell, W/cell), L2-normalised along D; with a fine head also ``fine_dense``
        (B, fine_dim, H/2, W/2), L2-normalised.
        """
        x, out = image, {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == 1 and self.config.fine_dim > 0:
                out["fine_dense"] = F.normalize(self.fine(x), dim=1)
            if i < len(self.blocks) - 1:
                x = self.pool(x)
        return {"logits": self.detector(x), "descriptors_dense": F.normalize(self.descriptor(x), dim=1), **out}

    @staticmethod
    def heatmap(logits: torch.Tensor) -> torch.Tensor:
        """Detector logits (B, cell²+1, Hc, Wc) → per-pixel keypoint probability (B, H, W)."""
        cell = int(round((logits.shape[1] - 1) ** 0.5))
        prob = logits.softmax(dim=1)[:, :-1]
        return F.pixel_shuffle(prob, cell)[:, 0]

    # ------------------------------------------------------------------ sparse outputs
    @torch.no_grad()
    def extract(self, image: torch.Tensor, valid: torch.Tensor | None = None, max_keypoints: int | None = None,
                cfg: SuperPointConfig | None = None) -> list[dict[str, torch.Tensor]]:
        """Keypoints, scores and descriptors for a batch ``image`` (B, C, H, W) of any size.

        ``valid`` (B, H, W) bool masks out nodata / cloud pixels. ``cfg`` overrides the
        extraction settings (thresholds, NMS, top-k) of the model's own config. Returns one dict
        per image with ``keypoints`` (N, 2) x y, ``scores`` (N) and ``descriptors`` (N, D), and
        with a fine head ``fine_descriptors`` (N, C) and ``fine_patches`` (N, P, C); N may be 0.
        """
        cfg = cfg or self.config
        if cfg.subpixel and cfg.subpixel_fit not in SUBPIXEL_FITS:
            raise PipelineError(f"subpixel_fit={cfg.subpixel_fit!r}: choose from {', '.join(SUBPIXEL_FITS)}")
        if image.dim() != 4 or image.shape[1] != cfg.in_channels:
            raise PipelineError(f"SuperPoint takes (B, {cfg.in_channels}, H, W) images, got {tuple(image.shape)}")
        b, _, h, w = image.shape
        pad_h, pad_w = (-h) % cfg.cell, (-w) % cfg.cell
        out = self(F.pad(image, (0, pad_w, 0, pad_h), mode="replicate"))
        heat = self.heatmap(out["logits"])[:, :h, :w]
        scores = simple_nms(heat, cfg.nms_radius)
        border = cfg.remove_borders
        if border > 0:
            scores[:, :border] = 0
            scores[:, :, :border] = 0
            scores[:, h - border:] = 0
            scores[:, :, w - border:] = 0
        if valid is not None and not bool(valid.all()):
            # drop keypoints whose neighbourhood touches invalid pixels (separable dilation)
            invalid = F.max_pool2d((~valid).float()[:, None], (1, 2 * border + 1), 1, (0, border))
            invalid = F.max_pool2d(invalid, (2 * border + 1, 1), 1, (border, 0))[:, 0] > 0
            scores = scores.masked_fill(invalid, 0)
        k = cfg.max_keypoints if max_keypoints is None else max_keypoints
        results = []
        for i in range(b):
            ys, xs = torch.nonzero(scores[i] > cfg.detection_threshold, as_tuple=True)
            s = scores[i, ys, xs]
            if k is not None and k >= 0 and len(s) > k:
                s, order = s.topk(k)
                ys, xs = ys[order], xs[order]
            kpts = torch.stack([xs, ys], dim=-1).float()
            if cfg.subpixel and len(kpts):
                kpts = SUBPIXEL_FITS[cfg.subpixel_fit](heat[i], kpts)
            dense = out["descriptors_dense"]
            if len(kpts):
                desc = sample_descriptors(kpts[None], dense[i:i + 1], cfg.cell)[0]
            else:   # nothing to sample (a smooth or tiny image): empty, with the right widths
                desc = dense.new_zeros(0, dense.shape[1])
            results.append({"keypoints": kpts, "scores": s, "descriptors": desc})
            if "fine_dense" in out:
                fine = out["fine_dense"][i:i + 1]
                side = (2 * cfg.fine_radius + 1) ** 2
                results[-1]["fine_descriptors"] = (sample_descriptors(kpts[None], fine, cfg.fine_stride)[0] if len(kpts)
                                                   else fine.new_zeros(0, fine.shape[1]))
                results[-1]["fine_patches"] = (fine_patches(fine, kpts[None], cfg.fine_radius)[0] if len(kpts)
                                               else fine.new_zeros(0, side, fine.shape[1]))
        return results

    @staticmethod
    def _refine(heat: torch.Tensor, kpts: torch.Tensor, radius: int = 1) -> torch.Tensor:
        """Soft-argmax of the heatmap in a (2r+1)² window around each integer peak."""
        h, w = heat.shape
        offsets = torch.arange(-radius, radius + 1, device=heat.device, dtype=torch.float32)
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        x = (kpts[:, 0, None] + dx.reshape(1, -1)).clamp(0, w - 1)
        y = (kpts[:, 1, None] + dy.reshape(1, -1)).clamp(0, h - 1)
        weights = heat[y.long(), x.long()]
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.stack([(weights * x).sum(1), (weights * y).sum(1)], dim=-1)

    @staticmethod
    def _fit_quadratic(heat: torch.Tensor, kpts: torch.Tensor) -> torch.Tensor:
        """Each integer peak moved to the vertex of a parabola through the log-heat at it and its
        two neighbours, along x and along y apart (a Gaussian peak's exact centre); at most ±0.5 px."""
        h, w = heat.shape
        x, y = kpts[:, 0].long(), kpts[:, 1].long()

        def log_heat(dx: int, dy: int) -> torch.Tensor:
            return heat[(y + dy).clamp(0, h - 1), (x + dx).clamp(0, w - 1)].clamp_min(1e-12).log()

        centre = log_heat(0, 0)

        def vertex(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
            curvature = before - 2 * centre + after
            step = 0.5 * (before - after) / curvature.clamp_max(-1e-6)   # a flat or upturned fit: no move
            return torch.where(curvature < -1e-6, step, torch.zeros_like(step)).clamp(-0.5, 0.5)

        return kpts + torch.stack([vertex(log_heat(-1, 0), log_heat(1, 0)), vertex(log_heat(0, -1), log_heat(0, 1))], -1)


# ``SuperPointConfig.subpixel_fit``: how an NMS peak (integer x y) is refined on the heatmap (H, W)
SUBPIXEL_FITS = {"softargmax": SuperPoint._refine, "quadratic": SuperPoint._fit_quadratic}


def default_checkpoint() -> Path:
    """The shipped SuperPoint checkpoint."""
    return config.CHECKPOINT_DIR / "superpoint.pt"
