"""The torch-sim model compiled: ``compile=True`` on the CPU with a cheap backend; ``cuda_graphs``
needs CUDA."""


import pytest
import torch

ts = pytest.importorskip("torch_sim")

from ase.build import bulk  # noqa: E402

from so2nn.integrations.torch_sim import TorchSimModel  # noqa: E402
from so2nn.models import EquiformerV2, EquiformerV2Config  # noqa: E402

TINY = dict(lmax=2, mmax=1, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
            attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
            num_distance_basis=16, max_radius=4.5, max_neighbors=12)


def tiny_model(**changes) -> EquiformerV2:
    torch.manual_seed(0)
    return EquiformerV2(EquiformerV2Config(**(TINY | changes))).double().eval()


def test_compiled_torch_sim_model_gives_the_eager_results(capfd):
    model = tiny_model(direct_forces=False)
    eager = TorchSimModel(model, device="cpu")
    compiled = TorchSimModel(model, device="cpu", compile=True, compile_backend="eager")
    for repeat in (1, 2):  # other atom and edge counts: one compiled graph
        crystals = [bulk("Cu", cubic=True).repeat((repeat, 1, 1)), bulk("Al", cubic=True)]
        for atoms in crystals:
            atoms.rattle(0.05, seed=repeat)
        state = ts.io.atoms_to_state(crystals, torch.device("cpu"), torch.float64)
        want, got = eager(state), compiled(state)
        assert sorted(got) == sorted(want) == ["energy", "forces", "stress"]
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-10)
    assert capfd.readouterr().err.count("so2nn: compiled the model (dynamic shapes): first call") == 1


def test_compile_options_raise_clear_errors():
    with pytest.raises(ValueError, match="cuda_graphs=True needs the model on a CUDA device, but it is on"):
        TorchSimModel(tiny_model(), device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="compile_backend='aot_eager' applies with compile=True"):
        TorchSimModel(tiny_model(), device="cpu", compile_backend="aot_eager")
