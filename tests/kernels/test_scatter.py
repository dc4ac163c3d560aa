"""The scatter-sum kernel equals its reference index_add: values, gradients and second
derivatives in float64, no edges included, and its backward keeps only the index."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from so2nn.kernels import scatter_sum


@given(num_edges=st.integers(0, 8), num_nodes=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_values_and_gradients_equal_the_reference(num_edges, num_nodes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_edges, 3, 2, dtype=torch.float64, generator=g).requires_grad_()
    index = torch.randint(0, num_nodes, (num_edges,), generator=g)
    expected = torch.zeros(num_nodes, 3, 2, dtype=torch.float64).index_add(0, index, x)
    got = scatter_sum(x, index, num_nodes)
    assert torch.equal(got, expected)
    w = torch.randn_like(got)
    assert torch.equal(torch.autograd.grad((got * w).sum(), x)[0], torch.autograd.grad((expected * w).sum(), x)[0])


def test_gradgradcheck_and_saved_tensors():
    x = torch.randn(6, 3, 2, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([1, 0, 2, 2, 4, 1])
    assert torch.autograd.gradcheck(lambda x: scatter_sum(x, index, 5), (x,))
    assert torch.autograd.gradgradcheck(lambda x: scatter_sum(x, index, 5), (x,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        scatter_sum(x * 1.0, index, 5)
    assert [t.dtype for t in saved] == [torch.int64]  # the index only
