"""What a notebook shows of the package's results, and the progress bars, apart from the results.

* ``Picture`` (``s2coreg.picture``, apart: matplotlib is imported only by what draws) — a figure that
  displays itself.
* ``PngFile`` — a PNG on disk (a pair's ``report.png``) that displays itself.
* ``html_table`` / ``img_tag`` — the pieces of the results' ``_repr_html_`` (plain HTML, no pandas).
* ``tqdm`` — the progress bar class for this place: ``tqdm.auto``'s widget in Jupyter where
  ipywidgets is installed, else text (``tqdm.auto`` without ipywidgets warns, ``TqdmWarning``).
"""
from __future__ import annotations

import base64
import html
import io
import math
import sys
from pathlib import Path


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG, in memory."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class PngFile:
    """A PNG file that a notebook shows as its picture; ``path`` is where it is."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _repr_png_(self) -> bytes:
        return self.path.read_bytes()

    def __repr__(self) -> str:
        return f"PngFile({str(self.path)!r})"


def img_tag(png: bytes, width: int | None = None) -> str:
    """An ``<img>`` holding ``png`` (base64), for HTML that carries its own pictures."""
    size = f' style="max-width:{width}px;height:auto"' if width else ""
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"{size}/>'


def cell(value) -> str:
    """One value as table text: floats rounded (NaN blank), lists joined, None blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return html.escape("; ".join(map(str, value)))
    return html.escape(str(value))


def html_table(rows: list[dict], columns: list[str], caption: str | None = None) -> str:
    """``rows`` as a plain HTML table of ``columns``."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_value_table(pairs: list[tuple[str, object]], caption: str | None = None) -> str:
    """Two columns, name and value, one row a pair (values as ``cell`` writes them)."""
    body = "".join(f"<tr><th style=\"text-align:left\">{html.escape(k)}</th><td style=\"text-align:left\">{cell(v)}</td></tr>"
                   for k, v in pairs)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tbody>{body}</tbody></table>"


def side_by_side(*parts: str) -> str:
    return ('<div style="display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start">'
            + "".join(f"<div>{p}</div>" for p in parts) + "</div>")


def _in_jupyter_with_widgets() -> bool:
    ipython = sys.modules.get("IPython")     # not imported: not in a notebook (and not imported here)
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def progress_class():
    """``tqdm``'s bar for here: the widget (``tqdm.auto``) in Jupyter where ipywidgets imports,
    else the text bar (which a notebook shows as one updating line)."""
    if _in_jupyter_with_widgets():
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def tqdm(*args, **kwargs):
    """A progress bar (``progress_class()``), with ``tqdm``'s arguments."""
    return progress_class()(*args, **kwargs)
