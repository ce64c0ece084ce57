"""A small mutation check of the test suite: one deliberate bug at a time (a Mercator unit slip, a
dropped rotation, the matcher returning its coarse estimate, a zero shift) written into a copy of
the repository, the tests named for it run, the file restored; a table says whether a test failed.

    git worktree add /tmp/mut HEAD && python tests/mutation_check.py /tmp/mut

Run it on a copy (a worktree), never on your working tree: it rewrites files while it runs."""
import subprocess, sys, shutil, pathlib
repo = pathlib.Path(sys.argv[1])
MUTANTS = {
    "mercator unit slip (map units reported as metres)": ("s2coreg/io/geo.py",
        "    return reproject_points(points1, crs, metric) - reproject_points(points0, crs, metric), metric",
        "    return np.asarray(points1, np.float64).reshape(-1, 2) - points0, metric",
        "tests/test_coregister.py -k mercator"),
    "dropped rotation (a geotransform's rotation terms ignored)": ("s2coreg/io/geo.py",
        None, None, "tests/test_coregister.py -k rotated_grid"),
    "the matcher returns the coarse estimate": ("s2coreg/coregistration/engine.py",
        "    m.shift_px = med + (np.asarray(offset_b, np.float64) - offset_a)",
        "    m.shift_px = np.round(med) * 0 + (np.asarray(offset_b, np.float64) - offset_a)",
        "tests/test_coregister.py -k known_shift_recovered tests/test_evidence.py -k content_inside"),
    "a zero shift": ("s2coreg/coregistration/engine.py",
        "    out.shift_px = med.tolist()",
        "    out.shift_px = (med * 0).tolist()",
        "tests/test_coregister.py -k known_shift_recovered tests/test_cross_sensor.py -k known"),
}
MUTANTS["dropped rotation (a geotransform's rotation terms ignored)"] = ("s2coreg/io/geo.py",
    "    return np.stack([a * p[:, 0] + b * p[:, 1] + c, d * p[:, 0] + e * p[:, 1] + f], axis=-1)",
    "    return np.stack([a * p[:, 0] + c, e * p[:, 1] + f], axis=-1)",
    "tests/test_coregister.py -k rotated_grid")
results = []
for name, (path, old, new, tests) in MUTANTS.items():
    f = repo / path
    text = f.read_text()
    assert old in text, (name, old)
    f.write_text(text.replace(old, new, 1))
    try:
        args = tests.split()
        files = [a for a in args if a.endswith(".py")]
        ks = [args[i + 1] for i, a in enumerate(args) if a == "-k"]
        failed = False
        for file, k in zip(files, ks):
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", file, "-k", k],
                               cwd=repo, capture_output=True, text=True, timeout=1200)
            last = (r.stdout.strip().splitlines() or ["?"])[-1]
            print(f"  {name}: {file} -k {k}: {last}", flush=True)
            failed |= r.returncode != 0
    finally:
        f.write_text(text)
    results.append((name, failed))
print("\n| deliberate bug | caught by a failing test |\n|---|---|")
for name, failed in results:
    print(f"| {name} | {'yes' if failed else 'NO'} |")
