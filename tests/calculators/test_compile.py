"""The calculator compiled: ``compile=True`` (a cheap backend on the CPU) and ``cuda_graphs=True``
(size buckets, one captured CUDA graph per bucket; the replay test needs a GPU)."""


import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule

from so2nn.calculators import So2nnCalculator
from so2nn.models import EquiformerV2, EquiformerV2Config, read_inputs

TINY = dict(
    lmax=2, mmax=1, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
    attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
    num_distance_basis=16, max_radius=5.0, max_neighbors=20, max_num_elements=30, alpha_drop=0.0,
    drop_path_rate=0.0,
)

def tiny_model(**changes):
    torch.manual_seed(0)
    return EquiformerV2(EquiformerV2Config(**{**TINY, **changes})).double().eval()


def approach(steps: int):
    """O coming down onto Cu(111): its neighbours, and so the edge count, change from step to step."""
    for step in range(steps):
        atoms = fcc111("Cu", (2, 2, 3), vacuum=6.0)
        add_adsorbate(atoms, "O", 3.0 - 0.4 * step, "fcc")
        atoms.pbc = True
        atoms.rattle(0.02, seed=step)
        yield atoms


def num_edges(model, atoms) -> int:
    fields = dict(pos=torch.tensor(atoms.positions), atomic_numbers=torch.tensor(atoms.numbers),
                  cell=torch.tensor(atoms.cell.array)[None], pbc=torch.tensor(atoms.pbc)[None])
    return model.build_graph(read_inputs(None, fields, model.config))[0].shape[1]


def test_compiled_calculator_gives_the_eager_results(capfd):
    model = tiny_model()
    eager = So2nnCalculator(model, device="cpu")
    compiled = So2nnCalculator(model, device="cpu", compile=True, compile_backend="eager")
    for seed in (0, 1):  # two geometries: one compilation
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=seed)
        np.testing.assert_allclose(compiled.get_potential_energy(atoms), eager.get_potential_energy(atoms),
                                   rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(compiled.get_forces(atoms), eager.get_forces(atoms),
                                   rtol=1e-10, atol=1e-10)
    assert capfd.readouterr().err.count("so2nn: compiled the model (dynamic shapes): first call") == 1


def test_compile_options_raise_clear_errors():
    with pytest.raises(ValueError, match="cuda_graphs=True needs the model on a CUDA device, but it is on"):
        So2nnCalculator(tiny_model(), device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="compile_backend='eager' applies with compile=True"):
        So2nnCalculator(tiny_model(), device="cpu", compile_backend="eager")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("changes", [{}, {"direct_forces": False}], ids=["direct", "conservative"])
def test_cuda_graphs_replay_the_eager_results_as_the_edges_change(changes, capfd):
    model = tiny_model(**changes).cuda()
    eager = So2nnCalculator(model)
    graphs = So2nnCalculator(model, cuda_graphs=True)
    steps = list(approach(6))
    edges = {num_edges(model, atoms) for atoms in steps}
    assert len(edges) > 1, edges
    properties = ["energy", "forces"] + (["stress"] if "stress" in graphs.implemented_properties else [])
    for atoms in steps:
        eager.calculate(atoms, properties)
        graphs.calculate(atoms, properties)
        for key in properties:
            np.testing.assert_allclose(graphs.results[key], eager.results[key], rtol=1e-8, atol=1e-10,
                                       err_msg=key)
    compiled = capfd.readouterr().err.count("so2nn: compiled the model for size bucket")
    assert 1 <= compiled < len(steps)  # the other steps replayed a captured graph
