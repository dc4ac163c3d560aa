r"""Radius graphs with periodic boundary conditions: an O(N) cell-list search, so2nn's rules in torch.

Convention (shared by every so2nn module): ``edge_index[0]`` is the source :math:`j` (the
neighbour), ``edge_index[1]`` the target :math:`i` (the centre, where messages are
summed), and the edge vector is

.. math::  r_{ij} = x_j + n_{ij} A - x_i,

with :math:`n_{ij} \in \mathbb{Z}^3` the ``cell_offsets`` and :math:`A` the cell, rows
being lattice vectors (ASE's convention).

The search for pairs is vesin's (cell lists, linear in the number of atoms, on the CPU; it
needs no gradient). Which pairs become edges, their order and the per-atom cap are so2nn's
rules, applied as vectorised torch ops on the inputs' device; the edge vectors are computed
in torch from positions, cell and the integer offsets (:func:`edge_vectors`), so forces
and stress differentiate through them.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import vesin

from .._checks import check_finite, check_last_dims

__all__ = ["GRAPH_MODES", "edge_vectors", "radius_graph", "segment_softmax"]

#: The rules of :func:`radius_graph`'s neighbour cap (its ``mode``; a model's ``graph_mode``).
GRAPH_MODES = ("tie_stable", "reference", "reference_nonstrict")

# fairchem's radius_graph_pbc: pairs with d^2 <= 1e-4 A^2 are an atom and itself
_SELF_PAIR_SQUARED = 1e-4
# fairchem's get_max_neighbors_mask: degeneracy_tolerance, added to a squared distance (A^2)
_NONSTRICT_TOLERANCE = 0.01


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



def radius_graph(
    pos: torch.Tensor,
    cutoff: float,
    cell: torch.Tensor | None = None,
    pbc: torch.Tensor | tuple[bool, bool, bool] | None = None,
    batch: torch.Tensor | None = None,
    max_num_neighbors: int | None = None,
    mode: str = "tie_stable",
    tie_tolerance: float = 1e-4,
    *,
    strict: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""All pairs closer than ``cutoff``, across periodic images, optionally capped per atom.

    The edges are every :math:`(j, i, n)` with

    .. math:: d_{ij} = \lVert (x_j + n A) - x_i \rVert < r_c, \qquad (j, n) \neq (i, 0),

    :math:`d_{ij}` evaluated in the dtype of ``pos``, so float32 and float64 inputs get the
    graphs their own arithmetic defines. An atom is never its own neighbour in the zero image,
    but is in the others (a cell smaller than the cutoff). Systems of a batch never connect.
    The two reference modes measure as the reference (fairchem's ``radius_graph_pbc``) does:
    squared distances :math:`d_{ij}^2` (summed squares of the components), pairs with
    :math:`d_{ij}^2 \le r_c^2` (the cutoff included), and every pair with
    :math:`d_{ij}^2 \le 10^{-4}` Å² dropped as an atom with itself.

    With ``max_num_neighbors`` :math:`k`, each target :math:`i` ranks its edges by distance
    (equal distances in the edge order below) and ``mode`` says which it keeps:

    - ``"tie_stable"`` (default): every edge with :math:`d_{ij} \le d_i^{(k)} + \epsilon`,
      :math:`d_i^{(k)}` its :math:`k`-th smallest distance and :math:`\epsilon` =
      ``tie_tolerance``: whole shells, so the selection depends only on distances and commutes
      with rotations. Targets with at most :math:`k` edges keep them all.
    - ``"reference"``: the first :math:`k` (EquiformerV2's strict cut, fairchem's
      ``enforce_max_neighbors_strictly: True``, the OC20 models). A shell of equal distances
      can be split, which breaks rotation equivariance on symmetric structures: on an OC20
      slab with the released 20-neighbour cut, a :math:`10^{-5}` Å nudge of the positions
      moves the reference's forces by 20 to 39% of the largest force (``"tie_stable"``: by
      :math:`3 \cdot 10^{-4}`). Which of the equal distances the reference keeps is up to its
      unstable sort; so2nn keeps the first in edge order, so the two agree up to that choice.
    - ``"reference_nonstrict"``: fairchem's ``enforce_max_neighbors_strictly: False`` (the OC22
      and OMat24 models), exactly: a target with more than :math:`k` edges keeps every edge with

      .. math:: d_{ij}^2 \le \bigl(d_i^{(k+1)}\bigr)^2 + 0.01\ \text{Å}^2,

      :math:`d_i^{(k+1)}` its :math:`(k+1)`-th smallest distance (the tolerance added to the
      *squared* distance, in the dtype of ``pos``): at least :math:`k + 1` edges, and whole
      shells, so rotation invariant too.

    The pairs are found with vesin's cell lists (O(N) time and memory, on the CPU, in float64
    with a margin that covers the rounding of ``pos``'s dtype); the rules above then run as
    sorts and scatters in torch on the device of ``pos``. Indices and offsets carry no
    gradient; compute the vectors with :func:`edge_vectors` to differentiate in ``pos`` and
    ``cell``.

    Args:
        pos: ``[N, 3]`` Cartesian positions.
        cutoff: radius (same unit as ``pos``).
        cell: ``[3, 3]`` or ``[B, 3, 3]`` lattice vectors as rows; ``None`` for molecules.
        pbc: ``[3]`` or ``[B, 3]`` periodic flags (default: all periodic when a cell is
            given). A non-periodic axis of a cell gets no images (slabs: ``(True, True, False)``).
        batch: ``[N]`` system index of each atom (default: one system).
        max_num_neighbors: keep only the nearest neighbours of each target atom.
        mode: ``"tie_stable"``, ``"reference"`` or ``"reference_nonstrict"`` (see above).
        tie_tolerance: in ``"tie_stable"`` mode, distances closer than this count as one shell.
        strict: deprecated; ``strict=True`` is ``mode="reference"``.

    Returns:
        ``(edge_index [2, E], cell_offsets [E, 3])``, both ``long`` on the device of ``pos``;
        edges sorted by system, then target, then source, then offset (lexicographic); with
        no edge at all, ``[2, 0]`` and ``[0, 3]``.

    Example:
        >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
        >>> radius_graph(pos, cutoff=1.5)[0]
        tensor([[1, 0],
                [0, 1]])

        One atom in a 2 A cubic cell, 3 A cutoff: its 6 face images and 12 edge images;
        with a cap of 4 the tie-stable rule keeps the whole first shell, the strict one 4; with
        a cap of 6, the non-strict rule also keeps the shell of the 7th neighbour:

        >>> cell = 2.0 * torch.eye(3, dtype=torch.float64)
        >>> one = torch.zeros(1, 3, dtype=torch.float64)
        >>> edge_index, offsets = radius_graph(one, 3.0, cell)
        >>> edge_index.shape[1], offsets[:3].tolist()
        (18, [[-1, -1, 0], [-1, 0, -1], [-1, 0, 0]])
        >>> radius_graph(one, 3.0, cell, max_num_neighbors=4)[0].shape[1]
        6
        >>> radius_graph(one, 3.0, cell, max_num_neighbors=4, mode="reference")[0].shape[1]
        4
        >>> radius_graph(one, 3.0, cell, max_num_neighbors=6)[0].shape[1]
        6
        >>> radius_graph(one, 3.0, cell, max_num_neighbors=6, mode="reference_nonstrict")[0].shape[1]
        18

        A slab (periodic in x and y only) and a molecule in one batch:

        >>> both = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
        >>> cells = torch.stack([cell, torch.zeros(3, 3, dtype=torch.float64)])
        >>> pbc = torch.tensor([[True, True, False], [False, False, False]])
        >>> edge_index, _ = radius_graph(both, 1.5, cells, pbc, batch=torch.tensor([0, 0, 1]))
        >>> edge_index
        tensor([[1, 0],
                [0, 1]])
    """
    check_last_dims("pos", pos, (3,), "[N, 3]")
    if not pos.is_floating_point():
        raise ValueError(f"pos must be a floating-point tensor, got {pos.dtype}")
    check_finite("pos", pos)
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    if max_num_neighbors is not None and not (isinstance(max_num_neighbors, int) and max_num_neighbors >= 1):
        raise ValueError(f"max_num_neighbors must be an int >= 1, got {max_num_neighbors!r}")
    if strict is not None:
        warnings.warn("radius_graph(strict=...) is deprecated: pass mode='reference' (strict) or 'tie_stable'",
                      FutureWarning, stacklevel=2)
        mode = "reference" if strict else "tie_stable"
    if mode not in GRAPH_MODES:
        raise ValueError(f"mode must be one of 'tie_stable', 'reference', 'reference_nonstrict', got {mode!r}")
    num_atoms = pos.shape[0]
    device = pos.device
    batch = torch.zeros(num_atoms, dtype=torch.long, device=device) if batch is None else batch
    if batch.shape != (num_atoms,):
        raise ValueError(f"batch must have shape [N={num_atoms}], got {tuple(batch.shape)}")
    if batch.is_floating_point() or batch.is_complex() or (num_atoms and int(batch.min()) < 0):
        raise ValueError("batch must hold integer system indices >= 0")
    num_systems = int(batch.max()) + 1 if num_atoms else 0
    if cell is not None:
        cell = cell.reshape(-1, 3, 3)
        if cell.shape[0] != num_systems:
            raise ValueError(f"cell must have one [3, 3] matrix per system ({num_systems}), got {cell.shape[0]}")
        check_finite("cell", cell)
        pbc = torch.ones(3, dtype=torch.bool) if pbc is None else torch.as_tensor(pbc, dtype=torch.bool)
        pbc = pbc.cpu().reshape(-1, 3).expand(num_systems, 3)
        if bool((pbc.any(dim=1) & (torch.linalg.det(cell.detach().cpu().double()).abs() < 1e-12)).any()):
            raise ValueError("cell is singular but pbc is set: periodic directions need a non-degenerate cell")
    elif pbc is not None and bool(torch.as_tensor(pbc).any()):
        raise ValueError("pbc is set but no cell was given")
    elif pbc is not None:
        pbc = None  # all False and no cell: a molecule

    pos = pos.detach()
    cell = cell.detach().to(pos.dtype) if cell is not None else None
    # vesin measures in float64, the rule below in pos's dtype: search a little further, so
    # that every pair the dtype's arithmetic puts inside the cutoff is a candidate.
    scale = 2.0 * float(pos.abs().max()) + 2.0 * float(cutoff) if num_atoms else 0.0
    if cell is not None:
        scale += float(cell.abs().sum(dim=-1).max())
    margin = 1e-6 * float(cutoff) + 64.0 * torch.finfo(pos.dtype).eps * scale
    src, dst, offsets = _candidate_pairs(pos, float(cutoff) + margin, cell, pbc, batch, num_systems)

    if mode != "tie_stable":
        # the reference's arithmetic and rules: squared distances, the cutoff included, and any
        # pair closer than 0.01 A (not only an atom with itself) dropped as a self-pair
        distance = _pair_distances(pos, cell, batch, src, dst, offsets, squared=True)
        keep = ((distance <= cutoff * cutoff) & (distance > _SELF_PAIR_SQUARED)).nonzero()[:, 0]
    else:
        distance = _pair_distances(pos, cell, batch, src, dst, offsets)
        keep = ((distance < cutoff) & ~((src == dst) & (offsets == 0).all(dim=1))).nonzero()[:, 0]
    src, dst, offsets, distance = src[keep], dst[keep], offsets[keep], distance[keep]
    # position of each atom in (system, index) order: the order of the targets in the output
    atom_rank = torch.empty_like(batch, dtype=torch.long)
    atom_rank[torch.argsort(batch, stable=True)] = torch.arange(num_atoms, device=device)
    group = atom_rank.index_select(0, dst)
    if max_num_neighbors is not None:  # cap first: the final sort then orders only the edges kept
        kept = _nearest(distance, group, src, offsets, num_atoms, max_num_neighbors, mode, tie_tolerance)
        src, dst, offsets, group = src[kept], dst[kept], offsets[kept], group[kept]
    order = _edge_order(group, src, offsets, num_atoms)
    return torch.stack([src[order], dst[order]]), offsets[order]


def _candidate_pairs(
    pos: torch.Tensor,
    cutoff: float,
    cell: torch.Tensor | None,
    pbc: torch.Tensor | None,
    batch: torch.Tensor,
    num_systems: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(source, target, offset)`` of every pair closer than ``cutoff`` (in float64), any order.

    One vesin call per system, on the CPU. vesin reports ``(i, j, S)`` for the vector
    ``x_j - x_i + S A``: its ``i`` is our target, ``j`` our source, ``S`` our offset. It takes
    any triclinic cell, per-axis periodicity, atoms outside the cell, and cells thinner than
    the cutoff (it walks as many images as needed); a system without periodic axis needs no cell.
    """
    points = pos.to("cpu", torch.float64).numpy()
    cells = cell.to("cpu", torch.float64).numpy() if cell is not None else None
    periodic = pbc.numpy() if pbc is not None else np.zeros((num_systems, 3), dtype=bool)
    system = batch.cpu().numpy()
    by_system = np.argsort(system, kind="stable")
    ends = np.cumsum(np.bincount(system, minlength=num_systems))
    search = vesin.NeighborList(cutoff=cutoff, full_list=True)
    sources, targets, offsets = [], [], []
    for s in range(num_systems):
        start = ends[s - 1] if s else 0
        atoms = by_system[start : ends[s]]
        if len(atoms) == 0:
            continue
        box = cells[s] if cells is not None and periodic[s].any() else np.zeros((3, 3))
        i, j, shift = search.compute(points[atoms], box, periodic[s].tolist(), "ijS")
        i, j = i.view(np.int64), j.view(np.int64)  # vesin's uint64, far below 2**63
        if atoms[0] == start and atoms[-1] == ends[s] - 1:  # the system is atoms start..end-1
            targets.append(i + start if start else i)
            sources.append(j + start if start else j)
        else:
            targets.append(atoms[i])
            sources.append(atoms[j])
        offsets.append(shift.astype(np.int64).reshape(-1, 3))
    if not targets:
        sources, targets, offsets = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros((0, 3), np.int64)]

    def to_device(parts: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0]).to(pos.device)

    return to_device(sources), to_device(targets), to_device(offsets)


def _pair_distances(
    pos: torch.Tensor,
    cell: torch.Tensor | None,
    batch: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    offsets: torch.Tensor,
    squared: bool = False,
) -> torch.Tensor:
    """``|(x_j + n A) - x_i|`` in the dtype of ``pos``, summed in this order on purpose: it is the
    arithmetic every so2nn graph was defined with, so shells and cuts fall where they always did.

    ``squared``: the sum of the squared components instead, the reference's measure (its
    ``radius_graph_pbc`` compares these with the squared cutoff and its tolerance)."""
    if cell is None:
        vec = pos.index_select(0, src) - pos.index_select(0, dst)
    else:
        n = offsets.to(pos.dtype)
        if cell.shape[0] == 1:
            shift = n @ cell[0]
        else:
            shift = torch.einsum("ek,ekj->ej", n, cell.index_select(0, batch.index_select(0, dst)))
        vec = (pos.index_select(0, src) + shift) - pos.index_select(0, dst)
    return vec.pow(2).sum(dim=-1) if squared else vec.norm(dim=-1)


def _edge_order(group: torch.Tensor, src: torch.Tensor, offsets: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """Permutation sorting edges by (target's ``group``, source, offset lexicographically)."""
    if src.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=src.device)
    low = offsets.min(dim=0).values
    span = offsets.max(dim=0).values - low + 1
    shifted = offsets - low
    image = (shifted[:, 0] * span[1] + shifted[:, 1]) * span[2] + shifted[:, 2]
    num_images = int(span.prod())
    pair = group * num_atoms + src
    # stable sorts: as fast as the unstable one for int64 on the CPU, and deterministic
    if num_atoms * num_atoms * num_images < 2**62:  # one int64 key, unique per edge: one sort
        return torch.argsort(pair * num_images + image, stable=True)
    order = torch.argsort(image, stable=True)
    return order[torch.argsort(pair[order], stable=True)]


def _nearest(
    distance: torch.Tensor,
    group: torch.Tensor,
    src: torch.Tensor,
    offsets: torch.Tensor,
    num_atoms: int,
    k: int,
    mode: str,
    tolerance: float,
) -> torch.Tensor:
    r"""Indices of the edges the cap of ``k`` per target keeps under ``mode`` (see :func:`radius_graph`).

    ``group`` is the target's position in the output order, edges in any order; ``distance``
    is squared in the two reference modes. With :math:`d^{(m)}` a target's ``m``-th
    smallest distance (whatever the order of equal ones), the tie-stable rule keeps
    :math:`d \le d^{(k)} + \epsilon`; the non-strict one :math:`d^2 \le (d^{(k+1)})^2 + 0.01`;
    the strict one keeps :math:`d < d^{(k)}` and, of the edges at exactly :math:`d^{(k)}`,
    the first in edge order until ``k`` are kept: the first ``k`` of a stable sort by
    distance, without sorting all edges into edge order first.
    """
    counts = torch.bincount(group, minlength=num_atoms)
    if group.numel() == 0 or int(counts.max()) <= k:  # nobody has more than k: every rule keeps all
        return torch.arange(group.numel(), device=group.device)
    # Rank of each edge within its target by distance: a sort by the (group, distance) pair.
    # Non-negative floats order as their bit patterns read as integers, and integer sorts are
    # several times faster than float ones on the CPU.
    if distance.dtype == torch.float32:
        order = torch.argsort((group << 32) | distance.view(torch.int32).long(), stable=True)
    else:
        order = torch.argsort(distance.double().view(torch.int64), stable=True)
        order = order[torch.argsort(group[order], stable=True)]
    # distance of the m-th nearest neighbour of each target (inf if it has fewer): the edge at
    # position start + m - 1 of its target's run in that order
    m = k + 1 if mode == "reference_nonstrict" else k
    full = (counts >= m).nonzero()[:, 0]
    mth = torch.full((num_atoms,), float("inf"), dtype=distance.dtype, device=distance.device)
    mth[full] = distance[order[(torch.cumsum(counts, 0) - counts)[full] + m - 1]]
    mth = mth.index_select(0, group)
    if mode == "tie_stable":
        return (distance <= mth + tolerance).nonzero()[:, 0]
    if mode == "reference_nonstrict":  # (the sum rounded in the distances' dtype, as the reference's)
        return (distance <= mth + _NONSTRICT_TOLERANCE).nonzero()[:, 0]
    below = distance < mth
    tied = (distance == mth).nonzero()[:, 0]
    tied = tied[_edge_order(group[tied], src[tied], offsets[tied], num_atoms)]  # usually one per target
    slots = k - torch.bincount(group[below], minlength=num_atoms)
    tied_group = group[tied]
    tied_counts = torch.bincount(tied_group, minlength=num_atoms)
    tied_rank = torch.arange(len(tied), device=tied.device) - (torch.cumsum(tied_counts, 0) - tied_counts)[tied_group]
    return torch.cat([below.nonzero()[:, 0], tied[tied_rank < slots[tied_group]]])


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
