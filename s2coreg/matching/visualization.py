"""Pictures of matches, apart from matching: a match result in, a matplotlib figure out."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from s2coreg.io.imaging import percentile_stretch, to_gray
from s2coreg.utils import atomic_path


def display_image(image: np.ndarray) -> np.ndarray:
    """Any image array as an RGB float image for display (1-99 percentile stretch)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] >= 3:
        return percentile_stretch(image[..., :3].astype(np.float32))
    g = percentile_stretch(to_gray(image))
    return np.stack([g] * 3, -1)


def plot_matches(image0: np.ndarray, image1: np.ndarray, result: dict, names: tuple[str, str] = ("image 0", "image 1"),
                 output: str | Path | None = None, max_lines: int = 250, width: float = 12.0):
    """Side by side, the matches of ``result`` as lines: inliers coloured by confidence (with a
    colour bar), outliers red; all keypoints as small dots.

    ``image0``/``image1`` may be reduced versions of the inputs (``ImageMatcher`` keeps what
    the network saw): the result's coordinates, in each input's own frame, are scaled by the
    ratio of the display size to ``result["image_size0/1"]``. At most ``max_lines`` matches are
    drawn, the most confident of each kind, a quarter of them (at least) outliers; the title says
    how many of how many.
    Returns the figure (a ``picture.Picture``: a notebook shows it); with ``output``, also writes it as PNG (atomically).
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from s2coreg.picture import Picture

    a, b = display_image(image0), display_image(image1)
    s0 = np.array([a.shape[1], a.shape[0]], np.float64) / np.array(result["image_size0"], np.float64)
    s1 = np.array([b.shape[1], b.shape[0]], np.float64) / np.array(result["image_size1"], np.float64)

    def shown(points, s):   # own-frame pixel centres → display pixel centres
        return (np.asarray(points, np.float64).reshape(-1, 2) + 0.5) * s - 0.5

    h, gap = max(a.shape[0], b.shape[0]), 10
    canvas = np.ones((h, a.shape[1] + gap + b.shape[1], 3), np.float32)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1] + gap:] = b
    off = a.shape[1] + gap

    k0, k1 = shown(result["mkpts0"], s0), shown(result["mkpts1"], s1)
    inliers = np.asarray(result.get("inliers", np.zeros(len(k0), bool)), bool)
    conf = np.asarray(result["mconf"], np.float64)
    # the most confident inliers and outliers; a quarter of the lines (or their share, if larger)
    # goes to outliers, so that they stay visible however many inliers there are
    inl_idx, out_idx = np.flatnonzero(inliers), np.flatnonzero(~inliers)
    n_out = min(len(out_idx), max(max_lines // 4, round(max_lines * len(out_idx) / max(len(k0), 1))))
    n_in = min(len(inl_idx), max_lines - n_out)
    order = np.concatenate([inl_idx[np.argsort(-conf[inl_idx])][:n_in], out_idx[np.argsort(-conf[out_idx])][:n_out]])

    def of(n, total):
        return f"{n}" if n == total else f"{n} of {total} (most confident)"

    title = (f"{names[0]} ↔ {names[1]} ({result['method']}): {len(k0)} matches, {len(inl_idx)} inliers. "
             f"Drawn: {of(n_in, len(inl_idx))} inliers coloured by confidence, {of(n_out, len(out_idx))} "
             "outliers in red")
    shift = result.get("shift_m")
    if shift:
        title += (f". Shift between the dates: median vector dx {shift['dx']:+.1f} m east, dy {shift['dy']:+.1f} m "
                  f"north (68 % of matches within {shift['r68']:.1f} m of it)")
    if result.get("reason"):
        title += f". {result['reason']}"
    lines = textwrap.wrap(title, width=int(width * 12))

    title_h = 0.2 * len(lines) + 0.15                                  # inches
    image_h = 0.92 * width * h / canvas.shape[1]                      # the image fills the axes' width
    fig_h = image_h + title_h + 0.1
    fig = Picture(figsize=(width, fig_h), dpi=100)
    ax = fig.add_axes([0, 0.1 / fig_h, 0.92, image_h / fig_h])
    ax.imshow(canvas)
    ax.set_axis_off()
    cmap, norm = colormaps["viridis"], Normalize(0, 1)
    for i in order[::-1]:        # least confident first, so the best lie on top
        x, y = [k0[i, 0], k1[i, 0] + off], [k0[i, 1], k1[i, 1]]
        if inliers[i]:
            ax.plot(x, y, "-", color=cmap(norm(conf[i])), lw=0.9, alpha=0.9)
        else:
            ax.plot(x, y, "-", color="red", lw=1.0, alpha=0.8)
    for points, shift_x, s in ((result["keypoints0"], 0, s0), (result["keypoints1"], off, s1)):
        p = shown(points, s)
        ax.scatter(p[:, 0] + shift_x, p[:, 1], s=1, c="yellow", alpha=0.5, linewidths=0)
    cax = fig.add_axes([0.935, 0.1 / fig_h + 0.1 * image_h / fig_h, 0.015, 0.8 * image_h / fig_h])
    fig.colorbar(ScalarMappable(norm, cmap), cax=cax, label="match confidence (inliers)")
    fig.text(0.5, 1 - 0.05 / fig_h, "\n".join(lines), ha="center", va="top", fontsize=9)
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(output) as tmp:
            fig.savefig(tmp, format="png")
    return fig
