import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc100, fcc111, molecule
from ase.neighborlist import neighbor_list

from so2nn.graph import edge_vectors, radius_graph


def _ase_edges(atoms, cutoff):
    i, j, S = neighbor_list("ijS", atoms, cutoff)
    return set(zip(j.tolist(), i.tolist(), map(tuple, S.tolist())))


def _ours(atoms, cutoff):
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(np.array(atoms.cell)) if atoms.pbc.any() else None
    edge_index, offsets = radius_graph(pos, cutoff, cell, tuple(atoms.pbc) if cell is not None else None)
    return pos, cell, edge_index, offsets


@pytest.mark.parametrize("cutoff", [3.0, 6.0])
def test_matches_ase_on_slab_with_adsorbate(cutoff):
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.4, "fcc")
    slab.pbc = (True, True, False)
    pos, cell, edge_index, offsets = _ours(slab, cutoff)
    ours = set(zip(edge_index[0].tolist(), edge_index[1].tolist(), map(tuple, offsets.tolist())))
    assert ours == _ase_edges(slab, cutoff)
    assert edge_vectors(pos, edge_index, offsets, cell).norm(dim=1).max() < cutoff


def test_matches_ase_fully_periodic_small_cell():
    # cutoff much larger than the cell: many images, an atom is its own neighbour
    bulk = fcc100("Al", (1, 1, 2), vacuum=None, periodic=True)
    _, _, edge_index, offsets = _ours(bulk, 5.0)
    ours = set(zip(edge_index[0].tolist(), edge_index[1].tolist(), map(tuple, offsets.tolist())))
    assert ours == _ase_edges(bulk, 5.0)
    assert bool((edge_index[0] == edge_index[1]).any())


def test_molecule_and_batch():
    mol = molecule("CH3CH2OH")
    pos = torch.tensor(mol.positions)
    ei, _ = radius_graph(pos, 2.0)
    both = torch.cat([pos, pos + 100.0])
    batch = torch.tensor([0] * len(pos) + [1] * len(pos))
    ei2, _ = radius_graph(both, 2.0, batch=batch)
    assert ei2.shape[1] == 2 * ei.shape[1]
    assert torch.equal(ei2[:, ei.shape[1]:], ei + len(pos))


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        radius_graph(torch.tensor([[0.0, 0.0, float("nan")]]), 2.0)
    with pytest.raises(ValueError, match="no cell"):
        radius_graph(torch.zeros(2, 3), 2.0, pbc=(True, True, True))
    with pytest.raises(ValueError, match="singular"):
        radius_graph(torch.zeros(2, 3), 2.0, cell=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="cutoff"):
        radius_graph(torch.zeros(2, 3), 0.0)
