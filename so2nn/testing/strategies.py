"""Hypothesis strategies for equivariance tests: rotations, point clouds, cells, graphs.

Random draws come from a seed that Hypothesis chooses, so every failure is reproducible;
the special cases that break naive code (the identity, rotations by pi, axis-aligned
rotations, edges along the coordinate axes) are drawn explicitly and often.

Example:
    >>> from hypothesis import given
    >>> from so2nn.testing import strategies as so2st
    >>> @given(R=so2st.rotations())
    ... def test_orthogonal(R):
    ...     assert torch.allclose(R @ R.T, torch.eye(3, dtype=R.dtype))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import assume
from hypothesis import strategies as st

from ..graph import edge_vectors, radius_graph
from ._equivariance import quaternion_to_matrix, random_rotation

__all__ = [
    "AtomicGraph",
    "atomic_graphs",
    "edge_vectors_with_axes",
    "periodic_cells",
    "point_clouds",
    "rotations",
    "special_rotations",
    "uniform_rotations",
]

_seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _axis_angle(axis: tuple[float, float, float], angle: float) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    q = torch.cat([torch.tensor([math.cos(angle / 2)], dtype=torch.float64), math.sin(angle / 2) * a])
    return quaternion_to_matrix(q)


def _special() -> list[torch.Tensor]:
    axes = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1), (1, -1, 0)]
    out = [torch.eye(3, dtype=torch.float64)]
    out += [_axis_angle(a, math.pi) for a in axes]  # rotations by pi
    out += [_axis_angle(a, s * math.pi / 2) for a in axes[:3] for s in (1, -1)]  # axis-aligned
    out += [_axis_angle((1, 1, 1), 2 * math.pi / 3)]  # the cyclic permutation x -> y -> z
    # Exact zeros/ones: the entries of these matrices are integers up to rounding.
    return [torch.where(r.abs() < 1e-12, torch.zeros_like(r), r) for r in out]


def special_rotations(dtype: torch.dtype = torch.float64) -> st.SearchStrategy[torch.Tensor]:
    """The identity, rotations by pi about axes and diagonals, and 90-degree axis rotations.

    Their entries are exact (0, 1, -1 where they should be), which is where code that divides
    by ``1 + trace`` or takes ``acos`` of a rounded value breaks.

    Example:
        >>> from hypothesis import find
        >>> find(special_rotations(), lambda R: float(torch.trace(R)) < -0.999)   # a rotation by pi
        tensor([[ 1.,  0.,  0.],
                [ 0., -1.,  0.],
                [ 0.,  0., -1.]], dtype=torch.float64)
    """
    return st.sampled_from(_special()).map(lambda R: R.to(dtype))


def uniform_rotations(dtype: torch.dtype = torch.float64) -> st.SearchStrategy[torch.Tensor]:
    """Rotation matrices ``[3, 3]`` drawn uniformly (Haar measure) on SO(3).

    Example:
        >>> from hypothesis import find
        >>> R = find(uniform_rotations(dtype=torch.float32), lambda R: True)
        >>> R.dtype, bool(torch.allclose(R @ R.T, torch.eye(3), atol=1e-6))
        (torch.float32, True)
    """
    return _seeds.map(lambda seed: random_rotation(_generator(seed), dtype))


def rotations(dtype: torch.dtype = torch.float64) -> st.SearchStrategy[torch.Tensor]:
    """Rotation matrices ``[3, 3]``: uniform on SO(3), plus the special ones of :func:`special_rotations`.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=10)
        ... @given(R=rotations())
        ... def test_proper(R):
        ...     assert abs(float(torch.linalg.det(R)) - 1.0) < 1e-12
        >>> test_proper()
    """
    return st.one_of(special_rotations(dtype), uniform_rotations(dtype), uniform_rotations(dtype))


def edge_vectors_with_axes(
    num_edges: int = 16, dtype: torch.dtype = torch.float64
) -> st.SearchStrategy[torch.Tensor]:
    """Edge vectors ``[num_edges, 3]``: random directions and lengths, and always the six
    axis directions and vectors within 1e-9 of the +-y axis (where frames are delicate).

    Lengths are between 0.5 and 4.5.

    Example:
        >>> from hypothesis import find
        >>> vectors = find(edge_vectors_with_axes(num_edges=12), lambda v: True)
        >>> vectors.shape, bool((vectors[:6].abs() > 0).sum(dim=1).eq(1).all())   # the first six on the axes
        (torch.Size([12, 3]), True)
    """

    def build(seed: int) -> torch.Tensor:
        g = _generator(seed)
        fixed = torch.tensor(
            [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1],
             [1e-9, 1, -1e-9], [1e-9, -1, 1e-9], [1, 1e-9, 0], [0, -1e-9, 1]],
            dtype=torch.float64,
        )
        rand = torch.randn(max(num_edges - len(fixed), 0), 3, generator=g, dtype=torch.float64)
        vec = torch.cat([fixed, rand])[:num_edges]
        scale = 0.5 + 4.0 * torch.rand(num_edges, 1, generator=g, dtype=torch.float64)
        return (vec / vec.norm(dim=1, keepdim=True) * scale).to(dtype)

    return _seeds.map(build)


def point_clouds(
    min_atoms: int = 2,
    max_atoms: int = 8,
    min_distance: float = 0.8,
    density: float = 0.1,
    dtype: torch.dtype = torch.float64,
) -> st.SearchStrategy[torch.Tensor]:
    """Positions ``[N, 3]`` with every pair at least ``min_distance`` apart, at roughly
    ``density`` atoms per cubic unit (``min_atoms <= N <= max_atoms``).

    Example:
        >>> from hypothesis import find
        >>> find(point_clouds(min_atoms=3, max_atoms=5), lambda pos: True).shape
        torch.Size([3, 3])
    """

    def build(args: tuple[int, int]) -> torch.Tensor:
        n, seed = args
        g = _generator(seed)
        side = (n / density) ** (1 / 3)
        points: list[torch.Tensor] = []
        while len(points) < n:
            p = torch.rand(3, generator=g, dtype=torch.float64) * side
            if all(float((p - q).norm()) >= min_distance for q in points):
                points.append(p)
        return torch.stack(points).to(dtype)

    return st.tuples(st.integers(min_atoms, max_atoms), _seeds).map(build)


def periodic_cells(
    min_length: float = 3.0, max_length: float = 7.0, dtype: torch.dtype = torch.float64
) -> st.SearchStrategy[torch.Tensor]:
    """Cells ``[3, 3]`` (rows are lattice vectors): random triclinic ones with angles in
    [60, 120] degrees, and the cubic and hexagonal special cases.

    Example:
        >>> from hypothesis import find
        >>> find(periodic_cells(), lambda cell: True)            # the simplest: cubic
        tensor([[5., 0., 0.],
                [0., 5., 0.],
                [0., 0., 5.]], dtype=torch.float64)
    """

    def triclinic(seed: int) -> torch.Tensor:
        g = _generator(seed)
        a, b, c = (min_length + (max_length - min_length) * torch.rand(3, generator=g, dtype=torch.float64)).tolist()
        al, be, ga = (math.radians(60 + 60 * float(t)) for t in torch.rand(3, generator=g, dtype=torch.float64))
        cx = c * math.cos(be)
        cy = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
        cz2 = c * c - cx * cx - cy * cy
        if cz2 < (0.3 * c) ** 2:  # too flat: fall back to an orthorhombic cell
            return torch.diag(torch.tensor([a, b, c], dtype=torch.float64))
        return torch.tensor(
            [[a, 0, 0], [b * math.cos(ga), b * math.sin(ga), 0], [cx, cy, math.sqrt(cz2)]], dtype=torch.float64
        )

    mid = 0.5 * (min_length + max_length)
    special = [
        mid * torch.eye(3, dtype=torch.float64),
        torch.tensor([[mid, 0, 0], [-mid / 2, mid * math.sqrt(3) / 2, 0], [0, 0, mid]], dtype=torch.float64),
    ]
    return st.one_of(st.sampled_from(special), _seeds.map(triclinic)).map(lambda c: c.to(dtype))


@dataclass
class AtomicGraph:
    """A small atomistic system and its radius graph (so2nn's edge conventions), as drawn by
    :func:`atomic_graphs`.

    Attributes:
        pos: ``[N, 3]`` positions.
        atomic_numbers: ``[N]``.
        cell: ``[3, 3]`` lattice vectors as rows, or ``None`` for a molecule.
        pbc: periodic flags per lattice vector.
        edge_index: ``[2, E]``, row 0 the source (neighbour), row 1 the target (centre).
        cell_offsets: ``[E, 3]`` integer lattice translations of the sources.
        cutoff: radius of the graph.
    """

    pos: torch.Tensor  # [N, 3]
    atomic_numbers: torch.Tensor  # [N]
    cell: torch.Tensor | None  # [3, 3] rows are lattice vectors, or None
    pbc: tuple[bool, bool, bool]
    edge_index: torch.Tensor  # [2, E]: row 0 source (neighbour), row 1 target (centre)
    cell_offsets: torch.Tensor  # [E, 3] integer lattice translations
    cutoff: float

    @property
    def num_atoms(self) -> int:
        return self.pos.shape[0]

    def edge_vec(self, pos: torch.Tensor | None = None, cell: torch.Tensor | None = None) -> torch.Tensor:
        """Edge vectors for (possibly rotated) ``pos`` and ``cell``: ``pos[src] + offset @ cell - pos[dst]``."""
        pos = self.pos if pos is None else pos
        cell = self.cell if cell is None else cell
        return edge_vectors(pos, self.edge_index, self.cell_offsets if cell is not None else None, cell)


def _periodic_positions(
    n: int, cell: torch.Tensor, pbc: tuple[bool, bool, bool], min_distance: float, g: torch.Generator
) -> torch.Tensor:
    """Up to ``n`` atoms at random in the cell, each at least ``min_distance`` from all images of the others."""
    pos = torch.zeros(0, 3, dtype=cell.dtype)
    for _ in range(20 * n):
        trial = torch.cat([pos, (torch.rand(1, 3, generator=g, dtype=torch.float64) @ cell.double()).to(cell.dtype)])
        if radius_graph(trial, min_distance, cell, pbc)[0].shape[1] == 0:
            pos = trial
        if len(pos) == n:
            break
    return pos


def atomic_graphs(
    min_atoms: int = 2,
    max_atoms: int = 8,
    cutoff: float = 3.5,
    periodic: bool | None = None,
    max_atomic_number: int = 10,
    dtype: torch.dtype = torch.float64,
) -> st.SearchStrategy[AtomicGraph]:
    """Molecules or periodic crystals with at least one edge, as :class:`AtomicGraph`.

    Args:
        min_atoms, max_atoms: number of atoms.
        cutoff: radius of the graph.
        periodic: ``True`` only crystals (periodic along the first two lattice vectors, and
            the third or not: bulk or slab), ``False`` only molecules, ``None`` both.
        max_atomic_number: atomic numbers are drawn from ``1..max_atomic_number``.
        dtype: of positions and cells.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=5)
        ... @given(graph=atomic_graphs(periodic=True))
        ... def test_edges_within_cutoff(graph):
        ...     assert bool((graph.edge_vec().norm(dim=1) < graph.cutoff).all())
        >>> test_edges_within_cutoff()
    """

    @st.composite
    def build(draw) -> AtomicGraph:
        is_periodic = draw(st.booleans()) if periodic is None else periodic
        pos = draw(point_clouds(min_atoms, max_atoms, min_distance=0.9, density=0.15, dtype=dtype))
        cell, pbc = None, (False, False, False)
        if is_periodic:
            cell = draw(periodic_cells(dtype=dtype))
            pbc = (True, True, draw(st.booleans()))  # slabs: aperiodic along the third vector
            pos = _periodic_positions(pos.shape[0], cell, pbc, 0.9, _generator(draw(_seeds)))
        edge_index, offsets = radius_graph(pos, cutoff, cell, pbc)
        assume(edge_index.shape[1] > 0)
        numbers = torch.randint(1, max_atomic_number + 1, (pos.shape[0],), generator=_generator(draw(_seeds)))
        return AtomicGraph(pos, numbers, cell, pbc, edge_index, offsets, cutoff)

    return build()
