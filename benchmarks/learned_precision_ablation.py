"""The learned path's precision at one pixel: one setting at a time, on the validation split.

    python benchmarks/learned_precision_ablation.py --threads 1
    python benchmarks/learned_precision_ablation.py --threads 1 --factors localisation,inlier_threshold

The learned-only paths (SuperPoint + mutual nearest neighbours, as the stage scripts match its
features; with the fine head; with the correlation stage; SuperPoint + SuperGlue + both) are run
with the shipped settings and with ONE of them changed at a time:

* ``localisation``: where a keypoint sits: the NMS peak's pixel (``SuperPointConfig.subpixel``
  off), the heat's expectation over its 3×3 (``subpixel_fit="softargmax"``) or a parabola through
  the log-heat (``"quadratic"``);
* ``fine_radius``: the fine head's search window, ±r cells of its stride-2 map
  (``SuperPointConfig.fine_radius``; the head was trained at 3);
* ``correlation``: the correlation stage's window side and the Gaussian scale of the local
  contrast it runs on (``MatchingConfig.correlation_window``, ``correlation_sigma``);
* ``inlier_threshold``: USAC_MAGSAC's, the provisional homography's of the correlation stage and
  the scored one's alike (``MatchingConfig.ransac_threshold``); SIFT is run at each threshold too.

SIFT (ratio test, the 1-99 % stretch) and SIFT with the correlation stage run in the same run as
the baselines. Pairs, warps and scoring are ``evaluate.py``'s (``evaluation_pairs``,
``make_eval_sample``, ``run_benchmark``: the methods interleaved pair by pair). Per difficulty:
AUC of the mean corner error at 1/3/5/10 px, AUC@5px on the OSCD city pairs, the residual (the
median over pairs of the correct matches' median reprojection error: localisation, RANSAC aside),
the median seconds a pair, and each variant's change of AUC@1px and AUC@5px against the same method with the shipped
settings, with a paired bootstrap's 95 % interval over the pairs (the noise a 56-pair split has);
the last table pools the difficulties. JSON: ``data/results/learned_precision_ablation_<split>.json``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import s2coreg.config as config  # noqa: E402  first: OpenMP's waiting policy, before torch is used

import torch  # noqa: E402

from s2coreg.config import EvalConfig, MatchingConfig, SuperPointConfig  # noqa: E402
from s2coreg.io.imaging import local_contrast  # noqa: E402
from s2coreg.matching.geometry import pose_auc  # noqa: E402
from s2coreg.matching.pipeline import correlation_stage  # noqa: E402
from s2coreg.training.dataset import evaluation_pairs, make_eval_sample, test_pairs  # noqa: E402
from s2coreg.training.evaluate import build_method, run_benchmark  # noqa: E402
from s2coreg.utils import set_threads, write_json  # noqa: E402

LEARNED = ("superpoint+mnn", "superpoint+mnn+refine", "superpoint+mnn+refine+correlate",
           "superpoint+superglue+refine+correlate")
BASELINES = ("sift", "sift+correlate")
# each factor: the settings tried (the keys of ``Variant.setting``); the shipped one is the baseline row
FACTORS = {
    "localisation": [{"subpixel": False}, {"subpixel_fit": "softargmax"}, {"subpixel_fit": "quadratic"}],
    "fine_radius": [{"fine_radius": r} for r in (1, 2, 3, 4, 5)],
    "correlation": [{"correlation_window": w} for w in (21, 31, 41)] + [{"correlation_sigma": s} for s in (1.0, 2.0, 4.0)],
    "inlier_threshold": [{"ransac_threshold": t} for t in (1.0, 2.0, 3.0)],
}
SHIPPED = {"subpixel": SuperPointConfig.subpixel, "subpixel_fit": SuperPointConfig.subpixel_fit,
           "fine_radius": SuperPointConfig.fine_radius, "correlation_window": MatchingConfig.correlation_window,
           "correlation_sigma": MatchingConfig.correlation_sigma, "ransac_threshold": MatchingConfig.ransac_threshold}
EXTRACTOR_SETTINGS = ("subpixel", "subpixel_fit", "fine_radius")
BOOTSTRAP = 2000


@dataclass
class Variant:
    """One method with one setting changed from the shipped ones (``setting`` empty: as shipped)."""

    method: str
    factor: str = "shipped"
    setting: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.method + "".join(f" [{k}={v}]" for k, v in self.setting.items())


def applies(method: str, setting: dict) -> bool:
    """Whether ``setting`` can change what ``method`` does."""
    learned = method.startswith("superpoint")
    if "fine_radius" in setting:
        return "+refine" in method
    if "correlation_window" in setting or "correlation_sigma" in setting:
        return learned and method.endswith("+correlate")
    if "ransac_threshold" in setting:
        return True
    return learned


def variants(factors: list[str]) -> list[Variant]:
    """The baselines and learned methods as shipped, then each factor's settings on every method
    they apply to."""
    out = [Variant(m) for m in (*BASELINES, *LEARNED)]
    for factor in factors:
        tried = [s for s in FACTORS[factor] if any(SHIPPED[k] != v for k, v in s.items())]
        out += [Variant(m, factor, s) for s in tried for m in (*BASELINES, *LEARNED) if applies(m, s)]
    return out


class CorrelationVariant:
    """A learned method whose correlation stage runs with another window or local-contrast scale:
    the method without its correlation stage, then ``matching.correlation_stage`` on its matches as
    ``MatchingPipeline`` runs it (``correlate_keypoints1``), with these settings; the local contrast
    is made inside the timed extraction, as the extractor makes it."""

    def __init__(self, base, window: int, sigma: float, ransac_threshold: float):
        self.base, self.window, self.sigma, self.ransac_threshold = base, window, sigma, ransac_threshold
        self.name = base.name

    def extract(self, image: np.ndarray, valid: np.ndarray) -> dict:
        features = self.base.extract(image, valid)
        features["texture"] = local_contrast(image, valid, self.sigma)
        return features

    def match(self, f0: dict, f1: dict) -> tuple[np.ndarray, np.ndarray]:
        matches0, points1 = self.base.match(f0, f1)
        points1 = np.asarray(points1, np.float32).copy()
        matched = matches0 > -1
        idx1 = matches0[matched]
        points1[idx1] = correlation_stage(f0, f1, np.asarray(f0["keypoints"], np.float32)[matched], points1[idx1],
                                          self.ransac_threshold, self.window)[0]
        return matches0, points1


def build_variant(variant: Variant, cfg: EvalConfig):
    """The benchmark method of ``variant`` (``evaluate.build_method`` with the setting applied)."""
    s = {**SHIPPED, **variant.setting}
    cfg = config.replace(cfg, ransac_threshold=s["ransac_threshold"])
    correlation = (s["correlation_window"], s["correlation_sigma"]) != (SHIPPED["correlation_window"],
                                                                       SHIPPED["correlation_sigma"])
    if correlation:
        method = CorrelationVariant(build_method(variant.method.removesuffix("+correlate"), cfg),
                                    s["correlation_window"], s["correlation_sigma"], cfg.ransac_threshold)
        pipeline = method.base.pipeline
    else:
        method = build_method(variant.method, cfg)
        pipeline = getattr(method, "pipeline", None)
    if pipeline is not None:
        extractor = pipeline.extractor
        extractor.config = config.replace(extractor.config, **{k: v for k, v in variant.setting.items()
                                                                if k in EXTRACTOR_SETTINGS})
    method.name = variant.name
    return method, cfg


def paired_delta(errors: np.ndarray, shipped: np.ndarray, thresholds, rng) -> dict:
    """AUC differences against the shipped method on the same pairs, and a paired bootstrap's 95 %
    interval over the pairs."""
    n = len(errors)
    delta = np.subtract(pose_auc(errors, thresholds), pose_auc(shipped, thresholds))
    draws = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, n, n)
        draws.append(np.subtract(pose_auc(errors[i], thresholds), pose_auc(shipped[i], thresholds)))
    low, high = np.percentile(np.array(draws), [2.5, 97.5], axis=0)
    return {f"{t:g}px": {"delta": float(d), "low": float(lo), "high": float(hi)}
            for t, d, lo, hi in zip(thresholds, delta, low, high)}


def compare(rows: list[Variant], errors: dict[str, np.ndarray], categories: np.ndarray, seconds: dict,
            residuals: dict, thresholds) -> dict:
    """Per variant: AUCs, the city pairs' AUC@5px, seconds a pair and the paired change against
    the same method as shipped."""
    rng = np.random.default_rng(config.SEED)
    cities = np.char.startswith(categories.astype(str), "oscd")
    out = {}
    for v in rows:
        e = errors[v.name]
        entry = {"method": v.method, "factor": v.factor, "setting": v.setting,
                 "auc": dict(zip((f"{t:g}px" for t in thresholds), pose_auc(e, thresholds))),
                 "auc5_cities": pose_auc(e[cities], (5.0,))[0] if cities.any() else float("nan"),
                 "residual": float(np.nanmedian(residuals[v.name])) if not np.isnan(residuals[v.name]).all()
                 else float("nan"),
                 "seconds_pair": float(np.median(seconds[v.name])), "pairs": len(e)}
        if v.setting:
            entry["vs_shipped"] = paired_delta(e, errors[Variant(v.method).name], (1.0, 5.0), rng)
        out[v.name] = entry
    return out


def markdown(rows: list[Variant], summary: dict) -> str:
    def delta(entry: dict, key: str) -> str:
        if "vs_shipped" not in entry:
            return "—"
        d = entry["vs_shipped"][key]
        mark = "**" if d["low"] > 0 or d["high"] < 0 else ""
        return f"{mark}{d['delta']:+.3f}{mark} [{d['low']:+.3f}, {d['high']:+.3f}]"

    lines = ["| factor | method | setting | AUC@1px | AUC@3px | AUC@5px | AUC@10px | AUC@5px cities | residual px "
             "| s/pair | ΔAUC@1px [95 %] | ΔAUC@5px [95 %] |", "|" + "---|" * 12]
    for v in rows:
        e = summary[v.name]
        setting = ", ".join(f"{k}={val}" for k, val in v.setting.items()) or "shipped"
        aucs = " | ".join(f"{e['auc'][k]:.3f}" for k in ("1px", "3px", "5px", "10px"))
        lines.append(f"| {v.factor} | {v.method} | {setting} | {aucs} | {e['auc5_cities']:.3f} | {e['residual']:.2f} | "
                     f"{e['seconds_pair']:.3f} | {delta(e, '1px')} | {delta(e, '5px')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--split", default="val", choices=["val", "test"],
                        help="val: where a setting is chosen; test: to report one chosen there")
    parser.add_argument("--difficulty", default="easy,medium", help="comma-separated: easy, medium, hard")
    parser.add_argument("--factors", default=",".join(FACTORS), help="comma-separated, from " + ", ".join(FACTORS))
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of " + ", ".join((*BASELINES, *LEARNED)) + " (default: all)")
    parser.add_argument("--every", type=int, default=1, help="every n-th pair only (a quick look)")
    parser.add_argument("--seed", type=int, default=config.SEED)
    parser.add_argument("--threads", type=int, default=0, help="torch's and OpenCV's CPU threads; 0 = all cores")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON (default data/results/learned_precision_ablation_<split>.json)")
    args = parser.parse_args(argv)
    set_threads(args.threads or None)
    torch.set_grad_enabled(False)
    factors = [f.strip() for f in args.factors.split(",") if f.strip()]
    unknown = sorted(set(factors) - set(FACTORS))
    if unknown:
        parser.error(f"--factors {','.join(unknown)}: unknown; choose from {','.join(FACTORS)}")
    rows = variants(factors)
    if args.methods:
        keep = {m.strip() for m in args.methods.split(",")}
        rows = [v for v in rows if v.method in keep]
    pairs = (test_pairs(args.data) if args.split == "test" else evaluation_pairs(args.data))[::args.every]
    thresholds = EvalConfig.auc_thresholds
    report = {"split": args.split, "seed": args.seed, "threads": torch.get_num_threads(), "shipped": SHIPPED,
              "factors": {f: FACTORS[f] for f in factors}, "difficulties": {}}
    out = args.output or config.RESULTS_DIR / f"learned_precision_ablation_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    pooled_errors, pooled_seconds, pooled_residuals, pooled_categories = {}, {}, {}, []
    text = []
    for difficulty in [d.strip() for d in args.difficulty.split(",") if d.strip()]:
        cfg = config.replace(EvalConfig(), difficulty=difficulty)
        built = [build_variant(v, cfg) for v in rows]
        samples = [make_eval_sample(p, cfg.crop, difficulty, args.seed) for p in pairs]
        results = run_benchmark([m for m, _ in built], samples, cfg, configs={m.name: c for m, c in built})
        errors = {n: np.array([r["corner_error"] for r in res["records"]]) for n, res in results.items()}
        seconds = {n: [r["seconds_pair"] for r in res["records"]] for n, res in results.items()}
        residuals = {n: np.array([r["residual"] for r in res["records"]]) for n, res in results.items()}
        categories = np.array([r["category"] for r in next(iter(results.values()))["records"]])
        summary = compare(rows, errors, categories, seconds, residuals, thresholds)
        report["difficulties"][difficulty] = {
            "summary": summary, "corner_errors": {n: e.tolist() for n, e in errors.items()},
            "pairs": [r["name"] for r in next(iter(results.values()))["records"]], "categories": categories.tolist()}
        for n in errors:
            pooled_errors.setdefault(n, []).extend(errors[n])
            pooled_seconds.setdefault(n, []).extend(seconds[n])
            pooled_residuals.setdefault(n, []).extend(residuals[n])
        pooled_categories.extend(categories)
        text.append(f"\n{len(samples)} {args.split} pairs, {difficulty} warps, crop {cfg.crop}, "
                    f"{torch.get_num_threads()} thread(s):\n\n{markdown(rows, summary)}")
        print(text[-1], flush=True)
        write_json(out, {**report, "table": "\n".join(text)})      # each difficulty as it is done
    if len(report["difficulties"]) > 1:
        pooled = compare(rows, {n: np.array(e) for n, e in pooled_errors.items()}, np.array(pooled_categories),
                         pooled_seconds, {n: np.array(r) for n, r in pooled_residuals.items()}, thresholds)
        report["pooled"] = pooled
        text.append(f"\nPooled ({', '.join(report['difficulties'])}: {len(pooled_categories)} samples):\n\n"
                    + markdown(rows, pooled))
        print(text[-1])
    report["table"] = "\n".join(text)
    write_json(out, report)
    print(f"\nresults → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
