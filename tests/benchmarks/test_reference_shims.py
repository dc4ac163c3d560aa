"""The torch_scatter stand-in of the reference environment (benchmarks/reference_shims) against loops."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_shims" / "torch_scatter" / "__init__.py"
_spec = importlib.util.spec_from_file_location("_torch_scatter_shim", _PATH)
shim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shim)

_LOOP = {
    "sum": lambda rows: rows.sum(0),
    "mean": lambda rows: rows.mean(0),
    "max": lambda rows: rows.max(0).values,
    "min": lambda rows: rows.min(0).values,
    "mul": lambda rows: rows.prod(0),
}


def _loop(src, index, size, reduce):
    out = torch.zeros((size, *src.shape[1:]), dtype=src.dtype)
    for i in range(size):
        rows = src[index == i]
        if len(rows):
            out[i] = _LOOP[reduce](rows)
    return out


@pytest.mark.parametrize("reduce", sorted(_LOOP))
def test_scatter_matches_a_loop_with_empty_segments(reduce):
    torch.manual_seed(0)
    src = torch.randn(11, 3, 2, dtype=torch.float64)
    index = torch.tensor([0, 2, 2, 5, 0, 5, 5, 2, 0, 6, 6])  # 1, 3, 4 empty
    expected = _loop(src, index, 8, reduce)
    torch.testing.assert_close(shim.scatter(src, index, dim=0, dim_size=8, reduce=reduce), expected)
    torch.testing.assert_close(shim.scatter(src, index, 0, reduce=reduce), expected[:7])
    # along a later dim
    moved = shim.scatter(src.movedim(0, 1), index, dim=1, dim_size=8, reduce=reduce)
    torch.testing.assert_close(moved, expected.movedim(0, 1))


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_segments(reduce):
    torch.manual_seed(1)
    src = torch.randn(7, 4, dtype=torch.float64)
    index = torch.tensor([0, 0, 1, 3, 3, 3, 4])
    indptr = torch.tensor([0, 2, 3, 3, 6, 7])
    expected = _loop(src, index, 5, reduce)
    torch.testing.assert_close(shim.segment_coo(src, index, dim_size=5, reduce=reduce), expected)
    torch.testing.assert_close(shim.segment_csr(src, indptr, reduce=reduce), expected)


def test_gradients_flow_and_bad_arguments_are_named():
    src = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([1, 0, 1, 1, 0])
    torch.autograd.gradcheck(lambda x: shim.scatter(x, index, dim=0, reduce="mean"), (src,))
    with pytest.raises(ValueError, match="reduce='median'"):
        shim.scatter(src, index, dim=0, reduce="median")
