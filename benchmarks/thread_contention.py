"""How much slower matching gets when another process holds a core, per OpenMP setting.

    python benchmarks/thread_contention.py [--repeats 12] [--rounds 2]

Times ``ImageMatcher.match_images`` on the shipped sample pair (512², features not cached) in a
fresh process per setting, with the machine idle and with a background process that keeps
busy: a 2-thread torch loop (another training or matching job) or a 1-thread Python loop.
Settings: libgomp's own default (threads spin ~3 ms before sleeping; what torch does when
nothing is set), ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once: the project's
default, set in ``config.py``), and one thread. Settings are interleaved round by round so
that machine noise hits them alike; each cell is the median over rounds of per-process medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {   # name → environment for the timed process
    "spin (libgomp default)": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "300000"},
    "passive (project default)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"},
}

LOADS = {      # name → background command (None = idle)
    "idle": None,
    "2-thread torch job": [sys.executable, "-c", "import torch\ntorch.set_num_threads(2)\n"
                           "a = torch.randn(384, 384)\nwhile True:\n    a = (a @ a).tanh()"],
    "1-thread busy loop": [sys.executable, "-c", "while True: pass"],
}

TIMED = """
import json, statistics, sys, time
sys.path.insert(0, {root!r})
import s2coreg.config as config
import numpy as np
from PIL import Image
from s2coreg.matching.matcher import ImageMatcher, sample_pair
a, b = (np.asarray(Image.open(p)) for p in sample_pair())
m = ImageMatcher(device="cpu", cache_size=0, matcher="auto")     # the learned path: torch threads are what this measures
m.match_images(a, b)
times = []
for _ in range({repeats}):
    t = time.perf_counter()
    m.match_images(a, b)
    times.append(time.perf_counter() - t)
print(json.dumps(statistics.median(times)))
"""


def timed_run(env: dict, repeats: int) -> float:
    full = {**os.environ, **env}
    if "OMP_NUM_THREADS" not in env:
        full.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", TIMED.format(root=str(ROOT), repeats=repeats)], env=full,
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=12, help="timed matches per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per setting and load")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, list[float]]] = {load: {s: [] for s in SETTINGS} for load in LOADS}
    for _ in range(args.rounds):
        for load, command in LOADS.items():
            background = subprocess.Popen(command, stdout=subprocess.DEVNULL) if command else None
            try:
                if background:
                    time.sleep(1.0)
                for setting, env in SETTINGS.items():
                    results[load][setting].append(timed_run(env, args.repeats))
            finally:
                if background:
                    background.kill()
                    background.wait()
    med = {load: {s: statistics.median(v) for s, v in row.items()} for load, row in results.items()}
    base = med["idle"]["spin (libgomp default)"]
    print(f"seconds per matched pair (sample, 512², {os.cpu_count()} cores); in brackets: × the idle libgomp default\n")
    print("| setting | " + " | ".join(LOADS) + " |")
    print("|---|" + "---|" * len(LOADS))
    for setting in SETTINGS:
        print(f"| {setting} | " + " | ".join(f"{med[load][setting]:.3f} s ({med[load][setting] / base:.1f}×)"
                                          for load in LOADS) + " |")
    print("\n" + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
