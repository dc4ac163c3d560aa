r"""Equivariant nonlinearities: gates, pointwise activations on an S2 grid, and their
separable versions (EquiformerV2).

A pointwise nonlinearity :math:`\sigma` applied to the function
:math:`f(\hat r) = \sum_{lm} x_{lm} Y_{lm}(\hat r)` commutes with rotations; sampled on a
finite grid, it commutes only up to aliasing: :math:`\sigma \circ f` is not band-limited, and
the part above the grid's resolution folds back. The error falls as the resolution grows.
With the identity for :math:`\sigma` the grid round trip is exact, so every equivariance
error of these layers is that aliasing.

Measured here (float64, unit-variance random features, 16 channels, SiLU, worst of 5 random
rotations; ``tests/layers/test_activation.py`` asserts the trend): max relative equivariance
error of :class:`S2Activation` on node features

=====  ========  ========  ========  ========  ========
lmax   res 18    res 24    res 36    res 48    res 64
=====  ========  ========  ========  ========  ========
2      1.1e-4    7.1e-7    1.4e-9    1e-12     1e-15
4      7.2e-3    6.3e-4    8.6e-6    7.0e-7    3.4e-10
6      1.1e-1    8.7e-3    4.4e-4    3.0e-5    3.3e-7
=====  ========  ========  ========  ========  ========

Inside a trained network the inputs are normalised and the error at the outputs is smaller
(EquiformerV2's released resolution 18 gives force errors of ~2e-4 relative at lmax 4).
Edge-frame grids (``edge=True``) alias far less: a global rotation changes only the roll
about the edge, which shifts the azimuthal samples. so2nn's "fine enough" resolution,
:func:`fine_grid_resolution`, is ``8 * (lmax + 2)`` (48 at lmax 4, 64 at lmax 6), where the
error is below 1e-5. Pretrained weights do not depend on the resolution: it can be raised
at inference time.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import GRID_SILU, check_kernels, grid_silu, policy_device, use_fused
from ..so3 import CoefficientLayout, s2_grid
from ._common import ConstantsModule, as_layout, check_channels, replace_scalars

__all__ = [
    "GateActivation",
    "S2Activation",
    "SeparableS2Activation",
    "SmoothLeakyReLU",
    "activation_layer",
    "activation_scalars",
    "fine_grid_resolution",
]


def fine_grid_resolution(lmax: int) -> int:
    """A grid resolution at which SiLU on the grid is equivariant to better than 1e-5 (float64).

    ``8 * (lmax + 2)``, from the errors measured on unit-variance node features (the table of
    this module's docstring; the docs' performance page plots them).

    Example:
        >>> fine_grid_resolution(4), fine_grid_resolution(6)
        (48, 64)
    """
    return 8 * (lmax + 2)


_NAMES = ("separable_s2", "s2", "gate")


def activation_layer(name: str, layout: CoefficientLayout | int, channels: int,
                     resolution: int | tuple[int, int] | None = 18, edge: bool = False,
                     kernels: str = "auto") -> nn.Module:
    """The equivariant activation called ``name``: ``"separable_s2"`` (:class:`SeparableS2Activation`),
    ``"s2"`` (:class:`S2Activation`) or ``"gate"`` (:class:`GateActivation`).

    Every one is called as ``act(x, scalars)``; :func:`activation_scalars` gives the width of
    ``scalars`` (0 for ``"s2"``, which takes ``scalars=None``).

    Example:
        >>> act = activation_layer("gate", 2, channels=4)
        >>> act(torch.randn(3, 9, 4), torch.randn(3, activation_scalars("gate", 2, 4))).shape
        torch.Size([3, 9, 4])
    """
    if name == "gate":
        return GateActivation(layout, channels, edge)
    if name == "separable_s2":
        return SeparableS2Activation(layout, resolution, edge, kernels=kernels)
    if name == "s2":
        return S2Activation(layout, resolution, edge, kernels=kernels)
    raise ValueError(f"unknown activation {name!r}: choose one of {_NAMES}")


def activation_scalars(name: str, layout: CoefficientLayout | int, channels: int) -> int:
    """Width of the invariant ``scalars`` that the activation ``name`` takes: ``channels`` for
    ``"separable_s2"``, ``lmax * channels`` for ``"gate"``, 0 for ``"s2"``."""
    if name not in _NAMES:
        raise ValueError(f"unknown activation {name!r}: choose one of {_NAMES}")
    return {"separable_s2": channels, "s2": 0, "gate": as_layout(layout).lmax * channels}[name]


def _check_input(module: nn.Module, x: torch.Tensor, coefficients: int, channels: int | None = None) -> None:
    if (not torch.is_tensor(x) or x.dim() != 3 or x.shape[1] != coefficients
            or (channels is not None and x.shape[2] != channels)):
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        what = "edge-frame features [E, edge_dim" if getattr(module, "edge", False) else "node features [N, (lmax+1)**2"
        raise ValueError(f"{type(module).__name__} expects {what}={coefficients}, {channels or 'C'}], got {got}")


class SmoothLeakyReLU(nn.Module):
    r"""Smooth leaky ReLU: :math:`\tfrac{1+a}{2}x + \tfrac{1-a}{2}\,x\,(2\sigma(x) - 1)
    = x\,\bigl(a + (1 - a)\,\sigma(x)\bigr)` (EquiformerV2's attention activation,
    ``negative_slope`` :math:`a = 0.2`).

    Elementwise, any shape. Example:

        >>> SmoothLeakyReLU()(torch.tensor([-1.0, 0.0, 1.0]))
        tensor([-0.4152,  0.0000,  0.7848])
    """

    def __init__(self, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.negative_slope
        return x * (torch.sigmoid(x) * (1 - a) + a)


def _coefficient_degrees(layout: CoefficientLayout, edge: bool) -> torch.Tensor:
    return layout.m_major_degrees if edge else layout.degrees


class GateActivation(ConstantsModule):
    r"""Gate: SiLU on the scalars, and each degree :math:`l > 0` scaled by a sigmoid gate.

    .. math:: y^{(0)} = \mathrm{SiLU}(x^{(0)}), \qquad y^{(l)} = \sigma(g_l) \odot x^{(l)}

    Exactly equivariant (the gates are invariant).

    Args:
        layout: the (lmax, mmax) layout.
        channels: channels :math:`C`.
        edge: ``True`` for edge-frame features ``[E, edge_dim, C]`` (m-major), ``False`` for
            node features ``[N, (lmax+1)**2, C]``.

    Shapes:
        ``x: [N, K, C]``, ``scalars: [N, lmax * C]`` (the gate logits, degree-major) -> ``[N, K, C]``.

    Example:
        >>> gate = GateActivation(2, channels=4)
        >>> gate(torch.randn(3, 9, 4), torch.randn(3, 2 * 4)).shape
        torch.Size([3, 9, 4])
    """

    def __init__(self, layout: CoefficientLayout | int, channels: int, edge: bool = False) -> None:
        super().__init__()
        self.layout, self.channels, self.edge = as_layout(layout), channels, edge
        check_channels(channels=channels)
        # gate row of each l > 0 coefficient: l - 1 (row 0 of the padded table for l = 0)
        self.register_constant("gate_index", _coefficient_degrees(self.layout, edge))

    def extra_repr(self) -> str:
        return f"lmax={self.layout.lmax}, mmax={self.layout.mmax}, channels={self.channels}, edge={self.edge}"

    def forward(self, x: torch.Tensor, scalars: torch.Tensor | None = None) -> torch.Tensor:
        lmax = self.layout.lmax
        _check_input(self, x, self.gate_index.shape[0], self.channels)
        if scalars is None or scalars.dim() != 2 or scalars.shape != (x.shape[0], lmax * self.channels):
            got = None if scalars is None else tuple(scalars.shape)
            raise ValueError(f"scalars (the gate logits) must have shape [N={x.shape[0]}, "
                             f"lmax * channels = {lmax * self.channels}], got {got}")
        g = torch.sigmoid(scalars).reshape(x.shape[0], lmax, self.channels)
        g = torch.cat([torch.ones_like(g[:, :1]), g], dim=1).index_select(1, self.gate_index)  # 1 for l = 0
        return replace_scalars(x * g, torch.nn.functional.silu(x[:, 0]))


class S2Activation(ConstantsModule):
    r"""Pointwise SiLU on an S2 grid: :math:`y = F\,\mathrm{SiLU}(T x)` with the to-grid
    matrix :math:`T` and from-grid matrix :math:`F` of :class:`~so2nn.so3.S2Grid`
    (e3nn's ``"component"`` normalisation, as EquiformerV2).

    Args:
        layout: the (lmax, mmax) layout.
        resolution: grid resolution (``int`` or ``(res_beta, res_alpha)``; EquiformerV2: 18).
            Equivariance error on node features at 18, unit-variance input: 7e-3 relative at
            lmax 4, 1e-1 at lmax 6 (aliasing; table in the module docstring); use
            :func:`fine_grid_resolution` for < 1e-5.
        edge: ``True`` for edge-frame features ``[E, edge_dim, C]`` (m-major, ``|m| <= mmax``,
            with EquiformerV2's truncation rescale); ``False`` for node features
            ``[N, (lmax+1)**2, C]`` (all orders).
        kernels: ``"auto"`` (the chunked :func:`~so2nn.kernels.grid_silu`, which stores only
            ``x`` for backward, when :func:`~so2nn.kernels.use_fused` allows) or ``"reference"``.

    Shapes: ``x: [N, K, C] -> [N, K, C]``; ``scalars`` must be ``None`` (the signature of every activation).

    Example:
        >>> act = S2Activation(CoefficientLayout(2), resolution=8)
        >>> act(torch.randn(4, 9, 3)).shape
        torch.Size([4, 9, 3])
    """

    def __init__(
        self, layout: CoefficientLayout | int, resolution: int | tuple[int, int] | None = 18, edge: bool = False,
        *, kernels: str = "auto",
    ) -> None:
        super().__init__()
        self.kernels = check_kernels(kernels)
        layout = as_layout(layout)
        if not edge:  # node features carry every order: the grid must resolve m up to lmax
            layout = CoefficientLayout(layout.lmax)
        self.layout, self.edge = layout, edge
        grid = s2_grid(layout, resolution if not isinstance(resolution, list) else tuple(resolution))
        self.resolution = grid.resolution
        to_grid, from_grid = grid.edge_matrices() if edge else (grid.to_grid, grid.from_grid)
        self.register_constant("to_grid", to_grid)
        self.register_constant("from_grid", from_grid)

    def extra_repr(self) -> str:
        return f"lmax={self.layout.lmax}, mmax={self.layout.mmax}, resolution={self.resolution}, edge={self.edge}"

    def forward(self, x: torch.Tensor, scalars: None = None) -> torch.Tensor:
        if scalars is not None:
            raise ValueError("S2Activation takes no scalars (use SeparableS2Activation or GateActivation)")
        _check_input(self, x, self.to_grid.shape[1])
        return self.silu_on_grid(x, self.from_grid)

    def silu_on_grid(self, x: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
        r""":math:`F\,\mathrm{SiLU}(T x)` with the given rows ``from_grid`` of :math:`F`, in ``x``'s dtype."""
        if use_fused(self.kernels, GRID_SILU, device_type=policy_device(x), double_backward=torch.is_grad_enabled()):
            return grid_silu(x, self.to_grid, from_grid)
        return from_grid.to(x.dtype) @ torch.nn.functional.silu(self.to_grid.to(x.dtype) @ x)


class SeparableS2Activation(nn.Module):
    r"""EquiformerV2's separable S2 activation: SiLU on given invariant scalars for
    :math:`l = 0`, and the grid SiLU of :class:`S2Activation` for :math:`l > 0`.

    .. math:: y^{(0)} = \mathrm{SiLU}(s), \qquad y^{(l>0)} = \bigl[F\,\mathrm{SiLU}(T x)\bigr]^{(l)}

    Args: as :class:`S2Activation`.

    Shapes:
        ``x: [N, K, C]``, ``scalars: [N, C]`` -> ``[N, K, C]``.

    Example:
        >>> act = SeparableS2Activation(CoefficientLayout(2), resolution=8)
        >>> x, scalars = torch.randn(4, 9, 3), torch.randn(4, 3)
        >>> y = act(x, scalars)
        >>> y.shape, torch.equal(y[:, 0], torch.nn.functional.silu(scalars))
        (torch.Size([4, 9, 3]), True)
    """

    def __init__(
        self, layout: CoefficientLayout | int, resolution: int | tuple[int, int] | None = 18, edge: bool = False,
        *, kernels: str = "auto",
    ) -> None:
        super().__init__()
        self.s2_act = S2Activation(layout, resolution, edge, kernels=kernels)

    def forward(self, x: torch.Tensor, scalars: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(self.s2_act, x, self.s2_act.to_grid.shape[1])
        if scalars is None or scalars.dim() != 2 or scalars.shape != (x.shape[0], x.shape[2]):
            got = None if scalars is None else tuple(scalars.shape)
            raise ValueError(f"scalars must have shape [N={x.shape[0]}, C={x.shape[2]}], got {got}")
        # the grid's l = 0 output is replaced by SiLU(scalars): project back onto l > 0 only
        higher = self.s2_act.silu_on_grid(x, self.s2_act.from_grid[1:])
        return torch.cat([torch.nn.functional.silu(scalars).unsqueeze(1).to(higher.dtype), higher], dim=1)
