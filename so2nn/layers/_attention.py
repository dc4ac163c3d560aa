r"""Equivariant graph attention of EquiformerV2, with attention re-normalisation."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..graph import segment_softmax
from ..so3 import CoefficientLayout, EdgeRotation
from ..so3._wigner import prepare_couplings
from ._activation import GateActivation, S2Activation, SeparableS2Activation, SmoothLeakyReLU
from ._common import as_layout, check_channels, check_features, maybe_recompute
from ._gather import scatter_sum
from ._linear import SO3Linear
from ._radial import AtomEdgeEmbedding
from ._so2 import SO2Convolution, SO2Linear, edge_message_convolution

__all__ = ["AttentionReNorm", "EquivariantGraphAttention"]

_ACTIVATIONS = ("separable_s2", "s2", "gate")


class AttentionReNorm(nn.Module):
    r"""Attention logits from invariant edge features, with EquiformerV2's re-normalisation.

    .. math:: z_{e,h} = a_h^\top\, \mathrm{SmoothLeakyReLU}\bigl(\mathrm{LayerNorm}(f_{e,h})\bigr)

    Args:
        num_heads: :math:`H`.
        alpha_channels: :math:`A`, features per head.
        renorm: apply the layer norm (``False``: the plain GATv2-style logits of the ablation).

    Shapes: ``features: [E, H * A] -> [E, H]``. Parameters: ``alpha_norm`` (``LayerNorm(A)``),
    ``alpha_dot [H, A]``.

    Example:
        >>> attention = AttentionReNorm(num_heads=2, alpha_channels=8)
        >>> attention(torch.randn(10, 2 * 8)).shape
        torch.Size([10, 2])
    """

    def __init__(self, num_heads: int, alpha_channels: int, renorm: bool = True) -> None:
        super().__init__()
        check_channels(num_heads=num_heads, alpha_channels=alpha_channels)
        self.num_heads, self.alpha_channels = num_heads, alpha_channels
        self.alpha_norm = nn.LayerNorm(alpha_channels) if renorm else nn.Identity()
        self.alpha_act = SmoothLeakyReLU()
        bound = 1.0 / math.sqrt(alpha_channels)
        self.alpha_dot = nn.Parameter(torch.empty(num_heads, alpha_channels).uniform_(-bound, bound))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = self.alpha_act(self.alpha_norm(features.reshape(-1, self.num_heads, self.alpha_channels)))
        return torch.einsum("eha,ha->eh", f, self.alpha_dot)


class EquivariantGraphAttention(nn.Module):
    r"""EquiformerV2's equivariant graph attention (multi-head, SO(2) convolutions).

    For each edge :math:`j \to i` with frame :math:`R_{ij}`:

    1. :math:`m_{ij} = D(R_{ij})\,[x_j \,\|\, x_i]` (rotate into the edge frame, keep :math:`|m| \le m_{max}`);
    2. :math:`(v_{ij}, f_{ij}, g_{ij}) = \mathrm{SO2Conv}_1(m_{ij}; h_{ij})`, where the extra
       :math:`m = 0` outputs :math:`f` feed the attention and :math:`g` the activation gates;
    3. :math:`v_{ij} \leftarrow \mathrm{SO2Linear}_2(\mathrm{act}(g_{ij}, v_{ij}))` (separable S2
       activation by default);
    4. :math:`\alpha_{ij,h} = \mathrm{softmax}_{j}\,\bigl(\mathrm{AttentionReNorm}(f_{ij})\bigr)_h`;
    5. :math:`y_i = \mathrm{SO3Linear}\bigl(\sum_j D(R_{ij})^\top (\alpha_{ij} \odot v_{ij})\bigr)`.

    Args:
        layout: the (lmax, mmax) layout.
        sphere_channels: channels :math:`C` of the node features.
        hidden_channels: channels of the messages after the first SO(2) convolution.
        num_heads, attn_alpha_channels, attn_value_channels: heads and their widths.
        output_channels: channels of the output.
        edge_channels_list: ``[edge_in, hidden, hidden]`` of the radial MLP.
        max_num_elements: atom-type tables for the edge features, or ``None``.
        activation: ``"separable_s2"`` (EquiformerV2), ``"s2"`` or ``"gate"`` (exactly equivariant).
        attn_renorm: attention re-normalisation.
        alpha_drop: dropout on the attention weights.
        grid_resolution: resolution of the edge-frame S2 grid (EquiformerV2: 18).
        recompute: in training with direct forces (edge frames without gradient), recompute
            the radial MLP's hidden layers, the attention logits and the activated, weighted
            values in backward instead of storing them (same numbers).

    Shapes:
        ``x: [N, (lmax+1)**2, C]``, ``edge_features: [E, edge_in]``, ``atomic_numbers: [N]``,
        ``edge_index: [2, E]``, ``rotation``: the :class:`~so2nn.so3.EdgeRotation` of the
        edges -> ``[N, (lmax+1)**2, output_channels]``.

    Example:
        >>> layout = CoefficientLayout(lmax=2, mmax=1)
        >>> attention = EquivariantGraphAttention(
        ...     layout, sphere_channels=8, hidden_channels=8, num_heads=2, attn_alpha_channels=4,
        ...     attn_value_channels=4, output_channels=8, edge_channels_list=[4, 8, 8], grid_resolution=8)
        >>> edge_index = torch.tensor([[1, 2, 0], [0, 0, 1]])        # source j -> target i
        >>> rotation = EdgeRotation(layout, torch.randn(3, 3))        # frames of the 3 edges
        >>> x, edge_features = torch.randn(3, layout.dim, 8), torch.randn(3, 4)
        >>> attention(x, edge_features, torch.tensor([1, 6, 8]), edge_index, rotation).shape
        torch.Size([3, 9, 8])
    """

    def __init__(
        self,
        layout: CoefficientLayout | int,
        sphere_channels: int,
        hidden_channels: int,
        num_heads: int,
        attn_alpha_channels: int,
        attn_value_channels: int,
        output_channels: int,
        edge_channels_list: list[int],
        max_num_elements: int | None = None,
        activation: str = "separable_s2",
        attn_renorm: bool = True,
        alpha_drop: float = 0.0,
        grid_resolution: int | tuple[int, int] | None = 18,
        recompute: bool = True,
    ) -> None:
        super().__init__()
        self.layout = layout = as_layout(layout)
        prepare_couplings(layout.lmax)  # Wigner-D couplings of its EdgeRotation, built now
        check_channels(
            sphere_channels=sphere_channels, hidden_channels=hidden_channels, num_heads=num_heads,
            attn_alpha_channels=attn_alpha_channels, attn_value_channels=attn_value_channels,
            output_channels=output_channels,
        )
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: choose one of {_ACTIVATIONS}")
        self.sphere_channels, self.hidden_channels = sphere_channels, hidden_channels
        self.num_heads, self.attn_alpha_channels, self.attn_value_channels = num_heads, attn_alpha_channels, attn_value_channels
        self.output_channels, self.activation, self.recompute = output_channels, activation, recompute

        edge_channels_list = list(edge_channels_list)
        self.atom_edge = None
        if max_num_elements is not None:
            self.atom_edge = AtomEdgeEmbedding(max_num_elements, edge_channels_list[-1])
            edge_channels_list[0] += 2 * edge_channels_list[-1]

        self.num_gates = {"separable_s2": hidden_channels, "s2": 0, "gate": layout.lmax * hidden_channels}[activation]
        self.so2_conv_1 = SO2Convolution(
            layout, 2 * sphere_channels, hidden_channels, edge_channels_list,
            extra_m0_output_channels=num_heads * attn_alpha_channels + self.num_gates,
        )
        self.attention = AttentionReNorm(num_heads, attn_alpha_channels, attn_renorm)
        self.alpha_dropout = nn.Dropout(alpha_drop) if alpha_drop > 0 else None
        if activation == "gate":
            self.act = GateActivation(layout, hidden_channels, edge=True)
        elif activation == "separable_s2":
            self.act = SeparableS2Activation(layout, grid_resolution, edge=True)
        else:
            self.act = S2Activation(layout, grid_resolution, edge=True)
        self.so2_conv_2 = SO2Linear(layout, hidden_channels, num_heads * attn_value_channels)
        self.proj = SO3Linear(layout, num_heads * attn_value_channels, output_channels)

    def extra_repr(self) -> str:
        return (
            f"lmax={self.layout.lmax}, mmax={self.layout.mmax}, sphere_channels={self.sphere_channels}, "
            f"num_heads={self.num_heads}, activation={self.activation!r}" + ("" if self.recompute else ", recompute=False")
        )

    def forward(
        self,
        x: torch.Tensor,
        edge_features: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        rotation: EdgeRotation,
    ) -> torch.Tensor:
        check_features("x", x, None, self.layout.dim, self.sphere_channels)
        num_nodes, num_edges = x.shape[0], edge_index.shape[1]
        target = edge_index[1]
        # In training with direct forces, the intermediates of the radial MLP, the logits and the
        # values (a few [E, H, A] tensors, the activated messages and the [E, edge_dim, H * V]
        # values: most of a layer's stored activations) are recomputed in backward from their inputs.
        recompute = (self.recompute and torch.is_grad_enabled() and not rotation.matrix.requires_grad
                     and not torch.compiler.is_compiling())
        # m_ij = D(R_ij) [x_j || x_i], then the first SO(2) convolution (fused: see edge_message_convolution),
        # its radial MLP fed with the edge features and the atom-type embeddings of the edge
        message, extra = edge_message_convolution(
            self.so2_conv_1, x, edge_index, rotation, edge_features, self.atom_edge, atomic_numbers, recompute,
        )
        alpha_features, gates = extra.split([extra.shape[1] - self.num_gates, self.num_gates], dim=1)
        logits = maybe_recompute(recompute, self.attention, alpha_features)  # [E, H]
        # softmax in at least float32 (under bf16 autocast the logits are bf16)
        alpha = segment_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), target, num_nodes)
        if self.alpha_dropout is not None:
            alpha = self.alpha_dropout(alpha)
        message = maybe_recompute(recompute, self._weighted_values, message, gates, alpha)
        message = rotation.from_edge(message, rescale=True)
        return self.proj(scatter_sum(message, target, num_nodes))

    def _weighted_values(self, message: torch.Tensor, gates: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Values of every head, ``SO2Linear_2(act(gates, message))``, times its attention weight: ``[E, edge_dim, H * V]``."""
        values = self.so2_conv_2(self.act(message) if self.activation == "s2" else self.act(gates, message))
        E, H, V = values.shape[0], self.num_heads, self.attn_value_channels
        return (values.view(E, -1, H, V) * alpha[:, None, :, None]).view(E, -1, H * V)
