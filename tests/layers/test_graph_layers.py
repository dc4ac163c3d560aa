import pytest
import torch
from graph_context import NUM_BASIS, edge_context, permute_graph
from hypothesis import given
from hypothesis import strategies as st

from so2nn.layers import (
    AttentionReNorm,
    EdgeDegreeEmbedding,
    EquivariantGraphAttention,
    FeedForwardNetwork,
    fine_grid_resolution,
)
from so2nn.so3 import CoefficientLayout, EdgeRotation
from so2nn.testing import assert_equivariant
from so2nn.testing import strategies as so2st

LAYOUTS = [CoefficientLayout(1, 0), CoefficientLayout(2, 2), CoefficientLayout(3, 1), CoefficientLayout(4, 2)]


def _attention(layout, activation, resolution=18, dtype=torch.float64, kernels="auto"):
    torch.manual_seed(0)
    return EquivariantGraphAttention(
        layout, sphere_channels=4, hidden_channels=6, num_heads=2, attn_alpha_channels=3, attn_value_channels=2,
        output_channels=4, edge_channels_list=[NUM_BASIS, 8, 8], max_num_elements=11, activation=activation,
        grid_resolution=resolution, kernels=kernels,
    ).to(dtype)


def _run(layer, layout, graph, pos, cell, x):
    edge_features, rotation = edge_context(layout, graph, pos, cell)
    return layer(x, edge_features, graph.atomic_numbers, graph.edge_index, rotation)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@given(layout=st.sampled_from(LAYOUTS), graph=so2st.atomic_graphs(), R=so2st.rotations(),
       kernels=st.sampled_from(["auto", "reference"]))
def test_gate_attention_is_exactly_equivariant(dtype, tolerance, layout, graph, R, kernels):
    attention = _attention(layout, "gate", dtype=dtype, kernels=kernels)
    pos, cell = graph.pos.to(dtype), None if graph.cell is None else graph.cell.to(dtype)
    x = torch.randn(graph.num_atoms, layout.dim, 4, dtype=dtype)
    kinds = ["vector", None if cell is None else "vector", layout]
    assert_equivariant(lambda p, c, x: _run(attention, layout, graph, p, c, x), [pos, cell, x], kinds, layout,
                       R.to(dtype), tolerance)


@given(layout=st.sampled_from(LAYOUTS), graph=so2st.atomic_graphs(), R=so2st.rotations(),
       activation=st.sampled_from(["separable_s2", "s2"]), kernels=st.sampled_from(["auto", "reference"]))
def test_grid_attention_equivariance(layout, graph, R, activation, kernels):
    # Edge-frame grids alias only through the roll about the edge: at the released
    # resolution 18 the error is small, and at the fine resolution it is below 1e-10 here.
    x = torch.randn(graph.num_atoms, layout.dim, 4, dtype=torch.float64)
    kinds = ["vector", None if graph.cell is None else "vector", layout]
    for resolution, tolerance in [(18, 1e-3), (fine_grid_resolution(layout.lmax), 1e-10)]:
        attention = _attention(layout, activation, resolution, kernels=kernels)
        run = lambda p, c, x, attention=attention: _run(attention, layout, graph, p, c, x)  # noqa: E731
        assert_equivariant(run, [graph.pos, graph.cell, x], kinds, layout, R, tolerance)


@given(graph=so2st.atomic_graphs(min_atoms=3), seed=st.integers(0, 1000))
def test_attention_is_permutation_equivariant(graph, seed):
    layout = CoefficientLayout(2, 1)
    attention = _attention(layout, "separable_s2")
    x = torch.randn(graph.num_atoms, layout.dim, 4, dtype=torch.float64)
    perm = torch.randperm(graph.num_atoms, generator=torch.Generator().manual_seed(seed))
    out = _run(attention, layout, graph, None, None, x)
    permuted = type(graph)(**{**graph.__dict__, "pos": graph.pos[perm], "atomic_numbers": graph.atomic_numbers[perm],
                              "edge_index": permute_graph(graph.edge_index, perm)})
    out_perm = _run(attention, layout, permuted, None, None, x[perm])
    assert (out_perm - out[perm]).abs().max() <= 1e-12


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@given(layout=st.sampled_from(LAYOUTS), graph=so2st.atomic_graphs(), R=so2st.rotations())
def test_edge_degree_embedding_is_equivariant(dtype, tolerance, layout, graph, R):
    torch.manual_seed(0)
    embedding = EdgeDegreeEmbedding(layout, 4, [NUM_BASIS, 8], max_num_elements=11, rescale_factor=3.0).to(dtype)
    pos, cell = graph.pos.to(dtype), None if graph.cell is None else graph.cell.to(dtype)

    def run(pos, cell):
        edge_features, rotation = edge_context(layout, graph, pos, cell)
        return embedding(edge_features, graph.atomic_numbers, graph.edge_index, rotation, graph.num_atoms)

    errors = assert_equivariant(run, [pos, cell], ["vector", None if cell is None else "vector"], layout,
                                R.to(dtype), tolerance)
    assert errors[0].relative <= tolerance


def test_edge_degree_embedding_of_a_single_edge():
    # One edge j -> i along +y: only m = 0 coefficients are set, and they are the radial output / a.
    layout = CoefficientLayout(2, 1)
    embedding = EdgeDegreeEmbedding(layout, 3, [NUM_BASIS, 8], max_num_elements=None, rescale_factor=2.0).double()
    from so2nn.so3 import EdgeRotation

    vec = torch.tensor([[0.0, 1.5, 0.0]], dtype=torch.float64)
    features = torch.randn(1, NUM_BASIS, dtype=torch.float64)
    out = embedding(features, torch.zeros(2, dtype=torch.long), torch.tensor([[0], [1]]), EdgeRotation(layout, vec), 2)
    radial = embedding.radial(features).reshape(3, 3) / 2.0
    m0 = torch.tensor([0, 2, 6])
    assert torch.allclose(out[1, m0], radial * layout.truncation_rescale[:, None])
    assert out[0].abs().max() == 0 and out[1, layout.orders != 0].abs().max() <= 1e-15


def test_attention_weights_are_a_softmax_per_target():
    from so2nn.graph import segment_softmax

    logits = torch.randn(7, 2, dtype=torch.float64)
    target = torch.tensor([0, 0, 1, 1, 1, 3, 3])
    alpha = segment_softmax(logits, target, 4)
    sums = torch.zeros(4, 2, dtype=torch.float64).index_add(0, target, alpha)
    assert torch.allclose(sums[[0, 1, 3]], torch.ones(3, 2, dtype=torch.float64))
    assert torch.allclose(alpha[:2], torch.softmax(logits[:2], dim=0))
    renorm = AttentionReNorm(2, 3)
    assert renorm(torch.randn(5, 6)).shape == (5, 2)


@pytest.mark.parametrize("activation, grid_mlp", [("separable_s2", True), ("s2", True), ("separable_s2", False),
                                                  ("s2", False), ("gate", False)])
def test_feed_forward_equivariance(activation, grid_mlp):
    layout = CoefficientLayout(3)
    torch.manual_seed(0)
    fine = FeedForwardNetwork(layout, 4, 8, 5, activation, grid_mlp, fine_grid_resolution(3)).double()
    coarse = FeedForwardNetwork(layout, 4, 8, 5, activation, grid_mlp, 18).double()
    coarse.load_state_dict(fine.state_dict())  # the resolution is not part of the weights
    x = torch.randn(6, layout.dim, 4, dtype=torch.float64)
    errors_fine = assert_equivariant(fine, [x], [layout], layout, tolerance=1e-10 if activation == "gate" else 1e-5)
    if activation != "gate":
        errors_coarse = assert_equivariant(coarse, [x], [layout], layout, tolerance=1e-2)
        assert errors_coarse[0].relative > errors_fine[0].relative


def test_bad_configuration():
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        _attention(CoefficientLayout(2), "relu")
    with pytest.raises(ValueError, match="grid resolution too small"):
        _attention(CoefficientLayout(6, 2), "s2", resolution=10)
    with pytest.raises(ValueError, match="cannot be combined"):
        FeedForwardNetwork(2, 4, 4, 4, activation="gate", grid_mlp=True)
    with pytest.raises(ValueError, match="num_heads must be >= 1"):
        AttentionReNorm(0, 4)


def test_attention_names_bad_edge_features():
    layout = CoefficientLayout(2, 1)
    attention = _attention(layout, "separable_s2", dtype=torch.float32)
    edge_index = torch.tensor([[1, 2, 0], [0, 0, 1]])
    rotation = EdgeRotation(layout, torch.randn(3, 3))
    message = rf"edge_features must have shape \[E=3, {NUM_BASIS}\]"
    for grad in (False, True):  # the plain and the fused (training) path
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match=message):
            attention(torch.randn(3, 9, 4), torch.randn(3, NUM_BASIS + 1), torch.tensor([1, 6, 8]), edge_index,
                      rotation)


@given(graph=so2st.atomic_graphs(min_atoms=3), seed=st.integers(0, 1000))
def test_edge_degree_embedding_is_permutation_equivariant(graph, seed):
    layout = CoefficientLayout(3, 1)
    torch.manual_seed(0)
    embedding = EdgeDegreeEmbedding(layout, 4, [NUM_BASIS, 8], max_num_elements=11, rescale_factor=3.0).double()
    perm = torch.randperm(graph.num_atoms, generator=torch.Generator().manual_seed(seed))
    permuted = type(graph)(**{**graph.__dict__, "pos": graph.pos[perm], "atomic_numbers": graph.atomic_numbers[perm],
                              "edge_index": permute_graph(graph.edge_index, perm)})

    def run(g):
        edge_features, rotation = edge_context(layout, g)
        return embedding(edge_features, g.atomic_numbers, g.edge_index, rotation, g.num_atoms)

    assert (run(permuted) - run(graph)[perm]).abs().max() <= 1e-12


@given(graph=so2st.atomic_graphs(min_atoms=3), seed=st.integers(0, 1000))
def test_attention_recompute_gives_the_same_numbers_and_stores_less(graph, seed):
    layout = CoefficientLayout(3, 2)
    edge_features, rotation = edge_context(layout, graph)
    x = torch.randn(graph.num_atoms, layout.dim, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    results = {}
    for recompute in (True, False):
        layer = _attention(layout, "separable_s2")
        layer.recompute = recompute
        x = x.detach().requires_grad_()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t.numel()) or t, lambda t: t):
            out = layer(x, edge_features, graph.atomic_numbers, graph.edge_index, rotation)
        grads = torch.autograd.grad(out.pow(2).sum(), [x, *layer.parameters()], allow_unused=True)
        results[recompute] = out, grads, sum(saved)
    (a, grads_a, saved_a), (b, grads_b, saved_b) = results[True], results[False]
    assert (a - b).abs().max() <= 1e-12
    assert all(u is None and v is None or (u - v).abs().max() <= 1e-12 for u, v in zip(grads_a, grads_b))
    if graph.edge_index.shape[1]:
        assert saved_a < 0.7 * saved_b, (saved_a, saved_b)
