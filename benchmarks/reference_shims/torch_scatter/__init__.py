"""A plain-torch stand-in for ``torch_scatter``, for the reference implementation only.

fairchem-core 1.10.0 imports ``torch_scatter`` at module level (``scatter`` in
``fairchem.core.common.utils`` and the EquiformerV2 rank-2 heads, ``segment_coo`` and
``segment_csr`` in other models it registers), and ``torch_scatter`` has no wheel for recent
torch releases. EquiformerV2 itself only reduces with ``scatter(src, index, dim=0,
reduce="sum" | "mean")``; this module gives the same results for the three functions with
``torch.Tensor.scatter_reduce``, so that the reference can be imported and run without building
``torch_scatter`` from source. ``benchmarks/setup_reference.sh`` puts the folder holding it on
the reference environment's path. so2nn itself never imports it.

Semantics follow ``torch_scatter``: a 1-d ``index`` is broadcast along ``dim`` of ``src``;
``dim_size`` defaults to ``index.max() + 1``; positions that receive nothing are 0 for every
reduction (also ``max`` and ``min``); ``mean`` divides by the number of contributions.
"""

from __future__ import annotations

import torch

__all__ = ["scatter", "segment_coo", "segment_csr"]
__version__ = "0.0+so2nn.shim"

_REDUCTIONS = {"sum": "sum", "add": "sum", "mean": "mean", "mul": "prod", "max": "amax", "min": "amin"}


def _broadcast(index: torch.Tensor, src: torch.Tensor, dim: int) -> torch.Tensor:
    """``index`` expanded to the shape of ``src``, its entries running along ``dim``."""
    if index.dim() == 1:
        shape = [1] * src.dim()
        shape[dim] = -1
        index = index.view(shape)
    elif index.dim() != src.dim():
        raise ValueError(f"index has {index.dim()} dims, src {src.dim()}: give a 1-d index or one of src's rank")
    return index.expand_as(src)


def scatter(
    src: torch.Tensor,
    index: torch.Tensor,
    dim: int = -1,
    out: torch.Tensor | None = None,
    dim_size: int | None = None,
    reduce: str = "sum",
) -> torch.Tensor:
    """Reduce the slices of ``src`` along ``dim`` that share an ``index`` (torch_scatter's ``scatter``)."""
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}: expected one of {sorted(_REDUCTIONS)}")
    dim = dim % src.dim()
    index = _broadcast(index, src, dim)
    if out is not None:
        if reduce not in ("sum", "add"):
            raise ValueError(f"out= is supported with reduce='sum' only, got reduce={reduce!r}")
        return out.scatter_add_(dim, index, src)
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() > 0 else 0
    shape = list(src.shape)
    shape[dim] = dim_size
    result = src.new_zeros(shape)
    if reduce in ("sum", "add"):
        return result.scatter_add(dim, index, src)
    # include_self=False: an empty segment keeps the 0 it starts with, as in torch_scatter.
    return result.scatter_reduce(dim, index, src, _REDUCTIONS[reduce], include_self=False)


def segment_coo(
    src: torch.Tensor,
    index: torch.Tensor,
    out: torch.Tensor | None = None,
    dim_size: int | None = None,
    reduce: str = "sum",
) -> torch.Tensor:
    """Reduce over sorted ``index`` (torch_scatter's ``segment_coo``): the reduced dim is ``index.dim() - 1``."""
    return scatter(src, index, dim=index.dim() - 1, out=out, dim_size=dim_size, reduce=reduce)


def segment_csr(
    src: torch.Tensor,
    indptr: torch.Tensor,
    out: torch.Tensor | None = None,
    reduce: str = "sum",
) -> torch.Tensor:
    """Reduce the segments ``src[indptr[i]:indptr[i + 1]]`` along dim 0 (torch_scatter's ``segment_csr``, 1-d ``indptr``)."""
    if indptr.dim() != 1:
        raise ValueError(f"indptr has {indptr.dim()} dims: this stand-in supports a 1-d indptr only")
    counts = indptr[1:] - indptr[:-1]
    index = torch.repeat_interleave(torch.arange(counts.numel(), device=src.device), counts)
    start = int(indptr[0]) if indptr.numel() > 0 else 0
    return scatter(src[start : start + index.numel()], index, dim=0, out=out, dim_size=counts.numel(), reduce=reduce)
