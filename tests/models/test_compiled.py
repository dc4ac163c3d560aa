"""CompiledModel: compiled inference gives the model's outputs (a cheap backend on the CPU; few,
tiny calls)."""


import pytest
import torch

from so2nn.models import CompiledModel, SizeBuckets

from .test_padding import systems, tiny_model

# The model body compiles with dynamic shapes (no data-dependent guard) once its forward takes
# `validate` (the checks that read values moved to the boundary).

def test_bucketed_model_gives_the_models_outputs_and_compiles_once_per_bucket(capfd):
    model = tiny_model("conservative", num_layers=1)  # tracing time grows with the layers
    compiled = CompiledModel(model, buckets=SizeBuckets(1.25, 16, 64), backend="eager")
    for seed in (0, 1):  # other positions and edges, same bucket: one compilation
        fields = systems([3, 4], True, seed)
        with torch.no_grad():
            want, got = model(**fields), compiled(**fields)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-10)
    assert compiled.shapes == 1
    printed = capfd.readouterr().err
    assert printed.count("so2nn: compiled the model for size bucket (3 systems, 16 atoms, 64 edges)") == 1


def test_dynamic_shapes_give_the_models_outputs(capfd):
    model = tiny_model("direct, stress head", num_layers=1)
    compiled = CompiledModel(model, backend="eager")
    for sizes in ([3, 4], [2, 5, 6]):  # other atom, edge and system counts: one compiled graph
        fields = systems(sizes, True, seed=2)
        with torch.no_grad():
            want, got = model(**fields), compiled(**fields)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-10)
    assert capfd.readouterr().err.count("so2nn: compiled the model (dynamic shapes): first call") == 1


def test_bad_options_raise_clear_errors():
    model = tiny_model("conservative")
    with pytest.raises(ValueError, match="cuda_graphs=True needs the model on a CUDA device, but it is on"):
        CompiledModel(model, cuda_graphs=True)
    with pytest.raises(ValueError, match="overlapping atoms"):
        fields = systems([3], False, seed=0)
        fields["pos"][1] = fields["pos"][0] + 0.01
        CompiledModel(model, buckets=SizeBuckets(), backend="eager")(**fields)
