r"""Radius graphs with periodic boundary conditions, in plain torch.

Convention (shared by every so2nn module): ``edge_index[0]`` is the source :math:`j` (the
neighbour), ``edge_index[1]`` the target :math:`i` (the centre, where messages are
summed), and the edge vector is

.. math::  r_{ij} = x_j + n_{ij} A - x_i,

with :math:`n_{ij} \in \mathbb{Z}^3` the ``cell_offsets`` and :math:`A` the cell, rows
being lattice vectors (ASE's convention).
"""

from __future__ import annotations

import itertools
import math

import torch

from .._checks import check_finite, check_last_dims

__all__ = ["edge_vectors", "radius_graph", "segment_softmax"]


def edge_vectors(
    pos: torch.Tensor,
    edge_index: torch.Tensor,
    cell_offsets: torch.Tensor | None = None,
    cell: torch.Tensor | None = None,
    batch: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Edge vectors ``pos[src] + offset @ cell[system] - pos[dst]``, ``[E, 3]``.

    .. math:: r_{ij} = x_j + n_{ij} A - x_i,

    with the source :math:`j` in ``edge_index[0]`` and the target :math:`i` in ``edge_index[1]``.
    ``cell`` is ``[3, 3]`` for one system or ``[B, 3, 3]`` with ``batch`` mapping atoms to
    systems; ``cell_offsets [E, 3]`` are the integer lattice translations :math:`n_{ij}`.
    Differentiable in ``pos`` and ``cell``.

    Example:
        >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
        >>> cell = 3.0 * torch.eye(3)
        >>> edge_index = torch.tensor([[1, 0], [0, 1]])
        >>> edge_vectors(pos, edge_index, torch.tensor([[-1, 0, 0], [0, 0, 0]]), cell)
        tensor([[-2.,  0.,  0.],
                [-1.,  0.,  0.]])
    """
    src, dst = edge_index
    vec = pos.index_select(0, src) - pos.index_select(0, dst)
    if cell_offsets is None:
        return vec
    if cell is None:
        raise ValueError("cell_offsets given without a cell")
    offsets = cell_offsets.to(pos.dtype)
    if cell.dim() == 2:
        return vec + offsets @ cell
    system = batch.index_select(0, dst) if batch is not None else torch.zeros_like(dst)
    return vec + torch.einsum("ek,ekj->ej", offsets, cell.index_select(0, system))


def _image_range(cell: torch.Tensor, pbc: torch.Tensor, cutoff: float) -> list[range]:
    """Lattice translations needed per axis: ceil(cutoff / plane spacing) where periodic."""
    # The spacing of the lattice planes spanned by the other two vectors is 1 / |b_k|,
    # with b_k the k-th column of inv(A) (the reciprocal vectors without 2 pi).
    inv = torch.linalg.inv(cell.to(torch.float64))
    spacing = 1.0 / inv.norm(dim=0)
    return [
        range(-math.ceil(cutoff / float(spacing[k])), math.ceil(cutoff / float(spacing[k])) + 1)
        if bool(pbc[k])
        else range(0, 1)
        for k in range(3)
    ]


def radius_graph(
    pos: torch.Tensor,
    cutoff: float,
    cell: torch.Tensor | None = None,
    pbc: torch.Tensor | tuple[bool, bool, bool] | None = None,
    batch: torch.Tensor | None = None,
    max_num_neighbors: int | None = None,
    strict: bool = False,
    tie_tolerance: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""All pairs closer than ``cutoff``, across periodic images, optionally capped per atom.

    Args:
        pos: ``[N, 3]`` Cartesian positions.
        cutoff: radius (same unit as ``pos``).
        cell: ``[3, 3]`` or ``[B, 3, 3]`` lattice vectors as rows; ``None`` for molecules.
        pbc: ``[3]`` or ``[B, 3]`` periodic flags (default: all periodic when a cell is
            given).
        batch: ``[N]`` system index of each atom (default: one system).
        max_num_neighbors: keep only the nearest neighbours of each target atom.
        strict: with ``max_num_neighbors``, cut at exactly that many (EquiformerV2's
            reference behaviour: a shell of equal distances can be split, which breaks
            rotation equivariance on symmetric slabs). Default: keep the whole shell at
            the cut (every neighbour within ``tie_tolerance`` of the k-th distance), so the
            selection depends only on distances and commutes with rotations.
        tie_tolerance: distances closer than this count as one shell.

    Returns:
        ``(edge_index [2, E], cell_offsets [E, 3])``, edges sorted by target then source.
        An atom is never its own neighbour in the zero image, but is in other images.

    Example:
        >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
        >>> radius_graph(pos, cutoff=1.5)[0]
        tensor([[1, 0],
                [0, 1]])
    """
    check_last_dims("pos", pos, (3,), "[N, 3]")
    check_finite("pos", pos)
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    num_atoms = pos.shape[0]
    device = pos.device
    batch = torch.zeros(num_atoms, dtype=torch.long, device=device) if batch is None else batch
    if batch.shape != (num_atoms,):
        raise ValueError(f"batch must have shape [N={num_atoms}], got {tuple(batch.shape)}")
    num_systems = int(batch.max()) + 1 if num_atoms else 0
    if cell is not None:
        cell = cell.reshape(-1, 3, 3)
        if cell.shape[0] != num_systems:
            raise ValueError(f"cell must have one [3, 3] matrix per system ({num_systems}), got {cell.shape[0]}")
        check_finite("cell", cell)
        pbc = torch.ones(3, dtype=torch.bool) if pbc is None else torch.as_tensor(pbc, dtype=torch.bool)
        pbc = pbc.reshape(-1, 3).expand(num_systems, 3).cpu()
        if bool((pbc.any(dim=1) & (torch.linalg.det(cell.detach().cpu().double()).abs() < 1e-12)).any()):
            raise ValueError("cell is singular but pbc is set: periodic directions need a non-degenerate cell")
    elif pbc is not None and bool(torch.as_tensor(pbc).any()):
        raise ValueError("pbc is set but no cell was given")

    edges, offsets = [], []
    for s in range(num_systems):
        atoms = (batch == s).nonzero()[:, 0]
        p = pos.detach().index_select(0, atoms)
        if cell is None or not bool(pbc[s].any()):
            images = torch.zeros(1, 3, dtype=pos.dtype, device=device)
        else:
            ranges = _image_range(cell[s].detach(), pbc[s], cutoff)
            images = torch.tensor(list(itertools.product(*ranges)), dtype=pos.dtype, device=device)
        shift = images @ cell[s].detach() if cell is not None else images
        # d[k, i, j] = |p_j + shift_k - p_i|
        vec = p.unsqueeze(0).unsqueeze(1) + shift.view(-1, 1, 1, 3) - p.unsqueeze(0).unsqueeze(2)
        dist = vec.norm(dim=-1)
        mask = dist < cutoff
        zero_image = (images == 0).all(dim=1)
        mask[zero_image] &= ~torch.eye(len(atoms), dtype=torch.bool, device=device)
        k, i, j = mask.nonzero(as_tuple=True)
        order = torch.argsort(i * len(atoms) * len(images) + j * len(images) + k)
        k, i, j = k[order], i[order], j[order]
        if max_num_neighbors is not None:
            keep = _nearest(dist[k, i, j], i, len(atoms), max_num_neighbors, strict, tie_tolerance)
            k, i, j = k[keep], i[keep], j[keep]
        edges.append(torch.stack([atoms[j], atoms[i]]))
        offsets.append(images[k].round().long())
    if not edges:
        return torch.zeros(2, 0, dtype=torch.long, device=device), torch.zeros(0, 3, dtype=torch.long, device=device)
    return torch.cat(edges, dim=1), torch.cat(offsets, dim=0)


def _nearest(
    distance: torch.Tensor, target: torch.Tensor, num_atoms: int, k: int, strict: bool, tolerance: float
) -> torch.Tensor:
    """Mask of the edges among the ``k`` nearest of their target (whole shells unless strict)."""
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"max_num_neighbors must be an int >= 1, got {k!r}")
    # rank of each edge within its target, by distance (stable: ties keep the edge order)
    order = torch.argsort(distance, stable=True)
    order = order[torch.argsort(target[order], stable=True)]
    counts = torch.bincount(target, minlength=num_atoms)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device) - starts[target[order]]
    if strict:
        return rank < k
    # distance of the k-th nearest neighbour of each target (inf if it has fewer)
    kth = torch.full((num_atoms,), float("inf"), dtype=distance.dtype, device=distance.device)
    at_k = rank == k - 1
    kth[target[at_k]] = distance[at_k]
    return distance <= kth[target] + tolerance


def segment_softmax(logits: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    r"""Softmax of ``logits[E, ...]`` over the entries that share ``index[E]`` (e.g. edges per target).

    .. math:: \alpha_e = \frac{\exp(z_e - \max_{e' \in s(e)} z_{e'})}{\sum_{e' \in s(e)} \exp(z_{e'} - \max z)}

    Plain torch (``scatter_reduce`` and ``index_add``), no extension packages.

    Example:
        >>> logits = torch.tensor([0.0, 0.0, 1.0, 5.0])
        >>> segment_softmax(logits, index=torch.tensor([0, 0, 1, 1]), num_segments=2)
        tensor([0.5000, 0.5000, 0.0180, 0.9820])
    """
    shape = (num_segments,) + logits.shape[1:]
    expanded = index.view(-1, *([1] * (logits.dim() - 1))).expand_as(logits)
    peak = logits.new_full(shape, float("-inf")).scatter_reduce(0, expanded, logits.detach(), "amax")
    exp = (logits - peak.index_select(0, index)).exp()
    total = logits.new_zeros(shape).index_add(0, index, exp)
    return exp / total.index_select(0, index)
