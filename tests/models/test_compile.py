"""The model body never waits for the host, and compiles into one graph with dynamic shapes.

Both are properties a GPU needs (a host sync stalls the stream and breaks CUDA-graph capture;
a graph break or a recompilation per batch costs what compiling should save), and both are
checked here on the CPU: syncs by counting the dispatched operations, compilation with the
cheap ``aot_eager`` backend and ``error_on_recompile``.
"""

import contextlib

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111

from so2nn.graph import radius_graph
from so2nn.kernels import TARGET_BLOCK_EDGES, choose_as
from so2nn.models import EquiformerV2, EquiformerV2Config, compile_model
from so2nn.testing import DispatchCounter

CONFIG = dict(lmax=2, mmax=1, num_layers=2, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
              attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
              num_distance_basis=16, max_radius=5.0, drop_path_rate=0.1, alpha_drop=0.1)


def _slabs(layers, seed=0):
    """Periodic Pt slabs with an O adatom, one system per entry of ``layers``, with their graph."""
    systems = []
    for i, n in enumerate(layers):
        atoms = fcc111("Pt", (2, 2, n), vacuum=5.0)
        add_adsorbate(atoms, "O", 1.5, "fcc")
        atoms.pbc = True
        atoms.rattle(0.05, seed=seed + i)
        systems.append(atoms)
    pos = torch.tensor(np.concatenate([a.positions for a in systems]), dtype=torch.float32)
    cell = torch.tensor(np.stack([a.cell.array for a in systems]), dtype=torch.float32)
    natoms = torch.tensor([len(a) for a in systems])
    batch = torch.repeat_interleave(torch.arange(len(systems)), natoms)
    edge_index, offsets = radius_graph(pos, CONFIG["max_radius"], cell, None, batch, 12)
    return dict(pos=pos, atomic_numbers=torch.tensor(np.concatenate([a.numbers for a in systems])), cell=cell,
                natoms=natoms, batch=batch, edge_index=edge_index, cell_offsets=offsets)


def _model(direct, kernels="auto", stress_head=None):
    torch.manual_seed(0)
    config = EquiformerV2Config(**CONFIG, direct_forces=direct, kernels=kernels)
    return EquiformerV2(config if stress_head is None else config.replace(stress_head=stress_head))


def _train_step(model, fields):
    model.train()
    torch.manual_seed(1)  # the same dropout and drop-path masks in every implementation
    if not model.config.direct_forces:
        fields = {**fields, "pos": fields["pos"].detach().requires_grad_()}
    out = model(**fields, validate=False)
    loss = out["energy"].square().sum() + out["forces"].square().sum() + out.get("stress", out["energy"]).square().sum()
    loss.backward()
    return out


@pytest.mark.parametrize("kernels, chosen_as", [("auto", None), ("reference", None), ("auto", "cuda")],
                         ids=["auto", "reference", "auto-as-on-a-gpu"])
@pytest.mark.parametrize("direct, stress_head", [(True, None), (True, "equivariant"), (False, None)])
def test_the_body_never_waits_for_the_host(direct, stress_head, kernels, chosen_as):
    """Also what the policy runs on a GPU (choose_as("cuda")), on a batch with more edges than a
    CPU inference block: the GPU's path never runs in blocks, whose bounds are read back."""
    model = _model(direct, kernels, stress_head)
    fields = _slabs([2, 3]) if chosen_as is None else _slabs([4, 4, 3])
    assert chosen_as is None or fields["edge_index"].shape[1] > TARGET_BLOCK_EDGES
    with choose_as(chosen_as) if chosen_as else contextlib.nullcontext():
        _count_body_syncs(model, fields)


def _count_body_syncs(model, fields):
    for mode in ("eval", "train"):
        if mode == "eval":
            model.eval()
            with torch.no_grad(), DispatchCounter() as counter:
                model(**fields, validate=False)
        else:
            with DispatchCounter() as counter:
                _train_step(model, fields)
        assert counter.host_syncs == 0, (mode, dict(counter.sync_ops))
    # the checks at the boundary do read values: that is what validate=False skips
    with torch.no_grad(), DispatchCounter() as counter:
        model(**fields)
    assert counter.host_syncs > 0


def test_validate_false_still_checks_names_and_shapes():
    model, fields = _model(True), _slabs([2])
    with pytest.raises(ValueError, match="unknown input field"):
        model(**fields, tags=torch.zeros(9), validate=False)
    with pytest.raises(ValueError, match="cell_offsets must have shape"):
        model(**{**fields, "cell_offsets": fields["cell_offsets"][:3]}, validate=False)
    with pytest.raises(ValueError, match="needs `natoms`"):
        model(**{k: v for k, v in fields.items() if k != "natoms"}, validate=False)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "gradient"])
def test_one_compiled_graph_for_every_batch(direct):
    """fullgraph (no graph break), dynamic, and no recompilation for other numbers of atoms,
    edges and systems: eval and a train step (for gradient forces: forces and stress through
    the strain, trained through their double backward)."""
    import torch._dynamo

    torch._dynamo.reset()
    model = _model(direct)
    compiled = compile_model(model, backend="aot_eager")
    batches = [_slabs([2, 3]), _slabs([3, 2, 2], seed=3), _slabs([4, 2, 3, 2], seed=5)]
    for mode in ("eval", "train"):
        for i, fields in enumerate(batches):
            with torch._dynamo.config.patch(error_on_recompile=i > 0):
                if mode == "eval":
                    model.eval()
                    with torch.no_grad():
                        got, want = compiled(**fields, validate=False), model(**fields)
                else:
                    got, want = _train_step(compiled, fields), _train_step(model, fields)
            assert set(got) == set(want)
            for key in want:
                torch.testing.assert_close(got[key].detach(), want[key].detach(), rtol=1e-4, atol=1e-5)
