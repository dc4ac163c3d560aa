r"""Equivariant graph attention of EquiformerV2, with attention re-normalisation."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ..graph import segment_softmax
from ..kernels import (
    EDGE_CONVOLUTION,
    Edges,
    SO2Weights,
    atom_edge_linear,
    check_kernels,
    edge_convolution,
    in_target_blocks,
    needs_double_backward,
    policy_device,
    use_fused,
    use_recompute,
)
from ..so3 import CoefficientLayout, EdgeRotation, prepare_couplings
from ._activation import SmoothLeakyReLU, activation_layer, activation_scalars
from ._common import (
    as_layout,
    at_least_float32,
    check_channels,
    check_dtype,
    check_edge_features,
    check_edges,
    check_features,
    check_rotation,
    maybe_recompute,
    scatter_sum,
)
from ._linear import SO3Linear
from ._radial import AtomEdgeEmbedding, check_atomic_numbers
from ._so2 import SO2Convolution, SO2Linear

__all__ = ["AttentionReNorm", "EquivariantGraphAttention"]


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
        if features.dim() != 2 or features.shape[1] != self.num_heads * self.alpha_channels:
            raise ValueError(f"features must have shape [E, num_heads * alpha_channels = "
                             f"{self.num_heads * self.alpha_channels}], got {tuple(features.shape)}")
        f = self.alpha_act(self.alpha_norm(features.view(features.shape[0], self.num_heads, self.alpha_channels)))
        return (f * self.alpha_dot).sum(dim=2)


class EquivariantGraphAttention(nn.Module):
    r"""EquiformerV2's equivariant graph attention (multi-head, SO(2) convolutions).

    For each edge :math:`j \to i` with frame :math:`R_{ij}`:

    1. :math:`m_{ij} = D(R_{ij})\,[x_j \,\|\, x_i]` (rotate into the edge frame, keep :math:`|m| \le m_{max}`);
    2. :math:`(v_{ij}, [f_{ij} \| g_{ij}]) = \mathrm{SO2Conv}_1(m_{ij}; h_{ij})`, where the extra
       :math:`m = 0` outputs :math:`f` feed the attention and :math:`g` the activation's scalars,
       and :math:`h_{ij}` are the edge features (with the atom-type embeddings of both ends);
    3. :math:`v_{ij} \leftarrow \mathrm{SO2Linear}_2(\mathrm{act}(v_{ij}, g_{ij}))` (separable S2
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
            values in backward instead of storing them (same numbers;
            :func:`~so2nn.kernels.use_recompute`).
        kernels: ``"auto"``: steps 1-2 run as one kernel, :func:`~so2nn.kernels.edge_convolution`
            (no concatenated pair tensor, and backward recomputes the edge features from the
            node features), and the activation's grid SiLU as :func:`~so2nn.kernels.grid_silu`,
            whenever :func:`~so2nn.kernels.use_fused` allows, and at inference on the CPU the
            edges of a block of targets at a time (:func:`~so2nn.kernels.use_target_blocks`:
            small temporaries for large batches); ``"reference"``: always the composition of
            the public layers above, on all edges at once. Same numbers either way.

    Everything after ``hidden_channels`` is keyword-only.

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
        *,
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
        kernels: str = "auto",
    ) -> None:
        super().__init__()
        self.layout = layout = as_layout(layout)
        check_channels(
            sphere_channels=sphere_channels, hidden_channels=hidden_channels, num_heads=num_heads,
            attn_alpha_channels=attn_alpha_channels, attn_value_channels=attn_value_channels,
            output_channels=output_channels,
        )
        self.num_gates = activation_scalars(activation, layout, hidden_channels)  # checks the name
        edge_channels_list = list(edge_channels_list)
        if len(edge_channels_list) < 2 or any(isinstance(c, bool) or not (isinstance(c, int) and c >= 1)
                                              for c in edge_channels_list):
            raise ValueError(f"edge_channels_list must be at least two ints >= 1 ([edge_in, hidden, ...]), "
                             f"got {edge_channels_list!r}")
        if max_num_elements is not None:
            check_channels(max_num_elements=max_num_elements)
        if not (isinstance(alpha_drop, (int, float)) and 0.0 <= alpha_drop < 1.0):
            raise ValueError(f"alpha_drop must be a probability in [0, 1), got {alpha_drop!r}")
        if not isinstance(attn_renorm, bool) or not isinstance(recompute, bool):
            raise ValueError(f"attn_renorm and recompute must be bools, got {attn_renorm!r} and {recompute!r}")
        self.kernels = check_kernels(kernels)
        prepare_couplings(layout.lmax)  # Wigner-D couplings of its EdgeRotation, built now
        self.sphere_channels, self.hidden_channels = sphere_channels, hidden_channels
        self.num_heads = num_heads
        self.attn_alpha_channels, self.attn_value_channels = attn_alpha_channels, attn_value_channels
        self.output_channels, self.activation, self.recompute = output_channels, activation, recompute

        self.edge_channels = edge_channels_list[0]  # width of the edge features given to forward
        self.atom_edge = None
        if max_num_elements is not None:
            self.atom_edge = AtomEdgeEmbedding(max_num_elements, edge_channels_list[-1])
            edge_channels_list[0] += 2 * edge_channels_list[-1]

        self.so2_conv_1 = SO2Convolution(
            layout, 2 * sphere_channels, hidden_channels, edge_channels_list,
            extra_m0_output_channels=num_heads * attn_alpha_channels + self.num_gates,
        )
        self.attention = AttentionReNorm(num_heads, attn_alpha_channels, attn_renorm)
        self.alpha_dropout = nn.Dropout(alpha_drop) if alpha_drop > 0 else None
        self.act = activation_layer(activation, layout, hidden_channels, grid_resolution, edge=True, kernels=kernels)
        self.so2_conv_2 = SO2Linear(layout, hidden_channels, num_heads * attn_value_channels)
        self.proj = SO3Linear(layout, num_heads * attn_value_channels, output_channels)

    def extra_repr(self) -> str:
        return (
            f"lmax={self.layout.lmax}, mmax={self.layout.mmax}, sphere_channels={self.sphere_channels}, "
            f"num_heads={self.num_heads}, activation={self.activation!r}"
            + ("" if self.recompute else ", recompute=False")
            + ("" if self.kernels == "auto" else f", kernels={self.kernels!r}")
        )

    def forward(
        self,
        x: torch.Tensor,
        edge_features: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        rotation: EdgeRotation,
    ) -> torch.Tensor:
        check_features("x", x, None, self.layout.dim, self.sphere_channels, self.layout)
        check_dtype("x", x, self, self.so2_conv_1.fc_m0.weight)
        num_nodes, num_edges = x.shape[0], check_edges(edge_index)
        check_edge_features(edge_features, num_edges, self.edge_channels)
        check_rotation(rotation, self.layout, num_edges)
        if self.atom_edge is not None:
            check_atomic_numbers(atomic_numbers, num_nodes)
        # the weights of both SO(2) maps, their complex matrices built once per forward (also when
        # the edges run block by block: at inference on the CPU, in_target_blocks)
        weights = (self.so2_conv_1.weights(), self.so2_conv_2.weights())
        return in_target_blocks(partial(self._attend, x, atomic_numbers, weights),
                                Edges.of_graph(edge_features, edge_index, rotation, num_nodes),
                                kernels=self.kernels, training=self.training)

    def _attend(self, x: torch.Tensor, atomic_numbers: torch.Tensor, weights: tuple[SO2Weights, SO2Weights],
                edges: Edges) -> torch.Tensor:
        """Steps 1-5 on the given edges: the output rows of their ``edges.num_targets`` targets."""
        rotation = edges.rotation
        double_backward = needs_double_backward(rotation.matrix)
        # In training with direct forces, the intermediates of the radial MLP, the logits and the
        # values (a few [E, H, A] tensors, the activated messages and the [E, edge_dim, H * V]
        # values: most of a layer's stored activations) are recomputed in backward from their inputs.
        recompute = use_recompute(self.recompute, double_backward=double_backward, device_type=policy_device(x))
        # 1-2. m_ij = D(R_ij) [x_j || x_i], then the first SO(2) convolution, fed with the edge
        # features and the atom-type embeddings of both ends
        if use_fused(self.kernels, EDGE_CONVOLUTION, device_type=policy_device(x), double_backward=double_backward):
            hidden = maybe_recompute(recompute, self._radial_hidden, edges.features, atomic_numbers, edges.index)
            message, extra = edge_convolution(x, edges.index, rotation.matrix, hidden, weights[0])
        else:
            edge_features = edges.features
            if self.atom_edge is not None:
                edge_features = self.atom_edge(edge_features, atomic_numbers, edges.index)
            pairs = torch.cat([x.index_select(0, edges.index[0]), x.index_select(0, edges.index[1])], dim=-1)
            message, extra = self.so2_conv_1(rotation.to_edge(pairs), edge_features, weights[0])
        alpha_features, gates = extra.split([extra.shape[1] - self.num_gates, self.num_gates], dim=1)
        # 4. attention weights, the softmax in at least float32 (under bf16 autocast the logits are bf16)
        logits = maybe_recompute(recompute, self.attention, alpha_features)  # [E, H]
        # so2nn's segment softmax, not torch_geometric.utils.softmax: same numbers, faster (RESULTS.md)
        alpha = segment_softmax(at_least_float32(logits), edges.target, edges.num_targets)
        if self.alpha_dropout is not None:
            alpha = self.alpha_dropout(alpha)
        # 3. the activated values of every head, times their attention weights
        # (recomputed, the second map builds its complex matrices inside, so that they are not kept)
        message = maybe_recompute(recompute, self._weighted_values, message, gates, alpha,
                                  None if recompute else weights[1])
        # 5. rotate back, sum over the neighbours, project
        message = rotation.from_edge(message, rescale=True)
        return self.proj(scatter_sum(message, edges.target, edges.num_targets, self.kernels))

    def _radial_hidden(self, edge_features, atomic_numbers, edge_index):
        """The radial MLP of ``so2_conv_1`` up to its last layer, on the atom-type edge features
        (the kernel :func:`~so2nn.kernels.edge_convolution` applies the last layer itself)."""
        radial = self.so2_conv_1.radial
        if self.atom_edge is None:
            hidden = radial.first(edge_features)
        else:
            hidden = atom_edge_linear(
                edge_features, radial.first.weight, radial.first.bias, self.atom_edge.source_embedding.weight,
                self.atom_edge.target_embedding.weight, atomic_numbers, edge_index,
            )
        return radial.hidden_layers(hidden)

    def _weighted_values(self, message: torch.Tensor, gates: torch.Tensor, alpha: torch.Tensor,
                         weights: SO2Weights | None) -> torch.Tensor:
        """Values of every head, ``SO2Linear_2(act(message, gates))``, times its attention weight:
        ``[E, edge_dim, H * V]``."""
        values = self.so2_conv_2(self.act(message, gates if self.num_gates else None), weights).y
        E, H, V = values.shape[0], self.num_heads, self.attn_value_channels
        K = self.layout.edge_dim
        return (values.view(E, K, H, V) * alpha[:, None, :, None]).view(E, K, H * V)
