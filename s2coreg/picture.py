"""``Picture``: a matplotlib ``Figure`` that displays itself (``_repr_png_``) in a notebook where
nothing registered figures for display (no ``import matplotlib.pyplot``). Every picture the API
returns is one (``ImageMatcher.visualize_matches``, a stack's ``report()``); the reports written
as ``report.png`` are drawn on one too. Built without pyplot (no global state: safe in Dask's
workers); ``savefig`` as any figure."""
from __future__ import annotations

from matplotlib.figure import Figure

from s2coreg.display import png_bytes


class Picture(Figure):
    """A matplotlib figure that a notebook shows as its picture (``_repr_png_``), pyplot or not."""

    def _repr_png_(self) -> bytes:
        return png_bytes(self)
