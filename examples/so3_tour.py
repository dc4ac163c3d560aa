"""A tour of so2nn's SO(3) toolkit, in float64, in a few seconds.

Builds edge frames for a small molecule, rotates its neighbourhood features into them,
checks the eSCN facts that make SO(2) convolutions work, and prints what it measured:
an edge's spherical harmonics have only m = 0 components in its own frame; rotating into
edge frames, keeping |m| <= mmax and rotating back commutes with rotations; an S2 grid round
trip is exact on band-limited signals.

    python examples/so3_tour.py
    python examples/so3_tour.py --lmax 6 --mmax 3 --seed 1
"""

import argparse

import torch

from so2nn.cli import UsageError, add_threads_argument, non_negative_int, positive_int, set_threads, usage_errors
from so2nn.graph import edge_vectors, radius_graph
from so2nn.so3 import CoefficientLayout, EdgeRotation, S2Grid, spherical_harmonics
from so2nn.testing import assert_equivariant, random_rotation


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lmax", type=positive_int, default=4, help="largest degree of the features (default: 4)")
    parser.add_argument("--mmax", type=non_negative_int, default=2,
                        help="largest order kept in edge frames (default: 2)")
    parser.add_argument("--resolution", type=positive_int, default=18, help="S2 grid points per angle (default: 18)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random features and rotation (default: 0)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.mmax > args.lmax:
        parser.error(f"--mmax {args.mmax} must be <= --lmax {args.lmax}")
    with usage_errors(parser):
        set_threads(args.threads)
        try:  # before any work: a grid too coarse for lmax is the user's choice of --resolution
            grid = S2Grid(CoefficientLayout(args.lmax), resolution=args.resolution)  # float64 matrices
        except ValueError as error:
            raise UsageError(f"--resolution {args.resolution}: {error}") from None
    torch.set_default_dtype(torch.float64)

    # Ethanol-like positions (Angstrom).
    pos = torch.tensor(
        [[0.0, 0.0, 0.0], [1.52, 0.0, 0.0], [2.0, 1.35, 0.0], [-0.4, 1.0, 0.1], [-0.4, -0.5, 0.9],
         [-0.4, -0.5, -0.9], [1.9, -0.5, 0.9], [1.9, -0.5, -0.9], [2.95, 1.3, 0.0]]
    )
    edge_index, _ = radius_graph(pos, cutoff=2.0)
    vec = edge_vectors(pos, edge_index)
    layout = CoefficientLayout(lmax=args.lmax, mmax=args.mmax)
    print(f"{pos.shape[0]} atoms, {edge_index.shape[1]} edges, {layout}: "
          f"{layout.dim} coefficients per node, {layout.edge_dim} kept per edge")

    # 1. In its own frame, an edge's spherical harmonics have only m = 0 components.
    rotation = EdgeRotation(layout, vec)
    Y = spherical_harmonics(layout.lmax, vec).unsqueeze(-1)
    Y_edge = rotation.to_edge(Y)
    off_axis = Y_edge[:, layout.m_major_orders != 0].abs().max()
    print(f"edge harmonics in edge frames: max |m != 0| = {off_axis:.1e}")

    # 2. Rotating into edge frames, keeping |m| <= mmax and rotating back commutes with rotations.
    torch.manual_seed(args.seed)
    x = torch.randn(pos.shape[0], layout.dim, 8)

    def message(pos, x):
        rot = EdgeRotation(layout, edge_vectors(pos, edge_index))
        return rot.from_edge(rot.to_edge(x[edge_index[0]]))

    R = random_rotation(torch.Generator().manual_seed(args.seed))
    errors = assert_equivariant(message, [pos, x], ["vector", layout], layout, R)
    print(f"rotate -> truncate -> rotate back: {errors[0]}")

    # 3. S2 grids: the round trip is exact on band-limited signals.
    round_trip = (grid.from_grid @ (grid.to_grid @ x[0]) - x[0]).abs().max()
    print(f"S2 grid {grid.resolution}: round-trip error {round_trip:.1e}")


if __name__ == "__main__":
    main()
