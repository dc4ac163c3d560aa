r"""Rotation of node features into edge frames (truncated, m-major) and back."""

from __future__ import annotations

import torch

from .._checks import check_last_dims
from ._frames import edge_frames
from ._layout import CoefficientLayout, layout_index
from ._wigner import _blocks, check_rotation

__all__ = ["EdgeRotation"]


class EdgeRotation:
    r"""Per-edge Wigner-D blocks, truncated to :math:`|m| \le m_{max}`, built once per forward.

    For each edge :math:`e` with frame :math:`R_e` (:func:`~so2nn.so3.edge_frames`), degree
    :math:`l` is rotated by the rows :math:`|m| \le \min(l, m_{max})` of
    :math:`D^l(R_e)` only: a ``[2 min(l, mmax) + 1, 2l + 1]`` block per degree, never the
    dense ``(lmax+1)**2`` square.

    .. math::

        \tilde x_e^{(l)} = D^l(R_e)_{|m| \le m_{max}}\, x_e^{(l)}, \qquad
        x_e^{(l)} = s_l\, D^l(R_e)_{|m| \le m_{max}}^\top\, \tilde x_e^{(l)},

    with :math:`s_l = 1`, or the truncation rescale of EquiformerV2
    (:attr:`CoefficientLayout.truncation_rescale`) when ``rescale=True``.

    Args:
        layout: the (lmax, mmax) layout.
        edge_vec: ``[E, 3]`` edge vectors; their frames are :func:`~so2nn.so3.edge_frames`.
        validate: check them (finite, non-zero) as :func:`~so2nn.so3.edge_frames` does.

    Example:
        >>> layout = CoefficientLayout(lmax=2, mmax=1)
        >>> rot = EdgeRotation(layout, torch.randn(5, 3))
        >>> x = torch.randn(5, layout.dim, 8)      # l-major, already gathered per edge
        >>> rot.to_edge(x).shape                   # m-major, |m| <= 1
        torch.Size([5, 7, 8])
        >>> rot.from_edge(rot.to_edge(x)).shape
        torch.Size([5, 9, 8])
    """

    def __init__(self, layout: CoefficientLayout, edge_vec: torch.Tensor, validate: bool = True) -> None:
        self._init(layout, edge_frames(edge_vec, validate))

    @classmethod
    def from_frames(cls, layout: CoefficientLayout, frames: torch.Tensor) -> EdgeRotation:
        """Build from given frames ``R[E, 3, 3]`` (each must take its edge onto ``+y``)."""
        check_rotation(frames, "frames")
        self = cls.__new__(cls)
        self._init(layout, frames)
        return self

    def _init(self, layout: CoefficientLayout, frames: torch.Tensor) -> None:
        if not isinstance(layout, CoefficientLayout):
            raise ValueError(f"layout must be a CoefficientLayout, got {type(layout).__name__}")
        self.layout = layout
        self.frames = frames
        mmax = layout.mmax
        # explicit sizes: with no edges (E = 0) a -1 in reshape is ambiguous
        blocks = [
            D[..., l - min(l, mmax) : l + min(l, mmax) + 1, :].reshape(
                frames.shape[0], (2 * min(l, mmax) + 1) * (2 * l + 1))
            for l, D in enumerate(_blocks(layout.lmax, frames))
        ]
        # One [edge_dim, dim] matrix per edge (rows m-major, columns l-major), so that each
        # rotation is a single batched matmul with no per-degree slicing or permutation. The
        # zeros (entries between different degrees) cost more multiply-adds than the blocks
        # alone, but far less time than the small kernels they replace.
        index = layout_index(layout, "_rotation_scatter_index", frames.device)
        entries = torch.cat(blocks, dim=1)
        self.matrix = entries.new_zeros(frames.shape[0], layout.edge_dim * layout.dim).index_copy(1, index, entries)
        self.matrix = self.matrix.view(frames.shape[0], layout.edge_dim, layout.dim)
        self._back = {}

    @property
    def num_edges(self) -> int:
        return self.frames.shape[0]

    def edges(self, start: int, stop: int) -> EdgeRotation:
        """The rotation of edges ``start .. stop - 1``: views of this one's matrices, no copy
        (the matrices for the way back are built once, here, and shared).

        Example:
            >>> rot = EdgeRotation(CoefficientLayout(lmax=2, mmax=1), torch.randn(5, 3))
            >>> part = rot.edges(1, 3)
            >>> part.num_edges, torch.equal(part.matrix, rot.matrix[1:3])
            (2, True)
        """
        part = EdgeRotation.__new__(EdgeRotation)
        part.layout, part.frames, part.matrix = self.layout, self.frames[start:stop], self.matrix[start:stop]
        part._back = {rescale: self._back_matrix(rescale)[start:stop] for rescale in (False, True)}
        return part

    def __repr__(self) -> str:
        return f"EdgeRotation({self.layout}, num_edges={self.num_edges})"

    def to_edge(self, x: torch.Tensor) -> torch.Tensor:
        """l-major ``[E, (lmax+1)**2, C]`` -> edge frames, m-major ``[E, edge_dim, C]``."""
        layout = self.layout
        # the message is built only on failure: formatting a size would fix it under torch.compile
        if x.dim() != 3 or x.shape[1] != layout.dim:
            check_last_dims("x", x, (layout.dim, x.shape[-1]), f"[E={self.num_edges}, {layout.dim}, C]")
        if x.shape[0] != self.num_edges:
            raise ValueError(f"x must have {self.num_edges} rows (one per edge), got {x.shape[0]}")
        return torch.bmm(self.matrix, x)

    def from_edge(self, y: torch.Tensor, rescale: bool = False) -> torch.Tensor:
        """Edge frames, m-major ``[E, edge_dim, C]`` -> l-major ``[E, (lmax+1)**2, C]``.

        Exact inverse of :meth:`to_edge` on the ``|m| <= mmax`` part. With ``rescale=True``
        degree ``l`` is multiplied by ``sqrt((2l+1) / (2 min(l, mmax)+1))``, as
        EquiformerV2 does when it rotates messages back. ``y`` may also hold the ``m = 0``
        coefficients alone (``[E, lmax + 1, C]``, the first rows of the m-major order), the other
        orders being zero.
        """
        layout = self.layout
        if y.dim() != 3 or y.shape[0] != self.num_edges or y.shape[1] not in (layout.edge_dim, layout.lmax + 1):
            raise ValueError(
                f"y must have shape [E={self.num_edges}, {layout.edge_dim}, C] "
                f"(or [E, lmax + 1 = {layout.lmax + 1}, C] for m = 0 alone), got {tuple(y.shape)}"
            )
        back = self._back_matrix(rescale)
        return torch.bmm(back if y.shape[1] == layout.edge_dim else back[:, :, : y.shape[1]], y)

    def _back_matrix(self, rescale: bool) -> torch.Tensor:
        """``[E, dim, edge_dim]``: the transpose, with the truncation rescale on its rows."""
        if rescale not in self._back:
            back = self.matrix.transpose(1, 2)
            if rescale and self.layout.mmax < self.layout.lmax:
                scale = layout_index(self.layout, "truncation_rescale", back.device).to(back.dtype)
                back = back * scale.index_select(0, layout_index(self.layout, "degrees", back.device))[:, None]
            self._back[rescale] = back
        return self._back[rescale]
