"""Figure: l-major node features, and the truncated m-major order of edge-frame features.

Drawn from :class:`so2nn.so3.CoefficientLayout` itself (every index printed in the figure is
read from the layout's index maps), so the figure cannot drift from the code. Run by the docs
build (``_ext/so2nn_docs.py``); by hand::

    python docs/figures/m_major_truncation.py out.svg
"""

from __future__ import annotations

import sys

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from so2nn.so3 import CoefficientLayout

LMAX, MMAX = 4, 2
# One colour per |m| that is kept; what the truncation drops is grey and hatched.
COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
DROPPED = "#d9d9d9"


def _cell(ax, x: float, y: float, colour: str, text: str, hatch: str | None = None, size: float = 8.5) -> None:
    ax.add_patch(Rectangle((x, y), 0.94, 0.94, facecolor=colour, edgecolor="white", hatch=hatch, linewidth=0.8))
    ax.text(x + 0.47, y + 0.47, text, ha="center", va="center", fontsize=size,
            color="black" if colour == DROPPED else "white")


def make_figure(path) -> None:
    """Write the figure to ``path`` (SVG)."""
    layout = CoefficientLayout(LMAX, MMAX)
    matplotlib.rcParams["svg.hashsalt"] = "so2nn"  # stable ids: the same SVG on every build
    matplotlib.rcParams["svg.fonttype"] = "none"
    fig = Figure(figsize=(9.0, 5.6))
    grid = fig.add_gridspec(2, 1, height_ratios=[LMAX + 1.6, 2.6], hspace=0.25)

    # (a) l-major: rows l, columns m; each cell holds its l-major index l**2 + l + m.
    ax = fig.add_subplot(grid[0])
    for l in range(LMAX + 1):
        for m in range(-l, l + 1):
            index = l * l + l + m
            kept = abs(m) <= MMAX
            _cell(ax, m, LMAX - l, COLOURS[abs(m)] if kept else DROPPED, str(index), None if kept else "///")
        ax.text(-LMAX - 0.4, LMAX - l + 0.47, f"l = {l}", ha="right", va="center", fontsize=9)
    for m in range(-LMAX, LMAX + 1):
        ax.text(m + 0.47, LMAX + 1.15, f"{m:+d}" if m else "0", ha="center", va="center", fontsize=9)
    ax.text(0.47, LMAX + 1.55, "m", ha="center", va="center", fontsize=9)
    ax.set_title("(a) node features [N, (lmax+1)², C], l-major: cell = index l² + l + m", fontsize=10, loc="left")
    ax.text(LMAX + 1.1, 0.47, f"lmax = {LMAX}, mmax = {MMAX}\nhatched: |m| > mmax,\ndropped in edge frames",
            ha="left", va="center", fontsize=8.5, color="#444444")
    ax.set_xlim(-LMAX - 1.6, LMAX + 4.2)
    ax.set_ylim(-0.2, LMAX + 1.8)
    ax.set_aspect("equal")
    ax.axis("off")

    # (b) m-major: the kept coefficients in layout order; each cell shows the l-major index
    # it is gathered from (layout.m_major_index), and the blocks are labelled by m.
    ax = fig.add_subplot(grid[1])
    index = layout.m_major_index.tolist()
    degrees = layout.m_major_degrees.tolist()
    orders = layout.m_major_orders.tolist()
    for position, (i, l, m) in enumerate(zip(index, degrees, orders)):
        _cell(ax, position, 1.0, COLOURS[abs(m)], str(i))
        ax.text(position + 0.47, 0.72, f"l={l}", ha="center", va="center", fontsize=7)
    blocks = [(0, layout.order_slice(0), "m = 0")]
    for m in range(1, MMAX + 1):
        s = layout.order_slice(m)
        half = (s.stop - s.start) // 2
        blocks += [(m, slice(s.start, s.start + half), f"m = +{m}"), (m, slice(s.start + half, s.stop), f"m = -{m}")]
    for m, s, label in blocks:
        ax.plot([s.start + 0.05, s.stop - 0.11], [0.45, 0.45], color=COLOURS[m], linewidth=2)
        ax.text((s.start + s.stop - 0.06) / 2, 0.18, label, ha="center", va="center", fontsize=9)
        ax.text(s.start, 2.15, str(s.start), ha="left", va="center", fontsize=7, color="#555555")
    ax.text(layout.edge_dim, 2.15, str(layout.edge_dim), ha="left", va="center", fontsize=7, color="#555555")
    ax.set_title(
        f"(b) edge-frame features [E, edge_dim = {layout.edge_dim}, C], m-major, |m| ≤ mmax: "
        "cell = the l-major index it is taken from",
        fontsize=10, loc="left",
    )
    ax.set_xlim(-0.3, layout.edge_dim + 0.6)
    ax.set_ylim(0.0, 2.4)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})


if __name__ == "__main__":
    make_figure(sys.argv[1] if len(sys.argv) > 1 else "m_major_truncation.svg")
