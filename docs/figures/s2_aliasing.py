"""Figure: equivariance error of a pointwise SiLU on the S2 grid, against the grid resolution.

Measured when the docs are built (a second or two): :class:`so2nn.layers.S2Activation` on
unit-variance random node features (float64, 16 nodes, 16 channels), the worst relative error
(:func:`so2nn.testing.equivariance_error`) over 3 random rotations, for lmax 2, 4 and 6 and
square grids from the smallest that resolves the degree up to 64. The markers show
EquiformerV2's resolution 18 and :func:`so2nn.layers.fine_grid_resolution`. By hand::

    python docs/figures/s2_aliasing.py out.svg
"""

from __future__ import annotations

import sys

import matplotlib
import torch
from matplotlib.figure import Figure

from so2nn.layers import S2Activation, fine_grid_resolution
from so2nn.so3 import CoefficientLayout
from so2nn.testing import equivariance_error, random_rotation

LMAXES = (2, 4, 6)
RESOLUTIONS = (8, 12, 16, 18, 24, 32, 40, 48, 56, 64)
COLOURS = {2: "#4c72b0", 4: "#dd8452", 6: "#55a868"}


def aliasing_error(lmax: int, resolution: int, rotations: int = 3) -> float:
    """Worst relative equivariance error of SiLU on the grid, over ``rotations`` random rotations."""
    generator = torch.Generator().manual_seed(lmax * 100 + resolution)
    layout = CoefficientLayout(lmax)
    act = S2Activation(layout, resolution).double()
    x = torch.randn(16, layout.dim, 16, generator=generator, dtype=torch.float64)
    worst = 0.0
    for _ in range(rotations):
        [error] = equivariance_error(act, [x], [layout], layout, random_rotation(generator))
        worst = max(worst, error.relative)
    return worst


def make_figure(path) -> None:
    """Measure and write the figure to ``path`` (SVG)."""
    matplotlib.rcParams["svg.hashsalt"] = "so2nn"
    matplotlib.rcParams["svg.fonttype"] = "none"
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.add_subplot()
    floor = 1e-16
    for lmax in LMAXES:
        resolutions = [r for r in RESOLUTIONS if r >= 2 * (lmax + 1)]
        errors = [max(aliasing_error(lmax, r), floor) for r in resolutions]
        ax.plot(resolutions, errors, "o-", color=COLOURS[lmax], markersize=3.5, label=f"lmax = {lmax}")
        fine = fine_grid_resolution(lmax)
        ax.plot([fine], [max(aliasing_error(lmax, fine), floor)], "s", color=COLOURS[lmax], markersize=9,
                markerfacecolor="none")
    ax.axvline(18, color="#888888", linestyle="--", linewidth=1)
    ax.text(18.5, 2e-16, "EquiformerV2\n(resolution 18)", fontsize=8, color="#555555", va="bottom")
    ax.plot([], [], "s", color="#555555", markerfacecolor="none", label="fine_grid_resolution(lmax)")
    ax.set_yscale("log")
    ax.set_ylim(1e-16, 1.0)
    ax.set_xlabel("grid resolution (res_beta = res_alpha)")
    ax.set_ylabel("relative equivariance error (float64)")
    ax.set_title("SiLU on the S2 grid (S2Activation, node features): aliasing vs resolution", fontsize=10)
    ax.grid(True, which="major", linewidth=0.4, alpha=0.5)
    ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})


if __name__ == "__main__":
    make_figure(sys.argv[1] if len(sys.argv) > 1 else "s2_aliasing.svg")
