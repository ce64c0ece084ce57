"""The project's error type and its safe writes: ``PipelineError`` (a bad input, one line, no
traceback), files written under a temporary name and renamed when complete (JSON, ``.npz``), and
torch's thread count. Images are in ``s2coreg/io/imaging.py``, geometry and metrics in ``s2coreg/matching/geometry.py``.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np


class PipelineError(Exception):
    """A problem with the user's input: printed as one line by the scripts, no traceback."""


# ----------------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    Readers never see a half-written file, and a failure leaves nothing behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp makes files private (0600); give the usual permissions
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        aux = tmp.with_name(tmp.name + ".aux.xml")  # GDAL may leave statistics beside a raster
        if aux.exists():
            aux.unlink()


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def write_npz(path: str | os.PathLike, arrays: dict) -> None:
    """Write arrays to an ``.npz``, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _json_default(obj):
    if hasattr(obj, "to_dict"):          # the typed results (s2coreg/results.py)
        return obj.to_dict()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ----------------------------------------------------------------------------- threads
@contextlib.contextmanager
def one_blas_thread():
    """numpy's (and OpenCV's) OpenBLAS on one thread while a co-registration runs, as they were
    after. Its work here is small — least squares over a few windows, 2×2 systems, the dense
    fit's normal equations — where OpenBLAS's threads only spin between calls (and, with
    ``--threads`` windows side by side, each window's call would start more threads than there
    are cores). torch's own BLAS is not affected. Measured: a full-tile pair's CPU 9.6 → 8.4 s
    (``coregister`` with ``OPENBLAS_NUM_THREADS=1``, two runs each), a profiled stack's 84 → 66 s
    (``benchmarks/stack_tile_year.py --profile-env OPENBLAS_NUM_THREADS=1``). Dask's workers
    already run with one (its nanny's ``OPENBLAS_NUM_THREADS=1``)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


# the thread count ``set_threads`` was given: torch, imported later (a pair whose windows SIFT
# verifies never imports it; ``matching.pipeline``'s learned path loads it on first need), gets it
# then (``torch_threads``); a window's thread of ``engine.window_runner`` keeps its own (1)
_THREADS: dict[str, int | None] = {"process": None}
_THREAD_LOCAL = threading.local()


def set_threads(threads: int | None = None) -> int:
    """Set torch's and OpenCV's CPU threads: ``threads``, or every core this process may use
    when ``None``. torch is not imported for it: where torch is not loaded yet, it gets the count
    when it is (``torch_threads``).

    When several workers share a machine, give each ``cores // workers`` (1 per worker on 2
    cores): more threads than cores make every thread wait for the others. Returns the count.
    """
    import cv2

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0):
        raise PipelineError(f"threads {threads!r}: give a whole number of threads (1 or more), or 0 for all cores")
    if not threads:
        threads = cores()
    _THREADS["process"] = int(threads)
    cv2.setNumThreads(threads)
    torch_threads()
    return threads


def cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_given() -> int | None:
    """The thread count ``set_threads`` set for this process (None: never called)."""
    return _THREADS["process"]


def pin_thread(threads: int | None) -> None:
    """This thread's own torch thread count (a window's thread of ``engine.window_runner``: 1;
    None: the process's), applied now where torch is loaded, else when it is."""
    _THREAD_LOCAL.threads = threads
    torch_threads()


def torch_threads():
    """torch, if this process has loaded it, on the threads this thread was given (``pin_thread``,
    else ``set_threads``); returns the module, or None where torch is not loaded (nothing is
    imported here). Called where the learned path first uses torch, so a count given before torch
    was imported still holds."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "set_num_threads"):
        return None
    want = getattr(_THREAD_LOCAL, "threads", None) or _THREADS["process"]
    if want and torch.get_num_threads() != want:
        torch.set_num_threads(want)
    return torch


def no_grad():
    """torch's ``no_grad`` where torch is loaded, else nothing to switch off (a context)."""
    torch = sys.modules.get("torch")
    return torch.no_grad() if torch is not None and hasattr(torch, "no_grad") else contextlib.nullcontext()
