"""The skeleton every script shares: its parser (the description from the module docstring,
defaults shown in ``--help``), the common runtime flags (``--device``, ``--threads``), running the
script's body with one-line errors (a bad input, a full disk or a refused write: exit 2; Ctrl-C:
exit 130, no traceback), and a batch that goes on past a bad item. The library's errors name its
parameters (``bands=``); the lines printed here say the flags (``--bands``: ``FLAG_OF``, ``flags``).

    parser = cli.parser(__doc__)
    parser.add_argument(...)                      # the script's own flags
    cli.add_runtime(parser)                       # --device, --threads
    return cli.run(body, parser.parse_args(argv))
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterable

import s2coreg.config as config
from s2coreg.utils import PipelineError, set_threads


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown in ``--help`` where there is one to show (not None, not an off switch)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose refusals are one line (``prog: error: …; see prog --help``), not the
    whole usage — a command of thirty flags printed fifteen lines of it before the one that says
    what is wrong."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser(doc: str | None, prog: str | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc``, defaults shown in ``--help``; the
    epilog (exit codes, conventions) kept as written; its refusals one line."""
    cls = _HelpRaw if epilog else _Help
    return _Parser(prog=prog, description=(doc or "").strip().split("\n\n")[0], epilog=epilog, formatter_class=cls)


class _HelpRaw(_Help, argparse.RawDescriptionHelpFormatter):
    """``_Help`` with the epilog's lines kept."""


def add_runtime(p: argparse.ArgumentParser, device: str | None = config.DEVICE, threads: bool = True,
                device_help: str = "cpu, cuda, or auto (a CUDA GPU where torch can use one, else the CPU)"):
    """The runtime flags: ``--device`` (unless ``device`` is None) and ``--threads``."""
    if device is not None:
        p.add_argument("--device", default=device, help=device_help)
    if threads:
        p.add_argument("--threads", type=int, default=0,
                       help="torch's and OpenCV's CPU threads; 0 = all cores (give each of several parallel jobs "
                            "cores // jobs)")
    return p


INTERRUPTED = 130       # the exit code of a run ended by Ctrl-C, as shells give it (128 + SIGINT)
# what the user does about a write the system refused, by errno
STORAGE_FIXES = {errno.ENOSPC: "free space on that disk, or write elsewhere",
                 errno.EDQUOT: "free space within your quota, or write elsewhere",
                 errno.EROFS: "that file system is read-only: write elsewhere",
                 errno.EACCES: "give this user access to it, or write elsewhere",
                 errno.EPERM: "give this user access to it, or write elsewhere"}


def given(p: argparse.ArgumentParser, argv: list[str] | None = None) -> set[str]:
    """The ``dest`` of every flag and argument given in ``argv`` (None: the process's own), whatever
    its value — a flag given at its default is given too: a flag for the other mode is refused
    even then, never silently ignored."""
    actions = [a for a in p._actions if a.default is not argparse.SUPPRESS]
    saved = [a.default for a in actions]
    try:
        for a in actions:
            a.default = argparse.SUPPRESS
        found, _ = p.parse_known_args(argv)
    finally:
        for a, default in zip(actions, saved):
            a.default = default
    return set(vars(found))


# The library's errors name its parameters (``bands=``, ``device='cuda'``); the command line says
# the flags that set them: this table, for every command (a parameter → its flag).
FLAG_OF = {
    "bands": "--bands", "reference_bands": "--ref-bands", "target_bands": "--target-bands",
    "ref_nodata": "--ref-nodata", "target_nodata": "--target-nodata", "correction": "--correction",
    "device": "--device", "matcher": "--matcher", "dates": "--date", "reference": "--reference",
    "output": "--output", "workers": "--workers", "api": "--stac-search", "collections": "--collection",
    "bbox": "--bbox", "datetime": "--datetime", "max_cloud": "--max-cloud", "root": "--data", "resume": "--resume",
    "size": "--size", "tile": "--tile", "overlap": "--overlap", "gamma": "--gamma", "format": "--format",
    "reflectance_min": "--reflectance-range MIN", "reflectance_max": "--reflectance-range MAX",
    "window": "--window", "overview": "--overview", "max_windows": "--max-windows", "scheduler": "--scheduler",
    "resize": "--resize", "max_keypoints": "--max-keypoints",
}
# ``name=`` (not ``x.name=`` or ``--name=``) and its value: quoted as Python writes a string, or a bare word
_PARAMETER = re.compile(r"(?<![\w.\-])([a-z_]+)=('[^']*'|\"[^\"]*\"|[^\s,;:)'\"]*)")


def flags(text: str) -> str:
    """``text`` (a library's error) with each parameter it names said as its flag (``FLAG_OF``):
    ``device='cuda'`` → ``--device cuda``, ``bands=`` → ``--bands``, ``resume=True`` → ``--resume``."""
    def say(m: re.Match) -> str:
        flag = FLAG_OF.get(m.group(1))
        if flag is None:
            return m.group(0)
        value = m.group(2)
        if value[:1] in ("'", '"'):
            value = value[1:-1]
        return flag if value in ("", "True") else f"{flag} {value}"

    return _PARAMETER.sub(say, text)


def fail(exc: Exception | str) -> int:
    """A bad input as one line on stderr, the parameters it names said as flags (``flags``); the
    exit code 2."""
    print(f"error: {flags(str(exc))}", file=sys.stderr)
    return 2


def storage_problem(exc: BaseException, where=None) -> str | None:
    """One line naming what could not be written and the fix, where ``exc`` (or what caused it)
    is a full disk, a quota, a read-only file system or a refused permission: an ``OSError`` of
    those (named by its file, else by ``where``, the folder written to), a message that names one
    (GDAL's own check of free space too), or GDAL's failed write, which names no cause (libtiff
    prints it on stderr itself): then a probe write into ``where`` finds it. None for anything else."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    at = f"{where}: " if where is not None else ""
    for e in chain:
        if isinstance(e, OSError) and e.errno in STORAGE_FIXES:
            what = e.filename if e.filename is not None else where or "a file"
            return f"{what}: {e.strerror or os.strerror(e.errno)}; {STORAGE_FIXES[e.errno]}"
        text = " ".join(str(e).split())
        for code, fix in STORAGE_FIXES.items():
            if os.strerror(code) in text:
                return f"{at}{text}; {fix}"
        if "Free disk space available" in text:             # GDAL, before it writes a GeoTIFF
            return f"{at}{text}; {STORAGE_FIXES[errno.ENOSPC]}"
    gdal = [e for e in chain if type(e).__module__.startswith("rasterio")
            and re.search(r"write (error|failed)", str(e), re.IGNORECASE)]
    if not gdal or where is None:
        return None
    cause = _probe_write(Path(where))
    text = "; ".join(" ".join(str(e).split()) for e in gdal)
    if cause is not None:
        return f"{where}: {os.strerror(cause)} ({text}); {STORAGE_FIXES[cause]}"
    return f"{where}: cannot be written ({text}); check its free space, quota and permissions"


def _probe_write(folder: Path, size: int = 1 << 20) -> int | None:
    """The errno of a refused write of ``size`` bytes into ``folder`` (or its nearest existing
    parent), or None where it is taken (the probe is removed at once)."""
    import tempfile

    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(bytes(size))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc.errno if exc.errno in STORAGE_FIXES else None
    return None


def failure(exc: BaseException, interrupted: str = "interrupted", note: str = "", where=None) -> int | None:
    """The exit code of what ended a script, its one line printed: a ``PipelineError`` or a
    refused write (``storage_problem``: ``where`` the folder written to; ``note`` after the line)
    2, Ctrl-C 130 (``interrupted`` said); None for anything else (a bug: the caller re-raises it,
    with its traceback)."""
    if isinstance(exc, PipelineError):
        return fail(exc)
    if isinstance(exc, KeyboardInterrupt):
        print(interrupted, file=sys.stderr)
        return INTERRUPTED
    line = storage_problem(exc, None if where is None else str(where)) if isinstance(exc, Exception) else None
    return fail(line + note) if line else None


def run(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``body(args)`` with torch's threads set from ``--threads``; a ``PipelineError`` or a refused
    write (a full disk, a read-only folder) as one line (exit 2), Ctrl-C as one line (exit 130):
    no traceback for what the user can fix or chose."""
    try:
        if getattr(args, "threads", None) is not None:
            set_threads(args.threads or None)
        return int(body(args))
    except BaseException as exc:
        code = failure(exc, where=getattr(args, "output", None))
        if code is None:
            raise
        return code


BUG = 3                 # the exit code of an unforeseen error (its traceback printed): not a result, not an input


def script(main: Callable[[], int]) -> int:
    """A script's exit code from ``main()``, whatever ends it: its own code; Ctrl-C one line and
    130, a refused write (full disk …) or a bad input one line and 2 (``failure``); anything
    unforeseen its traceback and 3 — never Python's 1, which the scripts keep for "results
    written, not all verified". Every script's ``__main__`` runs through it."""
    import warnings                   # a raster without a georeference: our own line says what that means
    warnings.filterwarnings("ignore", message="Dataset has no geotransform, gcps, or rpcs")
    try:
        return int(main() or 0)
    except SystemExit:
        raise
    except BrokenPipeError:           # `coregister … | head`: the reader left; nothing to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # Python's flush at exit stays quiet
        return 128 + 13               # as a shell reports SIGPIPE
    except BaseException as exc:  # noqa: BLE001  sorted here: the user's, the disk's, or ours
        code = failure(exc)
        if code is not None:
            return code
        import traceback

        traceback.print_exc()
        print(f"error: an unforeseen {type(exc).__name__} (a bug: please report it with the traceback above)",
              file=sys.stderr)
        return BUG


def each(items: Iterable, work: Callable, failed: list[str], name: Callable = str):
    """``work(item)`` for every item, yielding ``(item, result)``; an item that fails — our
    ``PipelineError`` or anything unforeseen — is recorded in ``failed`` as one line naming it, and
    the batch goes on."""
    for item in items:
        try:
            yield item, work(item)
        except PipelineError as exc:
            failed.append(flags(str(exc)))
        except Exception as exc:  # noqa: BLE001  an unforeseen failure on one item must not stop the batch
            failed.append(f"{name(item)}: {type(exc).__name__}: {exc}")
