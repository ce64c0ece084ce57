"""Which bands to match across sensors: Landsat 8/9 as the reference, Sentinel-2 as the target,
per band choice, on a real pair.

    python benchmarks/cross_sensor.py [--trials 4] [--output data/results/cross_sensor.json]

The pair (shipped, ``tests/data/l9_s2_unalakleet/``): Unalakleet, Alaska — a Landsat 9 crop of
2023-06-30 (15 m pan-sharpened B2–B6, float32 reflectance, −inf no-data, EPSG:32604) and a
Sentinel-2 crop of 2023-10-09 (10 m B02, B03, B04, B08, uint16, EPSG:32603: the neighbouring UTM
zone): an airstrip on a spit, river channels, tundra and the sea, a season apart.

Per band choice (``red,green,blue``; ``nir``; ``red``; ``green``; ``swir16`` and ``pan`` where both
inputs have them — the Sentinel-2 crop has no B11 and the Landsat crop no B8, so they are listed
as not measurable):
* the pair as it is: the shift (east, north) and its σ — no truth is known between the two
  sensors' geolocations, so this is not an error;
* **differential**: the target's *content* moved twice by known band-limited shifts s1, s2 (±1.5
  px of its own 10 m grid each axis; ``imaging.fourier_shift`` of the reflect-padded image, as
  ``benchmarks/coregistration.py`` does), the error |(e2 − e1) − (s2 − s1)| in metres of the
  reference's CRS (the zones' grid convergence included): the sensors' own offset cancels.
  Acceptance: ≤ 0.5 m.

Agreement: R,G,B against NIR on the pair as it is, their distance beside three combined σ
(3·√(σ_rgb² + σ_nir²)).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import s2coreg.config as config  # noqa: E402  first: OpenMP's waiting policy, before torch is used

PAIR = ROOT / "tests" / "data" / "l9_s2_unalakleet"
REFERENCE = PAIR / "2023-06-30-22-01-55_L9_ms.tif"
TARGET = PAIR / "2023-10-09-22-28-02_S2_ms.tif"
CHOICES = ("red,green,blue", "nir", "red", "green", "swir16", "pan")
MAX_SHIFT = 1.5            # px of the target's grid, each axis
ACCEPT_M = 0.5             # differential error accepted, m


def has_bands(choice: str) -> str | None:
    """None where both inputs have the bands of ``choice``, else which input lacks which."""
    import s2coreg.io.products as dp

    for role, path in (("reference", REFERENCE), ("target", TARGET)):
        product = dp.find_products(path).products[0]
        missing = [b for b in dp.normalise_bands(choice, product.sensor) if b not in product.band_files]
        if missing:
            return f"the {role} crop has no {','.join(missing)}"
    return None


def estimate(reference, target, choice: str, pipeline) -> dict:
    from s2coreg.coregistration.pair import coregister

    r = coregister(reference, target, bands=choice, pipeline=pipeline, progress=False)
    s = r["shift_m"]
    if not s:
        return {"refused": r.get("reason")}
    out = {"dx": s["dx"], "dy": s["dy"], "sigma_m": s["sigma_m"], "tie_points": r["tie_points"]}
    if r.get("band_check"):            # coregister.py's own NIR check (before it widened σ)
        out["band_check"] = r["band_check"]
        out["warned"] = any("NIR disagree" in w for w in r["warnings"])
    return out


def run(trials: int, seed: int, pipeline) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from coregistration import content_shifted, px_to_metres

    rng = np.random.default_rng(seed)
    shifts = [(rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2), rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2)) for _ in range(trials)]
    out = {"reference": REFERENCE.name, "target": TARGET.name, "trials": trials, "seed": seed, "choices": {}}
    with tempfile.TemporaryDirectory() as tmp:
        moved = []
        for k, (s1, s2) in enumerate(shifts):
            t1, t2 = Path(tmp) / f"t{k}a_S2.tif", Path(tmp) / f"t{k}b_S2.tif"
            content_shifted(TARGET, t1, *s1)
            content_shifted(TARGET, t2, *s2)
            truth = px_to_metres(TARGET, s2 - s1, REFERENCE)
            moved.append((t1, t2, truth, s1, s2))
        for choice in CHOICES:
            why = has_bands(choice)
            if why:
                out["choices"][choice] = {"measured": False, "why": why}
                continue
            start = time.time()
            row = {"measured": True, "pair": estimate(REFERENCE, TARGET, choice, pipeline), "errors_m": []}
            for t1, t2, truth, s1, s2 in moved:
                e1, e2 = estimate(REFERENCE, t1, choice, pipeline), estimate(REFERENCE, t2, choice, pipeline)
                if "refused" in e1 or "refused" in e2:
                    row["errors_m"].append(None)
                    continue
                got = np.array([e2["dx"] - e1["dx"], e2["dy"] - e1["dy"]])
                row["errors_m"].append(round(float(np.hypot(*(got - truth))), 4))
            errs = [e for e in row["errors_m"] if e is not None]
            row.update(median_m=float(np.median(errs)) if errs else None, max_m=max(errs) if errs else None,
                       refused=sum(e is None for e in row["errors_m"]),
                       within_accept=sum(e <= ACCEPT_M for e in errs), seconds=round(time.time() - start, 1))
            out["choices"][choice] = row
            print(f"{choice:15s} pair {row['pair']}  differential median {row['median_m']} max {row['max_m']} m",
                  file=sys.stderr)
    a, b = out["choices"]["red,green,blue"].get("pair", {}), out["choices"]["nir"].get("pair", {})
    if "dx" in a and "dx" in b:
        apart = float(np.hypot(a["dx"] - b["dx"], a["dy"] - b["dy"]))
        check = a.get("band_check") or {}
        # three combined σ as measured before coregister.py's check widened R,G,B's to cover both
        bound = check.get("three_sigma_m", 3.0 * float(np.hypot(a["sigma_m"], b["sigma_m"])))
        out["rgb_vs_nir"] = {"apart_m": round(apart, 3), "three_combined_sigma_m": round(bound, 3),
                             "agree": apart <= bound, "warned_by_coregister": bool(a.get("warned")),
                             "sigma_m_reported": a["sigma_m"]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="pairs of known content shifts")
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=config.RESULTS_DIR / "cross_sensor.json")
    args = parser.parse_args(argv)
    from s2coreg.coregistration import engine
    from s2coreg.coregistration.pair import pair_pipeline
    from s2coreg.utils import set_threads, write_json

    set_threads(args.threads)
    out = run(args.trials, args.seed, pair_pipeline(engine.checked_config(config.CoregisterConfig())))   # a pair's
    write_json(args.output, out)
    print(f"→ {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
