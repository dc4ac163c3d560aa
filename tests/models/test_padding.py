"""Padding to size buckets: padded inputs give the unpadded outputs; bucket sizes are stable."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from so2nn.models import (
    PADDING_ATOMIC_NUMBER,
    EquiformerV2,
    EquiformerV2Config,
    Padding,
    SizeBuckets,
    bucket_size,
    pad_inputs,
    read_inputs,
    unpad_outputs,
)

TINY = dict(
    lmax=2, mmax=1, num_layers=2, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
    attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
    num_distance_basis=16, max_radius=3.0, max_neighbors=12, alpha_drop=0.0, drop_path_rate=0.0, max_num_elements=30,
)
MODELS = {
    "direct, stress head": dict(stress_head="equivariant"),
    "conservative": dict(direct_forces=False),
}


def tiny_model(name: str, **changes) -> EquiformerV2:
    torch.manual_seed(0)
    model = EquiformerV2(EquiformerV2Config.from_dict({**TINY, **MODELS[name], **changes})).double().eval()
    with torch.no_grad():  # non-zero statistics, so that the padded system's energy would show if it leaked
        model.heads["energy"].set_statistics(-2.0, 3.0)
    return model


def systems(sizes, periodic, seed):
    """Atoms on jittered sites of a 1.6 A grid (never closer than 1 A), one cell per system."""
    rng = np.random.default_rng(seed)
    pos, numbers, cells = [], [], []
    for n in sizes:
        sites = rng.choice(27, size=n, replace=False)
        grid = np.stack(np.unravel_index(sites, (3, 3, 3)), axis=1) * 1.6
        pos.append(grid + rng.uniform(-0.3, 0.3, size=(n, 3)))
        numbers.append(rng.integers(1, 30, size=n))
        cells.append(np.diag([4.8, 4.8, 4.8]) + rng.uniform(-0.3, 0.3, size=(3, 3)))
    fields = dict(
        pos=torch.tensor(np.concatenate(pos)), atomic_numbers=torch.tensor(np.concatenate(numbers)),
        natoms=torch.tensor(sizes), pbc=torch.full((len(sizes), 3), periodic),
    )
    if periodic:
        fields["cell"] = torch.tensor(np.stack(cells))
    return fields


def with_graph(model, fields):
    fields = dict(fields)
    fields["edge_index"], fields["cell_offsets"] = model.build_graph(read_inputs(None, fields, model.config))
    return fields


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=6, deadline=None)
@given(sizes=st.lists(st.integers(1, 7), min_size=1, max_size=3), periodic=st.booleans(),
       seed=st.integers(0, 99))
def test_padded_inputs_give_the_unpadded_outputs(name, sizes, periodic, seed):
    model = tiny_model(name)
    fields = with_graph(model, systems(sizes, periodic, seed))
    c = model.config
    padded, padding = pad_inputs(fields, cutoff=c.max_radius, min_distance=c.min_distance)
    assert padding.padded_atoms > padding.num_atoms + 1 and padding.padded_edges >= padding.num_edges
    with torch.no_grad():
        want = model(**fields)
        got = unpad_outputs(model(**padded), padding)
    assert sorted(got) == sorted(want)
    if periodic:
        assert "stress" in got
    for key in want:
        assert got[key].shape == want[key].shape
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-10, msg=f"{name}: {key}")


def test_padded_edges_join_padded_atoms_within_the_cutoff():
    model = tiny_model("conservative")
    fields = with_graph(model, systems([5, 3], True, seed=1))
    padded, padding = pad_inputs(fields, cutoff=3.0, min_distance=0.5, buckets=SizeBuckets(1.25, 8, 64))
    new_edges = padded["edge_index"][:, padding.num_edges:]
    assert new_edges.numel() and bool((new_edges >= padding.num_atoms).all())
    assert bool((new_edges[0] != new_edges[1]).all())
    vec = padded["pos"][new_edges[0]] - padded["pos"][new_edges[1]]
    assert torch.allclose(vec.norm(dim=1), torch.tensor(1.75, dtype=vec.dtype))  # (0.5 + 3) / 2
    assert padded["atomic_numbers"][padding.num_atoms:].eq(PADDING_ATOMIC_NUMBER).all()
    assert padded["batch"][padding.num_atoms:].eq(2).all() and padded["natoms"].tolist()[:2] == [5, 3]
    assert not padded["pbc"][-1].any() and torch.linalg.det(padded["cell"][-1]) > 1
    assert padded["cell_offsets"][padding.num_edges:].eq(0).all()
    # the padded batch passes the model's own checks
    read_inputs(None, padded, model.config)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 200_000), multiple=st.integers(1, 512), ratio=st.floats(1.01, 3.0))
def test_bucket_size_rounds_up_to_a_stable_geometric_sequence(n, multiple, ratio):
    size = bucket_size(n, multiple, ratio)
    assert size >= n and size % multiple == 0
    # padding adds at most a fraction ratio - 1, plus one multiple
    assert size <= max(multiple, ratio * n + multiple)
    # every count between n and its bucket maps to the same bucket; the bucket maps to itself
    for m in {n, (n + size) // 2, size}:
        assert bucket_size(m, multiple, ratio) == size
    assert bucket_size(size + 1, multiple, ratio) > size


def test_small_changes_of_the_counts_stay_in_one_or_two_buckets():
    buckets = SizeBuckets()
    for n in range(1_000, 100_000, 997):  # an edge count drifting by 1%, as in MD, meets at most one boundary
        assert len({buckets.edges(m) for m in range(n, int(n * 1.01) + 1)}) <= 2
    assert len({buckets.atoms(n) for n in range(60, 64)}) == 1
    assert len({buckets.edges(n) for n in range(1_000, 6_000)}) <= 8  # few buckets: few CUDA graphs


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="count to round up"):
        bucket_size(-1, 32)
    with pytest.raises(ValueError, match="multiple"):
        bucket_size(10, 0)
    with pytest.raises(ValueError, match="ratio"):
        bucket_size(10, 32, 1.0)
    with pytest.raises(ValueError, match="ratio"):
        SizeBuckets(ratio=float("nan"))
    with pytest.raises(ValueError, match="multiple"):
        SizeBuckets(edge_multiple=2.5)
    model = tiny_model("conservative")
    fields = with_graph(model, systems([4], True, seed=0))
    with pytest.raises(ValueError, match="needs `edge_index`.*build the graph"):
        pad_inputs({k: v for k, v in fields.items() if k != "edge_index"}, cutoff=3.0)
    with pytest.raises(ValueError, match=r"unknown input field\(s\) \['tags'\]"):
        pad_inputs({**fields, "tags": torch.zeros(4)}, cutoff=3.0)
    with pytest.raises(ValueError, match="min_distance < cutoff"):
        pad_inputs(fields, cutoff=0.1, min_distance=0.5)
    with pytest.raises(ValueError, match="cell_offsets"):
        pad_inputs({k: v for k, v in fields.items() if k != "cell_offsets"}, cutoff=3.0)
    with pytest.raises(ValueError, match="one \\[3, 3\\] matrix per system"):
        pad_inputs({**fields, "cell": fields["cell"].repeat(2, 1, 1)}, cutoff=3.0)
    padding = Padding(num_atoms=4, num_systems=1, num_edges=3, padded_atoms=32, padded_edges=256)
    with pytest.raises(ValueError, match=r"cannot cut output\(s\) \['charges'\]"):
        unpad_outputs({"energy": torch.zeros(2), "charges": torch.zeros(32)}, padding)
