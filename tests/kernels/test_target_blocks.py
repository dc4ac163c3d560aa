"""Inference in blocks of targets (and of node rows): the blocks partition nodes and edges as
documented, the layers and the model give the numbers of the unblocked computation, and the
blocks are used only where autograd and training cannot see them."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import so2nn.kernels._target_blocks as blocks_module
from so2nn.kernels import row_block_size, target_blocks, use_target_blocks
from so2nn.layers import EdgeDegreeEmbedding, EquivariantGraphAttention, FeedForwardNetwork
from so2nn.models import EquiformerV2, EquiformerV2Config
from so2nn.so3 import CoefficientLayout, EdgeRotation

LAYOUT = CoefficientLayout(lmax=3, mmax=2)


@settings(max_examples=60, deadline=None)
@given(degrees=st.lists(st.integers(0, 9), min_size=1, max_size=40), block=st.integers(1, 12))
def test_blocks_partition_nodes_and_edges(degrees, block):
    target = torch.repeat_interleave(torch.arange(len(degrees)), torch.tensor(degrees))
    blocks = target_blocks(target, len(degrees), block)
    assert blocks[0][0] == 0 and blocks[-1][1] == len(degrees)
    assert blocks[0][2] == 0 and blocks[-1][3] == target.numel()
    for (first, end, e0, e1), following in zip(blocks, blocks[1:] + [None]):
        assert first < end and e0 <= e1
        if following is not None:
            assert (end, e1) == (following[0], following[2])  # contiguous, no gaps
        assert bool(((target[e0:e1] >= first) & (target[e0:e1] < end)).all())
        assert e1 - e0 <= block + max(degrees[first:end])  # at most B edges plus the last node's


def test_unsorted_targets_give_no_blocks():
    assert target_blocks(torch.tensor([0, 2, 1]), 3, 1) is None
    assert target_blocks(torch.tensor([0, 0, 1]), 3, 1) is not None


def test_blocks_only_at_inference_on_the_cpu():
    x = torch.zeros(3)
    many = blocks_module.TARGET_BLOCK_EDGES + 1
    with torch.no_grad():
        assert use_target_blocks("auto", x, many, training=False)
        assert not use_target_blocks("auto", x, many, training=True)  # dropout, drop-path
        assert not use_target_blocks("reference", x, many, training=False)
        assert not use_target_blocks("auto", x, many - 1, training=False)  # one block: nothing to gain
        assert row_block_size("auto", torch.zeros(100, 4), False, elements_per_row=blocks_module.BLOCK_ELEMENTS) == 1
        assert row_block_size("auto", torch.zeros(1, 4), False, elements_per_row=blocks_module.BLOCK_ELEMENTS) is None
    assert not use_target_blocks("auto", x, many, training=False)  # autograd records
    assert row_block_size("auto", torch.zeros(100, 4), False, elements_per_row=blocks_module.BLOCK_ELEMENTS) is None


def _graph(num_nodes=30, num_edges=200, seed=0, sort=True):
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    if sort:
        edge_index = edge_index[:, torch.argsort(edge_index[1], stable=True)]
    vec = torch.randn(edge_index.shape[1], 3, generator=g, dtype=torch.float64)
    return edge_index, EdgeRotation(LAYOUT, vec)


def _unblocked(monkeypatch, fn):
    """``fn()`` with blocks too large to split anything."""
    with monkeypatch.context() as m:
        m.setattr(blocks_module, "TARGET_BLOCK_EDGES", 10**9)
        m.setattr(blocks_module, "BLOCK_ELEMENTS", 10**12)
        return fn()


@pytest.mark.parametrize("sort", [True, False])
def test_attention_in_blocks_equals_unblocked(monkeypatch, sort):
    torch.manual_seed(0)
    attention = EquivariantGraphAttention(
        LAYOUT, sphere_channels=8, hidden_channels=8, num_heads=2, attn_alpha_channels=4, attn_value_channels=4,
        output_channels=8, edge_channels_list=[6, 8, 8], max_num_elements=10, grid_resolution=10,
    ).double().eval()
    edge_index, rotation = _graph(sort=sort)
    x = torch.randn(30, LAYOUT.dim, 8, dtype=torch.float64)
    features, numbers = torch.randn(edge_index.shape[1], 6, dtype=torch.float64), torch.randint(1, 10, (30,))
    monkeypatch.setattr(blocks_module, "TARGET_BLOCK_EDGES", 16)
    with torch.no_grad():
        assert sort == (target_blocks(edge_index[1], 30) is not None)
        blocked = attention(x, features, numbers, edge_index, rotation)
        plain = _unblocked(monkeypatch, lambda: attention(x, features, numbers, edge_index, rotation))
    torch.testing.assert_close(blocked, plain, rtol=1e-12, atol=1e-12)


def test_edge_degree_embedding_and_grid_mlp_in_blocks(monkeypatch):
    torch.manual_seed(0)
    embedding = EdgeDegreeEmbedding(LAYOUT, channels=8, edge_channels_list=[6, 8], max_num_elements=10,
                                    rescale_factor=3.0).double().eval()
    ffn = FeedForwardNetwork(LAYOUT, sphere_channels=8, hidden_channels=8, output_channels=8,
                             grid_resolution=10).double().eval()
    edge_index, rotation = _graph()
    features, numbers = torch.randn(edge_index.shape[1], 6, dtype=torch.float64), torch.randint(1, 10, (30,))
    x = torch.randn(30, LAYOUT.dim, 8, dtype=torch.float64)
    monkeypatch.setattr(blocks_module, "TARGET_BLOCK_EDGES", 16)
    monkeypatch.setattr(blocks_module, "BLOCK_ELEMENTS", 7 * ffn.to_grid.shape[0] * 8)  # 7 nodes per block
    with torch.no_grad():
        assert row_block_size("auto", x, False, ffn.to_grid.shape[0] * 8) == 7
        pairs = [(embedding(features, numbers, edge_index, rotation, 30),
                  _unblocked(monkeypatch, lambda: embedding(features, numbers, edge_index, rotation, 30))),
                 (ffn(x), _unblocked(monkeypatch, lambda: ffn(x)))]
    for blocked, plain in pairs:
        torch.testing.assert_close(blocked, plain, rtol=1e-12, atol=1e-12)


def test_model_in_blocks_equals_unblocked(monkeypatch):
    """A batch of periodic systems through the whole model (direct forces, stress head)."""
    from ase.build import bulk, fcc111

    config = EquiformerV2Config(
        lmax=3, mmax=2, num_layers=2, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
        attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
        num_distance_basis=16, max_radius=5.0, max_neighbors=12, grid_resolution=10, stress={"head": "decomposed"})
    torch.manual_seed(0)
    model = EquiformerV2(config).double().eval()
    systems = [fcc111("Cu", (2, 2, 3), vacuum=5.0, periodic=True), bulk("NaCl", "rocksalt", 5.6) * (2, 1, 1),
               bulk("Pt", cubic=True)]
    sizes = torch.tensor([len(a) for a in systems])
    batch = {"pos": torch.tensor(np.concatenate([a.positions for a in systems])),
             "atomic_numbers": torch.tensor(np.concatenate([a.numbers for a in systems])),
             "cell": torch.tensor(np.stack([a.cell.array for a in systems])), "pbc": torch.ones(3, 3, dtype=torch.bool),
             "batch": torch.repeat_interleave(torch.arange(3), sizes), "natoms": sizes}
    monkeypatch.setattr(blocks_module, "TARGET_BLOCK_EDGES", 40)
    monkeypatch.setattr(blocks_module, "BLOCK_ELEMENTS", 5000)
    with torch.no_grad():
        blocked = model(**batch)
        plain = _unblocked(monkeypatch, lambda: model(**batch))
    assert blocked.keys() == plain.keys() == {"energy", "forces", "stress"}
    for key in blocked:  # float64 rounding of matmuls of other sizes
        torch.testing.assert_close(blocked[key], plain[key], rtol=1e-10, atol=1e-12)
