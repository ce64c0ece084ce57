"""Time SuperGlue's Sinkhorn both ways at 1024 × 1024 keypoints: the log-space form (training, with
gradients) and the scaling form (inference), and the whole shipped SuperGlue forward with each.

    python benchmarks/sinkhorn_speed.py [--threads 1] [--repeats 10]

Scores come from the shipped SuperGlue on the Pisa sample's keypoints (a trained model's range);
medians, interleaved. The whole forward "in log space" is the measured forward with its Sinkhorn
time swapped for the log-space one. The assignments of the two forms agree (tests/test_superglue.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import s2coreg.config as config  # noqa: E402, F401  first: OpenMP's waiting policy, before torch is used
import s2coreg.models.superglue as sga  # noqa: E402
from s2coreg.matching.pipeline import MatchingPipeline  # noqa: E402
from s2coreg.samples import sample_gray  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipeline = MatchingPipeline.from_checkpoints(max_keypoints=1024, correlate=False)
    f0, f1 = (pipeline.extract(sample_gray(d)[:512, :512]) for d in ("imgs_1", "imgs_2"))
    glue = pipeline.matcher.model
    batch = sga.pad_batch([{**f0, "keypoints": f0["keypoints"]}], [{**f1, "keypoints": f1["keypoints"]}])
    captured = {}
    original = sga.log_optimal_transport

    def capture(scores, alpha, iters, mask0=None, mask1=None):
        captured["args"] = (scores.detach(), alpha.detach(), iters)
        return original(scores, alpha, iters, mask0, mask1)

    sga.log_optimal_transport = capture
    with torch.no_grad():
        glue(batch)
    sga.log_optimal_transport = original
    scores, alpha, iters = captured["args"]

    def log_space():          # the training form: with gradients
        with torch.enable_grad():
            sga.log_optimal_transport(scores.clone().requires_grad_(True), alpha, iters)

    def scaling():
        with torch.no_grad():
            sga.log_optimal_transport(scores, alpha, iters)

    def forward():
        with torch.no_grad():
            glue(batch)

    times = {"log": [], "scaling": [], "forward": []}
    for _ in range(args.repeats + 1):
        for name, fn in (("log", log_space), ("scaling", scaling), ("forward", forward)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v[1:])) for k, v in times.items()}
    forward_log = med["forward"] - med["scaling"] + med["log"]
    print(f"{scores.shape[1]}×{scores.shape[2]} keypoints, {args.threads} thread(s), median of {args.repeats}:\n"
          f"| | log space (training) | scaling form (inference) |\n|---|---|---|\n"
          f"| Sinkhorn, {iters} iterations | {med['log']:.3f} s | {med['scaling']:.3f} s |\n"
          f"| whole SuperGlue forward | {forward_log:.3f} s | {med['forward']:.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
