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


def stack_report_figure(result: dict) -> "Picture":
    """dx and dy over time with ±2 sigma, the reference marked (a star), excluded dates marked
    on the time axis, warned dates in orange: a ``Picture`` (a notebook shows it; a stack's
    ``report.png``, and ``StackResult.report()``)."""
    from datetime import datetime


    def when(s):
        try:
            return datetime.strptime(s[:8], "%Y%m%d")
        except (ValueError, TypeError):
            return None

    rows = result["dates"]
    fig = Picture(figsize=(11, 5.5), dpi=100)
    axes = [fig.add_subplot(2, 1, k + 1) for k in range(2)]
    timed = all(when(r["date"]) for r in rows)
    xs = [when(r["date"]) if timed else k for k, r in enumerate(rows)]
    for ax, key, label in zip(axes, ("dx_m", "dy_m"), ("dx (m, east)", "dy (m, north)")):
        for k, r in enumerate(rows):
            if r["status"] == "excluded":
                ax.axvline(xs[k], color="red", alpha=0.3, lw=1)
            elif r["status"] == "reference":
                ax.plot([xs[k]], [0], marker="*", ms=14, color="gold", mec="black", zorder=5)
            else:
                ax.errorbar([xs[k]], [r[key]], yerr=[2 * r["sigma_m"]], fmt="o", ms=4, capsize=2,
                            color="tab:orange" if r.get("warnings") else "tab:blue")
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_ylabel(label)
    axes[0].set_title(f"shift of each date relative to the reference {result['reference_id']} (★; ±2σ; red lines: "
                      f"excluded; orange: warned) — {result['placed']} placed, {result['excluded']} excluded",
                      fontsize=9)
    fig.tight_layout()
    return fig
