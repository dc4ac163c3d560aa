"""radius_graph: the same graphs as the dense all-pairs algorithm it replaced and as ASE, any cell."""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, fcc111, molecule
from ase.neighborlist import neighbor_list
from hypothesis import given, settings
from hypothesis import strategies as st

from so2nn.graph import GRAPH_MODES, edge_vectors, radius_graph

# ---------------------------------------------------------------------------------------------
# The independent reference: so2nn's previous dense algorithm, kept here (and only here).
# For each system it forms every pair of atoms for every lattice translation within reach,
# O(N^2 * images) in time and memory, and applies the same rules as radius_graph.
# ---------------------------------------------------------------------------------------------


def _image_range(cell, pbc, cutoff):
    """Lattice translations needed per axis: ceil(cutoff / plane spacing) where periodic."""
    inv = torch.linalg.inv(cell.to(torch.float64))
    spacing = 1.0 / inv.norm(dim=0)
    return [
        range(-math.ceil(cutoff / float(spacing[k])), math.ceil(cutoff / float(spacing[k])) + 1)
        if bool(pbc[k])
        else range(1)
        for k in range(3)
    ]


def _dense_nearest(distance, target, num_atoms, k, mode, tolerance):
    order = torch.argsort(distance, stable=True)
    order = order[torch.argsort(target[order], stable=True)]
    counts = torch.bincount(target, minlength=num_atoms)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order)) - starts[target[order]]
    if mode == "reference":
        return rank < k
    # tie_stable: within tolerance of the k-th distance; reference_nonstrict (squared
    # distances): within 0.01 of the (k+1)-th, which is itself kept
    m, tolerance = (k + 1, 0.01) if mode == "reference_nonstrict" else (k, tolerance)
    mth = torch.full((num_atoms,), float("inf"), dtype=distance.dtype)
    at_m = rank == m - 1
    mth[target[at_m]] = distance[at_m]
    return distance <= mth[target] + tolerance


def dense_radius_graph(pos, cutoff, cell=None, pbc=None, batch=None, max_num_neighbors=None, mode="tie_stable",
                       tie_tolerance=1e-4):
    """The previous dense algorithm (same signature and rules as radius_graph, no input checks); the
    reference modes measure as the reference (squared distances, cutoff included, d^2 <= 1e-4 dropped)."""
    num_atoms = pos.shape[0]
    batch = torch.zeros(num_atoms, dtype=torch.long) if batch is None else batch
    num_systems = int(batch.max()) + 1 if num_atoms else 0
    if cell is not None:
        cell = cell.reshape(-1, 3, 3)
        pbc = torch.ones(3, dtype=torch.bool) if pbc is None else torch.as_tensor(pbc, dtype=torch.bool)
        pbc = pbc.reshape(-1, 3).expand(num_systems, 3)
    edges, offsets = [], []
    for s in range(num_systems):
        atoms = (batch == s).nonzero()[:, 0]
        p = pos.detach().index_select(0, atoms)
        if cell is None or not bool(pbc[s].any()):
            images = torch.zeros(1, 3, dtype=pos.dtype)
        else:
            ranges = _image_range(cell[s].detach(), pbc[s], cutoff)
            images = torch.tensor(list(itertools.product(*ranges)), dtype=pos.dtype)
        shift = images @ cell[s].detach() if cell is not None else images
        vec = p.unsqueeze(0).unsqueeze(1) + shift.view(-1, 1, 1, 3) - p.unsqueeze(0).unsqueeze(2)
        if mode != "tie_stable":
            dist = vec.pow(2).sum(dim=-1)
            mask = (dist <= cutoff * cutoff) & (dist > 1e-4)
        else:
            dist = vec.norm(dim=-1)
            mask = dist < cutoff
            zero_image = (images == 0).all(dim=1)
            mask[zero_image] &= ~torch.eye(len(atoms), dtype=torch.bool)
        k, i, j = mask.nonzero(as_tuple=True)
        order = torch.argsort(i * len(atoms) * len(images) + j * len(images) + k)
        k, i, j = k[order], i[order], j[order]
        if max_num_neighbors is not None:
            keep = _dense_nearest(dist[k, i, j], i, len(atoms), max_num_neighbors, mode, tie_tolerance)
            k, i, j = k[keep], i[keep], j[keep]
        edges.append(torch.stack([atoms[j], atoms[i]]))
        offsets.append(images[k].round().long())
    if not edges:
        return torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long)
    return torch.cat(edges, dim=1), torch.cat(offsets, dim=0)


# ---------------------------------------------------------------------------------------------


def _edge_set(edge_index, offsets):
    return set(zip(edge_index[0].tolist(), edge_index[1].tolist(), map(tuple, offsets.tolist())))


def _ase_edges(atoms, cutoff, first=0):
    i, j, S = neighbor_list("ijS", atoms, cutoff)
    return set(zip((j + first).tolist(), (i + first).tolist(), map(tuple, S.tolist())))


def _ours(atoms, cutoff):
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(np.array(atoms.cell)) if atoms.pbc.any() else None
    edge_index, offsets = radius_graph(pos, cutoff, cell, tuple(atoms.pbc) if cell is not None else None)
    return pos, cell, edge_index, offsets


@st.composite
def batches(draw):
    """1-3 systems of 1-5 atoms: triclinic cells down to 1 A (many images at a 4 A cutoff),
    any periodic axes (bulk, slab, wire, molecule), atoms inside the cell or also outside it,
    float32 or float64, systems optionally interleaved in the batch."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    num_systems = draw(st.integers(1, 3))
    inside = draw(st.booleans())
    pos, cells, pbcs, batch = [], [], [], []
    for s in range(num_systems):
        lengths = rng.uniform(1.0, 5.0, 3)
        cell = np.diag(lengths) + rng.uniform(-0.5, 0.5, (3, 3)) * lengths.mean() * (1 - np.eye(3))
        if abs(np.linalg.det(cell)) < 0.3 * lengths.prod():
            cell = np.diag(lengths)
        n = draw(st.integers(1, 5))
        pos.append((rng.uniform(0.0, 1.0, (n, 3)) if inside else rng.uniform(-0.3, 1.3, (n, 3))) @ cell)
        cells.append(cell)
        pbcs.append(draw(st.tuples(st.booleans(), st.booleans(), st.booleans())))
        batch += [s] * n
    pos, batch = torch.tensor(np.concatenate(pos), dtype=dtype), torch.tensor(batch)
    if draw(st.booleans()):
        perm = torch.from_numpy(rng.permutation(len(batch)))
        pos, batch = pos[perm], batch[perm]
    cell = torch.tensor(np.stack(cells), dtype=dtype)
    cutoff = float(rng.uniform(0.5, 4.0))
    cap = draw(st.one_of(st.none(), st.integers(1, 30)))
    return pos, cell, torch.tensor(pbcs), batch, cutoff, cap, draw(st.sampled_from(GRAPH_MODES)), inside


@settings(max_examples=60)
@given(batches())
def test_same_graph_as_dense_algorithm_and_ase(system):
    pos, cell, pbc, batch, cutoff, cap, mode, inside = system
    ours = radius_graph(pos, cutoff, cell, pbc, batch, cap, mode)
    assert ours[0].dtype == ours[1].dtype == torch.long
    if inside:  # same edges, same offsets, same order (the dense algorithm's image range
        # assumed atoms in the cell: outside it, it missed pairs; see the test below)
        dense = dense_radius_graph(pos, cutoff, cell, pbc, batch, cap, mode)
        assert torch.equal(ours[0], dense[0]) and torch.equal(ours[1], dense[1])
    if cap is None and mode == "tie_stable":  # (ASE cuts at d < cutoff and keeps close pairs, as tie_stable)
        truth = set()
        for s in range(len(cell)):
            atoms = (batch == s).nonzero()[:, 0]
            system = Atoms(positions=pos[atoms].double().numpy(), cell=cell[s].double().numpy(), pbc=pbc[s].numpy())
            i, j, S = neighbor_list("ijS", system, cutoff)
            truth |= set(zip(atoms[j].tolist(), atoms[i].tolist(), map(tuple, S.tolist())))
        assert _edge_set(*ours) == truth


@settings(max_examples=20)
@given(batches())
def test_molecules_without_cell(system):
    pos, _, _, batch, cutoff, cap, mode, _ = system
    ours = radius_graph(pos, cutoff, None, None, batch, cap, mode)
    dense = dense_radius_graph(pos, cutoff, None, None, batch, cap, mode)
    assert torch.equal(ours[0], dense[0]) and torch.equal(ours[1], dense[1])
    assert not ours[1].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode, per_atom", [("tie_stable", 42), ("reference", 20), ("reference_nonstrict", 42)])
def test_perfect_crystal_shells_as_dense_algorithm(dtype, mode, per_atom):
    # Exact ties everywhere: the cap at 20 falls inside the third fcc shell (12 + 6 + 24), and so
    # does the 21st neighbour of the non-strict rule.
    cu = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    pos, cell = torch.tensor(cu.positions, dtype=dtype), torch.tensor(np.array(cu.cell), dtype=dtype)
    ours = radius_graph(pos, 6.0, cell, max_num_neighbors=20, mode=mode)
    dense = dense_radius_graph(pos, 6.0, cell, max_num_neighbors=20, mode=mode)
    assert torch.equal(ours[0], dense[0]) and torch.equal(ours[1], dense[1])
    assert bool((torch.bincount(ours[0][1], minlength=len(pos)) == per_atom).all())


def test_nonstrict_rule_in_squared_distances():
    # Neighbours of atom 0 on a line at 1.0, 1.004, 1.006 and 1.2 A, cap 1. The squared
    # tolerance 0.01 A^2 is 0.005 A at 1 A: the 2nd nearest (1.004, the (k+1)-th) is always
    # kept, and 1.006^2 = 1.012 <= 1.004^2 + 0.01 = 1.018 too; 1.2^2 = 1.44 is not.
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 1.004, 0], [0, 0, 1.006], [-1.2, 0, 0]], dtype=torch.float64)
    edge_index, _ = radius_graph(pos, 1.5, max_num_neighbors=1, mode="reference_nonstrict")
    assert edge_index[0][edge_index[1] == 0].tolist() == [1, 2, 3]
    # the tie-stable rule keeps the nearest only, the strict one too
    for mode in ("tie_stable", "reference"):
        edge_index, _ = radius_graph(pos, 1.5, max_num_neighbors=1, mode=mode)
        assert edge_index[0][edge_index[1] == 0].tolist() == [1]
    # in both reference modes the cutoff is included (d^2 <= r^2), and pairs within 0.01 A are
    # self-pairs: dropped; the tie-stable mode cuts at d < r and drops only (i, i, 0)
    pair = torch.tensor([[0.0, 0, 0], [1.5, 0, 0], [1.5, 0.009, 0]], dtype=torch.float64)
    for mode in ("reference", "reference_nonstrict"):
        assert radius_graph(pair, 1.5, mode=mode)[0].tolist() == [[1, 0], [0, 1]]
    assert radius_graph(pair, 1.5)[0].tolist() == [[2, 1], [1, 2]]


def test_strict_keyword_is_deprecated():
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    with pytest.warns(FutureWarning, match="mode='reference'"):
        old = radius_graph(pos, 1.5, max_num_neighbors=1, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(old, radius_graph(pos, 1.5, max_num_neighbors=1, mode="reference")))


def test_float32_far_from_the_origin_as_dense_algorithm():
    # float32 rounding at |x| ~ 1e3 A is ~6e-5 A: the float64 search must reach past the cutoff
    # by more than that, so that the float32 rule decides every pair
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    cu.rattle(0.2, seed=5)
    pos = torch.tensor(cu.positions + 1000.0, dtype=torch.float32)
    cell = torch.tensor(np.array(cu.cell), dtype=torch.float32)
    for cutoff in (2.5, 3.6, 5.0):
        ours = radius_graph(pos, cutoff, cell, (True, True, False))
        dense = dense_radius_graph(pos, cutoff, cell, (True, True, False))
        assert torch.equal(ours[0], dense[0]) and torch.equal(ours[1], dense[1])


# the OC20 parity fixtures (the family fixtures check their own non-strict graphs, in
# tests/models/test_parity_families.py)
FIXTURES = sorted(p for p in (Path(__file__).parents[1] / "models" / "fixtures").glob("eqv2_*.pt")
                  if not p.stem.startswith("eqv2_family_"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_parity_fixture_graphs_reproduced(path):
    # the graphs fed to the reference model for the parity fixtures (strict cut, 6 A, 20)
    x = torch.load(path, weights_only=False)["inputs"]
    edge_index, offsets = radius_graph(x["pos"], 6.0, x["cell"] if x["periodic"] else None, None, None, 20,
                                       mode="reference")
    assert torch.equal(edge_index, x["edge_index"]) and torch.equal(offsets, x["cell_offsets"])


@pytest.mark.parametrize("cutoff", [3.0, 6.0])
def test_matches_ase_on_slab_with_adsorbate(cutoff):
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.4, "fcc")
    slab.pbc = (True, True, False)
    pos, cell, edge_index, offsets = _ours(slab, cutoff)
    assert _edge_set(edge_index, offsets) == _ase_edges(slab, cutoff)
    assert edge_vectors(pos, edge_index, offsets, cell).norm(dim=1).max() < cutoff


def test_matches_ase_fully_periodic_small_cell():
    # cutoff much larger than the cell: many images, an atom is its own neighbour
    cell = fcc100("Al", (1, 1, 2), vacuum=None, periodic=True)
    _, _, edge_index, offsets = _ours(cell, 5.0)
    assert _edge_set(edge_index, offsets) == _ase_edges(cell, 5.0)
    assert bool((edge_index[0] == edge_index[1]).any())


def test_atoms_outside_the_cell():
    # Unwrapped positions (MD without wrapping): the dense algorithm took ceil(cutoff / plane
    # spacing) images, enough only for atoms inside the cell, and lost these two edges.
    pos = torch.tensor([[-0.3610, 0.6103, 4.0122], [0.9314, -1.1464, 2.9872], [1.3712, -0.4166, -1.2888]])
    cell = torch.tensor([[1.3426, -1.0140, -0.1671], [-0.0523, 1.9472, 0.5860], [-0.9652, -0.2717, 4.2051]])
    pbc, cutoff = (False, False, True), 3.9
    ours = _edge_set(*radius_graph(pos, cutoff, cell, pbc))
    atoms = Atoms(positions=pos.double().numpy(), cell=cell.double().numpy(), pbc=pbc)
    assert ours == _ase_edges(atoms, cutoff)
    assert {(2, 0, (0, 0, 2)), (0, 2, (0, 0, -2))} <= ours - _edge_set(*dense_radius_graph(pos, cutoff, cell, pbc))


def test_batch_of_many_crystals_matches_each_alone():
    rng = np.random.default_rng(0)
    systems = [bulk("Cu", "fcc", a=3.6, cubic=bool(k % 2)) * (1, 1 + k % 2, 1) for k in range(12)]
    for atoms in systems:
        atoms.rattle(0.1, seed=int(rng.integers(1000)))
    pos = torch.tensor(np.concatenate([a.positions for a in systems]))
    cell = torch.tensor(np.stack([np.array(a.cell) for a in systems]))
    batch = torch.cat([torch.full((len(a),), s) for s, a in enumerate(systems)])
    edge_index, offsets = radius_graph(pos, 4.5, cell, batch=batch, max_num_neighbors=16)
    first, expected = 0, set()
    for atoms in systems:
        ei, off = radius_graph(torch.tensor(atoms.positions), 4.5, torch.tensor(np.array(atoms.cell)),
                               max_num_neighbors=16)
        expected |= _edge_set(ei + first, off)
        first += len(atoms)
    assert _edge_set(edge_index, offsets) == expected
    assert torch.equal(batch[edge_index[0]], batch[edge_index[1]])
    assert bool((edge_index[1][1:] >= edge_index[1][:-1]).all())  # sorted by target


def test_molecule_and_batch():
    mol = molecule("CH3CH2OH")
    pos = torch.tensor(mol.positions)
    ei, _ = radius_graph(pos, 2.0)
    both = torch.cat([pos, pos + 100.0])
    batch = torch.tensor([0] * len(pos) + [1] * len(pos))
    ei2, _ = radius_graph(both, 2.0, batch=batch)
    assert ei2.shape[1] == 2 * ei.shape[1]
    assert torch.equal(ei2[:, ei.shape[1]:], ei + len(pos))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_graphs(dtype):
    def check(edge_index, offsets):
        assert edge_index.shape == (2, 0) and offsets.shape == (0, 3)
        assert edge_index.dtype == offsets.dtype == torch.long

    check(*radius_graph(torch.zeros(1, 3, dtype=dtype), 2.0))  # one atom
    check(*radius_graph(torch.zeros(0, 3, dtype=dtype), 2.0))  # no atom
    far = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]], dtype=dtype)
    check(*radius_graph(far, 2.0, max_num_neighbors=4))  # beyond the cutoff
    wire = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=dtype)
    check(*radius_graph(wire, 2.0, 6.0 * torch.eye(3, dtype=dtype), (False, False, True)))  # images too far
    # a system without neighbours inside a batch with edges
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=dtype)
    edge_index, _ = radius_graph(pos, 2.0, batch=torch.tensor([0, 0, 1]))
    assert edge_index.tolist() == [[1, 0], [0, 1]]


def test_edge_vectors_differentiable_through_the_graph():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.1, seed=3)
    pos = torch.tensor(cu.positions, requires_grad=True)
    cell = torch.tensor(np.array(cu.cell) @ [[1.0, 0.1, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 1.0]], requires_grad=True)
    edge_index, offsets = radius_graph(pos, 4.0, cell, max_num_neighbors=12)  # grad-carrying inputs are fine
    assert not edge_index.requires_grad and not offsets.requires_grad
    assert torch.autograd.gradcheck(lambda p, c: edge_vectors(p, edge_index, offsets, c), (pos, cell))
    # sum |r_e|^2: d/dx = 2 sum_e r_e ([src = a] - [dst = a]), d/dA = 2 sum_e n_e^T r_e
    vec = edge_vectors(pos, edge_index, offsets, cell)
    grad_pos, grad_cell = torch.autograd.grad(vec.pow(2).sum(), (pos, cell))
    r = vec.detach()
    expected_pos = torch.zeros_like(r[:4]).index_add(0, edge_index[0], 2 * r).index_add(0, edge_index[1], -2 * r)
    assert torch.allclose(grad_pos, expected_pos)
    assert torch.allclose(grad_cell, 2 * offsets.double().T @ r)


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        radius_graph(torch.tensor([[0.0, 0.0, float("nan")]]), 2.0)
    with pytest.raises(ValueError, match="no cell"):
        radius_graph(torch.zeros(2, 3), 2.0, pbc=(True, True, True))
    with pytest.raises(ValueError, match="singular"):
        radius_graph(torch.zeros(2, 3), 2.0, cell=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="cutoff"):
        radius_graph(torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="floating-point"):
        radius_graph(torch.zeros(2, 3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="max_num_neighbors"):
        radius_graph(torch.zeros(2, 3), 1.0, max_num_neighbors=0)
    with pytest.raises(ValueError, match="mode must be one of 'tie_stable', 'reference', 'reference_nonstrict'"):
        radius_graph(torch.zeros(2, 3), 1.0, max_num_neighbors=4, mode="strict")
    with pytest.raises(ValueError, match="batch"):
        radius_graph(torch.zeros(2, 3), 1.0, batch=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="one \\[3, 3\\] matrix per system"):
        radius_graph(torch.zeros(2, 3), 1.0, torch.eye(3).expand(2, 3, 3), batch=torch.tensor([0, 0]))
