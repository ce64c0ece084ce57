"""The skeleton every script shares: its parser (the description from the module docstring,
defaults shown in ``--help``), the common runtime flags (``--device``, ``--threads``), running the
script's body with one-line errors, and a batch that goes on past a bad item.

    parser = cli.parser(__doc__)
    parser.add_argument(...)                      # the script's own flags
    cli.add_runtime(parser)                       # --device, --threads
    return cli.run(body, parser.parse_args(argv))
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Iterable

import config
from utils import PipelineError, set_threads


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown in ``--help`` where there is one to show (not None, not an off switch)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser(doc: str | None, prog: str | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc``, defaults shown in ``--help``; the
    epilog (exit codes, conventions) kept as written."""
    cls = _HelpRaw if epilog else _Help
    return argparse.ArgumentParser(prog=prog, description=(doc or "").strip().split("\n\n")[0], epilog=epilog,
                                   formatter_class=cls)


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


def fail(exc: Exception) -> int:
    """A bad input as one line on stderr; the exit code 2."""
    print(f"error: {exc}", file=sys.stderr)
    return 2


def run(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``body(args)`` with torch's threads set from ``--threads`` and a ``PipelineError`` as one
    line (exit 2): no traceback for what the user can fix."""
    try:
        if getattr(args, "threads", None) is not None:
            set_threads(args.threads or None)
        return int(body(args))
    except PipelineError as exc:
        return fail(exc)


def each(items: Iterable, work: Callable, failed: list[str], name: Callable = str):
    """``work(item)`` for every item, yielding ``(item, result)``; an item that fails — our
    ``PipelineError`` or anything unforeseen — is recorded in ``failed`` as one line naming it, and
    the batch goes on."""
    for item in items:
        try:
            yield item, work(item)
        except PipelineError as exc:
            failed.append(str(exc))
        except Exception as exc:  # noqa: BLE001  an unforeseen failure on one item must not stop the batch
            failed.append(f"{name(item)}: {type(exc).__name__}: {exc}")
