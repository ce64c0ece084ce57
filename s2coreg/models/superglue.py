"""SuperGlue (Sarlin, DeTone, Malisiewicz, Rabinovich 2020); ``python SuperGlue_architecture.py`` runs the matching stage.

Network: a keypoint encoder (MLP on normalised position and score) added to each
descriptor, an attentional graph network alternating self- and cross-attention layers
(multi-head attention, message MLPs, residual updates), a final projection, the score
matrix with a learned dustbin score, differentiable optimal transport by log-space
Sinkhorn iterations, and mutual-check + threshold match extraction.

    python SuperGlue_architecture.py --features data/features --pairs pairs.txt --output data/matches
    python SuperGlue_architecture.py --features data/features --all-pairs --output data/matches

writes one ``.npz`` per pair with ``keypoints0/1`` (N×2, x y), ``matches0`` (index into
image 1, -1 = none), ``matching_scores0``, ``matches1`` / ``matching_scores1``, and the
geometric verification of ``matching.MatchingPipeline``: ``homography`` (NaN when not
verified), ``inliers``, ``num_inliers``, ``verified`` and ``reason``. When the features carry
SuperPoint's fine patches, each matched keypoint of image 1 is moved to where image 0's keypoint
fits best (sub-pixel; ``refined_keypoints1`` holds the refined positions, ``refined1`` marks them);
``--no-refine`` keeps the detected positions; ``--no-correlate`` skips the correlation stage that
then makes them precise (``matching.correlation_stage``, on the features' ``texture``). The stage
script itself is ``stages.match_main``.
"""
from __future__ import annotations

import s2coreg.config as config  # noqa: I001  first: OpenMP's waiting policy is set there, before torch loads

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from s2coreg.models.checkpoints import CheckpointMixin
from s2coreg.config import SuperGlueConfig

CHECKPOINT_KIND = "SuperGlue"
MASKED = -1e9  # score of padded (masked) entries


def mlp(channels: list[int], norm_last: bool = False) -> nn.Sequential:
    """1×1 convolutions with batch norm and ReLU between them (none after the last)."""
    layers = []
    for i in range(1, len(channels)):
        layers.append(nn.Conv1d(channels[i - 1], channels[i], 1, bias=True))
        if i < len(channels) - 1 or norm_last:
            layers += [nn.BatchNorm1d(channels[i]), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def normalize_keypoints(kpts: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) pixel keypoints → centred, scaled by 0.7 × the longer side (as in SuperGlue).

    ``size`` (B, 2) is (width, height) of each image.
    """
    size = size.to(kpts)
    center = (size - 1) / 2
    scale = size.max(dim=1, keepdim=True).values * 0.7
    return (kpts - center[:, None]) / scale[:, None]


class KeypointEncoder(nn.Module):
    """MLP on (x, y, score) whose output is added to the descriptor."""

    def __init__(self, dim: int, layers: tuple[int, ...]):
        super().__init__()
        self.encoder = mlp([3, *layers, dim])
        nn.init.constant_(self.encoder[-1].bias, 0.0)

    def forward(self, kpts: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.cat([kpts.transpose(1, 2), scores[:, None]], dim=1))


class MultiHeadAttention(nn.Module):
    def __init__(self, heads: int, dim: int):
        super().__init__()
        assert dim % heads == 0, "descriptor_dim must be divisible by heads"
        self.heads, self.head_dim = heads, dim // heads
        self.proj = nn.ModuleList(nn.Conv1d(dim, dim, 1) for _ in range(3))
        self.merge = nn.Conv1d(dim, dim, 1)

    def forward(self, query, key, value, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, N) query, (B, D, M) key/value; ``key_mask`` (B, M) True for real keypoints.

        Channels are split into heads as in SuperGlue (channel ``d * heads + h``), then fed to
        PyTorch's fused ``scaled_dot_product_attention`` (3× faster than an explicit softmax
        on 2 CPU cores at 1024 keypoints).
        """
        b = query.shape[0]
        # (B, H, N, d), contiguous: otherwise the CPU falls back to the slow unfused path
        q, k, v = (p(x).view(b, self.head_dim, self.heads, -1).permute(0, 2, 3, 1).contiguous()
                   for p, x in zip(self.proj, (query, key, value)))
        mask = None
        if key_mask is not None and not bool(key_mask.all()):
            # a finite fill, not -inf: a side without any keypoint must not give NaN
            mask = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~key_mask, MASKED)
            mask = mask[:, None, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if mask is not None:  # a side without any keypoint sends no message
            out = out * key_mask.any(dim=1)[:, None, None, None]
        return self.merge(out.permute(0, 3, 1, 2).reshape(b, self.head_dim * self.heads, -1))


class AttentionalPropagation(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = MultiHeadAttention(heads, dim)
        self.mlp = mlp([2 * dim, 2 * dim, dim])
        nn.init.constant_(self.mlp[-1].bias, 0.0)

    def forward(self, x, source, source_mask=None):
        return self.mlp(torch.cat([x, self.attn(x, source, source, source_mask)], dim=1))


class AttentionalGNN(nn.Module):
    """Alternating self ('self') and cross ('cross') attention layers with residual updates."""

    def __init__(self, dim: int, layer_names: list[str], heads: int):
        super().__init__()
        self.layers = nn.ModuleList(AttentionalPropagation(dim, heads) for _ in layer_names)
        self.names = layer_names

    def forward(self, desc0, desc1, mask0=None, mask1=None):
        for layer, name in zip(self.layers, self.names):
            if name == "cross":
                src0, src1, m0, m1 = desc1, desc0, mask1, mask0
            else:
                src0, src1, m0, m1 = desc0, desc1, mask0, mask1
            delta0, delta1 = layer(desc0, src0, m0), layer(desc1, src1, m1)
            desc0, desc1 = desc0 + delta0, desc1 + delta1
        return desc0, desc1


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.logsumexp`` without denormals: terms below e^-60 of the largest are counted as
    e^-60 (a relative change under 1e-23 for any matrix that fits in memory).

    A trained SuperGlue's scores span hundreds of nats, and the exp() of those differences
    lands in float32 denormals, which x86 CPUs compute ~20× slower: that made Sinkhorn 60 %
    of a whole match on 2 cores.
    """
    peak = x.amax(dim, keepdim=True)
    return (x - peak).clamp_min(-60.0).exp().sum(dim).log() + peak.squeeze(dim)


def log_optimal_transport(scores: torch.Tensor, alpha: torch.Tensor, iters: int,
                          mask0: torch.Tensor | None = None, mask1: torch.Tensor | None = None) -> torch.Tensor:
    """Log-space Sinkhorn with a dustbin row and column.

    Args:
        scores: (B, M, N) similarity scores.
        alpha: scalar dustbin score.
        iters: Sinkhorn iterations.
        mask0, mask1: (B, M), (B, N) True for real keypoints; padded ones get no mass, so a
            padded batch gives the same result as its pairs one by one.
    Returns:
        (B, M+1, N+1) log assignment matrix: in probability, each real keypoint's row and
        column sum to 1, the dustbin row to N and the dustbin column to M.
    """
    b, m, n = scores.shape
    dev = scores.device
    mask0 = torch.ones(b, m, dtype=torch.bool, device=dev) if mask0 is None else mask0
    mask1 = torch.ones(b, n, dtype=torch.bool, device=dev) if mask1 is None else mask1
    ms, ns = mask0.sum(1).to(scores), mask1.sum(1).to(scores)                    # real counts (B,)
    bins0 = alpha.expand(b, m, 1)
    bins1 = alpha.expand(b, 1, n)
    corner = alpha.expand(b, 1, 1)
    couplings = torch.cat([torch.cat([scores, bins0], -1), torch.cat([bins1, corner], -1)], 1)
    valid0 = torch.cat([mask0, torch.ones(b, 1, dtype=torch.bool, device=dev)], 1)   # (B, M+1)
    valid1 = torch.cat([mask1, torch.ones(b, 1, dtype=torch.bool, device=dev)], 1)   # (B, N+1)
    valid = valid0[:, :, None] & valid1[:, None, :]
    # padded entries get a huge negative score: exp() is exactly 0, and unlike -inf it keeps
    # the gradients of fully padded rows finite
    couplings = couplings.masked_fill(~valid, MASKED)

    norm = -(ms + ns).log()                                                        # (B,)
    log_mu = torch.cat([norm[:, None].expand(b, m), (ns.log() + norm)[:, None]], 1)
    log_nu = torch.cat([norm[:, None].expand(b, n), (ms.log() + norm)[:, None]], 1)
    if torch.is_grad_enabled() and couplings.requires_grad:
        u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
        for _ in range(iters):
            u = torch.where(valid0, log_mu - _logsumexp(couplings + v[:, None, :], dim=2), 0.0)
            v = torch.where(valid1, log_nu - _logsumexp(couplings + u[:, :, None], dim=1), 0.0)
    else:
        u, v = _sinkhorn_scaling(couplings, log_mu, log_nu, valid0, valid1, iters)
    return couplings + u[:, :, None] + v[:, None, :] - norm[:, None, None]


def _sinkhorn_scaling(couplings: torch.Tensor, log_mu: torch.Tensor, log_nu: torch.Tensor, valid0: torch.Tensor,
                      valid1: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same iterations as the log-domain loop, in scaling form (inference only, 6× faster).

    With the kernel ``K = exp(C - rowmax)`` computed once, each half-iteration is one
    matrix-vector product instead of a log-sum-exp over the whole matrix. It cannot divide
    by zero: every column has the dustbin row's entry 1, every row its maximum 1; float64
    keeps the scalings' range. Returns the log potentials ``u``, ``v`` of the log-domain form.
    """
    rowmax = couplings.amax(2, keepdim=True)
    kernel = (couplings - rowmax).double().exp()                               # (B, M+1, N+1)
    mu, nu = log_mu.double().exp() * valid0, log_nu.double().exp() * valid1
    a, b = torch.ones_like(mu), torch.ones_like(nu)
    for _ in range(iters):
        a = mu / (kernel @ b[..., None])[..., 0].clamp_min(1e-300)
        b = nu / (kernel.transpose(1, 2) @ a[..., None])[..., 0].clamp_min(1e-300)
    u = torch.where(valid0, a.clamp_min(1e-300).log() - rowmax[..., 0].double(), 0.0)
    v = torch.where(valid1, b.clamp_min(1e-300).log(), 0.0)
    return u.to(couplings.dtype), v.to(couplings.dtype)


def extract_matches(log_assignment: torch.Tensor, threshold: float,
                    mask0: torch.Tensor | None = None, mask1: torch.Tensor | None = None) -> dict:
    """Mutual-best matches above ``threshold`` (probability) from a (B, M+1, N+1) log assignment."""
    scores = log_assignment[:, :-1, :-1]
    max0, max1 = scores.max(2), scores.max(1)
    idx0, idx1 = max0.indices, max1.indices
    ar0 = torch.arange(idx0.shape[1], device=scores.device)[None]
    ar1 = torch.arange(idx1.shape[1], device=scores.device)[None]
    mutual0 = ar0 == idx1.gather(1, idx0)
    mutual1 = ar1 == idx0.gather(1, idx1)
    zero = scores.new_tensor(0)
    mscores0 = torch.where(mutual0, max0.values.exp(), zero)
    mscores1 = torch.where(mutual1, mscores0.gather(1, idx1), zero)
    valid0 = mutual0 & (mscores0 > threshold)
    valid1 = mutual1 & valid0.gather(1, idx1)
    if mask0 is not None:
        valid0 &= mask0
    if mask1 is not None:
        valid1 &= mask1
    return {"matches0": torch.where(valid0, idx0, -1), "matches1": torch.where(valid1, idx1, -1),
            "matching_scores0": torch.where(valid0, mscores0, zero),
            "matching_scores1": torch.where(valid1, mscores1, zero)}


class SuperGlue(CheckpointMixin, nn.Module):
    """SuperGlue matcher. ``SuperGlue(config)`` builds random weights; ``from_checkpoint`` loads.

    Input dict (batched, padded to the longest side with masks):
        keypoints0/1 (B, N, 2) x y pixels; scores0/1 (B, N); descriptors0/1 (B, N, D);
        image_size0/1 (B, 2) width, height; optional mask0/1 (B, N) bool.
    Output: ``log_assignment`` (B, N0+1, N1+1), ``matches0/1``, ``matching_scores0/1``.
    """

    kind = CHECKPOINT_KIND
    config_class = SuperGlueConfig

    def __init__(self, cfg: SuperGlueConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or SuperGlueConfig()
        self.kenc = KeypointEncoder(cfg.descriptor_dim, cfg.keypoint_encoder)
        self.gnn = AttentionalGNN(cfg.descriptor_dim, ["self", "cross"] * cfg.layers, cfg.heads)
        self.final_proj = nn.Conv1d(cfg.descriptor_dim, cfg.descriptor_dim, 1)
        self.bin_score = nn.Parameter(torch.tensor(1.0))
        if cfg.warm_start:
            self._warm_start()

    def _warm_start(self) -> None:
        """Start as Sinkhorn on the SuperPoint descriptors' cosine similarity.

        Every residual branch (keypoint encoder, attention messages) starts at zero and the
        final projection at a scaled identity, so the initial scores are cos / temperature and
        the dustbin score sits between typical matching and non-matching similarities. Training
        then learns corrections instead of rediscovering descriptor matching, which is what lets
        SuperGlue become useful within a CPU-sized budget.
        """
        cfg = self.config
        nn.init.zeros_(self.kenc.encoder[-1].weight)
        for layer in self.gnn.layers:
            nn.init.zeros_(layer.mlp[-1].weight)
        scale = (cfg.descriptor_dim ** 0.5 / cfg.warm_start_temperature) ** 0.5
        with torch.no_grad():
            self.final_proj.weight.copy_(torch.eye(cfg.descriptor_dim)[:, :, None] * scale)
            self.final_proj.bias.zero_()
            self.bin_score.fill_(cfg.warm_start_bin / cfg.warm_start_temperature)

    def forward(self, data: dict) -> dict:
        cfg = self.config
        desc0 = data["descriptors0"].transpose(1, 2)
        desc1 = data["descriptors1"].transpose(1, 2)
        b, _, n0 = desc0.shape
        n1 = desc1.shape[2]
        mask0, mask1 = data.get("mask0"), data.get("mask1")
        if n0 == 0 or n1 == 0:
            empty0 = torch.full((b, n0), -1, dtype=torch.long, device=desc0.device)
            empty1 = torch.full((b, n1), -1, dtype=torch.long, device=desc0.device)
            return {"log_assignment": desc0.new_zeros(b, n0 + 1, n1 + 1), "matches0": empty0, "matches1": empty1,
                    "matching_scores0": desc0.new_zeros(b, n0), "matching_scores1": desc0.new_zeros(b, n1)}
        k0 = normalize_keypoints(data["keypoints0"], data["image_size0"])
        k1 = normalize_keypoints(data["keypoints1"], data["image_size1"])
        desc0 = desc0 + self.kenc(k0, data["scores0"])
        desc1 = desc1 + self.kenc(k1, data["scores1"])
        desc0, desc1 = self.gnn(desc0, desc1, mask0, mask1)
        mdesc0, mdesc1 = self.final_proj(desc0), self.final_proj(desc1)
        scores = torch.einsum("bdn,bdm->bnm", mdesc0, mdesc1) / cfg.descriptor_dim ** 0.5
        log_assignment = log_optimal_transport(scores, self.bin_score, cfg.sinkhorn_iterations, mask0, mask1)
        out = extract_matches(log_assignment, cfg.match_threshold, mask0, mask1)
        out["log_assignment"] = log_assignment
        return out


def default_checkpoint() -> Path:
    return config.CHECKPOINT_DIR / "superglue.pt"


# ----------------------------------------------------------------------------- batching
def pad_batch(features0: list[dict], features1: list[dict]) -> dict:
    """Per-image numpy/torch features → one padded batch with masks (see ``SuperGlue``)."""
    def stack(feats, i):
        n = max(len(f["keypoints"]) for f in feats)
        d = feats[0]["descriptors"].shape[1]
        b = len(feats)
        kp, sc, de = torch.zeros(b, n, 2), torch.zeros(b, n), torch.zeros(b, n, d)
        mask = torch.zeros(b, n, dtype=torch.bool)
        size = torch.zeros(b, 2)
        for j, f in enumerate(feats):
            k = len(f["keypoints"])
            kp[j, :k] = torch.as_tensor(np.asarray(f["keypoints"]), dtype=torch.float32)
            sc[j, :k] = torch.as_tensor(np.asarray(f["scores"]), dtype=torch.float32)
            de[j, :k] = torch.as_tensor(np.asarray(f["descriptors"]), dtype=torch.float32)
            mask[j, :k] = True
            size[j] = torch.as_tensor(np.asarray(f["image_size"]), dtype=torch.float32)
        return {f"keypoints{i}": kp, f"scores{i}": sc, f"descriptors{i}": de, f"mask{i}": mask,
                f"image_size{i}": size}

    return {**stack(features0, 0), **stack(features1, 1)}
