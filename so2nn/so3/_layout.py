"""The coefficient layout of spherical-harmonic features, and its index maps.

Two orders are used across so2nn (see the conventions page of the docs):

*l-major* (node features, ``[N, (lmax+1)**2, C]``)
    degree by degree, ``m`` from ``-l`` to ``l`` inside a degree; the coefficient of
    ``(l, m)`` sits at index ``l**2 + l + m``. This is e3nn's order.

*m-major, truncated* (edge-frame features, ``[E, K, C]``)
    only the orders ``|m| <= mmax`` are kept. First every ``m = 0`` coefficient
    (``l = 0..lmax``), then for ``m = 1..mmax`` the block of ``+m`` coefficients
    (``l = m..lmax``) followed by the block of ``-m`` coefficients (``l = m..lmax``).
    An SO(2) linear map mixes only coefficients of one ``|m|``, so in this order every
    such map acts on a contiguous slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, cached_property, wraps

import torch

from .._checks import check_degree, check_layout


def _on_cpu(build):
    """Run ``build`` with the CPU as default device: constants cached here must not become
    meta (or CUDA) tensors because the first model happened to be built inside
    ``with torch.device("meta"):``; they are copied to each module's device later."""

    @wraps(build)
    def wrapper(*args, **kwargs):
        with torch.device("cpu"):
            return build(*args, **kwargs)

    return wrapper


def _cpu_cached_property(build):
    return cached_property(_on_cpu(build))


__all__ = ["CoefficientLayout"]


@dataclass(frozen=True)
class CoefficientLayout:
    r"""The (lmax, mmax) coefficient layout: sizes and every index map between orders.

    Immutable and hashable, so that anything derived from it (index tensors, Wigner
    couplings, S2 grids) is built once and cached per layout. Every index map is built
    when the layout is made: a forward pass (compiled or not) only reads them.

    Args:
        lmax: largest degree :math:`L` of the node features.
        mmax: largest order :math:`|m|` kept in edge frames (``mmax <= lmax``).
            Defaults to ``lmax``.

    Example:
        >>> layout = CoefficientLayout(lmax=2, mmax=1)
        >>> layout.dim, layout.edge_dim
        (9, 7)
        >>> layout.m_major_index.tolist()
        [0, 2, 6, 3, 7, 1, 5]
    """

    lmax: int
    mmax: int = -1  # -1: same as lmax (resolved in __post_init__)

    def __post_init__(self) -> None:
        check_degree("lmax", self.lmax)
        if self.mmax == -1:
            object.__setattr__(self, "mmax", self.lmax)
        check_layout(self.lmax, self.mmax)
        # Build every index map now, on this instance. Under torch.compile a map that is first
        # built inside the traced forward breaks the graph (Python 3.11's cached_property takes
        # a lock there); once built it is a plain instance attribute.
        for name, value in vars(type(self)).items():
            if isinstance(value, cached_property):
                getattr(self, name)

    def __repr__(self) -> str:
        return f"CoefficientLayout(lmax={self.lmax}, mmax={self.mmax})"

    # ------------------------------------------------------------------ sizes
    @property
    def dim(self) -> int:
        """Number of l-major coefficients, ``(lmax + 1) ** 2``."""
        return (self.lmax + 1) ** 2

    @property
    def edge_dim(self) -> int:
        """Number of coefficients kept in edge frames (``|m| <= mmax``)."""
        return len(self.m_major_degrees)

    def order_size(self, m: int) -> int:
        """Number of degrees that carry order ``m`` (``l = |m|..lmax``)."""
        return self.lmax - abs(m) + 1

    # ------------------------------------------------------- l-major labels
    @_cpu_cached_property
    def degrees(self) -> torch.Tensor:
        """The degree ``l`` of each l-major coefficient, ``[dim]`` (the per-degree expansion)."""
        return torch.tensor([l for l in range(self.lmax + 1) for _ in range(2 * l + 1)])

    @_cpu_cached_property
    def orders(self) -> torch.Tensor:
        """The order ``m`` of each l-major coefficient, ``[dim]``."""
        return torch.tensor([m for l in range(self.lmax + 1) for m in range(-l, l + 1)])

    def degree_slice(self, l: int) -> slice:
        """The l-major slice of degree ``l``: ``l**2 : (l+1)**2``."""
        return slice(l * l, (l + 1) * (l + 1))

    # ----------------------------------------------------- m-major (edges)
    @_cpu_cached_property
    def _m_major_pairs(self) -> tuple[tuple[int, int], ...]:
        pairs = [(l, 0) for l in range(self.lmax + 1)]
        for m in range(1, self.mmax + 1):
            pairs += [(l, m) for l in range(m, self.lmax + 1)]
            pairs += [(l, -m) for l in range(m, self.lmax + 1)]
        return tuple(pairs)

    @_cpu_cached_property
    def m_major_index(self) -> torch.Tensor:
        """The l-major index of each m-major position, ``[edge_dim]``.

        ``x[:, layout.m_major_index]`` truncates l-major features to ``|m| <= mmax`` and
        reorders them m-major.
        """
        return torch.tensor([l * l + l + m for l, m in self._m_major_pairs])

    @_cpu_cached_property
    def m_major_degrees(self) -> torch.Tensor:
        """The degree ``l`` of each m-major coefficient, ``[edge_dim]``."""
        return torch.tensor([l for l, _ in self._m_major_pairs])

    @_cpu_cached_property
    def m_major_orders(self) -> torch.Tensor:
        """The signed order ``m`` of each m-major coefficient, ``[edge_dim]``."""
        return torch.tensor([m for _, m in self._m_major_pairs])

    def order_slice(self, m: int) -> slice:
        """The m-major slice holding order ``|m|``.

        For ``m = 0`` it has ``lmax + 1`` entries; for ``m > 0`` it has
        ``2 * (lmax - m + 1)`` entries, the ``+m`` block first, then the ``-m`` block.
        """
        check_degree("m", m)
        if m > self.mmax:
            raise ValueError(f"m must be <= mmax={self.mmax}, got {m}")
        if m == 0:
            return slice(0, self.lmax + 1)
        start = self.lmax + 1 + sum(2 * self.order_size(k) for k in range(1, m))
        return slice(start, start + 2 * self.order_size(m))

    # -------------------------------------- truncated l-major <-> m-major
    @_cpu_cached_property
    def truncated_index(self) -> torch.Tensor:
        """l-major indices with ``|m| <= mmax``, in l-major order (the truncated l-major order)."""
        keep = self.orders.abs() <= self.mmax
        return torch.arange(self.dim)[keep]

    @_cpu_cached_property
    def truncated_to_m_major(self) -> torch.Tensor:
        """The permutation from truncated-l-major positions to m-major, ``y_m = y_t[:, perm]``."""
        position = {int(i): k for k, i in enumerate(self.truncated_index)}
        return torch.tensor([position[int(i)] for i in self.m_major_index])

    @_cpu_cached_property
    def m_major_to_truncated(self) -> torch.Tensor:
        """The inverse of :attr:`truncated_to_m_major`, ``y_t = y_m[:, perm]``."""
        return torch.argsort(self.truncated_to_m_major)

    def truncated_degree_slice(self, l: int) -> slice:
        """The slice of degree ``l`` inside the truncated l-major order."""
        start = sum(2 * min(k, self.mmax) + 1 for k in range(l))
        return slice(start, start + 2 * min(l, self.mmax) + 1)

    @_cpu_cached_property
    def _rotation_scatter_index(self) -> torch.Tensor:
        """Flat positions in an ``[edge_dim, dim]`` matrix (rows m-major, columns l-major) of the
        entries of the truncated Wigner blocks ``D^l[|m| <= mmax, :]``, concatenated degree by
        degree, each row-major (used by :class:`~so2nn.so3.EdgeRotation`)."""
        row = {pair: p for p, pair in enumerate(self._m_major_pairs)}
        index = []
        for l in range(self.lmax + 1):
            k = min(l, self.mmax)
            for m in range(-k, k + 1):
                index += [row[(l, m)] * self.dim + l * l + c for c in range(2 * l + 1)]
        return torch.tensor(index)

    # ---------------------------------------------------------- rescaling
    @_cpu_cached_property
    def truncation_rescale(self) -> torch.Tensor:
        r"""The factor :math:`\sqrt{(2l+1) / (2\min(l, m_{max})+1)}` of each degree, ``[lmax + 1]``.

        The factor EquiformerV2 applies to a degree when it comes back from a frame in
        which only ``|m| <= mmax`` was kept (it is 1 for ``l <= mmax``).
        """
        return torch.tensor(
            [math.sqrt((2 * l + 1) / (2 * min(l, self.mmax) + 1)) for l in range(self.lmax + 1)],
            dtype=torch.float64,
        )

    # -------------------------------------------------------------- e3nn
    def irreps(self, channels: int = 1):
        """The :class:`e3nn.o3.Irreps` of ``channels`` copies of every degree (parity ``(-1)**l``)."""
        from e3nn import o3

        check_degree("channels", channels, minimum=1)
        return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(self.lmax + 1)])

    # --------------------------------------------------- rotation matrix
    def D_from_matrix(self, R: torch.Tensor) -> torch.Tensor:
        """Block-diagonal Wigner-D ``[..., dim, dim]`` acting on l-major features.

        Features rotate as ``x' = D @ x`` (``x`` of shape ``[..., dim, C]``).
        """
        from ._wigner import wigner_D_blocks

        return _batched_block_diag(wigner_D_blocks(self.lmax, R))


def _batched_block_diag(blocks: list[torch.Tensor]) -> torch.Tensor:
    size = sum(b.shape[-1] for b in blocks)
    out = blocks[0].new_zeros(blocks[0].shape[:-2] + (size, size))
    start = 0
    for b in blocks:
        n = b.shape[-1]
        out[..., start : start + n, start : start + n] = b
        start += n
    return out


def layout_index(layout: CoefficientLayout, name: str, device: torch.device) -> torch.Tensor:
    """A layout's index tensor ``name`` on ``device``, cached (built once per device)."""
    if torch.compiler.is_compiling():  # a constant of the compiled graph (the cache is not traced)
        return getattr(layout, name).to(device)
    return _cached_layout_index(layout, name, device)


@cache
def _cached_layout_index(layout: CoefficientLayout, name: str, device: torch.device) -> torch.Tensor:
    return _on_cpu(getattr)(layout, name).to(device)
